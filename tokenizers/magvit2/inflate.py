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


@torch.no_grad()
def inflate_image_trained(model: nn.Module) -> list[str]:
    """Ready a 3D model that has only seen 1-frame inputs for video: inflation without a 2D model.

    Our generator is 3D from the start, so image pretraining means training on 1-frame clips. On those,
    a causal convolution's earlier time taps only ever multiply the zero padding in front of frame 0:
    they get exactly zero gradient and keep their random initialization, and so would inject noise from
    earlier frames as soon as video arrives. This does to them what `inflate_state_dict` does to a 2D
    model's kernels, in place:

    - `CausalConv3d` (generator): keep the last tap (the current frame, i.e. the learned 2D kernel), zero
      the earlier taps; each frame is then processed as the image model processes an image.
    - `DepthToSpaceUpsample` that doubles time: a 1-frame latent only uses the second sub-frame of the
      depth-to-space split (the first is dropped), so the first sub-frame's kernels are untrained; copy
      the second's into them, so time upsampling starts as frame repetition.
    - any other `Conv3d` with a time kernel > 1 and centred time padding (the discriminator): keep the
      centre tap, zero the others.

    Outputs on 1-frame inputs are unchanged (only never-used weights change). Returns the names of the
    modules that were changed.
    """
    from videopoet.tokenizers.magvit2.layers import CausalConv3d, DepthToSpaceUpsample

    changed = []
    for name, module in model.named_modules():
        if isinstance(module, DepthToSpaceUpsample) and module.t > 1:
            w, b = module.conv.weight, module.conv.bias
            # output channels are ordered (c, t, h, w): row c * 4t + 4j + s is sub-frame j, sub-pixel s
            rows = torch.arange(w.shape[0], device=w.device).view(-1, module.t, 4)
            last = rows[:, -1].flatten()
            for j in range(module.t - 1):
                w[rows[:, j].flatten()] = w[last]
                if b is not None:
                    b[rows[:, j].flatten()] = b[last]
            changed.append(name)
        if not isinstance(module, nn.Conv3d) or module.weight.shape[2] == 1:
            continue
        kt = module.weight.shape[2]
        if isinstance(module, CausalConv3d):
            module.weight[:, :, :-1] = 0
        elif module.padding[0] == kt // 2 and kt % 2 == 1:
            keep = module.weight[:, :, kt // 2].clone()
            module.weight.zero_()
            module.weight[:, :, kt // 2] = keep
        else:
            continue
        changed.append(name)
    return changed
