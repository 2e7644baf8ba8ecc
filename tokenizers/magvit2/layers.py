"""Building blocks of the MAGVIT-v2 generator: causal 3D convolutions, per-frame norms, residual blocks,
strided downsampling and depth-to-space upsampling. All tensors are `(B, C, T, H, W)`.

Causality: every time axis operation looks only at the current and earlier frames. Convolutions pad
`k_t - 1` frames in front and none after; norms take statistics per frame (a plain GroupNorm over T
would leak later frames into earlier ones, and would make frame 0 of a video differ from the same image).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


def _triple(k: int | tuple[int, int, int]) -> tuple[int, int, int]:
    return (k, k, k) if isinstance(k, int) else tuple(k)


class CausalConv3d(nn.Conv3d):
    """Conv3d with `k_t - 1` zero frames padded in front (none after) and 'same' spatial padding.

    With time stride s and kernel 3, output frame j sees input frames 2j-2 .. 2j (s = 2), so T = 1 + 2m
    frames give 1 + m outputs and output 0 depends on frame 0 alone. The last time tap of the kernel is
    the current frame, which is where `inflate_conv_weight` puts a 2D kernel.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int, int] = 3,
        *,
        stride: int | tuple[int, int, int] = 1,
        bias: bool = True,
    ):
        kt, kh, kw = _triple(kernel_size)
        assert kh % 2 == 1 and kw % 2 == 1, f"spatial kernel must be odd, got {(kt, kh, kw)}"
        super().__init__(
            in_channels, out_channels, (kt, kh, kw), stride=_triple(stride), padding=0, bias=bias
        )
        # F.pad order: (W left, W right, H top, H bottom, T front, T back)
        self._pad = (kw // 2, kw // 2, kh // 2, kh // 2, kt - 1, 0)

    def forward(self, x: Tensor) -> Tensor:
        if any(self._pad):
            x = F.pad(x, self._pad)
        return super().forward(x)


def frame_group_norm(
    x: Tensor, groups: int, weight: Tensor | None = None, bias: Tensor | None = None, eps: float = 1e-6
) -> Tensor:
    """GroupNorm of `(B, C, T, H, W)` with statistics per (sample, group, frame), computed in fp32.

    Works for contiguous and channels_last_3d inputs alike (unflatten of C is a view in both).
    """
    b, c, t, h, w = x.shape
    xg = x.float().unflatten(1, (groups, c // groups))  # (B, G, C/G, T, H, W)
    var, mean = torch.var_mean(xg, dim=(2, 4, 5), keepdim=True, correction=0)
    y = ((xg - mean) * torch.rsqrt(var + eps)).flatten(1, 2)
    if weight is not None:
        y = y * weight.float().view(1, c, 1, 1, 1)
    if bias is not None:
        y = y + bias.float().view(1, c, 1, 1, 1)
    return y.to(x.dtype)


class FrameGroupNorm(nn.Module):
    """GroupNorm with per-frame statistics (see `frame_group_norm`), optionally with a learned affine."""

    def __init__(self, channels: int, groups: int, *, affine: bool = True, eps: float = 1e-6):
        super().__init__()
        assert channels % groups == 0, f"{channels} channels not divisible by {groups} groups"
        self.groups, self.eps = groups, eps
        self.weight = nn.Parameter(torch.ones(channels)) if affine else None
        self.bias = nn.Parameter(torch.zeros(channels)) if affine else None

    def forward(self, x: Tensor) -> Tensor:
        return frame_group_norm(x, self.groups, self.weight, self.bias, self.eps)


def expand_latent(cond: Tensor, size: tuple[int, int, int]) -> Tensor:
    """Nearest-neighbour expansion of a latent-resolution map `(B, C, T', H', W')` to `size = (T, H, W)`,
    following the decoder's causal time layout: with T = 1 + s (T' - 1), latent 0 covers frame 0 and
    latent j covers frames s(j-1)+1 .. sj, i.e. frame f reads latent ceil(f / s).
    """
    t_lat, h_lat, w_lat = cond.shape[2:]
    t, h, w = size
    st = (t - 1) // (t_lat - 1) if t_lat > 1 else 1
    assert t == 1 + st * (t_lat - 1) and h % h_lat == 0 and w % w_lat == 0, (
        f"cannot expand latent {tuple(cond.shape[2:])} to {size}"
    )
    if st > 1:  # time first, at latent resolution (cheap); then one nearest resize to full resolution
        cond = cond.repeat_interleave(st, dim=2)[:, :, st - 1 :]
    if (h, w) != (h_lat, w_lat):
        cond = F.interpolate(cond, size=(t, h, w), mode="nearest")
    return cond


class AdaptiveGroupNorm(nn.Module):
    """Per-frame GroupNorm whose scale and shift are predicted from the quantized latent (StyleGAN-style
    modulation, as the MAGVIT-v2 decoder does at every resolution).

    The 1x1x1 projection runs at latent resolution and is expanded causally to the feature map.
    It starts at zero, so at initialization this is a plain (unit-affine) group norm.
    """

    def __init__(self, channels: int, cond_channels: int, groups: int, *, eps: float = 1e-6):
        super().__init__()
        self.groups, self.eps = groups, eps
        self.to_scale_shift = nn.Conv3d(cond_channels, 2 * channels, 1)
        nn.init.zeros_(self.to_scale_shift.weight)
        nn.init.zeros_(self.to_scale_shift.bias)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        scale, shift = expand_latent(self.to_scale_shift(cond), x.shape[2:]).chunk(2, dim=1)
        return frame_group_norm(x, self.groups, eps=self.eps) * (1 + scale) + shift


class ResBlock(nn.Module):
    """norm -> SiLU -> causal conv3 -> norm -> SiLU -> causal conv3, plus a (1x1x1 if widths differ) skip.

    With `cond_channels`, both norms are adaptive group norms conditioned on the quantized latent.
    """

    def __init__(self, in_channels: int, out_channels: int, groups: int, *, cond_channels: int | None = None):
        super().__init__()
        self.adaptive = cond_channels is not None
        if self.adaptive:
            self.norm1 = AdaptiveGroupNorm(in_channels, cond_channels, groups)
            self.norm2 = AdaptiveGroupNorm(out_channels, cond_channels, groups)
        else:
            self.norm1 = FrameGroupNorm(in_channels, groups)
            self.norm2 = FrameGroupNorm(out_channels, groups)
        self.conv1 = CausalConv3d(in_channels, out_channels, 3)
        self.conv2 = CausalConv3d(out_channels, out_channels, 3)
        self.skip = (
            CausalConv3d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()
        )

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        extra = (cond,) if self.adaptive else ()
        h = self.conv1(F.silu(self.norm1(x, *extra)))
        h = self.conv2(F.silu(self.norm2(h, *extra)))
        return self.skip(x) + h


class Downsample(nn.Module):
    """Strided causal 3x3x3 convolution: halves H and W, and T (1 + 2m -> 1 + m) when `time` is set."""

    def __init__(self, channels: int, *, time: bool):
        super().__init__()
        self.conv = CausalConv3d(channels, channels, 3, stride=(2 if time else 1, 2, 2))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class DepthToSpaceUpsample(nn.Module):
    """Causal convolution to `out * t * 2 * 2` channels, then depth-to-space: doubles H and W, and with
    `time` doubles T and drops the first frame (1 + m -> 1 + 2m), so latent frame 0 makes frame 0 only.

    Initialized ICNR-style (all sub-pixels share one kernel), i.e. as nearest upsampling followed by a
    convolution, which avoids checkerboard artifacts at the start of training.
    """

    def __init__(self, in_channels: int, out_channels: int, *, time: bool, kernel_size: int = 3):
        super().__init__()
        self.t = 2 if time else 1
        factor = self.t * 4
        self.conv = CausalConv3d(in_channels, out_channels * factor, kernel_size)
        with torch.no_grad():  # output channel order is (c, t, h, w): sub-pixel fastest
            w0 = self.conv.weight[::factor].clone()
            self.conv.weight.copy_(w0.repeat_interleave(factor, dim=0))
            self.conv.bias.copy_(self.conv.bias[::factor].repeat_interleave(factor))

    def forward(self, x: Tensor) -> Tensor:
        x = rearrange(self.conv(x), "b (c t h w) T H W -> b c (T t) (H h) (W w)", t=self.t, h=2, w=2)
        return x[:, :, self.t - 1 :] if self.t > 1 else x
