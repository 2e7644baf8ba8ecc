"""Generation: KV-cached equals uncached, vocabulary constraints per step, classifier-free guidance, sampling."""

from __future__ import annotations

import pytest
import torch

from videopoet.model.generate import SamplingConfig, generate, generate_sequence, sample_logits
from videopoet.model.lm import LMConfig, VideoPoetLM
from videopoet.model.sequences import SequenceBuilder
from videopoet.model.vocab import SPECIAL, Vocab

VOCAB = Vocab.debug()
GREEDY = SamplingConfig(temperature=0)


@pytest.fixture(scope="module")
def lm() -> VideoPoetLM:
    torch.manual_seed(0)
    return VideoPoetLM(LMConfig.from_name("debug")).eval()


def av_prompt():
    """Audio-video continuation: visual run, forced <eov_o> <boa_o>, one run per RVQ level, forced <eoa_o> <eos>."""
    g = torch.Generator().manual_seed(5)
    video = torch.randint(0, VOCAB.visual_size, (1, 3, 3), generator=g)
    audio = torch.randint(0, VOCAB.audio_codebook_size, (VOCAB.audio_levels, 2), generator=g)
    return SequenceBuilder(VOCAB, text_slots=4).audio_video_continuation(video, audio, 2, 3, text_len=4)


def text(seed: int, n: int = 4) -> torch.Tensor:
    return torch.randn(n, 384, generator=torch.Generator().manual_seed(seed))


def test_kv_cached_generation_equals_uncached(lm):
    prompt = av_prompt()
    kw = dict(text=text(1), sampling=GREEDY, return_logits=True)
    cached = generate_sequence(lm, prompt, **kw)
    plain = generate_sequence(lm, prompt, use_cache=False, **kw)
    assert cached.tokens.shape == (1, prompt.output_len)
    assert torch.equal(cached.tokens, plain.tokens)
    torch.testing.assert_close(cached.logits, plain.logits, atol=1e-5, rtol=1e-4)


def test_every_step_stays_in_its_vocabulary_range(lm):
    prompt = av_prompt()
    out = generate_sequence(
        lm, prompt, sampling=SamplingConfig(temperature=5.0), generator=torch.Generator().manual_seed(0)
    )
    toks = out.tokens[0].tolist()
    i, audio = 0, []
    for step in prompt.plan:
        chunk = toks[i : i + len(step)]
        if step.forced:
            assert chunk == list(step.forced)
        else:
            assert all(step.lo <= t < step.hi for t in chunk), (step, chunk)
            audio += chunk if step.lo >= VOCAB.audio_offset else []
        i += len(step)
    assert i == len(toks) and toks[-2:] == [SPECIAL["<eoa_o>"], SPECIAL["<eos>"]]
    VOCAB.ids_to_visual(torch.tensor(toks[: prompt.plan[0].count]))  # decodes: all visual ids
    assert VOCAB.ids_to_audio(torch.tensor(audio)).shape == (
        VOCAB.audio_levels,
        3,
    )  # level-major, levels in order


def test_guidance_one_and_zero_reduce_to_single_prompts(lm):
    prompt = av_prompt()
    cond, neg = text(1), text(2, n=3)
    kw = dict(sampling=GREEDY, return_logits=True)
    alone_cond = generate_sequence(lm, prompt, text=cond, **kw)
    alone_neg = generate_sequence(lm, prompt, text=neg, **kw)
    # With a negative prompt both rows always run as a batch of 2; w = 1 keeps the conditional logits ...
    w1 = generate_sequence(
        lm,
        prompt,
        text=cond,
        negative_text=neg,
        sampling=SamplingConfig(temperature=0, guidance_scale=1.0),
        return_logits=True,
    )
    assert torch.equal(w1.tokens, alone_cond.tokens)
    torch.testing.assert_close(w1.logits, alone_cond.logits, atol=1e-5, rtol=1e-4)
    # ... and w = 0 the negative prompt's.
    w0 = generate_sequence(
        lm,
        prompt,
        text=cond,
        negative_text=neg,
        sampling=SamplingConfig(temperature=0, guidance_scale=0.0),
        return_logits=True,
    )
    assert torch.equal(w0.tokens, alone_neg.tokens)
    torch.testing.assert_close(w0.logits, alone_neg.logits, atol=1e-5, rtol=1e-4)
    # Without a negative prompt, w = 0 is the unconditional model: the caption-less prompt.
    unc = generate_sequence(lm, prompt, text=cond, sampling=SamplingConfig(temperature=0, guidance_scale=0.0))
    assert torch.equal(unc.tokens, generate_sequence(lm, prompt, sampling=GREEDY).tokens)


def test_guided_logits_follow_the_cfg_formula(lm):
    prompt = av_prompt()
    cond = text(1)
    w = 3.0
    out = generate_sequence(
        lm, prompt, text=cond, sampling=SamplingConfig(temperature=0, guidance_scale=w), return_logits=True
    )
    idx = prompt.tokens[None]
    pos = prompt.text_positions[None]
    with torch.no_grad():
        lc = lm(idx, text=cond[None], text_positions=pos, prefix_len=prompt.prefix_len, last_only=True)[:, -1]
        lu = lm(idx, prefix_len=prompt.prefix_len, last_only=True)[:, -1]
    torch.testing.assert_close(out.logits[:, 0], lu + w * (lc - lu), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(lc, lu, atol=1e-3)  # the caption matters, so guidance does something


def test_batched_prompts_and_cached_uncached_with_guidance(lm):
    prompt = av_prompt()
    B = 3
    idx = prompt.tokens[None].expand(B, -1)
    pos = prompt.text_positions[None].expand(B, -1)
    txt = torch.stack([text(i) for i in range(B)])
    kw = dict(
        text=txt,
        text_positions=pos,
        sampling=SamplingConfig(temperature=0, guidance_scale=2.0),
        return_logits=True,
    )
    a = generate(lm, idx, prompt.plan, **kw)
    b = generate(lm, idx, prompt.plan, use_cache=False, **kw)
    assert a.tokens.shape == (B, prompt.output_len) and torch.equal(a.tokens, b.tokens)
    torch.testing.assert_close(a.logits, b.logits, atol=1e-5, rtol=1e-4)
    one = generate(lm, idx[1:2], prompt.plan, text=txt[1:2], text_positions=pos[1:2], sampling=kw["sampling"])
    assert torch.equal(one.tokens[0], a.tokens[1])  # rows do not interact


def test_sampling_is_seeded_and_top_k_one_is_greedy(lm):
    prompt = av_prompt()
    hot = SamplingConfig(temperature=1.5, top_p=0.9)
    runs = [
        generate_sequence(lm, prompt, sampling=hot, generator=torch.Generator().manual_seed(s)).tokens
        for s in (7, 7, 8)
    ]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    greedy = generate_sequence(lm, prompt, sampling=GREEDY).tokens
    top1 = generate_sequence(lm, prompt, sampling=SamplingConfig(temperature=1.0, top_k=1)).tokens
    assert torch.equal(top1, greedy)


def test_sample_logits_respects_range_top_k_and_top_p():
    g = torch.Generator().manual_seed(0)
    logits = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0, 0.0]]).expand(2000, -1)
    t = sample_logits(logits, 2, 6, temperature=1.0, generator=g)
    assert int(t.min()) >= 2 and int(t.max()) < 6
    assert set(sample_logits(logits, 0, 6, top_k=2, generator=g).tolist()) == {0, 1}
    # Probabilities in the range 2..5 are ~0.64, 0.24, 0.09, 0.03: top_p 0.8 keeps the first two.
    assert set(sample_logits(logits, 2, 6, top_p=0.8, generator=g).tolist()) == {2, 3}
    assert sample_logits(logits[:1], 3, 5, temperature=0).tolist() == [3]
