"""Sampling from the VideoPoet LM: KV-cached (and uncached, for reference), constrained, with classifier-free guidance.

    prompt = SequenceBuilder(vocab).text_to_video((5, 16, 16))          # a prompt: tokens up to <bov_o> + plan
    out = generate_sequence(model, prompt, text=caption_emb, negative_text=neg_emb,
                            sampling=SamplingConfig(temperature=1.0, top_k=1000, guidance_scale=5.0))
    out.tokens          # (1, 1282): 1280 visual ids, <eov_o>, <eos>

The prompt is the whole prefix (bidirectional attention; it is prefilled in one forward), and the `plan`
says what follows: runs of ids sampled inside a vocabulary range (visual ids inside a visual output, one
RVQ level's ids at a time inside an audio output) and forced special tokens (`<eov_o>`, `<boa_o>`, ...).
The range constraint masks all other logits before temperature / top-k / top-p.

Classifier-free guidance: the conditional rows and the unconditional rows (same tokens; no text, i.e. every
`<text>` slot left as is - how a dropped caption looks in training - or a negative prompt's embeddings)
run as one batch of 2B, and each step samples from `l_u + w (l_c - l_u)` (logits; w = guidance_scale:
1 = no guidance, 0 = unconditional only). With w = 1 and no negative prompt the unconditional half is
skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence as SequenceABC
from dataclasses import dataclass

import torch
from torch import Tensor

from videopoet.core.config import check
from videopoet.model.lm import KVCache, VideoPoetLM
from videopoet.model.sequences import Sequence, Step


@dataclass(kw_only=True)
class SamplingConfig:
    """How each generated token is drawn."""

    temperature: float = 1.0
    """Softmax temperature; 0 picks the most likely id (greedy)."""
    top_k: int | None = None
    """Sample among the k most likely ids of the allowed range (None: all)."""
    top_p: float | None = None
    """Nucleus sampling: the smallest set of ids whose probability reaches top_p (None: all)."""
    guidance_scale: float = 1.0
    """Classifier-free guidance weight w in l_u + w (l_c - l_u); 1 = plain conditional sampling."""

    def __post_init__(self) -> None:
        check(self.temperature >= 0, "temperature", self.temperature, ">= 0")
        check(self.top_k is None or self.top_k >= 1, "top_k", self.top_k, ">= 1 or null")
        check(self.top_p is None or 0 < self.top_p <= 1, "top_p", self.top_p, "in (0, 1] or null")
        check(self.guidance_scale >= 0, "guidance_scale", self.guidance_scale, ">= 0")


@dataclass
class GenerationOutput:
    tokens: Tensor
    """`(B, n)` ids after the prompt, sampled and forced, in plan order."""
    logits: Tensor | None = None
    """`(B, n_sampled, V)` fp32 guided logits at each sampled step (before the range mask), if requested."""


def sample_logits(
    logits: Tensor,
    lo: int,
    hi: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw one id per row `(B,)` from `logits` `(B, V)`, restricted to ids in `[lo, hi)`."""
    x = torch.full_like(logits, float("-inf"), dtype=torch.float32)
    x[:, lo:hi] = logits[:, lo:hi].float()
    if temperature == 0:
        return x.argmax(dim=-1)
    x = x / temperature
    if top_k is not None and top_k < hi - lo:
        kth = x.topk(top_k, dim=-1).values[:, -1:]  # (B, 1)
        x = x.masked_fill(x < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_x, order = x.sort(dim=-1, descending=True)
        probs = sorted_x.softmax(dim=-1)
        drop = probs.cumsum(dim=-1) - probs > top_p  # mass before this id already reaches top_p
        drop[:, 0] = False
        x = x.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return torch.multinomial(x.softmax(dim=-1), 1, generator=generator).squeeze(1)


def _pad_text(
    text: Tensor | None, pos: Tensor | None, B: int, S: int, dim: int, like: Tensor
) -> tuple[Tensor, Tensor]:
    """Text `(B, S, dim)` and positions `(B, S)` padded to S slots (-1 = no embedding)."""
    out = torch.zeros(B, S, dim, dtype=like.dtype, device=like.device)
    out_pos = torch.full((B, S), -1, dtype=torch.long, device=like.device)
    if text is not None:
        n = text.shape[1]
        out[:, :n] = text.to(like.dtype)
        out_pos[:, :n] = pos[:, :n]
    return out, out_pos


@torch.no_grad()
def generate(
    model: VideoPoetLM,
    prompt: Tensor,
    plan: SequenceABC[Step],
    *,
    text: Tensor | None = None,
    text_positions: Tensor | None = None,
    negative_text: Tensor | None = None,
    negative_text_positions: Tensor | None = None,
    sampling: SamplingConfig | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    return_logits: bool = False,
) -> GenerationOutput:
    """Generate the `plan` after `prompt` `(B, P)` (the whole prompt is the bidirectional prefix).

    text `(B, S, text_dim)` goes to `text_positions` `(B, S)`; a negative prompt `(B, S', text_dim)` goes to
    `negative_text_positions` (default: the same slots). `use_cache=False` recomputes the whole sequence at
    every step (the reference the KV-cached path is tested against).
    """
    sampling = sampling or SamplingConfig()
    B, P = prompt.shape
    w = sampling.guidance_scale
    guided = w != 1 or negative_text is not None
    idx = prompt
    txt, txt_pos = text, text_positions
    if guided:  # rows [0, B): conditional; [B, 2B): unconditional / negative prompt
        S = max((t.shape[1] for t in (text, negative_text) if t is not None), default=0)
        dim = model.cfg.text_dim
        like = model.text_proj.weight
        neg_pos = negative_text_positions if negative_text_positions is not None else text_positions
        if S:
            c, cp = _pad_text(text, text_positions, B, S, dim, like)
            u, up = _pad_text(negative_text, neg_pos, B, S, dim, like)
            txt, txt_pos = torch.cat([c, u]), torch.cat([cp, up])
        idx = torch.cat([prompt, prompt])
    rows = idx.shape[0]
    total = P + sum(len(s) for s in plan)

    cache: KVCache | None = model.new_cache(rows, total) if use_cache else None
    seq = idx  # uncached: the whole sequence so far

    def step(new: Tensor, start: int) -> Tensor:
        """Logits `(rows, V)` after appending `new` `(rows, n)` at position `start`."""
        nonlocal seq
        if cache is not None:
            kw = dict(text=txt, text_positions=txt_pos) if start == 0 else {}
            return model(new, prefix_len=P, cache=cache, start_pos=start, last_only=True, **kw)[:, -1].float()
        seq = new if start == 0 else torch.cat([seq, new], dim=1)
        return model(seq, text=txt, text_positions=txt_pos, prefix_len=P, last_only=True)[:, -1].float()

    guide: Callable[[Tensor], Tensor] = (
        (lambda lg: lg[B:] + w * (lg[:B] - lg[B:])) if guided else (lambda lg: lg)
    )
    logits = step(idx, 0)
    pos = P
    out: list[Tensor] = []
    kept: list[Tensor] = []
    n_left = total - P
    for s in plan:
        if s.forced:
            new = torch.tensor(s.forced, device=idx.device).expand(rows, len(s.forced))
            out.append(new[:B])
            n_left -= new.shape[1]
            if n_left:
                logits = step(new, pos)
            pos += new.shape[1]
            continue
        for _ in range(s.count):
            g = guide(logits)  # (B, V)
            if return_logits:
                kept.append(g)
            tok = sample_logits(
                g,
                s.lo,
                s.hi,
                temperature=sampling.temperature,
                top_k=sampling.top_k,
                top_p=sampling.top_p,
                generator=generator,
            )  # (B,)
            out.append(tok[:, None])
            n_left -= 1
            new = tok.repeat(rows // B)[:, None]  # (rows, 1): the same token for the cond and uncond rows
            if n_left:
                logits = step(new, pos)
            pos += 1
    tokens = torch.cat(out, dim=1) if out else prompt.new_zeros(B, 0)
    return GenerationOutput(
        tokens=tokens, logits=torch.stack(kept, dim=1) if return_logits and kept else None
    )


def generate_sequence(
    model: VideoPoetLM,
    prompt: Sequence,
    *,
    text: Tensor | None = None,
    negative_text: Tensor | None = None,
    **kwargs,
) -> GenerationOutput:
    """`generate` for one `Sequence` prompt; text `(n, text_dim)` (n <= its text slots), negative_text likewise."""
    assert prompt.is_prompt or len(prompt) == prompt.prefix_len, (
        "pass a prompt: the builder's output .prompt()"
    )
    device = model.lm_head.weight.device
    pos = prompt.text_positions.to(device)[None]
    for name, t in (("text", text), ("negative_text", negative_text)):
        if t is not None and t.shape[0] > pos.shape[1]:
            raise ValueError(
                f"{name} has {t.shape[0]} embeddings but the prompt has {pos.shape[1]} text slots"
            )
    return generate(
        model,
        prompt.tokens[: prompt.prefix_len].to(device)[None],
        prompt.plan,
        text=None if text is None else text.to(device)[None],
        text_positions=pos if text is not None else None,
        negative_text=None if negative_text is None else negative_text.to(device)[None],
        negative_text_positions=pos if negative_text is not None else None,
        **kwargs,
    )
