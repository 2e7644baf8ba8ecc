"""Lay SoundStream codes out for the language model, and back.

VideoPoet flattens an audio clip's RVQ codes level-major: all frames of level 1, then all frames of level 2,
and so on (coarse to fine), e.g. 4 x 106 codes -> 424 tokens for a 2.125 s clip. With `codebook_size`
given, level l's codes are offset by `l * codebook_size`, so the levels occupy disjoint id ranges
(0..1023, 1024..2047, ...; a 4096-id audio vocabulary for 4 x 1024) and the LM can tell them apart.
The LM vocabulary places this whole range after its own offset (model/), not here.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor

from videopoet.core.errors import UserError


def level_offsets(num_levels: int, codebook_size: int, device=None) -> Tensor:
    """`(L, 1)` offsets l * codebook_size."""
    return (torch.arange(num_levels, device=device) * codebook_size)[:, None]


def to_level_major(codes: Tensor, codebook_size: int | None = None) -> Tensor:
    """`(..., L, T)` codes -> `(..., L * T)` tokens, level-major; offsets each level by l * codebook_size if given."""
    if codes.dim() < 2:
        raise UserError(f"codes must be shaped (..., levels, frames), got {tuple(codes.shape)}")
    if codebook_size is not None:
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= codebook_size):
            raise UserError(
                f"codes range over [{int(codes.min())}, {int(codes.max())}], outside 0..{codebook_size - 1}; "
                "codes of -1 (levels dropped in training) cannot be laid out for the LM"
            )
        codes = codes + level_offsets(codes.shape[-2], codebook_size, codes.device)
    return rearrange(codes, "... l t -> ... (l t)")


def from_level_major(tokens: Tensor, num_levels: int, codebook_size: int | None = None) -> Tensor:
    """Inverse of `to_level_major`: `(..., L * T)` -> `(..., L, T)`, removing and checking the level offsets."""
    n = tokens.shape[-1]
    if n % num_levels:
        raise UserError(
            f"{n} audio tokens are not a whole number of frames of {num_levels} levels; the sequence was "
            "truncated or is not level-major SoundStream output"
        )
    codes = rearrange(tokens, "... (l t) -> ... l t", l=num_levels)
    if codebook_size is not None:
        codes = codes - level_offsets(num_levels, codebook_size, tokens.device)
        bad = (codes < 0) | (codes >= codebook_size)
        if bool(bad.any()):
            where = bad.nonzero()[0].tolist()  # first offending (..., level, frame)
            level, frame = where[-2], where[-1]
            value = int(tokens[(*where[:-2], level * (n // num_levels) + frame)])
            raise UserError(
                f"token at level {level}, frame {frame} is {value}, outside level {level}'s range "
                f"{level * codebook_size}..{(level + 1) * codebook_size - 1}; the sequence is not level-major "
                "or uses a different codebook size"
            )
    return codes
