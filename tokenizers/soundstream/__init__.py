"""SoundStream audio tokenizer (16 kHz mono -> 4 x 1024-code RVQ tokens at 50 frames/s), its training
losses and discriminators, the weight EMA, the level-major LM layout and codec metrics."""

from videopoet.tokenizers.soundstream.config import (
    SOUNDSTREAM_SIZES,
    SoundStreamConfig,
    SoundStreamLossConfig,
)
from videopoet.tokenizers.soundstream.ema import EMA
from videopoet.tokenizers.soundstream.layout import from_level_major, to_level_major
from videopoet.tokenizers.soundstream.losses import SoundStreamLoss
from videopoet.tokenizers.soundstream.model import SoundStream, SoundStreamOutput

__all__ = [
    "EMA",
    "SOUNDSTREAM_SIZES",
    "SoundStream",
    "SoundStreamConfig",
    "SoundStreamLoss",
    "SoundStreamLossConfig",
    "SoundStreamOutput",
    "from_level_major",
    "to_level_major",
]
