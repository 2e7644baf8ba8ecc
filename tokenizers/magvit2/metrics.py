"""Evaluation metrics of the MAGVIT-v2 tokenizer: PSNR, SSIM (in torch, no extra dependency) and codebook use.

    psnr(recon, target)             # (B, 3, T, H, W) in [-1, 1] -> (B,) dB, peak-to-peak 2
    ssim(recon01, target01)         # (N, C, H, W) in [0, 1] -> (N,)
    codebook_stats(codes, bits=18)  # any int tensor of tokens -> dict of usage figures

Codebook usage. With K = 18 bits there are 262,144 codes, and an evaluation set of N tokens (1280 per
17x128x128 clip) can use at most min(2^K, N) of them; even a perfectly uniform code distribution uses
fewer, since draws collide: N uniform draws hit 2^K (1 - (1 - 2^-K)^N) distinct codes on average (88.5% of
N at N = 2^16). So `codebook_stats` reports several figures, and the issue's "codebook usage >= 90% on
the eval set" is read as `usage` below:

- `usage`          distinct codes / min(2^K, N): 1 means every token of the set has its own code
                   (or every code is used, for N >= 2^K); a collapsed codebook gives a small value.
- `usage_vs_uniform` distinct codes / the expected count under uniform draws of N tokens: ~1 means as
                   diverse as uniform random codes (real images repeat codes in flat regions, so < 1).
- `perplexity`     exp(entropy of the empirical code distribution), and `perplexity_fraction` of
                   min(2^K, N).
- per-bit balance  p_i = share of tokens with bit i set; `bit_balance_min/mean` = 1 - |2 p_i - 1|
                   (1 = each bit is set on half the tokens) and `bit_entropy_mean` = mean binary entropy
                   H(p_i) in bits. LFQ's entropy loss pushes towards balanced, independent bits; a dead
                   bit (always 0 or 1) halves the usable vocabulary.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from videopoet.tokenizers.magvit2.lfq import indices_to_bits


def psnr(recon: Tensor, target: Tensor) -> Tensor:
    """Per-sample PSNR (dB) of clips or images in [-1, 1] (peak-to-peak 2, i.e. the usual 8-bit PSNR)."""
    mse = (recon.float().clamp(-1, 1) - target.float()).square().flatten(1).mean(1)
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-10))


def _gaussian(window: int, sigma: float, device, dtype) -> Tensor:
    x = torch.arange(window, device=device, dtype=dtype) - (window - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(x: Tensor, y: Tensor, *, data_range: float = 1.0, window: int = 11, sigma: float = 1.5) -> Tensor:
    """Structural similarity (Wang et al. 2004) of `(N, C, H, W)` images, per image: the mean over channels
    and over the valid (unpadded) positions of an 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03.
    The window shrinks (odd) for images smaller than it. Identical inputs give exactly 1."""
    assert x.shape == y.shape and x.ndim == 4, (
        f"expected two (N, C, H, W) tensors, got {x.shape} and {y.shape}"
    )
    x, y = x.double(), y.double()
    n, c, h, w = x.shape
    win = min(window, h - (1 - h % 2), w - (1 - w % 2))
    g = _gaussian(win, sigma, x.device, x.dtype)
    kh = g.view(1, 1, win, 1).expand(c, 1, win, 1)
    kw = g.view(1, 1, 1, win).expand(c, 1, 1, win)

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(F.conv2d(t, kh, groups=c), kw, groups=c)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(1).float()


def clip_ssim(recon: Tensor, target: Tensor) -> Tensor:
    """Per-clip SSIM of `(B, 3, T, H, W)` clips in [-1, 1]: mean over frames of each frame's SSIM."""
    b, t = recon.shape[0], recon.shape[2]
    fold = lambda v: ((v.float().clamp(-1, 1) + 1) / 2).transpose(1, 2).flatten(0, 1)  # noqa: E731
    return ssim(fold(recon), fold(target)).view(b, t).mean(1)


def codebook_stats(codes: Tensor, bits: int) -> dict[str, float]:
    """Usage figures of a set of tokens (see the module docstring for what each means)."""
    codes = codes.flatten().long()
    n, vocab = codes.numel(), 2**bits
    if n == 0:
        return {"tokens": 0}
    _, counts = torch.unique(codes, return_counts=True)
    used = counts.numel()
    p = counts.double() / n
    perplexity = math.exp(float(-(p * p.log()).sum()))
    expected_uniform = -vocab * math.expm1(n * math.log1p(-1 / vocab))
    p1 = indices_to_bits(codes, bits).double().mean(0)  # (K,) share of tokens with bit i set
    balance = 1 - (2 * p1 - 1).abs()
    q = p1.clamp(1e-12, 1 - 1e-12)
    bit_entropy = -(q * q.log2() + (1 - q) * (1 - q).log2())
    bit_entropy = torch.where((p1 == 0) | (p1 == 1), torch.zeros_like(bit_entropy), bit_entropy)
    return {
        "tokens": n,
        "codes_used": used,
        "usage": used / min(vocab, n),
        "usage_vs_uniform": used / expected_uniform,
        "perplexity": perplexity,
        "perplexity_fraction": perplexity / min(vocab, n),
        "bit_balance_min": float(balance.min()),
        "bit_balance_mean": float(balance.mean()),
        "bit_entropy_mean": float(bit_entropy.mean()),
    }
