"""Task sequences: every task's layout (special tokens in order), prefix, loss mask, text slots, prompts."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from videopoet.core.errors import UserError
from videopoet.model import sequences
from videopoet.model.sequences import (
    SequenceBuilder,
    Task,
    audio_frames_for,
    central_mask,
    collate,
    layout_table,
    outpainting_mask,
)
from videopoet.model.vocab import MASK, PAD, SPECIAL, SPECIAL_NAMES, TEXT, Vocab

VOCAB = Vocab.debug()
GRID = (3, 4, 5)  # latent T', H', W'
AUDIO_FRAMES = 6
TEXT_LEN = 5
REPO = Path(__file__).resolve().parents[2]


def codes(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    video = torch.randint(0, VOCAB.visual_size, GRID, generator=g)
    audio = torch.randint(0, VOCAB.audio_codebook_size, (VOCAB.audio_levels, AUDIO_FRAMES), generator=g)
    return video, audio


def all_tasks(b: SequenceBuilder, video, audio, k: int = 1, ak: int = 2):
    return {
        Task.UNCONDITIONAL: b.unconditional(video),
        Task.TEXT_TO_VIDEO: b.text_to_video(video, text_len=TEXT_LEN),
        Task.TEXT_TO_IMAGE: b.text_to_image(video[0], text_len=TEXT_LEN),
        Task.FRAME_PREDICTION: b.frame_prediction(video[:k], video[k:]),
        Task.IMAGE_TO_VIDEO: b.image_to_video(video[:1], video[1:], text_len=TEXT_LEN),
        Task.INPAINTING: b.inpainting(video),
        Task.OUTPAINTING: b.outpainting(video, text_len=TEXT_LEN),
        Task.STYLIZATION: b.stylization(video, video.flip(0), text_len=TEXT_LEN),
        Task.AUDIO_TO_VIDEO: b.audio_to_video(audio, video),
        Task.VIDEO_TO_AUDIO: b.video_to_audio(video, audio, text_len=TEXT_LEN),
        Task.AUDIO_VIDEO_CONTINUATION: b.audio_video_continuation(
            video[:k], audio[:, :ak], video[k:], audio[:, ak:]
        ),
    }


# The named special tokens of each task, in order ("|" marks the end of the prefix).
EXPECTED = {
    Task.UNCONDITIONAL: "<bos> <task> <res> <bov_o> | <eov_o> <eos>",
    Task.TEXT_TO_VIDEO: "<bos> <task> <bot_i> <eot_i> <res> <bov_o> | <eov_o> <eos>",
    Task.TEXT_TO_IMAGE: "<bos> <task> <bot_i> <eot_i> <res> <bov_o> |",
    Task.FRAME_PREDICTION: "<bos> <task> <bov_i> <eov_i> <res> <bov_o> | <eov_o> <eos>",
    Task.IMAGE_TO_VIDEO: "<bos> <task> <bot_i> <eot_i> <bov_i> <eov_i> <res> <bov_o> | <eov_o> <eos>",
    Task.INPAINTING: "<bos> <task> <bov_i> <eov_i> <res> <bov_o> | <eov_o> <eos>",
    Task.OUTPAINTING: "<bos> <task> <bot_i> <eot_i> <bov_i> <eov_i> <res> <bov_o> | <eov_o> <eos>",
    Task.STYLIZATION: "<bos> <task> <bot_i> <eot_i> <bov_i> <eov_i> <res> <bov_o> | <eov_o> <eos>",
    Task.AUDIO_TO_VIDEO: "<bos> <task> <boa_i> <eoa_i> <res> <bov_o> | <eov_o> <eos>",
    Task.VIDEO_TO_AUDIO: "<bos> <task> <bot_i> <eot_i> <bov_i> <eov_i> <boa_o> | <eoa_o> <eos>",
    Task.AUDIO_VIDEO_CONTINUATION: "<bos> <task> <bov_i> <eov_i> <boa_i> <eoa_i> <res> <bov_o> | <eov_o> <boa_o> <eoa_o> <eos>",
}
NAMED = {SPECIAL[n] for n in SPECIAL_NAMES} - {TEXT, MASK, PAD}


def specials(seq) -> str:
    names = [SPECIAL_NAMES[t] for t in seq.tokens[: seq.prefix_len].tolist() if t in NAMED]
    names += ["|"] + [SPECIAL_NAMES[t] for t in seq.tokens[seq.prefix_len :].tolist() if t in NAMED]
    return " ".join(names)


def test_every_task_layout_prefix_and_loss_mask():
    video, audio = codes()
    seqs = all_tasks(SequenceBuilder(VOCAB), video, audio)
    assert set(seqs) == set(Task)
    assert torch.equal(
        SequenceBuilder(VOCAB).build(Task.UNCONDITIONAL, video=video).tokens, seqs[Task.UNCONDITIONAL].tokens
    )
    for task, seq in seqs.items():
        assert seq.task == task
        assert specials(seq) == EXPECTED[task], task
        assert seq.tokens[2] == VOCAB.task_token(int(task)), task  # <bos> <task> <task:NAME>
        # Loss on outputs only: exactly the tokens after the prefix, which ends with the first output-begin token.
        assert torch.equal(seq.loss_mask, torch.arange(len(seq)) >= seq.prefix_len), task
        assert int(seq.tokens[seq.prefix_len - 1]) in (SPECIAL["<bov_o>"], SPECIAL["<boa_o>"]), task
        assert seq.plan and seq.output_len == len(seq) - seq.prefix_len, task
        # No output content in the prefix: its visual ids are conditioning (only where the task has any).
        out = seq.tokens[seq.prefix_len :]
        for s, start in zip(seq.plan, [0, *torch.tensor([len(s) for s in seq.plan]).cumsum(0).tolist()]):
            chunk = out[start : start + len(s)]
            if s.forced:
                assert chunk.tolist() == list(s.forced), task
            else:
                assert bool(((chunk >= s.lo) & (chunk < s.hi)).all()), task


def test_outputs_round_trip_to_the_codes():
    video, audio = codes(1)
    b = SequenceBuilder(VOCAB)
    t2v = b.text_to_video(video, text_len=TEXT_LEN)
    vis = t2v.tokens[t2v.prefix_len : t2v.prefix_len + video.numel()]
    assert torch.equal(VOCAB.ids_to_visual(vis).view(GRID), video)
    v2a = b.video_to_audio(video, audio)
    aud = v2a.tokens[v2a.prefix_len : v2a.prefix_len + audio.numel()]
    assert torch.equal(VOCAB.ids_to_audio(aud), audio)
    # The prefix of video-to-audio holds the video, the output of audio-to-video too.
    a2v = b.audio_to_video(audio, video)
    assert torch.equal(
        VOCAB.ids_to_visual(a2v.tokens[a2v.prefix_len : a2v.prefix_len + video.numel()]).view(GRID), video
    )


def test_text_to_image_has_no_end_tokens_and_can_run_on_into_video():
    video, _ = codes()
    t2i = SequenceBuilder(VOCAB).text_to_image(video[:1], text_len=TEXT_LEN)
    out = t2i.tokens[t2i.prefix_len :]
    assert len(out) == GRID[1] * GRID[2]
    assert SPECIAL["<eov_o>"] not in t2i.tokens.tolist() and SPECIAL["<eos>"] not in t2i.tokens.tolist()
    assert bool(((out >= VOCAB.visual_offset) & (out < VOCAB.audio_offset)).all())
    # The image is the first latent frame: t2i is a prefix of the same caption's t2v except for the task
    # token and <res>'s frame count.
    t2v = SequenceBuilder(VOCAB).text_to_video(video, text_len=TEXT_LEN)
    same = (t2i.tokens == t2v.tokens[: len(t2i)]).nonzero().squeeze(1).tolist()
    differ = sorted(set(range(len(t2i))) - set(same))
    assert [SPECIAL_NAMES[int(t2i.tokens[i - 1])] if i != 2 else "<task:id>" for i in differ] == [
        "<task:id>",
        "<res>",
    ]


def test_text_slots_follow_bot_i():
    video, _ = codes()
    seq = SequenceBuilder(VOCAB).text_to_video(video, text_len=TEXT_LEN)
    pos = seq.text_positions
    assert pos.tolist() == list(range(int(pos[0]), int(pos[0]) + TEXT_LEN))
    assert (
        int(seq.tokens[pos[0] - 1]) == SPECIAL["<bot_i>"]
        and int(seq.tokens[pos[-1] + 1]) == SPECIAL["<eot_i>"]
    )
    assert bool((seq.tokens[pos] == TEXT).all()) and int((seq.tokens == TEXT).sum()) == TEXT_LEN
    assert int(pos[-1]) < seq.prefix_len  # text is conditioning: inside the bidirectional prefix
    default = SequenceBuilder(VOCAB).text_to_video(video)
    assert default.text_positions.numel() == sequences.MAX_TEXT_TOKENS
    assert SequenceBuilder(VOCAB).unconditional(video).text_positions.numel() == 0


@pytest.mark.parametrize("k", [1, 2])
def test_frame_prediction_variable_prefix(k):
    video, _ = codes()
    seq = SequenceBuilder(VOCAB).frame_prediction(video[:k], video[k:])
    t, h, w = GRID
    prefix_visual = (
        (seq.tokens[: seq.prefix_len] >= VOCAB.visual_offset)
        & (seq.tokens[: seq.prefix_len] < VOCAB.audio_offset)
    ).sum()
    assert int(prefix_visual) == k * h * w
    assert seq.output_len == (t - k) * h * w + 2  # + <eov_o> <eos>
    res = seq.tokens.tolist().index(SPECIAL["<res>"])
    assert seq.tokens[res + 1 : res + 4].tolist() == [VOCAB.number_token(n) for n in (t - k, h, w)]
    ctx = seq.tokens.tolist().index(SPECIAL["<bov_i>"]) + 1
    assert torch.equal(VOCAB.ids_to_visual(seq.tokens[ctx : ctx + k * h * w]).view(k, h, w), video[:k])


def test_painting_replaces_masked_positions_with_the_mask_token():
    video, _ = codes()
    b = SequenceBuilder(VOCAB)
    for seq, mask in (
        (b.inpainting(video), central_mask(GRID)),
        (b.outpainting(video), outpainting_mask(GRID)),
    ):
        start = seq.tokens.tolist().index(SPECIAL["<bov_i>"]) + 1
        cond = seq.tokens[start : start + video.numel()].view(GRID)
        assert torch.equal(cond == MASK, mask) and 0 < int(mask.sum()) < mask.numel()
        assert torch.equal(VOCAB.ids_to_visual(cond[~mask]), video[~mask])
        out = seq.tokens[seq.prefix_len : seq.prefix_len + video.numel()].view(GRID)
        assert torch.equal(VOCAB.ids_to_visual(out), video)  # the output is the whole video
    assert central_mask(GRID)[:, 1:3, 1:3].all() and not central_mask(GRID)[:, 0].any()
    assert outpainting_mask(GRID)[:, :, 0].all() and not outpainting_mask(GRID)[:, :, 2].any()


def test_stylization_takes_one_or_several_control_grids():
    video, _ = codes()
    b = SequenceBuilder(VOCAB)
    two = b.stylization(video, [video, video.flip(1)], text_len=TEXT_LEN)
    assert two.tokens.tolist().count(SPECIAL["<bov_i>"]) == 2
    assert len(two) == len(b.stylization(video, video, text_len=TEXT_LEN)) + video.numel() + 2
    with pytest.raises(UserError, match="latent shape"):
        b.stylization(video, video[:2], text_len=TEXT_LEN)


def test_shapes_make_prompts_that_match_the_training_sequence():
    video, audio = codes()
    b = SequenceBuilder(VOCAB)
    full = b.audio_video_continuation(video[:1], audio[:, :2], video[1:], audio[:, 2:], text_len=TEXT_LEN)
    prompt = b.audio_video_continuation(video[:1], audio[:, :2], 2, AUDIO_FRAMES - 2, text_len=TEXT_LEN)
    assert prompt.is_prompt and not full.is_prompt
    assert torch.equal(prompt.tokens, full.tokens[: full.prefix_len]) and prompt.plan == full.plan
    assert torch.equal(full.prompt().tokens, prompt.tokens)
    t2v = b.text_to_video(GRID, text_len=TEXT_LEN)
    assert t2v.is_prompt and t2v.output_len == math.prod(GRID) + 2
    assert t2v.plan[0].count == math.prod(GRID) and (t2v.plan[0].lo, t2v.plan[0].hi) == VOCAB.visual_range
    v2a = b.video_to_audio(video, AUDIO_FRAMES)
    assert [(s.lo, s.hi) for s in v2a.plan if s.count] == [
        VOCAB.audio_level_range(lvl) for lvl in range(VOCAB.audio_levels)
    ]


def test_collate_pads_right_and_fills_text_slots():
    video, audio = codes()
    b = SequenceBuilder(VOCAB)
    seqs = [
        b.text_to_video(video, text_len=TEXT_LEN),
        b.unconditional(video),
        b.video_to_audio(video, audio, text_len=3),
    ]
    batch = collate(seqs, text_lengths=[4, 0, 3])
    T = max(len(s) for s in seqs)
    assert batch.tokens.shape == (3, T) and batch.text_positions.shape == (3, TEXT_LEN)
    assert batch.tokens[1, len(seqs[1]) :].eq(PAD).all() and not batch.loss_mask[1, len(seqs[1]) :].any()
    assert batch.prefix_len.tolist() == [s.prefix_len for s in seqs]
    assert batch.task.tolist() == [int(Task.TEXT_TO_VIDEO), int(Task.UNCONDITIONAL), int(Task.VIDEO_TO_AUDIO)]
    assert batch.text_positions[0].tolist() == seqs[0].text_positions[:4].tolist() + [-1]
    assert batch.text_positions[1].eq(-1).all() and batch.text_positions[2, 3:].eq(-1).all()
    with pytest.raises(UserError, match="text slots"):
        collate(seqs, text_lengths=[6, 0, 0])


def test_bad_inputs_are_user_errors():
    video, audio = codes()
    b = SequenceBuilder(VOCAB)
    with pytest.raises(UserError, match="code grid"):
        b.unconditional(video[0])
    with pytest.raises(UserError, match="text_len"):
        b.text_to_video(video, text_len=0)
    with pytest.raises(UserError, match="text_len"):
        b.text_to_video(video, text_len=65)
    with pytest.raises(UserError, match="levels"):
        b.audio_to_video(audio[:1], video)
    with pytest.raises(UserError, match="H', W'"):
        b.frame_prediction(video[:1], video[1:, :2])
    with pytest.raises(UserError, match="mask"):
        b.inpainting(video, torch.ones(GRID))  # not bool
    with pytest.raises(UserError, match="outside 0..1023"):
        b.unconditional(video + VOCAB.visual_size)


def test_audio_split_matches_the_video_context():
    assert audio_frames_for(5) == 106  # the full 17-frame, 2.125 s clip
    assert audio_frames_for(1) == 6 and audio_frames_for(2) == 31


def test_layout_docs_match_the_builders():
    table = layout_table()
    assert table in sequences.__doc__
    assert table in (REPO / "docs" / "TOKEN_LAYOUT.md").read_text()
