"""2D -> 3D inflation: start a video tokenizer from image-pretrained weights (MAGVIT-v2 section 3.2).

A 2D kernel goes into the last time tap of the causal 3D kernel (the current frame) and the earlier taps
are zero. Every 3D convolution then acts on each frame exactly as its 2D original does on that image, so
an image-pretrained model gives the same output on frame 0 (and on any 1-frame input), and the time taps
learn motion from zero when video training starts. (Putting the kernel in the middle tap would look at
a padded or previous frame; averaging it over taps would change frame 0's output.)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def inflate_conv_weight(weight_2d: Tensor, time_kernel: int) -> Tensor:
    """(O, I, kh, kw) -> (O, I, time_kernel, kh, kw) with the 2D kernel in the last tap, zeros elsewhere."""
    assert weight_2d.ndim == 4, f"expected a 2D conv weight (O, I, kh, kw), got {tuple(weight_2d.shape)}"
    out = weight_2d.new_zeros(*weight_2d.shape[:2], time_kernel, *weight_2d.shape[2:])
    out[:, :, -1] = weight_2d
    return out


def inflate_state_dict(state_2d: dict[str, Tensor], model: nn.Module) -> tuple[dict[str, Tensor], list[str]]:
    """Map a 2D model's state dict onto `model` (a 3D model with the same parameter names).

    A 4D tensor whose 5D counterpart matches but for the inserted time axis is inflated; a tensor of the
    same shape is copied; keys of `model` not in `state_2d` keep `model`'s current values. Returns the
    full state dict for `model.load_state_dict` and the keys that were not taken from `state_2d`.
    A key present in both with shapes that do not match raises ValueError naming it.
    """
    out: dict[str, Tensor] = {}
    kept: list[str] = []
    for key, current in model.state_dict().items():
        src = state_2d.get(key)
        if src is None:
            out[key] = current
            kept.append(key)
        elif src.shape == current.shape:
            out[key] = src.to(current.dtype)
        elif (
            src.ndim == 4
            and current.ndim == 5
            and tuple(src.shape) == (*current.shape[:2], *current.shape[3:])
        ):
            out[key] = inflate_conv_weight(src, current.shape[2]).to(current.dtype)
        else:
            raise ValueError(
                f"cannot inflate {key}: 2D shape {tuple(src.shape)} vs 3D shape {tuple(current.shape)}"
            )
    return out, kept


@torch.no_grad()
def deflate_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The 2D state dict an inflated model corresponds to: the last time tap of every 5D conv weight.

    Exact inverse of `inflate_state_dict` for freshly inflated weights; handy to build a 2D image model
    from a 3D checkpoint and for tests.
    """
    return {k: (v[:, :, -1].clone() if v.ndim == 5 else v.clone()) for k, v in model.state_dict().items()}
