"""The unified token vocabulary of the VideoPoet LM: special tokens, then visual codes, then audio codes.

    vocab = Vocab.from_tokenizers(magvit_cfg, soundstream_cfg)   # sizes from the tokenizers' configs
    ids = vocab.visual_to_ids(codes)            # MAGVIT-v2 indices [0, 2^K) -> LM ids
    ids = vocab.audio_to_ids(rvq_codes)         # (..., levels, frames) -> (..., levels * frames), level-major

Id layout (defaults: K = 18 visual bits, 4 RVQ levels x 1024 codes -> 266,496 ids; `Vocab.debug()`:
K = 10, 2 x 64 -> 1,408 ids):

| ids | what |
|---|---|
| 0 .. 31 | named special tokens (`SPECIAL_NAMES`: `<pad>`, `<bos>`, `<task>`, ..., `<eos>`, `<text>`, `<mask>`) |
| 32 .. 63 | task-id tokens `<task:NAME>`, one per `sequences.Task` (room for 32) |
| 64 .. 127 | data-source value tokens `<src:k>`, k in 0..63 (after `<source>`) |
| 128 .. 255 | number tokens `<n:v>`, v in 0..127 (latent frames / height / width after `<res>`) |
| 256 .. 256 + 2^K - 1 | visual codes: MAGVIT-v2 index i -> 256 + i |
| 256 + 2^K .. + L * C - 1 | audio codes: level l, code c -> 256 + 2^K + l * C + c (levels disjoint) |

Text has no ids: captions enter the LM as at most 64 text-encoder embeddings, projected to the model width
and written over `<text>` placeholder slots (see `model/sequences.py`, `model/lm.py`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from videopoet.core.config import check
from videopoet.core.errors import UserError
from videopoet.tokenizers.soundstream.layout import from_level_major, to_level_major

NUM_SPECIAL = 256
"""Ids reserved before the visual codes. Fixed, so special ids never move when a tokenizer changes size."""

SPECIAL_NAMES: tuple[str, ...] = (
    "<pad>",  # right-padding of batches; never a loss target
    "<bos>",  # beginning of sequence
    "<task>",  # followed by one <task:NAME> token
    "<bot_i>",  # beginning of the text input (text-embedding slots follow)
    "<eot_i>",  # end of the text input
    "<bov_i>",  # beginning of a visual input (image, video, masked video, flow+depth video)
    "<eov_i>",  # end of a visual input
    "<boa_i>",  # beginning of the audio input
    "<eoa_i>",  # end of the audio input
    "<source>",  # followed by one <src:k> token naming the data source
    "<res>",  # followed by <n:T'> <n:H'> <n:W'>: the output video's latent grid
    "<bov_o>",  # beginning of the visual output
    "<eov_o>",  # end of the visual output
    "<boa_o>",  # beginning of the audio output
    "<eoa_o>",  # end of the audio output
    "<eos>",  # end of sequence
    "<text>",  # a text slot: replaced by a projected text embedding, or left as is for an empty/dropped caption
    "<mask>",  # a masked latent position of the conditioning video (inpainting / outpainting)
)
SPECIAL: dict[str, int] = {name: i for i, name in enumerate(SPECIAL_NAMES)}
"""Named special token -> id, e.g. `SPECIAL["<bos>"] == 1`."""

TASK_BASE, MAX_TASKS = 32, 32
SOURCE_BASE, MAX_SOURCES = 64, 64
NUMBER_BASE, MAX_NUMBER = 128, 127

PAD = SPECIAL["<pad>"]
TEXT = SPECIAL["<text>"]
MASK = SPECIAL["<mask>"]


@dataclass(kw_only=True, frozen=True)
class Vocab:
    """Sizes of the LM vocabulary, from the tokenizers it serves. All offsets derive from these three numbers."""

    visual_bits: int = 18
    """K: bits per MAGVIT-v2 token (`MagvitConfig.codebook_bits`); 2^K visual codes."""
    audio_levels: int = 4
    """Residual-VQ levels of the SoundStream tokenizer (`SoundStreamConfig.num_levels`)."""
    audio_codebook_size: int = 1024
    """Codes per RVQ level (`SoundStreamConfig.codebook_size`); each level gets its own id range."""

    def __post_init__(self) -> None:
        check(1 <= self.visual_bits <= 30, "visual_bits", self.visual_bits, "in [1, 30]")
        check(self.audio_levels >= 1, "audio_levels", self.audio_levels, ">= 1")
        check(self.audio_codebook_size >= 2, "audio_codebook_size", self.audio_codebook_size, ">= 2")

    @classmethod
    def from_tokenizers(cls, magvit: Any, soundstream: Any) -> Vocab:
        """From a `MagvitConfig` and a `SoundStreamConfig` (their actual sizes, not the paper's)."""
        return cls(
            visual_bits=magvit.codebook_bits,
            audio_levels=soundstream.num_levels,
            audio_codebook_size=soundstream.codebook_size,
        )

    @classmethod
    def debug(cls) -> Vocab:
        """Tiny sizes for CPU tests: 2^10 visual codes, 2 x 64 audio codes (1,408 ids)."""
        return cls(visual_bits=10, audio_levels=2, audio_codebook_size=64)

    # -- sizes and ranges ------------------------------------------------------------------------------------
    @property
    def visual_size(self) -> int:
        return 2**self.visual_bits

    @property
    def audio_size(self) -> int:
        return self.audio_levels * self.audio_codebook_size

    @property
    def visual_offset(self) -> int:
        return NUM_SPECIAL

    @property
    def audio_offset(self) -> int:
        return NUM_SPECIAL + self.visual_size

    @property
    def size(self) -> int:
        """Total number of ids (the LM's embedding and output-head size)."""
        return NUM_SPECIAL + self.visual_size + self.audio_size

    @property
    def visual_range(self) -> tuple[int, int]:
        """`[lo, hi)` of the visual ids (what generation may sample inside a visual output)."""
        return self.visual_offset, self.audio_offset

    @property
    def audio_range(self) -> tuple[int, int]:
        """`[lo, hi)` of all audio ids (every level)."""
        return self.audio_offset, self.size

    def audio_level_range(self, level: int) -> tuple[int, int]:
        """`[lo, hi)` of the ids of one RVQ level."""
        assert 0 <= level < self.audio_levels, (level, self.audio_levels)
        lo = self.audio_offset + level * self.audio_codebook_size
        return lo, lo + self.audio_codebook_size

    # -- special, task, source and number tokens -------------------------------------------------------------
    def special(self, name: str) -> int:
        if name not in SPECIAL:
            raise KeyError(f"unknown special token {name!r}; known: {' '.join(SPECIAL_NAMES)}")
        return SPECIAL[name]

    @staticmethod
    def task_token(task_id: int) -> int:
        assert 0 <= task_id < MAX_TASKS, f"task id {task_id} outside 0..{MAX_TASKS - 1}"
        return TASK_BASE + task_id

    @staticmethod
    def source_token(source: int) -> int:
        if not 0 <= source < MAX_SOURCES:
            raise UserError(f"data-source id {source} is outside 0..{MAX_SOURCES - 1}; use a smaller id")
        return SOURCE_BASE + source

    @staticmethod
    def number_token(value: int) -> int:
        if not 0 <= value <= MAX_NUMBER:
            raise UserError(
                f"value {value} cannot be written as a number token (0..{MAX_NUMBER}); a latent grid "
                f"dimension above {MAX_NUMBER} needs a larger number range in model/vocab.py"
            )
        return NUMBER_BASE + value

    def name(self, token: int) -> str:
        """Human-readable name of one id, e.g. `<bos>`, `<task:3>`, `<n:16>`, `v:1234`, `a1:17`."""
        token = int(token)
        if 0 <= token < len(SPECIAL_NAMES):
            return SPECIAL_NAMES[token]
        if TASK_BASE <= token < TASK_BASE + MAX_TASKS:
            return f"<task:{token - TASK_BASE}>"
        if SOURCE_BASE <= token < SOURCE_BASE + MAX_SOURCES:
            return f"<src:{token - SOURCE_BASE}>"
        if NUMBER_BASE <= token < NUMBER_BASE + MAX_NUMBER + 1:
            return f"<n:{token - NUMBER_BASE}>"
        if token < NUM_SPECIAL:
            return f"<reserved:{token}>"
        if token < self.audio_offset:
            return f"v:{token - self.visual_offset}"
        if token < self.size:
            level, code = divmod(token - self.audio_offset, self.audio_codebook_size)
            return f"a{level}:{code}"
        raise ValueError(f"id {token} is outside the vocabulary of {self.size} ids")

    # -- visual codes ----------------------------------------------------------------------------------------
    def visual_to_ids(self, codes: Tensor) -> Tensor:
        """MAGVIT-v2 indices (any shape, values in [0, 2^K)) -> LM ids of the same shape."""
        codes = torch.as_tensor(codes)
        if codes.is_floating_point():
            raise UserError(f"visual codes must be integer indices, got dtype {codes.dtype}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.visual_size):
            raise UserError(
                f"visual codes range over [{int(codes.min())}, {int(codes.max())}], outside 0..{self.visual_size - 1} "
                f"(2^{self.visual_bits}); the tokens come from a MAGVIT-v2 with a different codebook_bits"
            )
        return codes.long() + self.visual_offset

    def ids_to_visual(self, ids: Tensor) -> Tensor:
        """Inverse of `visual_to_ids`; every id must be a visual id."""
        ids = torch.as_tensor(ids).long()
        lo, hi = self.visual_range
        bad = (ids < lo) | (ids >= hi)
        if bool(bad.any()):
            first = int(ids[bad][0])
            raise UserError(
                f"id {first} ({self.name(first) if 0 <= first < self.size else 'out of vocabulary'}) is not a "
                f"visual id ({lo}..{hi - 1}); was a special or audio token generated inside the video?"
            )
        return ids - self.visual_offset

    # -- audio codes -----------------------------------------------------------------------------------------
    def audio_to_ids(self, codes: Tensor) -> Tensor:
        """SoundStream RVQ codes `(..., levels, frames)` -> `(..., levels * frames)` ids, level-major.

        Level l's code c becomes `audio_offset + l * codebook_size + c`, so the levels use disjoint ids.
        """
        codes = torch.as_tensor(codes)
        if codes.dim() < 2 or codes.shape[-2] != self.audio_levels:
            raise UserError(
                f"audio codes must be shaped (..., {self.audio_levels} levels, frames), got {tuple(codes.shape)}; "
                "the SoundStream tokenizer has a different num_levels than this vocabulary"
            )
        return to_level_major(codes.long(), self.audio_codebook_size) + self.audio_offset

    def ids_to_audio(self, ids: Tensor) -> Tensor:
        """Inverse of `audio_to_ids`: `(..., levels * frames)` ids -> `(..., levels, frames)` codes (checked)."""
        ids = torch.as_tensor(ids).long()
        lo, hi = self.audio_range
        bad = (ids < lo) | (ids >= hi)
        if bool(bad.any()):
            first = int(ids[bad][0])
            raise UserError(
                f"id {first} is not an audio id ({lo}..{hi - 1}); the sequence is not audio output"
            )
        return from_level_major(ids - self.audio_offset, self.audio_levels, self.audio_codebook_size)

    def metadata(self) -> dict[str, int]:
        """The layout as plain integers, for Parquet key-value metadata beside token shards."""
        return {
            **dataclasses.asdict(self),
            "num_special": NUM_SPECIAL,
            "visual_offset": self.visual_offset,
            "audio_offset": self.audio_offset,
            "size": self.size,
        }
