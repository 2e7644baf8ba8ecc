"""Unified vocabulary: sizes from the tokenizers, disjoint id ranges, and code <-> id round trips."""

from __future__ import annotations

import pytest
import torch

from videopoet.core.config import ConfigError
from videopoet.core.errors import UserError
from videopoet.model.vocab import NUM_SPECIAL, SPECIAL, SPECIAL_NAMES, Vocab
from videopoet.tokenizers.magvit2 import MagvitConfig
from videopoet.tokenizers.soundstream import SoundStreamConfig

VOCABS = {"default": Vocab(), "debug": Vocab.debug()}


def test_default_and_debug_sizes():
    v = Vocab()
    assert (v.visual_offset, v.audio_offset, v.size) == (256, 256 + 262_144, 266_496)
    assert v.visual_range == (256, 262_400) and v.audio_range == (262_400, 266_496)
    d = Vocab.debug()
    assert (d.visual_size, d.audio_size, d.size) == (1024, 128, 1408)


def test_sizes_come_from_the_tokenizer_configs():
    magvit, sound = MagvitConfig.from_name("debug"), SoundStreamConfig.from_name("debug")
    v = Vocab.from_tokenizers(magvit, sound)
    assert v.visual_size == magvit.vocab_size == 2**magvit.codebook_bits
    assert v.audio_size == sound.num_levels * sound.codebook_size
    assert v.size == NUM_SPECIAL + magvit.vocab_size + sound.num_levels * sound.codebook_size
    base = Vocab.from_tokenizers(MagvitConfig.from_name("base"), SoundStreamConfig())
    assert base == Vocab()


@pytest.mark.parametrize("name", VOCABS)
def test_visual_round_trip_and_range(name):
    v = VOCABS[name]
    codes = torch.randint(0, v.visual_size, (3, 4, 5))
    codes[0, 0, 0], codes[0, 0, 1] = 0, v.visual_size - 1  # both ends of the codebook
    ids = v.visual_to_ids(codes)
    assert ids.shape == codes.shape and ids.dtype == torch.long
    lo, hi = v.visual_range
    assert int(ids.min()) >= lo and int(ids.max()) < hi
    assert int(ids[0, 0, 0]) == lo and int(ids[0, 0, 1]) == hi - 1
    assert torch.equal(v.ids_to_visual(ids), codes)


@pytest.mark.parametrize("name", VOCABS)
def test_audio_level_major_with_disjoint_levels(name):
    v = VOCABS[name]
    L, C, F = v.audio_levels, v.audio_codebook_size, 7
    codes = torch.randint(0, C, (2, L, F))
    ids = v.audio_to_ids(codes)  # (2, L * F)
    assert ids.shape == (2, L * F)
    for level in range(L):
        lo, hi = v.audio_level_range(level)
        block = ids[:, level * F : (level + 1) * F]  # level-major: all frames of a level together
        assert torch.equal(block, codes[:, level] + lo)
        assert int(block.min()) >= lo and int(block.max()) < hi
    ranges = [v.audio_level_range(level) for level in range(L)]
    assert ranges[0][0] == v.audio_offset and ranges[-1][1] == v.size
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))  # contiguous, disjoint
    assert torch.equal(v.ids_to_audio(ids), codes)


def test_bad_codes_and_ids_are_user_errors():
    v = Vocab.debug()
    with pytest.raises(UserError, match="outside 0..1023"):
        v.visual_to_ids(torch.tensor([0, 1024]))
    with pytest.raises(UserError, match="not a visual id"):
        v.ids_to_visual(torch.tensor([v.audio_offset]))
    with pytest.raises(UserError, match="levels"):
        v.audio_to_ids(torch.zeros(3, 5, dtype=torch.long))  # 3 levels, vocab has 2
    ids = v.audio_to_ids(torch.zeros(2, 4, dtype=torch.long))
    ids[0] = v.audio_level_range(1)[0]  # a level-1 id where level 0 belongs
    with pytest.raises(UserError, match="level 0"):
        v.ids_to_audio(ids)
    with pytest.raises(UserError, match="number token"):
        v.number_token(128)


def test_special_task_source_number_ranges_do_not_overlap():
    v = Vocab()
    named = [SPECIAL[n] for n in SPECIAL_NAMES]
    tasks = [v.task_token(i) for i in range(32)]
    sources = [v.source_token(i) for i in range(64)]
    numbers = [v.number_token(i) for i in range(128)]
    every = named + tasks + sources + numbers
    assert len(set(every)) == len(every) and max(every) < NUM_SPECIAL == v.visual_offset
    assert v.name(SPECIAL["<bos>"]) == "<bos>" and v.name(v.number_token(16)) == "<n:16>"
    assert v.name(v.visual_offset + 5) == "v:5" and v.name(v.audio_level_range(3)[0] + 2) == "a3:2"


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="visual_bits"):
        Vocab(visual_bits=0)
    with pytest.raises(ConfigError, match="audio_codebook_size"):
        Vocab(audio_codebook_size=1)
