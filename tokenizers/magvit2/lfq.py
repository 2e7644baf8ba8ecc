"""Lookup-free quantization (LFQ, MAGVIT-v2 section 3.1): each of K latent channels is quantized to its
sign, so the codebook is the implicit set {-s, +s}^K and a token is a K-bit integer.

Bit order (shared by encode and decode): bit i of a token index is code dimension (channel) i, least
significant first: index = sum_i [z_i > 0] * 2^i. So channel 0 is the LSB and channel K-1 the MSB.

The entropy loss is E_tokens[H(p(c|z))] - H(E_tokens[p(c|z)]) with the soft assignment
p(c|z) = softmax_c(2 <z, c> * inv_temperature) (the distance-based softmax: -||z - c||^2 differs from
2 <z, c> by terms constant in c). Without an (N x 2^K) matrix: the K bits are split into groups of
`group_bits` bits and the loss is the sum of the groups' losses.
- The per-token term is exact for any grouping: p(c|z) is a product over bits (the logit is a sum of
  per-bit terms), so the entropy of the joint is the sum of the entropies of the groups.
- The codebook term sums the entropies of the groups' marginal code distributions. That is the
  factorized approximation: it is >= the joint entropy and equal to it exactly when the groups are
  independent under the batch-average distribution. With one group (group_bits = K) the loss is exact.
All of this runs in fp32 with autocast disabled.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


def indices_to_bits(indices: Tensor, bits: int) -> Tensor:
    """Integer tokens `(...)` -> their K bits `(..., K)` as 0/1 int64, LSB (code dim 0) first."""
    powers = 2 ** torch.arange(bits, device=indices.device, dtype=torch.int64)
    return (indices.long().unsqueeze(-1) // powers) % 2


def bits_to_indices(bits: Tensor) -> Tensor:
    """0/1 bits `(..., K)` (LSB first) -> integer tokens `(...)` as int64. Inverse of `indices_to_bits`."""
    powers = 2 ** torch.arange(bits.shape[-1], device=bits.device, dtype=torch.int64)
    return (bits.long() * powers).sum(-1)


def fp32_region(device: torch.device):
    """Autocast off on `device` (the quantizer's math must stay fp32 under a bf16 autocast)."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()  # e.g. the meta device, used for shape checks


def _entropy(p: Tensor) -> Tensor:
    """Shannon entropy (nats) over the last dim; 0 log 0 = 0 with a finite gradient (torch.special.entr's
    gradient is infinite at 0, and an underflowed softmax entry would turn it into NaN)."""
    return -(p * p.clamp_min(torch.finfo(p.dtype).tiny).log()).sum(-1)


@dataclass
class LFQOutput:
    quantized: Tensor
    """(B, K, ...) values +-scale, with straight-through gradients to the normalized latent."""
    indices: Tensor
    """(B, ...) int64 tokens in [0, 2^K)."""
    normalized: Tensor
    """(B, K, ...) the RMS-normalized fp32 latent that was quantized (input of `losses`)."""


class LFQ(nn.Module):
    """Sign quantizer over K channels with a non-affine RMS norm in front and no activation.

    The norm rescales each token's K-vector to RMS `scale`. It does not change any sign (so it does not
    change which code a token gets) but fixes the latent's scale relative to the codebook, so neither the
    commitment loss nor the entropy temperature can be gamed by shrinking or growing the encoder output;
    it has no learnable affine for the same reason.
    """

    def __init__(
        self, bits: int, *, scale: float = 1.0, group_bits: int | None = None, inv_temperature=100.0
    ):
        super().__init__()
        self.bits, self.scale, self.inv_temperature = bits, float(scale), float(inv_temperature)
        g = group_bits or bits
        assert 1 <= g <= bits, f"group_bits must be in [1, {bits}], got {g}"
        self.group_sizes = [g] * (bits // g) + ([bits % g] if bits % g else [])
        self.register_buffer("powers", 2 ** torch.arange(bits, dtype=torch.int64), persistent=False)
        for size in set(self.group_sizes):  # the +-1 code vectors of one group, rows in index order
            codes = indices_to_bits(torch.arange(2**size), size).float() * 2 - 1
            self.register_buffer(f"codebook_{size}", codes, persistent=False)

    @property
    def vocab_size(self) -> int:
        return 2**self.bits

    def normalize(self, z: Tensor) -> Tensor:
        z = z.float()
        return z * torch.rsqrt(z.square().mean(dim=1, keepdim=True) + 1e-12) * self.scale

    def forward(self, z: Tensor) -> LFQOutput:
        """`z (B, K, ...)` in any dtype -> quantized (fp32), indices and the normalized latent."""
        assert z.shape[1] == self.bits, f"expected {self.bits} channels, got shape {tuple(z.shape)}"
        with fp32_region(z.device):
            zn = self.normalize(z)
            positive = zn > 0
            q = torch.where(positive, self.scale, -self.scale)
            # Straight-through: the value is exactly q (z - z.detach() is exactly 0), the gradient is z's.
            quantized = q + (zn - zn.detach())
            shape = (1, self.bits) + (1,) * (z.ndim - 2)
            indices = (positive.long() * self.powers.view(shape)).sum(1)
        return LFQOutput(quantized=quantized, indices=indices, normalized=zn)

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """Tokens `(B, ...)` -> code vectors `(B, K, ...)` of +-scale (fp32). Inverse of the quantizer."""
        bits = indices_to_bits(indices, self.bits).float()
        return rearrange(bits * (2 * self.scale) - self.scale, "b ... k -> b k ...")

    def losses(self, normalized: Tensor) -> dict[str, Tensor]:
        """Commitment and entropy losses of a normalized latent `(B, K, ...)` (from `forward`).

        Returns scalars: `commitment` = mean (z - sg(q))^2, `entropy` = `per_token_entropy` -
        `codebook_entropy` (nats, summed over bit groups; see the module docstring for exactness).
        """
        with fp32_region(normalized.device):
            z = rearrange(normalized.float(), "b k ... -> (b ...) k")
            q = torch.where(z > 0, self.scale, -self.scale)
            commitment = F.mse_loss(z, q)
            per_token = z.new_zeros(())
            codebook = z.new_zeros(())
            start = 0
            for size in self.group_sizes:
                codes = getattr(self, f"codebook_{size}").float() * self.scale  # (2^g, g)
                logits = 2 * self.inv_temperature * (z[:, start : start + size] @ codes.T)  # (N, 2^g)
                log_p = logits.log_softmax(dim=-1)
                p = log_p.exp()
                per_token = per_token - (p * log_p).sum(-1).mean()
                codebook = codebook + _entropy(p.mean(0))
                start += size
        return {
            "commitment": commitment,
            "entropy": per_token - codebook,
            "per_token_entropy": per_token.detach(),
            "codebook_entropy": codebook.detach(),
        }
