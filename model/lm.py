"""The VideoPoet language model: a decoder-only prefix-LM transformer over the unified vocabulary.

    cfg = LMConfig.from_name("debug")                      # or "300M", "1B", "8B"; overrides as kwargs
    model = VideoPoetLM(cfg)
    out = model.loss(batch.tokens, batch.loss_mask, text=emb, text_positions=batch.text_positions,
                     prefix_len=batch.prefix_len)         # chunked CE; out.sums / out.counts per sequence
    logits = model(tokens, text=emb, text_positions=pos, prefix_len=p, last_only=True)

Architecture (nanoGPT-shaped, LLaMA-style blocks): token embedding; text-encoder embeddings projected by
one linear layer (`text_dim -> d_model`) and written over the `<text>` slots; pre-norm blocks of RMSNorm
-> multi-head attention with rotary position embeddings (RoPE) -> RMSNorm -> SwiGLU MLP; final RMSNorm;
an untied output head over the whole vocabulary. No biases except the text projection.

Attention mask (prefix LM): a token at position i may attend to j when `j <= i` or `j < prefix_len` -
the prefix (all conditioning, text included) is bidirectional, the outputs causal, and no prefix token
sees an output. No dense float T x T mask is built. Which path runs (`LMConfig.attn_impl`, per forward):

| prefix lengths in the batch | "sdpa" (default) | "flex" | "dense" |
|---|---|---|---|
| none / all 0 | SDPA `is_causal=True` | same as sdpa | bool mask |
| all equal (p) | split: SDPA over the p prefix queries x p prefix keys (no mask) and, for the other queries, causal SDPA over the whole sequence (its first p rows dropped) when queries and keys are the same positions (training, prefill); with a KV cache, SDPA of the other queries over all keys with a lower-right causal bias (`causal_lower_right`) | same as sdpa | bool mask |
| different | the split path per group of equal p (tasks have few distinct prefix lengths) | `flex_attention` with a block mask (compiled on CUDA; eager elsewhere, which materializes the scores: tests only) | bool mask |

Checked on torch 2.15 (CPU): `flex_attention` runs eagerly but warns that it is unfused and materializes
the scores; `torch.compile(flex_attention)` works on CPU but took ~45 s to compile for a tiny shape here,
so the default never needs compile: the split path is two plain SDPA calls that dispatch to the flash /
memory-efficient kernels on CUDA (the lower-right causal bias is supported natively there), and the
grouped path adds only an index copy of q/k/v per distinct prefix length. "flex" is worth it for a
compiled trainer whose batches mix many prefix lengths.
"dense" builds a `(B, 1, T, T)` bool mask and is the reference the others are tested against. With a KV
cache the same rule holds for queries starting at `start_pos` (prefill the whole prompt at once, then
decode; a single decoded query needs no mask at all).

Named sizes (`LMConfig.from_name`). The names count the transformer body (no embedding table, no output
head), as the paper's model sizes are usually read; with the 266,496-id vocabulary, embedding + head add
2 x 266,496 x d_model. Params and FLOPs computed by `python -m videopoet.model.lm` (text_dim 2048 = T5-XL,
debug: 384 = MiniLM, with the debug vocabulary of 1,408 ids):

| name | layers | d_model | heads | head dim | ffn (SwiGLU) | max seq | total params | without embeddings | FLOPs/token @ 2048 |
|---|---|---|---|---|---|---|---|---|---|
| debug | 2 | 64 | 4 | 16 | 192 | 512 | 0.31M | 0.13M | 4.48M |
| 300M | 24 | 1024 | 16 | 64 | 2816 | 5120 | 856.2M | 310.4M | 4.10G |
| 1B | 20 | 2048 | 16 | 128 | 5632 | 5120 | 2.123B | 1.032B | 10.47G |
| 8B | 40 | 4096 | 32 | 128 | 11008 | 5120 | 10.287B | 8.104B | 59.20G |

`flops_per_token(T) = 6 N + 12 L H Q T` (PaLM's MFU count; N = params minus the input embedding table, which
is a lookup, so the output head counts; L layers, H heads, Q head dim, T sequence length).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention.bias import causal_lower_right
from torch.utils.checkpoint import checkpoint

from videopoet.core.config import ConfigError, check, from_dict
from videopoet.model.vocab import Vocab


@dataclass(kw_only=True)
class LMConfig:
    """Shape and numerics of the VideoPoet LM. Saved beside the weights; loading is strict."""

    vocab_size: int = 266_496
    """Ids in the unified vocabulary (`Vocab.size`): 256 special + 2^18 visual + 4 x 1024 audio by default."""
    n_layer: int = 24
    """Transformer blocks."""
    n_head: int = 16
    """Attention heads; d_model / n_head is the head dimension (even, for RoPE)."""
    d_model: int = 1024
    """Residual stream width."""
    ffn_dim: int = 2816
    """Hidden width of the SwiGLU MLP (about 8/3 d_model, rounded to a multiple of 256)."""
    max_seq_len: int = 5120
    """Longest sequence the model is used with (the default KV-cache length; RoPE itself has no limit)."""
    text_dim: int = 2048
    """Width of the text-encoder embeddings projected into the model (T5-XL: 2048, MiniLM: 384)."""
    rope_theta: float = 10_000.0
    """RoPE base frequency."""
    norm_eps: float = 1e-5
    """Epsilon of the RMSNorms."""
    init_std: float = 0.02
    """Std of the normal init; the residual output projections use init_std / sqrt(2 n_layer)."""
    attn_impl: Literal["sdpa", "flex", "dense"] = "sdpa"
    """Prefix-LM attention path for batches with different prefix lengths (see the module docstring)."""
    tie_embeddings: bool = False
    """Share the token embedding with the output head."""

    def __post_init__(self) -> None:
        check(self.vocab_size > 0, "vocab_size", self.vocab_size, "> 0")
        check(self.n_layer >= 1, "n_layer", self.n_layer, ">= 1")
        check(self.n_head >= 1, "n_head", self.n_head, ">= 1")
        check(
            self.d_model % self.n_head == 0 and (self.d_model // self.n_head) % 2 == 0,
            "d_model",
            self.d_model,
            f"a multiple of n_head={self.n_head} with an even head dimension",
        )
        check(self.ffn_dim >= 1, "ffn_dim", self.ffn_dim, ">= 1")
        check(self.max_seq_len >= 2, "max_seq_len", self.max_seq_len, ">= 2")
        check(self.text_dim >= 1, "text_dim", self.text_dim, ">= 1")
        check(self.rope_theta > 0, "rope_theta", self.rope_theta, "> 0")
        check(self.norm_eps > 0, "norm_eps", self.norm_eps, "> 0")
        check(self.init_std > 0, "init_std", self.init_std, "> 0")
        check(self.attn_impl in ("sdpa", "flex", "dense"), "attn_impl", self.attn_impl, "sdpa, flex or dense")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @classmethod
    def from_name(cls, name: str, **overrides) -> LMConfig:
        """A named size (`debug`, `300M`, `1B`, `8B`) with optional field overrides."""
        if name not in LM_SIZES:
            raise ConfigError(f"unknown LM size {name!r}; known sizes: {', '.join(LM_SIZES)}")
        return from_dict(cls, {**LM_SIZES[name], **overrides})


LM_SIZES: dict[str, dict] = {
    # CPU tests and CI: trains on one sequence in seconds.
    "debug": dict(
        n_layer=2,
        n_head=4,
        d_model=64,
        ffn_dim=192,
        max_seq_len=512,
        text_dim=384,
        vocab_size=Vocab.debug().size,
    ),
    "300M": dict(n_layer=24, n_head=16, d_model=1024, ffn_dim=2816),
    "1B": dict(n_layer=20, n_head=16, d_model=2048, ffn_dim=5632),
    "8B": dict(n_layer=40, n_head=32, d_model=4096, ffn_dim=11008),
}


# ---------------------------------------------------------------------------------------------------------
# building blocks


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # In fp32: bf16 mean-of-squares over thousands of channels loses precision.
        return F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps).type_as(x)


def rope_cos_sin(positions: Tensor, head_dim: int, theta: float) -> tuple[Tensor, Tensor]:
    """cos, sin `(T, head_dim / 2)` in fp32 for integer `positions` `(T,)`."""
    inv_freq = 1.0 / theta ** (
        torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim
    )
    freqs = positions.float()[:, None] * inv_freq[None, :]  # (T, hs/2)
    return freqs.cos(), freqs.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate `x` `(B, nh, T, hs)`: channel i pairs with channel i + hs/2 (GPT-NeoX / LLaMA-HF convention)."""
    x1, x2 = x.float().chunk(2, dim=-1)  # (B, nh, T, hs/2) each
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).type_as(x)


@dataclass
class AttnPlan:
    """How one forward's attention applies the prefix-LM rule; built once and shared by every layer."""

    kind: Literal["causal", "split", "grouped", "flex", "dense"]
    q_start: int = 0
    prefix: int = 0
    groups: list[tuple[Tensor, int]] = dataclasses.field(default_factory=list)
    block_mask: object = None
    mask: Tensor | None = None


def plan_attention(
    prefix_len: int | Tensor | None, batch: int, q_len: int, q_start: int, impl: str, device: torch.device
) -> AttnPlan:
    """Pick the attention path for queries at positions `[q_start, q_start + q_len)` over keys `[0, q_start + q_len)`."""
    k_len = q_start + q_len
    if isinstance(prefix_len, Tensor):
        assert prefix_len.shape == (batch,), (
            f"prefix_len must be (B,) = ({batch},), got {tuple(prefix_len.shape)}"
        )
        values = prefix_len.tolist()
    else:
        values = [int(prefix_len or 0)] * batch
    assert all(0 <= p <= k_len for p in values), f"prefix lengths {values} outside 0..{k_len} keys"
    if impl == "dense":
        p = torch.tensor(values, device=device)
        qpos = torch.arange(q_start, k_len, device=device)
        kpos = torch.arange(k_len, device=device)
        mask = (kpos[None, None, :] <= qpos[None, :, None]) | (kpos[None, None, :] < p[:, None, None])
        return AttnPlan("dense", q_start=q_start, mask=mask[:, None])  # (B, 1, Tq, Tk) bool
    distinct = sorted(set(values))
    # A prefix ending at or before the first query (p <= q_start + 1: the last prefix token sees only
    # itself and earlier tokens anyway) leaves plain causal attention, e.g. every KV-cached decode step.
    if all(p <= q_start + 1 for p in distinct):
        return AttnPlan("causal", q_start=q_start)
    if len(distinct) == 1:
        return AttnPlan("split", q_start=q_start, prefix=distinct[0])
    if impl == "flex":
        from torch.nn.attention.flex_attention import create_block_mask

        p = torch.tensor(values, device=device)

        def prefix_lm(b, h, q_idx, kv_idx):
            return (kv_idx <= q_idx + q_start) | (kv_idx < p[b])

        bm = create_block_mask(prefix_lm, batch, None, q_len, k_len, device=device)
        return AttnPlan("flex", q_start=q_start, block_mask=bm)
    rows = torch.tensor(values, device=device)
    groups = [((rows == p).nonzero().squeeze(1), p) for p in distinct]
    return AttnPlan("grouped", q_start=q_start, groups=groups)


def _split_attention(q: Tensor, k: Tensor, v: Tensor, q_start: int, prefix: int) -> Tensor:
    """Prefix-LM attention for one prefix length, as at most two SDPA calls and no materialized mask.

    q `(B, nh, Tq, hs)` holds positions `[q_start, q_start + Tq)`, k/v `(B, nh, Tk, hs)` positions `[0, Tk)`.
    """
    Tq, Tk = q.shape[2], k.shape[2]
    if q_start == 0 and Tq == Tk and 0 < prefix < Tq:
        # Training / full prefill: a query after the prefix sees exactly the keys causal attention gives it,
        # so one causal flash call over the whole sequence serves them (its first `prefix` rows are
        # recomputed below bidirectionally; ~prefix/T extra work) - two top-left-causal or unmasked flash
        # calls, no lower-right bias (which torch.compile cannot trace without a graph break).
        full = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        pre = F.scaled_dot_product_attention(q[:, :, :prefix], k[:, :, :prefix], v[:, :, :prefix])
        return torch.cat([pre, full[:, :, prefix:]], dim=2)
    n_pre = min(max(prefix - q_start, 0), Tq)  # queries inside the prefix
    outs = []
    if n_pre:
        assert prefix <= Tk, f"prefix of {prefix} tokens but only {Tk} keys: prefill the whole prefix at once"
        outs.append(F.scaled_dot_product_attention(q[:, :, :n_pre], k[:, :, :prefix], v[:, :, :prefix]))
    n_rest = Tq - n_pre
    if n_rest:
        qr = q[:, :, n_pre:]
        if n_rest == 1:  # one query at the end: it sees every key
            outs.append(F.scaled_dot_product_attention(qr, k, v))
        elif n_rest == Tk:
            outs.append(F.scaled_dot_product_attention(qr, k, v, is_causal=True))
        else:  # query i (global q_start + n_pre + i) sees keys <= i + (Tk - n_rest): lower-right alignment
            outs.append(F.scaled_dot_product_attention(qr, k, v, attn_mask=causal_lower_right(n_rest, Tk)))
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)


_compiled_flex = None


def _flex(q: Tensor, k: Tensor, v: Tensor, block_mask) -> Tensor:
    global _compiled_flex
    from torch.nn.attention.flex_attention import flex_attention

    if q.is_cuda:  # flex_attention is only fast compiled; compile the kernel alone (as torchtitan does)
        if _compiled_flex is None:
            _compiled_flex = torch.compile(flex_attention)
        return _compiled_flex(q, k, v, block_mask=block_mask)
    return flex_attention(q, k, v, block_mask=block_mask)


def prefix_lm_attention(q: Tensor, k: Tensor, v: Tensor, plan: AttnPlan) -> Tensor:
    """`(B, nh, Tq, hs)` attention output of q over k/v `(B, nh, Tk, hs)` under `plan`."""
    if plan.kind == "causal":
        Tq, Tk = q.shape[2], k.shape[2]
        if Tq == 1:
            return F.scaled_dot_product_attention(q, k, v)
        if Tq == Tk:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(Tq, Tk))
    if plan.kind == "split":
        return _split_attention(q, k, v, plan.q_start, plan.prefix)
    if plan.kind == "grouped":
        y = torch.empty_like(q)
        for rows, p in plan.groups:
            y[rows] = _split_attention(q[rows], k[rows], v[rows], plan.q_start, p)
        return y
    if plan.kind == "flex":
        return _flex(q, k, v, plan.block_mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=plan.mask)


class KVCache:
    """Preallocated keys and values of every layer, `(B, nh, max_len, hs)` each."""

    def __init__(self, cfg: LMConfig, batch: int, max_len: int, device=None, dtype=torch.float32):
        shape = (batch, cfg.n_head, max_len, cfg.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.max_len = max_len

    def update(self, layer: int, k: Tensor, v: Tensor, start: int) -> tuple[Tensor, Tensor]:
        """Store k/v `(B, nh, T, hs)` at positions `[start, start + T)`; return all keys/values up to there."""
        end = start + k.shape[2]
        assert end <= self.max_len, f"KV cache of {self.max_len} positions is full (need {end})"
        self.k[layer][:, :, start:end] = k
        self.v[layer][:, :, start:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


class Attention(nn.Module):
    def __init__(self, cfg: LMConfig, layer: int):
        super().__init__()
        self.n_head, self.head_dim, self.layer = cfg.n_head, cfg.head_dim, layer
        self.wqkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.wo = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, plan: AttnPlan, cache: KVCache | None = None
    ) -> Tensor:
        B, T, C = x.shape  # (B, T, d)
        q, k, v = self.wqkv(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer, k, v, plan.q_start)  # (B, nh, start + T, hs)
        y = prefix_lm_attention(q, k, v, plan)  # (B, nh, T, hs)
        return self.wo(y.transpose(1, 2).reshape(B, T, C))


class SwiGLU(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.w_gate = nn.Linear(cfg.d_model, cfg.ffn_dim, bias=False)
        self.w_up = nn.Linear(cfg.d_model, cfg.ffn_dim, bias=False)
        self.w_down = nn.Linear(cfg.ffn_dim, cfg.d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))


class Block(nn.Module):
    def __init__(self, cfg: LMConfig, layer: int):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg, layer)
        self.ffn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.ffn = SwiGLU(cfg)

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, plan: AttnPlan, cache: KVCache | None = None
    ) -> Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, plan, cache)
        return x + self.ffn(self.ffn_norm(x))


@dataclass
class LMLoss:
    loss: Tensor
    """Scalar mean cross-entropy over all target tokens of the batch (what to backpropagate)."""
    sums: Tensor
    """`(B,)` fp32 summed cross-entropy of each sequence's targets (group by task for per-task losses)."""
    counts: Tensor
    """`(B,)` int64 target tokens per sequence."""


def _acc(x: Tensor) -> Tensor:
    """`x` in the softmax's dtype: fp32 for half types, as it is for fp32 / fp64."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _chunk_lse(logits: Tensor) -> Tensor:
    """Log-sum-exp (fp32 or wider) of each row of a `(N, Vc)` logits chunk."""
    return torch.logsumexp(_acc(logits), dim=-1)


def _chunk_grad(logits: Tensor, lse: Tensor, t_local: Tensor, g: Tensor) -> Tensor:
    """d loss / d logits of a `(N, Vc)` chunk: (softmax - one_hot(target)) x upstream grad, in the logits' dtype.
    `t_local` is each row's target index inside the chunk (out of range: the target is in another chunk)."""
    cols = torch.arange(logits.shape[1], device=logits.device)
    one_hot = (cols[None, :] == t_local[:, None]).to(lse.dtype)
    return ((torch.exp(_acc(logits) - lse[:, None]) - one_hot) * g[:, None]).to(logits.dtype)


def _chunk_grad_inplace(logits: Tensor, lse: Tensor, t_local: Tensor, g: Tensor) -> Tensor:
    """`_chunk_grad` for eager execution (CPU): in place on the freshly computed chunk, no temporaries."""
    p = _acc(logits)
    p = p.sub_(lse[:, None]) if p is logits else p.sub(lse[:, None])
    p.exp_()
    rows = ((t_local >= 0) & (t_local < p.shape[1])).nonzero().squeeze(1)
    p[rows, t_local[rows]] -= 1.0
    return p.mul_(g[:, None]).to(logits.dtype)


_FUSED: dict[str, object] = {}
_FUSED_FAILED: set[str] = set()


def _fused(name: str, fn, cuda: bool, eager=None):
    """`fn` compiled with Inductor on CUDA (one fused pass over a chunk instead of 4-5), `eager` (or `fn`)
    elsewhere and wherever compiling fails (a warning, then eager for the rest of the process)."""
    eager = eager or fn
    if not cuda:
        return eager
    if name not in _FUSED:
        compiled = torch.compile(fn)

        def run(*args):
            if name in _FUSED_FAILED:
                return eager(*args)
            try:
                # One graph per chunk width (at most two: the equal chunks and the remainder); token counts
                # (dim 0) go dynamic once a second one is seen. A symbolic width would make every element's row
                # index a 64-bit division at run time: the dynamic graph Dynamo made after seeing the second
                # width ran the gradient pass at a quarter of the memory bandwidth.
                torch._dynamo.mark_static(args[0], 1)
                return compiled(*args)
            except Exception as e:  # noqa: BLE001 - no Triton / compiler on this machine: stay correct, run eager
                import warnings

                msg = f"fused cross-entropy pass {name!r} could not be compiled ({e!r:.200}); running eager"
                warnings.warn(msg, stacklevel=2)
                _FUSED_FAILED.add(name)
                return eager(*args)

        _FUSED[name] = run
    return _FUSED[name]


class _LinearCrossEntropy(torch.autograd.Function):
    """Per-token cross-entropy of `h @ weight.T` without materializing `(N, V)` logits or their gradient.

    The vocabulary is cut into column chunks. Forward: each chunk's logits give a running log-sum-exp and the
    target's logit. Backward: each chunk's logits are recomputed, turned into their gradient in one fused
    pass, and give the chunk's rows of d weight (written once, no accumulation over chunks) and a term of
    d h (`N x d`, small). The matmuls run in the autocast dtype when autocast is on (weights cast once per
    call), softmax and loss in fp32. Same FLOPs as a checkpointed head, a fraction of the memory traffic.
    """

    @staticmethod
    def forward(
        ctx, h: Tensor, weight: Tensor, targets: Tensor, chunk_cols: int, keep_logits: bool
    ) -> Tensor:
        dev = h.device.type
        cdtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else h.dtype
        kept: list[Tensor | None] = []
        with torch.autocast(dev, enabled=False):
            x, w = h.to(cdtype), weight.to(cdtype)
            N, V = x.shape[0], w.shape[0]
            acc = torch.float64 if cdtype == torch.float64 else torch.float32
            lse = torch.full((N,), -math.inf, device=h.device, dtype=acc)
            tgt = torch.zeros(N, device=h.device, dtype=acc)
            lse_fn = _fused("lse", _chunk_lse, h.is_cuda)
            for v0 in range(0, V, chunk_cols):
                logits = x @ w[v0 : v0 + chunk_cols].T  # (N, Vc)
                lse = torch.logaddexp(lse, lse_fn(logits))
                t_local = targets - v0
                inside = (t_local >= 0) & (t_local < logits.shape[1])
                picked = logits.gather(1, t_local.clamp(0, logits.shape[1] - 1)[:, None]).squeeze(1)
                tgt = torch.where(inside, picked.to(acc), tgt)
                if keep_logits:
                    kept.append(logits)
        ctx.save_for_backward(x, w, targets, lse)
        ctx.chunk_cols, ctx.h_dtype, ctx.w_dtype = chunk_cols, h.dtype, weight.dtype
        ctx.kept = kept  # intermediates, not inputs or outputs; each is released once its backward is done
        return lse - tgt

    @staticmethod
    def backward(ctx, g: Tensor):
        x, w, targets, lse = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        dev = x.device.type
        grad_fn = _fused("grad", _chunk_grad, x.is_cuda, eager=_chunk_grad_inplace)
        dh = torch.zeros(x.shape, device=x.device, dtype=lse.dtype) if need_h else None
        dw = torch.empty(w.shape, device=w.device, dtype=ctx.w_dtype) if need_w else None
        g = g.to(lse.dtype).contiguous()
        with torch.autocast(dev, enabled=False):
            for i, v0 in enumerate(range(0, w.shape[0], ctx.chunk_cols)):
                wc = w[v0 : v0 + ctx.chunk_cols]
                if ctx.kept:
                    logits, ctx.kept[i] = ctx.kept[i], None
                else:
                    logits = x @ wc.T
                grad = grad_fn(logits, lse, targets - v0, g)  # (N, Vc) in the compute dtype
                del logits
                if need_h:
                    dh += grad @ wc
                if need_w:
                    dw[v0 : v0 + ctx.chunk_cols] = grad.T @ x
        ctx.kept = []
        return (dh.to(ctx.h_dtype) if need_h else None), dw, None, None, None


def chunked_cross_entropy(
    h: Tensor, weight: Tensor, targets: Tensor, chunk_size: int = 1024, keep_logits: bool = False
) -> Tensor:
    """Per-token cross-entropy `(N,)` (fp32; fp64 for fp64 inputs) of `h @ weight.T` `(N, V)` against `targets`.

    About `chunk_size x V` logits exist at once (as many as `chunk_size` tokens' full rows; chunks are rounded
    up to a multiple of 8 columns): the head runs
    over column chunks of the vocabulary (`_LinearCrossEntropy`), so neither the forward nor the backward
    holds the `N x V` logits (at V = 266,496 the fp32 logits of 6 x 1280 tokens alone are ~8 GB).

    `keep_logits=True` trades that memory for speed: the forward's logit chunks (all `N x V`, in the compute
    dtype) are kept for the backward instead of recomputed there, which saves one of the head's four
    matmuls (`2 N V d` FLOPs; ~7% of a 300M training step at 4 x 4096 tokens, whose bf16 logits take 8 GiB).
    Gradients are identical either way.
    """
    assert h.dim() == 2 and targets.shape == h.shape[:1], (h.shape, targets.shape)
    N, V = h.shape[0], weight.shape[0]
    if N == 0:
        return h.new_zeros(0, dtype=torch.float32)
    cols = max(1, min(V, (chunk_size * V) // N))
    if cols < V:  # equal chunks (one compiled width on CUDA, plus the remainder)
        cols = -(-V // -(-V // cols))
        # A multiple of 8 columns: a chunk's bf16 logits `(N, cols)` then have 16-byte aligned rows, which the
        # Hopper GEMM kernels (TMA) and vectorized elementwise passes need; at 26,650 columns (300M, 10,240
        # tokens) cuBLAS fell back to Ampere kernels and the head ran at ~210 TFLOP/s.
        cols = min(V, -(-cols // 8) * 8)
    return _LinearCrossEntropy.apply(h, weight, targets, cols, keep_logits)


class VideoPoetLM(nn.Module):
    """Decoder-only prefix LM over the unified vocabulary, with text embeddings written over `<text>` slots."""

    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.text_proj = nn.Linear(cfg.text_dim, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        self.gradient_checkpointing = False
        """Recompute each block in backward (set by the trainer; saves activation memory for ~1/3 more compute)."""
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = self.cfg.init_std
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                nn.init.ones_(p)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
            elif name.endswith(("attn.wo.weight", "ffn.w_down.weight")):
                nn.init.normal_(p, std=std / math.sqrt(2 * self.cfg.n_layer))
            else:
                nn.init.normal_(p, std=std)

    # -- sizes -----------------------------------------------------------------------------------------------
    def num_params(self, exclude_embedding: bool = False) -> int:
        """All parameters, or without the token-embedding table and the output head (the transformer body)."""
        n = sum(p.numel() for p in self.parameters())
        if exclude_embedding:
            n -= self.tok_emb.weight.numel()
            if not self.cfg.tie_embeddings:
                n -= self.lm_head.weight.numel()
        return n

    def flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs per token, `6 N + 12 L H Q T` (N without the input embedding table: a lookup)."""
        c = self.cfg
        n = sum(p.numel() for p in self.parameters())
        if not c.tie_embeddings:
            n -= self.tok_emb.weight.numel()
        return 6 * n + 12 * c.n_layer * c.n_head * c.head_dim * seq_len

    def new_cache(self, batch: int, max_len: int | None = None, dtype: torch.dtype | None = None) -> KVCache:
        """An empty KV cache for `batch` rows of up to `max_len` positions (dtype: that of the keys, e.g. under autocast)."""
        p = self.lm_head.weight
        return KVCache(
            self.cfg, batch, max_len or self.cfg.max_seq_len, device=p.device, dtype=dtype or p.dtype
        )

    # -- forward ---------------------------------------------------------------------------------------------
    def embed(
        self, idx: Tensor, text: Tensor | None, text_positions: Tensor | None, start_pos: int = 0
    ) -> Tensor:
        """Token embeddings `(B, T, d)` with projected text embeddings written at `text_positions`.

        text `(B, S, text_dim)`, text_positions `(B, S)` absolute positions (-1: slot gets nothing; positions
        outside `[start_pos, start_pos + T)` are skipped, so a KV-cached decode step ignores the text).
        """
        x = self.tok_emb(idx)  # (B, T, d)
        if text is None:
            return x
        if text_positions is None:
            raise ValueError("text embeddings need text_positions (the <text> slots they go to)")
        B, T = idx.shape
        S = text.shape[1]
        assert text.shape[0] == B and text.shape[2] == self.cfg.text_dim, (
            tuple(text.shape),
            B,
            self.cfg.text_dim,
        )
        if text_positions.shape[1] < S:
            raise ValueError(f"{S} text embeddings per row but only {text_positions.shape[1]} text_positions")
        pos = text_positions[:, :S] - start_pos  # (B, S)
        valid = (text_positions[:, :S] >= 0) & (pos >= 0) & (pos < T)
        b, s = valid.nonzero(as_tuple=True)
        if b.numel() == 0:
            return x
        proj = self.text_proj(text[b, s].to(self.text_proj.weight.dtype))  # (N, d)
        return x.index_put((b, pos[b, s]), proj.to(x.dtype))

    def hidden(
        self,
        idx: Tensor,
        *,
        text: Tensor | None = None,
        text_positions: Tensor | None = None,
        prefix_len: int | Tensor | None = None,
        cache: KVCache | None = None,
        start_pos: int = 0,
    ) -> Tensor:
        """Final-norm hidden states `(B, T, d)` of tokens at positions `[start_pos, start_pos + T)`."""
        B, T = idx.shape
        assert start_pos == 0 or cache is not None, (
            "start_pos > 0 needs the KV cache of the earlier positions"
        )
        x = self.embed(idx, text, text_positions, start_pos)  # (B, T, d)
        cos, sin = rope_cos_sin(
            torch.arange(start_pos, start_pos + T, device=idx.device), self.cfg.head_dim, self.cfg.rope_theta
        )
        plan = plan_attention(prefix_len, B, T, start_pos, self.cfg.attn_impl, idx.device)
        ckpt = self.gradient_checkpointing and cache is None and torch.is_grad_enabled()
        for block in self.blocks:
            if ckpt:
                x = checkpoint(block, x, cos, sin, plan, None, use_reentrant=False)
            else:
                x = block(x, cos, sin, plan, cache)
        return self.norm(x)

    def forward(
        self,
        idx: Tensor,
        *,
        text: Tensor | None = None,
        text_positions: Tensor | None = None,
        prefix_len: int | Tensor | None = None,
        cache: KVCache | None = None,
        start_pos: int = 0,
        last_only: bool = False,
    ) -> Tensor:
        """Logits `(B, T, V)` (or `(B, 1, V)` with `last_only`). For training use `loss`, which never holds them all."""
        h = self.hidden(
            idx,
            text=text,
            text_positions=text_positions,
            prefix_len=prefix_len,
            cache=cache,
            start_pos=start_pos,
        )
        return self.lm_head(h[:, -1:] if last_only else h)

    def loss(
        self,
        idx: Tensor,
        loss_mask: Tensor,
        *,
        text: Tensor | None = None,
        text_positions: Tensor | None = None,
        prefix_len: int | Tensor | None = None,
        chunk_size: int = 1024,
        keep_logits: bool = False,
    ) -> LMLoss:
        """Next-token cross-entropy on the tokens where `loss_mask` `(B, T)` is True (the outputs), chunked.

        Position t predicts token t + 1; only positions whose next token is a target go through the output
        head, `chunk_size` at a time (see `chunked_cross_entropy`, also for `keep_logits`).
        """
        B, T = idx.shape
        h = self.hidden(idx, text=text, text_positions=text_positions, prefix_len=prefix_len)  # (B, T, d)
        sel = loss_mask[:, 1:].bool()  # (B, T-1): is token t+1 a target
        per_token = chunked_cross_entropy(
            h[:, :-1][sel], self.lm_head.weight, idx[:, 1:][sel], chunk_size, keep_logits
        )  # (N,)
        rows = torch.arange(B, device=idx.device)[:, None].expand(B, T - 1)[sel]  # (N,)
        sums = torch.zeros(B, device=idx.device, dtype=torch.float32).index_add_(0, rows, per_token.detach())
        counts = sel.sum(1)
        loss = per_token.sum() / counts.sum().clamp(min=1)
        return LMLoss(loss=loss, sums=sums, counts=counts)


def size_table(text_dim: int | None = None, seq_len: int = 2048) -> str:
    """The Markdown size table of the module docstring, computed on the meta device (no memory)."""

    def fmt(n: float) -> str:
        return f"{n / 1e9:.3f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}K"

    rows = [
        "| name | layers | d_model | heads | head dim | ffn (SwiGLU) | max seq | total params | without embeddings | FLOPs/token @ 2048 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in LM_SIZES:
        cfg = LMConfig.from_name(name, **({"text_dim": text_dim} if text_dim else {}))
        with torch.device("meta"):
            m = VideoPoetLM(cfg)
        total, body, flops = m.num_params(), m.num_params(exclude_embedding=True), m.flops_per_token(seq_len)
        tot = f"{total / 1e6:.2f}M" if total < 1e7 else fmt(total)
        bod = f"{body / 1e6:.2f}M" if body < 1e7 else fmt(body)
        fl = f"{flops / 1e6:.2f}M" if flops < 1e9 else f"{flops / 1e9:.2f}G"
        rows.append(
            f"| {name} | {cfg.n_layer} | {cfg.d_model} | {cfg.n_head} | {cfg.head_dim} | {cfg.ffn_dim} | "
            f"{cfg.max_seq_len} | {tot} | {bod} | {fl} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":  # python -m videopoet.model.lm  -> the size table
    print(size_table())
