"""Residual vector quantizer (RVQ) with EMA codebooks, k-means init, dead-code restart and quantizer dropout.

Level 1 quantizes the encoder output z, level l quantizes what levels 1..l-1 left over; the quantized
latent is the sum of the chosen codewords. Codebooks are buffers, not parameters: they follow exponential
moving averages of the vectors assigned to each code (VQ-VAE-2 / SoundStream), so no codebook loss is
needed; the encoder is pulled towards the codebook by the commitment loss this module returns.

Training-time behaviour (only in `train()` mode and with `update=True`):
- k-means init: the first batch seen runs k-means++ seeding and `kmeans_iters` Lloyd iterations per
  level on that level's residuals, so codes start where the data is instead of at random points.
- EMA: counts and sums of the assigned vectors are averaged with `decay`; codeword = sum / count (with
  Laplace smoothing so a rarely used code does not divide by ~0).
- Dead-code restart: a code that received no vector for `dead_code_steps` consecutive updates is moved
  onto a random vector of the current batch's residuals at that level ("recent encoder outputs").
- Quantizer dropout: with probability `dropout`, each batch element uses only the first n levels,
  n ~ U{1..L} (SoundStream's structured dropout, which makes the codec bitrate-scalable). Dropped levels
  get code -1 and add nothing.

Distributed training: pass `stats_reducer` (e.g. an all-reduce SUM over ranks) so that EMA counts/sums
include every rank's batch. Random choices (k-means seeds, restarts) differ per rank; DDP's default
`broadcast_buffers=True` copies rank 0's codebooks to the others at every forward, which keeps them equal.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


def kmeans(x: Tensor, k: int, iters: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Lloyd's k-means on `x (N, D)` with k-means++ seeding. Returns centroids `(k, D)` and cluster sizes `(k,)`.

    k-means++ (each new seed drawn with probability proportional to its squared distance to the seeds so
    far) avoids the merged/split clusters that uniformly drawn seeds often end in. With N < k there are not
    enough distinct points: seeds are rows drawn with replacement plus a little noise. A cluster that ends
    up empty keeps its previous centroid.
    """
    n = x.shape[0]
    if n < k:
        idx = torch.randint(n, (k,), device=x.device, generator=generator)
        centroids = x[idx] + 1e-3 * x.std() * torch.randn(k, x.shape[1], device=x.device, generator=generator)
    else:
        centroids = torch.empty(k, x.shape[1], device=x.device, dtype=x.dtype)
        centroids[0] = x[torch.randint(n, (1,), device=x.device, generator=generator)]
        d2 = (x - centroids[0]).pow(2).sum(1)  # (N,) squared distance to the nearest seed so far
        for i in range(1, k):
            total = d2.sum()
            probs = d2 / total if total > 0 else torch.full_like(d2, 1.0 / n)
            j = torch.multinomial(probs, 1, generator=generator)
            centroids[i] = x[j]
            d2 = torch.minimum(d2, (x - centroids[i]).pow(2).sum(1))
    counts = torch.zeros(k, device=x.device)
    for _ in range(max(iters, 1)):
        assign = torch.cdist(x, centroids).argmin(dim=1)  # (N,)
        counts = torch.bincount(assign, minlength=k).float()
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        nonempty = counts > 0
        centroids[nonempty] = sums[nonempty] / counts[nonempty, None]
    return centroids, counts


class EMAVectorQuantizer(nn.Module):
    """One codebook of `codebook_size` vectors of `dim`, updated by EMA (see the module docstring)."""

    def __init__(
        self,
        *,
        dim: int,
        codebook_size: int,
        decay: float = 0.99,
        kmeans_iters: int = 10,
        dead_code_steps: int = 200,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.dim, self.codebook_size = dim, codebook_size
        self.decay, self.kmeans_iters, self.dead_code_steps, self.eps = (
            decay,
            kmeans_iters,
            dead_code_steps,
            eps,
        )
        self.register_buffer("embed", torch.randn(codebook_size, dim))  # (K, D) the codewords
        self.register_buffer("embed_sum", self.embed.clone())  # (K, D) EMA of assigned-vector sums
        self.register_buffer("cluster_size", torch.ones(codebook_size))  # (K,) EMA of assignment counts
        self.register_buffer("steps_unused", torch.zeros(codebook_size, dtype=torch.long))  # (K,)
        self.register_buffer("initialized", torch.tensor(False))

    def nearest(self, x: Tensor) -> Tensor:
        """Index of the nearest codeword (squared L2) for each row of `x (N, D)` -> `(N,)` long."""
        e = self.embed
        dist = x.pow(2).sum(1, keepdim=True) - 2 * x @ e.t() + e.pow(2).sum(1)[None]  # (N, K)
        return dist.argmin(dim=1)

    def lookup(self, codes: Tensor) -> Tensor:
        """Codewords for `codes (N,)` -> `(N, D)`."""
        return F.embedding(codes, self.embed)

    @torch.no_grad()
    def init_from(self, x: Tensor, generator: torch.Generator | None = None) -> None:
        """k-means the codebook onto `x (N, D)` (done automatically on the first training batch)."""
        centroids, _ = kmeans(x.float(), self.codebook_size, self.kmeans_iters, generator)
        self.embed.copy_(centroids)
        # count 1 and sum = codeword: the EMA ratio sum/count starts at the k-means centroid, and for a code
        # that then gets no vectors both decay together, so the codeword stays put until it is restarted.
        self.embed_sum.copy_(centroids)
        self.cluster_size.fill_(1.0)
        self.steps_unused.zero_()
        self.initialized.fill_(True)

    @torch.no_grad()
    def update(
        self,
        x: Tensor,
        codes: Tensor,
        reducer: Callable[[Tensor], Tensor] | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        """EMA step with vectors `x (N, D)` assigned to `codes (N,)`, then restart dead codes."""
        counts = torch.bincount(codes, minlength=self.codebook_size).float()  # (K,)
        sums = torch.zeros_like(self.embed).index_add_(0, codes, x)  # (K, D)
        if reducer is not None:
            counts, sums = reducer(counts), reducer(sums)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (n + self.codebook_size * self.eps) * n
        self.embed.copy_(self.embed_sum / smoothed[:, None])

        self.steps_unused.add_(1).masked_fill_(counts > 0, 0)
        dead = self.steps_unused >= self.dead_code_steps
        n_dead = int(dead.sum())
        if n_dead and x.shape[0]:
            pick = torch.randint(x.shape[0], (n_dead,), device=x.device, generator=generator)
            self.embed[dead] = x[pick]
            self.embed_sum[dead] = x[pick]
            self.cluster_size[dead] = 1.0
            self.steps_unused[dead] = 0


@dataclass
class QuantizerOutput:
    quantized: Tensor
    """`(B, D, T)` sum of the used levels' codewords; in training, with straight-through gradients to z."""
    codes: Tensor
    """`(B, L, T)` long; -1 where quantizer dropout switched a level off for that batch element."""
    levels_used: Tensor
    """`(B,)` how many levels each batch element used (L unless quantizer dropout applied)."""
    commit_loss: Tensor
    """Scalar: sum over levels of mean ||residual - sg(codeword)||^2 over the positions that used the level."""
    perplexity: Tensor
    """`(L,)` exp(entropy) of each level's code histogram in this batch (codebook usage, for logging)."""


class ResidualVQ(nn.Module):
    """`num_levels` EMA codebooks applied to successive residuals. Inputs are latents `(B, D, T)`."""

    def __init__(
        self,
        *,
        dim: int,
        num_levels: int,
        codebook_size: int,
        decay: float = 0.99,
        kmeans_iters: int = 10,
        dead_code_steps: int = 200,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.dim, self.num_levels, self.codebook_size, self.dropout = dim, num_levels, codebook_size, dropout
        self.levels = nn.ModuleList(
            EMAVectorQuantizer(
                dim=dim,
                codebook_size=codebook_size,
                decay=decay,
                kmeans_iters=kmeans_iters,
                dead_code_steps=dead_code_steps,
            )
            for _ in range(num_levels)
        )
        self.stats_reducer: Callable[[Tensor], Tensor] | None = None
        """Set by a distributed trainer: sums a tensor over ranks (all-reduce SUM). None = single process."""
        self.generator: torch.Generator | None = None
        """Optional RNG for dropout, k-means seeds and restarts (tests seed it; None = torch's global RNG)."""

    def sample_levels(self, batch: int, device: torch.device) -> Tensor:
        """Levels per batch element for a training step: L, or U{1..L} with probability `dropout`."""
        n = torch.full((batch,), self.num_levels, device=device, dtype=torch.long)
        if self.dropout > 0 and self.num_levels > 1:
            g = self.generator
            drop = torch.rand(batch, device=device, generator=g) < self.dropout
            random_n = torch.randint(1, self.num_levels + 1, (batch,), device=device, generator=g)
            n = torch.where(drop, random_n, n)
        return n

    def forward(self, z: Tensor, update: bool = True) -> QuantizerOutput:
        """Quantize `z (B, D, T)`. In train mode: quantizer dropout, and (if `update`) k-means/EMA/restarts."""
        with torch.autocast(device_type=z.device.type, enabled=False):  # distances and EMA need fp32
            return self._forward(z, update)

    def _forward(self, z: Tensor, update: bool) -> QuantizerOutput:
        b, _, t = z.shape
        training = self.training
        zf = z.float()
        x = rearrange(zf, "b d t -> (b t) d")
        levels_used = (
            self.sample_levels(b, z.device)
            if training
            else torch.full((b,), self.num_levels, device=z.device, dtype=torch.long)
        )
        rows_levels = levels_used.repeat_interleave(t)  # (B*T,) levels of the element each row belongs to

        residual = x.detach()
        quantized = torch.zeros_like(x)
        codes = torch.full((b * t, self.num_levels), -1, device=z.device, dtype=torch.long)
        commit = zf.new_zeros(())
        perplexity = zf.new_zeros(self.num_levels)
        for i, vq in enumerate(self.levels):
            active = rows_levels > i  # (B*T,)
            r = residual[active]
            if r.shape[0] == 0:  # quantizer dropout switched this level off for the whole batch
                if training and update and self.stats_reducer is not None:
                    # distributed: every rank must join every level's statistics all-reduce, even with none
                    vq.update(r, torch.zeros(0, device=z.device, dtype=torch.long), self.stats_reducer)
                continue
            if training and update and not bool(vq.initialized):
                vq.init_from(r, self.generator)
            idx = vq.nearest(r)
            q = vq.lookup(idx)
            if training and update:
                vq.update(r, idx, self.stats_reducer, self.generator)
            codes[active, i] = idx
            # commitment: this level's residual (with gradient to z) towards its codeword as assigned before
            # this step's EMA move
            commit = commit + F.mse_loss(x[active] - quantized[active], q)
            hist = torch.bincount(idx, minlength=vq.codebook_size).float()
            p = hist / hist.sum()
            perplexity[i] = torch.exp(-(p * torch.log(p.clamp_min(1e-10))).sum())
            quantized[active] += q
            residual = residual.clone()
            residual[active] = r - q

        if training:
            quantized = x + (quantized - x).detach()  # straight-through estimator
        return QuantizerOutput(
            quantized=rearrange(quantized, "(b t) d -> b d t", b=b),
            codes=rearrange(codes, "(b t) l -> b l t", b=b),
            levels_used=levels_used,
            commit_loss=commit,
            perplexity=perplexity,
        )

    @torch.no_grad()
    def encode(self, z: Tensor, levels: int | None = None) -> Tensor:
        """Codes `(B, levels, T)` for latents `z (B, D, T)`; never updates the codebooks."""
        with torch.autocast(device_type=z.device.type, enabled=False):
            return self._encode(z, levels)

    def _encode(self, z: Tensor, levels: int | None) -> Tensor:
        n = self.num_levels if levels is None else levels
        b = z.shape[0]
        residual = rearrange(z.float(), "b d t -> (b t) d")
        out = []
        for vq in self.levels[:n]:
            idx = vq.nearest(residual)
            residual = residual - vq.lookup(idx)
            out.append(idx)
        return rearrange(torch.stack(out, dim=1), "(b t) l -> b l t", b=b)

    def decode(self, codes: Tensor) -> Tensor:
        """Latents `(B, D, T)` for codes `(B, l <= L, T)`; a code of -1 adds nothing at that level."""
        b, n, t = codes.shape
        flat = rearrange(codes.long(), "b l t -> (b t) l")
        out = torch.zeros(b * t, self.dim, device=codes.device)
        for i in range(n):
            c = flat[:, i]
            used = c >= 0
            out[used] += self.levels[i].lookup(c[used])
        return rearrange(out, "(b t) d -> b d t", b=b)
