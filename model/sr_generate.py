"""Sampling a super-resolution stage: iterative non-autoregressive (MaskGIT) decoding with classifier-free
guidance applied separately to the text and to the low-resolution condition.

    hr = sample_sr(model, lr, text=emb, text_mask=valid, sampling=SRSamplingConfig(steps=24), generator=g)
    hr                                   # (B, T, s H, s W) MAGVIT-v2 codes for LR codes (B, T, H, W)

Decoding: every HR position starts masked. Each of `steps` steps predicts every position, draws a code for
each masked one (each factor from its head, at `temperature`; 0 = argmax), scores it by its
log-probability, and keeps the most confident: after step i, floor(n cos(pi/2 (i+1)/steps)) positions stay
masked (the cosine schedule the model trains with; `model.sr.masked_after_step`), at least one fewer than
before, none after the last step. Decided positions never change. Gumbel noise scaled by
`mask_temperature` x (1 - (i+1)/steps) is added to the scores (MaskGIT's annealed randomness of which
positions are kept).

Guidance, on the logits of each factor, with 0 the dropped condition as in training:
    l = l(0, 0) + w_lr (l(lr, 0) - l(0, 0)) + w_text (l(lr, text) - l(lr, 0))
w_lr = w_text = 1 is plain conditional sampling (one row per sample); the rows a setting needs (at most 3
per sample: with both conditions, LR without text, neither) run as one batch. Without a caption the text
term vanishes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from videopoet.core.config import check
from videopoet.model.sr import SRTransformer, masked_after_step, unfactorize


@dataclass(kw_only=True)
class SRSamplingConfig:
    """How a super-resolution stage decodes."""

    steps: int = 24
    """Decoding steps (VideoPoet: 24)."""
    temperature: float = 1.0
    """Softmax temperature of each factor's draw; 0 takes the most likely factor."""
    mask_temperature: float = 4.5
    """Scale of the Gumbel noise on the confidence that picks the positions kept (annealed to 0 by the last step)."""
    text_guidance: float = 1.0
    """w_text: guidance weight of the caption (1 = none)."""
    lr_guidance: float = 1.0
    """w_lr: guidance weight of the low-resolution video (1 = none)."""

    def __post_init__(self) -> None:
        check(self.steps >= 1, "steps", self.steps, ">= 1")
        check(self.temperature >= 0, "temperature", self.temperature, ">= 0")
        check(self.mask_temperature >= 0, "mask_temperature", self.mask_temperature, ">= 0")
        check(self.text_guidance >= 0, "text_guidance", self.text_guidance, ">= 0")
        check(self.lr_guidance >= 0, "lr_guidance", self.lr_guidance, ">= 0")


def _gumbel(shape, device, generator: torch.Generator | None) -> Tensor:
    u = torch.rand(shape, device=device, generator=generator).clamp_(1e-20, 1.0)
    return -torch.log(-torch.log(u).clamp_min(1e-20))


@torch.no_grad()
def sample_sr(
    model: SRTransformer,
    lr: Tensor,
    *,
    text: Tensor | None = None,
    text_mask: Tensor | None = None,
    sampling: SRSamplingConfig | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """HR codes `(B, T, s H, s W)` for LR codes `lr` `(B, T, H, W)`; caption `text` `(B, S, text_dim)`, `text_mask` `(B, S)`."""
    sp = sampling or SRSamplingConfig()
    c = model.cfg
    B, T, h, w = lr.shape
    H, W = h * c.scale, w * c.scale
    n = T * H * W
    dev = lr.device
    w_lr, w_text = sp.lr_guidance, sp.text_guidance
    has_text = text is not None
    # rows: (LR kept, text kept); the first is the fully conditional one
    rows = [(True, True)]
    need_lr_only = has_text and (w_lr != 1 or w_text != 1)
    if need_lr_only:
        rows.append((True, False))
    if w_lr != 1:
        rows.append((False, False))
    R = len(rows)
    lr_keep = torch.tensor([k for k, _ in rows], device=dev).repeat_interleave(B)  # (R B,)
    text_keep = torch.tensor([k for _, k in rows], device=dev).repeat_interleave(B)
    cond = dict(lr_keep=lr_keep, text_keep=text_keep)
    if has_text:
        cond.update(
            text=text.repeat(R, 1, 1), text_mask=None if text_mask is None else text_mask.repeat(R, 1)
        )
    lr_rows = lr.repeat(R, 1, 1, 1)

    codes = torch.zeros(B, T, H, W, dtype=torch.long, device=dev)
    unknown = torch.ones(B, T, H, W, dtype=torch.bool, device=dev)
    for step in range(sp.steps):
        logits = model(codes.repeat(R, 1, 1, 1), unknown.repeat(R, 1, 1, 1), lr_rows, **cond)
        logits = logits.float().unflatten(0, (R, B))  # (R, B, T, H, W, k, V)
        l_c = logits[0]
        l_lr = logits[1] if need_lr_only else l_c
        l_0 = logits[-1] if w_lr != 1 else l_lr
        g = l_0 + w_lr * (l_lr - l_0) + w_text * (l_c - l_lr)  # (B, T, H, W, k, V)
        logp = g.log_softmax(-1)
        if sp.temperature == 0:
            f = g.argmax(-1)
        else:
            probs = (g / sp.temperature).softmax(-1)
            f = torch.multinomial(probs.flatten(0, -2), 1, generator=generator).view(probs.shape[:-1])
        score = logp.gather(-1, f[..., None]).squeeze(-1).sum(-1)  # (B, T, H, W): log p of the drawn code
        codes = torch.where(unknown, unfactorize(f, c.visual_bits), codes)
        still = min(masked_after_step(n, step, sp.steps), int(unknown.flatten(1).sum(1).min()) - 1)
        if still <= 0:
            unknown = torch.zeros_like(unknown)
            break
        tau = sp.mask_temperature * (1.0 - (step + 1) / sp.steps)
        conf = score + tau * _gumbel(score.shape, dev, generator) if tau > 0 else score
        conf = conf.masked_fill(~unknown, float("inf")).flatten(1)  # decided positions are never re-masked
        keep_masked = conf.topk(still, dim=1, largest=False).indices  # (B, still)
        unknown = (
            torch.zeros(B, n, dtype=torch.bool, device=dev).scatter_(1, keep_masked, True).view_as(codes)
        )
    assert not bool(unknown.any())
    return codes
