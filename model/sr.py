"""The VideoPoet super-resolution transformer: non-autoregressive, in MAGVIT-v2 token space, windowed attention.

    cfg = SRConfig.from_name("debug")                  # or "small", "base"; overrides as kwargs
    model = SRTransformer(cfg)
    out = model.loss(hr, mask, lr, text=emb, text_mask=valid, lr_keep=keep_lr, text_keep=keep_text)
    logits = model(hr, mask, lr, text=emb, text_mask=valid)   # (B, T, H, W, k, 2^(K/k))

`hr` `(B, T, H, W)` are the high-resolution MAGVIT-v2 codes (the values at `mask`ed positions are never
read: those positions get the mask embedding), `lr` `(B, T, H/s, W/s)` the low-resolution codes of the same
window (s = `scale`), `text` `(B, S, text_dim)` caption embeddings with `text_mask` `(B, S)` marking real
ones. `lr_keep` / `text_keep` `(B,)` drop a condition per sample (classifier-free guidance): a dropped LR
condition is a learned null embedding at every LR position, a dropped caption leaves only the learned null
text token to attend to (it is always there, so text cross-attention never has zero keys).

Architecture (VideoPoet section 3.3 / appendix A.5.2):
- Input: each HR code is split into k factors of K/k bits (token factorization, k = 2: 2^18 -> 2 x 512) and
  embedded as the sum of the factors' embeddings; masked positions get a learned mask embedding instead.
  The LR codes are embedded the same way (own tables). Beyond the paper, the LR embedding is also added to
  the HR input, repeated over each s x s block with a learned embedding of the position inside the block
  (`lr_skip`): every HR token starts from what the LR token at its place says, which speeds up training a lot.
- Blocks of 3 layers; layer i of a block attends inside local windows along one axis: spatial-vertical
  (default window (1, 56, 4) in (T, H, W) tokens), spatial-horizontal (1, 8, 32), temporal (5, 8, 8) - the
  paper's windows for a 2x stage on a (5, 56, 32) grid. Each layer: RMSNorm -> windowed self-attention;
  RMSNorm -> cross-attention from each HR window to the LR window at the same place (the window divided by
  s spatially, so the two window grids are isomorphic); RMSNorm -> SwiGLU MLP. Each block starts with
  RMSNorm -> cross-attention to the projected text embeddings (plus the null text token).
- Positions: 3D rotary embeddings (RoPE; head-dim pairs split between t, h, w), relative to each window
  (rotary scores only depend on offsets, so every window shares one table); an LR token sits at the centre
  of its s x s block in HR coordinates. Text has no positions.
- Output: RMSNorm -> one linear layer to k x 2^(K/k) logits (k factorized heads). The loss is the
  cross-entropy of the masked positions, summed over the factors (= -log p of the whole code).

Window extents (`window_grid`): per axis, the largest divisor of the grid extent not above the configured
size (spatially also a multiple of s), so any grid works; on the (5, 56, 32) grid the paper's windows are
used as they are, on (5, 32, 32) the vertical window becomes (1, 32, 4).

Attention paths (`SRConfig.attn_impl`): "window" (default) cuts the grid into windows with one reshape and
runs plain SDPA per window batch (`(B x windows, heads, window tokens, head dim)`, no mask: flash / memory-
efficient kernels on CUDA). "dense" attends over the whole grid with a `(N, N)` boolean same-window mask and
absolute RoPE positions: the reference the windowed path is tested against. Windows as large as the grid
give full attention (the speed baseline in benchmarks/sr_attention.py).

Named sizes (`python -m videopoet.model.sr` prints this table; text_dim 2048 = T5-XL, debug 384 = MiniLM;
K = 18 visual bits, debug 10; FLOPs on the (5, 56, 32) grid with 64 text tokens):

| name | blocks (layers) | d_model | heads | head dim | ffn (SwiGLU) | params | without embeddings | FLOPs/token |
|---|---|---|---|---|---|---|---|---|
| debug | 1 (3) | 64 | 4 | 16 | 192 | 0.26M | 0.25M | 2.35M |
| small | 4 (12) | 512 | 8 | 64 | 1408 | 57.96M | 56.91M | 367.62M |
| base | 8 (24) | 768 | 12 | 64 | 2048 | 249.37M | 247.79M | 1.57G |
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from videopoet.core.config import ConfigError, check, from_dict
from videopoet.model.lm import RMSNorm, SwiGLU, apply_rope

Grid = tuple[int, int, int]
AXES = ("vertical", "horizontal", "temporal")
"""Window kind of layer i of every block, in order."""


@dataclass(kw_only=True)
class SRConfig:
    """Shape and numerics of one super-resolution stage. Saved beside the weights; loading is strict."""

    visual_bits: int = 18
    """K: bits per MAGVIT-v2 code (the tokenizer's `codebook_bits`); HR and LR codes share the tokenizer."""
    factors: int = 2
    """k: each code is predicted and embedded as k factors of K/k bits (2: 2^18 -> 2 x 512-way heads)."""
    scale: int = 2
    """Spatial upsampling factor of the stage: the LR grid is (T, H/scale, W/scale)."""
    n_block: int = 8
    """Blocks of 3 layers (vertical, horizontal, temporal windows)."""
    n_head: int = 12
    """Attention heads; d_model / n_head is the head dimension (even, for RoPE)."""
    d_model: int = 768
    """Residual stream width."""
    ffn_dim: int = 2048
    """Hidden width of the SwiGLU MLP."""
    text_dim: int = 2048
    """Width of the caption embeddings (T5-XL: 2048, MiniLM: 384)."""
    window_vertical: tuple[int, int, int] = (1, 56, 4)
    """(T, H, W) tokens of the spatial-vertical self-attention windows (paper, 2x stage on (5, 56, 32))."""
    window_horizontal: tuple[int, int, int] = (1, 8, 32)
    """(T, H, W) tokens of the spatial-horizontal windows."""
    window_temporal: tuple[int, int, int] = (5, 8, 8)
    """(T, H, W) tokens of the temporal windows."""
    lr_skip: bool = True
    """Add the LR embedding (repeated over each scale x scale block, plus a learned in-block position) to the HR input."""
    rope_theta: float = 10_000.0
    """RoPE base frequency."""
    norm_eps: float = 1e-5
    """Epsilon of the RMSNorms."""
    init_std: float = 0.02
    """Std of the normal init; residual output projections use init_std / sqrt(residual branches)."""
    attn_impl: Literal["window", "dense"] = "window"
    """window: SDPA per batch of windows; dense: whole-grid SDPA under a same-window mask (the reference)."""
    residual_dtype: Literal["autocast", "float32"] = "autocast"
    """Dtype of the residual stream under autocast: "autocast" keeps it in the autocast dtype (bf16; Megatron's
    default), which halves the memory traffic of every norm, residual add and window reshape - most of the
    step's non-matmul time on a GPU; "float32" keeps it in fp32. Without autocast it is the weights' dtype."""

    def __post_init__(self) -> None:
        check(1 <= self.visual_bits <= 30, "visual_bits", self.visual_bits, "in [1, 30]")
        check(
            self.factors >= 1 and self.visual_bits % self.factors == 0,
            "factors",
            self.factors,
            f">= 1 and dividing visual_bits={self.visual_bits}",
        )
        check(self.scale >= 1, "scale", self.scale, ">= 1")
        check(self.n_block >= 1, "n_block", self.n_block, ">= 1")
        check(self.n_head >= 1, "n_head", self.n_head, ">= 1")
        check(
            self.d_model % self.n_head == 0 and (self.d_model // self.n_head) % 2 == 0,
            "d_model",
            self.d_model,
            f"a multiple of n_head={self.n_head} with an even head dimension",
        )
        check(self.head_dim >= 6, "d_model", self.d_model, "a head dimension of at least 6 (3D RoPE)")
        check(self.ffn_dim >= 1, "ffn_dim", self.ffn_dim, ">= 1")
        check(self.text_dim >= 1, "text_dim", self.text_dim, ">= 1")
        for name in AXES:
            w = getattr(self, f"window_{name}")
            check(len(w) == 3 and all(v >= 1 for v in w), f"window_{name}", w, "three sizes >= 1 (T, H, W)")
        check(self.rope_theta > 0, "rope_theta", self.rope_theta, "> 0")
        check(self.norm_eps > 0, "norm_eps", self.norm_eps, "> 0")
        check(self.init_std > 0, "init_std", self.init_std, "> 0")
        check(self.attn_impl in ("window", "dense"), "attn_impl", self.attn_impl, "window or dense")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def factor_bits(self) -> int:
        return self.visual_bits // self.factors

    @property
    def factor_size(self) -> int:
        """Classes of one factorized head (2^(K/k))."""
        return 2**self.factor_bits

    @property
    def n_layer(self) -> int:
        return 3 * self.n_block

    def windows(self) -> tuple[Grid, Grid, Grid]:
        return self.window_vertical, self.window_horizontal, self.window_temporal

    @classmethod
    def from_name(cls, name: str, **overrides) -> SRConfig:
        """A named size (`debug`, `small`, `base`) with optional field overrides."""
        if name not in SR_SIZES:
            raise ConfigError(f"unknown SR size {name!r}; known sizes: {', '.join(SR_SIZES)}")
        return from_dict(cls, {**SR_SIZES[name], **overrides})


SR_SIZES: dict[str, dict] = {
    # CPU tests and CI; the debug vocabulary's 10-bit codes (2 x 32-way heads).
    "debug": dict(n_block=1, n_head=4, d_model=64, ffn_dim=192, text_dim=384, visual_bits=10),
    "small": dict(n_block=4, n_head=8, d_model=512, ffn_dim=1408),
    "base": dict(n_block=8, n_head=12, d_model=768, ffn_dim=2048),
}


# ---------------------------------------------------------------------------------------------------------
# token factorization


def factorize(codes: Tensor, bits: int, factors: int) -> Tensor:
    """Codes `(...)` in [0, 2^bits) -> `(..., factors)` factors of bits/factors bits each, least significant first.

    With K = 18, k = 2 the factors are the low and the high 9 bits: MAGVIT-v2's LFQ entropy groups.
    """
    b = bits // factors
    shifts = torch.arange(factors, device=codes.device, dtype=torch.int64) * b
    return (codes.long()[..., None] >> shifts) & (2**b - 1)


def unfactorize(f: Tensor, bits: int) -> Tensor:
    """Inverse of `factorize`: `(..., factors)` -> codes `(...)`."""
    factors = f.shape[-1]
    b = bits // factors
    shifts = torch.arange(factors, device=f.device, dtype=torch.int64) * b
    return (f.long() << shifts).sum(-1)


class FactorizedEmbedding(nn.Module):
    """Code -> sum of its k factors' embeddings (k tables of 2^(K/k) rows, stored as one of k x 2^(K/k))."""

    def __init__(self, bits: int, factors: int, dim: int):
        super().__init__()
        self.bits, self.factors, self.size = bits, factors, 2 ** (bits // factors)
        self.weight_table = nn.Embedding(factors * self.size, dim)

    def forward(self, codes: Tensor) -> Tensor:
        f = factorize(codes, self.bits, self.factors)  # (..., k)
        f = f + torch.arange(self.factors, device=f.device) * self.size
        return self.weight_table(f).sum(-2)  # (..., d)


# ---------------------------------------------------------------------------------------------------------
# windows and positions


def _divisor_at_most(n: int, most: int, multiple_of: int = 1) -> int:
    """The largest divisor of `n` that is <= `most` and a multiple of `multiple_of` (n itself if most >= n)."""
    if most >= n:
        return n
    for d in range(min(most, n), 0, -1):
        if n % d == 0 and d % multiple_of == 0:
            return d
    return multiple_of


def window_grid(cfg: SRConfig, grid: Grid) -> list[tuple[Grid, Grid]]:
    """(HR window, LR window) of each layer kind for an HR token grid (see the module docstring)."""
    T, H, W = grid
    s = cfg.scale
    if H % s or W % s:
        raise ValueError(f"HR token grid {grid} is not a multiple of the SR scale {s} spatially")
    out = []
    for wt, wh, ww in cfg.windows():
        hr = (_divisor_at_most(T, wt), _divisor_at_most(H, wh, s), _divisor_at_most(W, ww, s))
        out.append((hr, (hr[0], hr[1] // s, hr[2] // s)))
    return out


def to_windows(x: Tensor, window: Grid) -> Tensor:
    """`(B, T, H, W, C)` -> `(B x windows, wt x wh x ww, C)`: each row one window, tokens in (t, h, w) order."""
    wt, wh, ww = window
    return rearrange(x, "b (nt wt) (nh wh) (nw ww) c -> (b nt nh nw) (wt wh ww) c", wt=wt, wh=wh, ww=ww)


def from_windows(x: Tensor, window: Grid, grid: Grid) -> Tensor:
    """Inverse of `to_windows` for a `grid` = (T, H, W)."""
    (wt, wh, ww), (T, H, W) = window, grid
    return rearrange(
        x,
        "(b nt nh nw) (wt wh ww) c -> b (nt wt) (nh wh) (nw ww) c",
        nt=T // wt,
        nh=H // wh,
        nw=W // ww,
        wt=wt,
        wh=wh,
        ww=ww,
    )


def window_ids(grid: Grid, window: Grid, device=None) -> Tensor:
    """`(T x H x W,)` index of the window each token of `grid` (in (t, h, w) order) belongs to."""
    (T, H, W), (wt, wh, ww) = grid, window
    t = torch.arange(T, device=device)[:, None, None] // wt
    h = torch.arange(H, device=device)[None, :, None] // wh
    w = torch.arange(W, device=device)[None, None, :] // ww
    return ((t * (H // wh) + h) * (W // ww) + w).reshape(-1)


def window_mask(q_grid: Grid, q_window: Grid, k_grid: Grid, k_window: Grid, device=None) -> Tensor:
    """`(Nq, Nk)` bool: query token i may attend to key token j (same window index): what windowing computes."""
    return window_ids(q_grid, q_window, device)[:, None] == window_ids(k_grid, k_window, device)[None, :]


def grid_positions(grid: Grid, scale: int = 1, device=None) -> Tensor:
    """`(T x H x W, 3)` float (t, h, w) positions of a grid's tokens in the coordinates of a `scale`x finer grid
    (a coarse token sits at the centre of the block it covers)."""
    T, H, W = grid
    t, h, w = torch.meshgrid(
        torch.arange(T, device=device, dtype=torch.float32),
        torch.arange(H, device=device, dtype=torch.float32) * scale + (scale - 1) / 2,
        torch.arange(W, device=device, dtype=torch.float32) * scale + (scale - 1) / 2,
        indexing="ij",
    )
    return torch.stack([t, h, w], dim=-1).reshape(-1, 3)


def rope_3d(positions: Tensor, head_dim: int, theta: float) -> tuple[Tensor, Tensor]:
    """cos, sin `(N, head_dim / 2)` for `(N, 3)` (t, h, w) positions: the head-dim pairs are split between the
    axes (h and w 3/8 each, t the rest), each axis with its own RoPE frequencies. Use with `lm.apply_rope`."""
    n = head_dim // 2
    nh = nw = (3 * n) // 8
    parts = []
    for axis, pairs in ((0, n - nh - nw), (1, nh), (2, nw)):
        inv = 1.0 / theta ** (torch.arange(pairs, device=positions.device, dtype=torch.float32) / pairs)
        parts.append(positions[:, axis : axis + 1].float() * inv[None, :])
    freqs = torch.cat(parts, dim=1)  # (N, n)
    return freqs.cos(), freqs.sin()


@dataclass
class LayerGeometry:
    """How one layer kind lays out and attends over one grid (built once per forward, shared by all blocks)."""

    grid: Grid
    lr_grid: Grid
    window: Grid | None
    """HR window (None: the dense path over the whole grid)."""
    lr_window: Grid | None
    q_rope: tuple[Tensor, Tensor]
    """cos, sin of the HR tokens of a window (or of the grid)."""
    k_rope: tuple[Tensor, Tensor]
    """cos, sin of the LR tokens of a window (or of the grid), in HR coordinates."""
    self_mask: Tensor | None = None
    cross_mask: Tensor | None = None

    def split(self, x: Tensor, lr: Tensor) -> tuple[Tensor, Tensor]:
        """HR `(B, T, H, W, C)`, LR `(B, T, h, w, C)` -> the attention layout `(B', L, C)`, `(B', L_lr, C)`."""
        if self.window is None:
            return x.flatten(1, 3), lr.flatten(1, 3)
        return to_windows(x, self.window), to_windows(lr, self.lr_window)

    def merge(self, x: Tensor) -> Tensor:
        """The attention layout of the HR tokens -> `(B, T, H, W, C)`."""
        if self.window is None:
            return x.unflatten(1, self.grid)
        return from_windows(x, self.window, self.grid)


def build_geometry(cfg: SRConfig, grid: Grid, device) -> list[LayerGeometry]:
    s = cfg.scale
    lr_grid = (grid[0], grid[1] // s, grid[2] // s)
    out = []
    for hr_w, lr_w in window_grid(cfg, grid):
        if cfg.attn_impl == "dense":
            q_pos, k_pos = grid_positions(grid, 1, device), grid_positions(lr_grid, s, device)
            masks = dict(
                self_mask=window_mask(grid, hr_w, grid, hr_w, device),
                cross_mask=window_mask(grid, hr_w, lr_grid, lr_w, device),
            )
            windows = (None, None)
        else:  # RoPE is relative: positions inside one window serve every window
            q_pos, k_pos = grid_positions(hr_w, 1, device), grid_positions(lr_w, s, device)
            masks, windows = {}, (hr_w, lr_w)
        out.append(
            LayerGeometry(
                grid=grid,
                lr_grid=lr_grid,
                window=windows[0],
                lr_window=windows[1],
                q_rope=rope_3d(q_pos, cfg.head_dim, cfg.rope_theta),
                k_rope=rope_3d(k_pos, cfg.head_dim, cfg.rope_theta),
                **masks,
            )
        )
    return out


# ---------------------------------------------------------------------------------------------------------
# layers


def _heads(x: Tensor, n_head: int) -> Tensor:
    return rearrange(x, "b l (h d) -> b h l d", h=n_head)  # (B', nh, L, hs)


class SelfAttention(nn.Module):
    def __init__(self, cfg: SRConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.wqkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.wo = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x: Tensor, geo: LayerGeometry) -> Tensor:
        q, k, v = (_heads(t, self.n_head) for t in self.wqkv(x).chunk(3, dim=-1))  # (B', nh, L, hs)
        q, k = apply_rope(q, *geo.q_rope), apply_rope(k, *geo.q_rope)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=geo.self_mask)
        return self.wo(rearrange(y, "b h l d -> b l (h d)"))


class CrossAttention(nn.Module):
    """Queries from the HR tokens; keys and values from a context (LR tokens of the same window, or text)."""

    def __init__(self, cfg: SRConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.wq = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.wkv = nn.Linear(cfg.d_model, 2 * cfg.d_model, bias=False)
        self.wo = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(
        self,
        x: Tensor,
        ctx: Tensor,
        mask: Tensor | None = None,
        q_rope: tuple[Tensor, Tensor] | None = None,
        k_rope: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        q = _heads(self.wq(x), self.n_head)  # (B', nh, L, hs)
        k, v = (_heads(t, self.n_head) for t in self.wkv(ctx).chunk(2, dim=-1))  # (B', nh, L_ctx, hs)
        if q_rope is not None:
            q, k = apply_rope(q, *q_rope), apply_rope(k, *k_rope)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.wo(rearrange(y, "b h l d -> b l (h d)"))


class SRLayer(nn.Module):
    """Windowed self-attention along one axis, windowed cross-attention to the LR tokens, SwiGLU MLP."""

    def __init__(self, cfg: SRConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = SelfAttention(cfg)
        self.lr_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lr_attn = CrossAttention(cfg)
        self.ffn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.ffn = SwiGLU(cfg)

    def forward(self, x: Tensor, lr: Tensor, geo: LayerGeometry) -> Tensor:
        xs, ls = geo.split(x, lr)  # (B', L, d), (B', L_lr, d)
        xs = xs + self.attn(self.attn_norm(xs), geo)
        xs = xs + self.lr_attn(self.lr_norm(xs), ls, geo.cross_mask, geo.q_rope, geo.k_rope)
        xs = xs + self.ffn(self.ffn_norm(xs))
        return geo.merge(xs)


class SRBlock(nn.Module):
    """Cross-attention to the text, then one layer per window kind (vertical, horizontal, temporal)."""

    def __init__(self, cfg: SRConfig):
        super().__init__()
        self.text_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.text_attn = CrossAttention(cfg)
        self.layers = nn.ModuleList(SRLayer(cfg) for _ in AXES)

    def forward(
        self, x: Tensor, lr: Tensor, text: Tensor, text_mask: Tensor, geometry: list[LayerGeometry]
    ) -> Tensor:
        flat = x.flatten(1, 3)  # (B, N, d)
        flat = flat + self.text_attn(self.text_norm(flat), text, text_mask)
        x = flat.view_as(x)
        for layer, geo in zip(self.layers, geometry):
            x = layer(x, lr, geo)
        return x


@dataclass
class SRLoss:
    loss: Tensor
    """Scalar mean over the masked tokens of the batch of the cross-entropy summed over the factors."""
    sums: Tensor
    """`(B,)` fp32 summed cross-entropy of each sample's masked tokens."""
    counts: Tensor
    """`(B,)` int64 masked tokens per sample."""
    correct: Tensor
    """`(B,)` int64 masked tokens whose code (every factor) the argmax predicts."""


class SRTransformer(nn.Module):
    """One super-resolution stage: LR codes (+ caption) -> logits of the HR codes at the masked positions."""

    def __init__(self, cfg: SRConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.hr_emb = FactorizedEmbedding(cfg.visual_bits, cfg.factors, d)
        self.lr_emb = FactorizedEmbedding(cfg.visual_bits, cfg.factors, d)
        # <mask>, LR null (dropped LR condition), text null (always attended; all a dropped caption leaves)
        self.special = nn.Embedding(3, d)
        # only when used: a parameter outside the backward keeps a stale gradient under ZeRO-3
        self.lr_phase = nn.Embedding(cfg.scale**2, d) if cfg.lr_skip else None
        self.lr_norm = RMSNorm(d, cfg.norm_eps)
        self.text_proj = nn.Linear(cfg.text_dim, d)
        self.blocks = nn.ModuleList(SRBlock(cfg) for _ in range(cfg.n_block))
        self.norm = RMSNorm(d, cfg.norm_eps)
        self.head = nn.Linear(d, cfg.factors * cfg.factor_size, bias=False)
        self.gradient_checkpointing = False
        """Recompute each block in backward (set by the trainer)."""
        self._geometry: dict = {}
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = self.cfg.init_std
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                nn.init.ones_(p)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
            elif name.endswith(("wo.weight", "ffn.w_down.weight")):
                # 3 residual branches per layer (self, LR, MLP) and 1 per block (text)
                nn.init.normal_(p, std=std / math.sqrt(3 * self.cfg.n_layer + self.cfg.n_block))
            else:
                nn.init.normal_(p, std=std)

    # -- sizes -----------------------------------------------------------------------------------------------
    def num_params(self, exclude_embedding: bool = False) -> int:
        """All parameters, or without the code / special embedding tables (lookups)."""
        n = sum(p.numel() for p in self.parameters())
        if exclude_embedding:
            for m in (self.hr_emb, self.lr_emb, self.special, self.lr_phase):
                n -= sum(p.numel() for p in m.parameters()) if m is not None else 0
        return n

    def flops_per_token(self, grid: Grid, text_len: int = 64) -> int:
        """Training FLOPs per HR token: 6 N (no embedding lookups) + 12 d x (keys each query attends) per layer."""
        c = self.cfg
        keys = sum(
            math.prod(hr) + math.prod(lr) for hr, lr in window_grid(c, grid)
        ) * c.n_block + c.n_block * (text_len + 1)
        n = self.num_params(exclude_embedding=True)
        return 6 * n + 12 * c.d_model * keys

    def geometry(self, grid: Grid, device) -> list[LayerGeometry]:
        key = (grid, str(device), self.cfg.attn_impl)
        if key not in self._geometry:
            self._geometry[key] = build_geometry(self.cfg, grid, device)
        return self._geometry[key]

    # -- forward ---------------------------------------------------------------------------------------------
    def _text_context(
        self, text: Tensor | None, text_mask: Tensor | None, text_keep: Tensor | None, B: int, null: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Keys of the text cross-attention `(B, 1 + S, d)` (the null token first) and their mask `(B, 1, 1, 1 + S)`."""
        dev = null.device
        if text is None:  # still through the projection, so every parameter takes part in every backward
            text = torch.zeros(B, 1, self.cfg.text_dim, device=dev)
            text_mask = torch.zeros(B, 1, dtype=torch.bool, device=dev)
        assert text.shape[0] == B and text.shape[2] == self.cfg.text_dim, (tuple(text.shape), B)
        valid = torch.ones(text.shape[:2], dtype=torch.bool, device=dev) if text_mask is None else text_mask
        if text_keep is not None:
            valid = valid & text_keep[:, None]
        ctx = self.text_proj(text.to(self.text_proj.weight.dtype))  # (B, S, d)
        ctx = torch.cat([null.to(ctx.dtype).expand(B, 1, -1), ctx], dim=1)
        keep = torch.cat([torch.ones(B, 1, dtype=torch.bool, device=dev), valid.bool()], dim=1)
        return ctx, keep[:, None, None, :]

    def hidden(
        self,
        hr: Tensor,
        mask: Tensor,
        lr: Tensor,
        *,
        text: Tensor | None = None,
        text_mask: Tensor | None = None,
        lr_keep: Tensor | None = None,
        text_keep: Tensor | None = None,
    ) -> Tensor:
        """Final-norm hidden states `(B, T, H, W, d)` of the HR grid."""
        c = self.cfg
        B, T, H, W = hr.shape
        s = c.scale
        assert mask.shape == hr.shape, (tuple(mask.shape), tuple(hr.shape))
        assert lr.shape == (B, T, H // s, W // s) and H % s == 0 and W % s == 0, (
            f"LR codes {tuple(lr.shape)} do not fit HR codes {tuple(hr.shape)} at scale {s}"
        )
        dev = hr.device
        special = self.special(torch.arange(3, device=dev))  # (3, d)
        x = self.hr_emb(hr)  # (B, T, H, W, d)
        x = torch.where(mask.bool()[..., None], special[0].to(x.dtype), x)
        lr_x = self.lr_emb(lr)  # (B, T, h, w, d)
        if lr_keep is not None:
            lr_x = torch.where(lr_keep[:, None, None, None, None], lr_x, special[1].to(lr_x.dtype))
        if c.lr_skip:
            phase = self.lr_phase(torch.arange(s * s, device=dev))  # (s*s, d)
            up = repeat(lr_x, "b t h w d -> b t (h sh) (w sw) d", sh=s, sw=s)
            x = x + up + repeat(phase, "(sh sw) d -> (h sh) (w sw) d", sh=s, sw=s, h=H // s, w=W // s)
        lr_x = self.lr_norm(lr_x)
        if c.residual_dtype == "autocast" and torch.is_autocast_enabled(dev.type):
            x = x.to(torch.get_autocast_dtype(dev.type))
            lr_x = lr_x.to(x.dtype)
        ctx, ctx_mask = self._text_context(text, text_mask, text_keep, B, special[2])
        geometry = self.geometry((T, H, W), dev)
        ckpt = self.gradient_checkpointing and torch.is_grad_enabled()
        for block in self.blocks:
            if ckpt:
                x = checkpoint(block, x, lr_x, ctx, ctx_mask, geometry, use_reentrant=False)
            else:
                x = block(x, lr_x, ctx, ctx_mask, geometry)
        return self.norm(x)

    def logits(self, h: Tensor) -> Tensor:
        """Hidden states `(..., d)` -> fp32 logits `(..., k, 2^(K/k))` of the factorized heads."""
        return self.head(h).float().unflatten(-1, (self.cfg.factors, self.cfg.factor_size))

    def forward(self, hr: Tensor, mask: Tensor, lr: Tensor, **cond) -> Tensor:
        """Logits `(B, T, H, W, k, 2^(K/k))` at every position (sampling; training uses `loss`)."""
        return self.logits(self.hidden(hr, mask, lr, **cond))

    def loss(self, hr: Tensor, mask: Tensor, lr: Tensor, **cond) -> SRLoss:
        """Masked-token cross-entropy: `hr` `(B, T, H, W)` are the targets at `mask` and the input elsewhere."""
        B = hr.shape[0]
        h = self.hidden(hr, mask, lr, **cond)  # (B, T, H, W, d)
        sel = mask.bool()
        logits = self.logits(h[sel])  # (M, k, V)
        target = factorize(hr[sel], self.cfg.visual_bits, self.cfg.factors)  # (M, k)
        per_factor = F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="none")
        per_token = per_factor.view(target.shape).sum(-1)  # (M,)
        rows = torch.arange(B, device=hr.device).view(B, 1, 1, 1).expand_as(sel)[sel]  # (M,)
        sums = torch.zeros(B, device=hr.device, dtype=torch.float32).index_add_(0, rows, per_token.detach())
        hit = (logits.argmax(-1) == target).all(-1).long()
        correct = torch.zeros(B, device=hr.device, dtype=torch.long).index_add_(0, rows, hit)
        counts = sel.flatten(1).sum(1)
        loss = per_token.sum() / counts.sum().clamp(min=1)
        return SRLoss(loss=loss, sums=sums, counts=counts, correct=correct)


# ---------------------------------------------------------------------------------------------------------
# the mask schedule (training and sampling)


def mask_ratio(u: Tensor | float) -> Tensor:
    """MaskGIT's cosine schedule: the masked fraction at progress `u` in [0, 1] (1 at u = 0, 0 at u = 1)."""
    return torch.cos(math.pi / 2 * torch.as_tensor(u, dtype=torch.float64))


def masked_after_step(n: int, step: int, steps: int) -> int:
    """Tokens of `n` still masked after decoding step `step` (0-based) of `steps`: n cos(pi/2 (step+1)/steps)."""
    return int(math.floor(n * float(mask_ratio((step + 1) / steps)) + 1e-9)) if step + 1 < steps else 0


def size_table(grid: Grid = (5, 56, 32), text_len: int = 64) -> str:
    """The Markdown size table of the module docstring, computed on the meta device."""

    def fmt(n: float) -> str:
        return f"{n / 1e9:.2f}G" if n >= 1e9 else f"{n / 1e6:.2f}M"

    rows = [
        "| name | blocks (layers) | d_model | heads | head dim | ffn (SwiGLU) | params | without embeddings | FLOPs/token |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in SR_SIZES:
        cfg = SRConfig.from_name(name)
        with torch.device("meta"):
            m = SRTransformer(cfg)
        total, body = m.num_params(), m.num_params(exclude_embedding=True)
        rows.append(
            f"| {name} | {cfg.n_block} ({cfg.n_layer}) | {cfg.d_model} | {cfg.n_head} | {cfg.head_dim} | "
            f"{cfg.ffn_dim} | {fmt(total).replace('G', 'B')} | {fmt(body).replace('G', 'B')} | "
            f"{fmt(m.flops_per_token(grid, text_len))} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":  # python -m videopoet.model.sr  -> the size table
    print(size_table())
