"""VideoPoet LM: prefix-LM attention (against a dense-mask reference), text slots, chunked loss, sizes, overfitting."""

from __future__ import annotations

import dataclasses
import time
import warnings

import pytest
import torch
import torch.nn.functional as F

from videopoet.core.config import ConfigError
from videopoet.model import lm as lm_module
from videopoet.model.lm import LMConfig, VideoPoetLM, chunked_cross_entropy, plan_attention, size_table
from videopoet.model.sequences import SequenceBuilder, collate
from videopoet.model.vocab import Vocab

VOCAB = Vocab.debug()


def model(seed: int = 0, **overrides) -> VideoPoetLM:
    torch.manual_seed(seed)
    return VideoPoetLM(LMConfig.from_name("debug", **overrides))


def random_ids(B: int, T: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB.size, (B, T), generator=torch.Generator().manual_seed(seed))


def with_impl(m: VideoPoetLM, impl: str) -> VideoPoetLM:
    m.cfg = dataclasses.replace(m.cfg, attn_impl=impl)
    return m


@torch.no_grad()
def test_output_tokens_never_change_earlier_logits():
    m = model().eval()
    T, p = 40, 15
    idx = random_ids(1, T)
    base = m(idx, prefix_len=p)
    for j in (p, p + 7, T - 1):  # change one output token
        idx2 = idx.clone()
        idx2[0, j] = (idx2[0, j] + 1) % VOCAB.size
        out = m(idx2, prefix_len=p)
        assert torch.allclose(out[:, :j], base[:, :j], atol=1e-6), j
        assert not torch.allclose(out[:, j:], base[:, j:], atol=1e-4), j


@torch.no_grad()
def test_a_prefix_token_changes_every_position_including_earlier_ones():
    m = model().eval()
    T, p = 40, 15
    idx = random_ids(1, T)
    base = m(idx, prefix_len=p)
    i = p - 3
    idx2 = idx.clone()
    idx2[0, i] = (idx2[0, i] + 1) % VOCAB.size
    diff = (m(idx2, prefix_len=p) - base).abs().amax(-1)[0]  # (T,)
    assert bool((diff > 1e-5).all()), diff  # bidirectional prefix: positions before i see it too
    causal = (m(idx2) - m(idx)).abs().amax(-1)[0]  # without a prefix, earlier positions do not
    assert bool((causal[:i] < 1e-6).all()) and float(causal[i]) > 1e-5


@pytest.mark.parametrize(
    "prefix, kind",
    [(None, "causal"), (9, "split"), ([9, 9, 9], "split"), ([0, 9, 23], "grouped")],
    ids=["causal", "int", "equal", "mixed"],
)
@torch.no_grad()
def test_fast_attention_paths_equal_the_dense_mask_reference(prefix, kind):
    m = model().eval()
    idx = random_ids(3, 32)
    p = torch.tensor(prefix) if isinstance(prefix, list) else prefix
    ref = with_impl(m, "dense")(idx, prefix_len=p)
    fast = with_impl(m, "sdpa")(idx, prefix_len=p)
    torch.testing.assert_close(fast, ref, atol=2e-5, rtol=1e-4)
    plan = plan_attention(p, 3, 32, 0, "sdpa", idx.device)
    assert plan.kind == kind and plan.mask is None  # no T x T mask on the fast path
    if kind == "grouped":
        with warnings.catch_warnings():  # eager flex_attention on CPU warns that it is unfused
            warnings.simplefilter("ignore")
            flex = with_impl(m, "flex")(idx, prefix_len=p)
        torch.testing.assert_close(flex, ref, atol=2e-5, rtol=1e-4)


@torch.no_grad()
def test_kv_cached_forward_equals_full_forward():
    m = model().eval()
    idx, p = random_ids(2, 30), 12
    full = m(idx, prefix_len=p)
    cache = m.new_cache(2, 30)
    parts = [m(idx[:, :p], prefix_len=p, cache=cache)]  # prefill the whole prefix
    parts.append(m(idx[:, p : p + 5], prefix_len=p, cache=cache, start_pos=p))  # several new tokens at once
    for t in range(p + 5, 30):  # then one at a time
        parts.append(m(idx[:, t : t + 1], prefix_len=p, cache=cache, start_pos=t))
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=2e-5, rtol=1e-4)


@torch.no_grad()
def test_text_embeddings_enter_at_their_slots_only():
    m = model().eval()
    video = torch.randint(0, VOCAB.visual_size, (2, 2, 2))
    seq = SequenceBuilder(VOCAB, text_slots=4).text_to_video(video)
    idx, pos = seq.tokens[None], seq.text_positions[None]
    text = torch.randn(1, 4, m.cfg.text_dim)
    plain = m(idx, prefix_len=seq.prefix_len)
    with_text = m(idx, text=text, text_positions=pos, prefix_len=seq.prefix_len)
    assert not torch.allclose(with_text, plain, atol=1e-4)
    unused = m(idx, text=text, text_positions=torch.full_like(pos, -1), prefix_len=seq.prefix_len)
    torch.testing.assert_close(unused, plain)  # -1: the slot keeps the <text> embedding
    # Only the filled slots' embeddings matter: changing the text of an unfilled slot changes nothing.
    half = pos.clone()
    half[:, 2:] = -1
    text2 = text.clone()
    text2[:, 2:] += 1
    torch.testing.assert_close(
        m(idx, text=text, text_positions=half, prefix_len=seq.prefix_len),
        m(idx, text=text2, text_positions=half, prefix_len=seq.prefix_len),
    )


def _batch():
    b = SequenceBuilder(VOCAB, text_slots=3)
    g = torch.Generator().manual_seed(3)
    video = torch.randint(0, VOCAB.visual_size, (3, 3, 3), generator=g)
    audio = torch.randint(0, VOCAB.audio_codebook_size, (VOCAB.audio_levels, 5), generator=g)
    seqs = [b.text_to_video(video), b.frame_prediction(video[:1], video[1:]), b.video_to_audio(video, audio)]
    batch = collate(seqs)
    text = torch.randn(3, 3, 384, generator=g)
    return batch, text


def test_chunked_loss_equals_full_logits_cross_entropy_with_gradients():
    m = model()
    batch, text = _batch()
    kw = dict(text=text, text_positions=batch.text_positions, prefix_len=batch.prefix_len)
    out = m.loss(batch.tokens, batch.loss_mask, chunk_size=7, **kw)
    grads = torch.autograd.grad(out.loss, list(m.parameters()))

    logits = m(batch.tokens, **kw)[:, :-1]  # (B, T-1, V): the plain, all-logits way
    tgt = batch.tokens[:, 1:].masked_fill(~batch.loss_mask[:, 1:], -100)
    per = F.cross_entropy(logits.transpose(1, 2), tgt, reduction="none")  # (B, T-1), 0 where ignored
    ref = per.sum() / batch.loss_mask[:, 1:].sum()
    ref_grads = torch.autograd.grad(ref, list(m.parameters()))
    torch.testing.assert_close(out.loss, ref)
    torch.testing.assert_close(out.sums, per.sum(1).detach())
    assert out.counts.tolist() == batch.loss_mask[:, 1:].sum(1).tolist()
    for (name, _), g, r in zip(m.named_parameters(), grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-6, rtol=1e-4, msg=name)


def test_chunked_cross_entropy_keeps_no_full_logits_for_backward():
    N, d, V = 96, 8, 500
    h = torch.randn(N, d, requires_grad=True)
    w = torch.randn(V, d, requires_grad=True)
    t = torch.randint(0, V, (N,))
    saved: list[int] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda x: saved.append(x.numel()) or x, lambda x: x):
        loss = chunked_cross_entropy(h, w, t, chunk_size=16).sum()
    assert max(saved) < 16 * V  # not even one chunk's logits are kept: backward recomputes them per chunk
    loss.backward()
    ref_h, ref_w = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    F.cross_entropy(F.linear(h, w), t, reduction="sum").backward()
    torch.testing.assert_close(h.grad, ref_h)
    torch.testing.assert_close(w.grad, ref_w)


@pytest.mark.parametrize("autocast", [False, True])
def test_kept_logits_give_the_same_gradients_as_recomputed_ones_and_are_released(autocast):
    g = torch.Generator().manual_seed(3)
    N, d, V = 50, 8, 301
    h = torch.randn(N, d, generator=g, requires_grad=True)
    w = (0.3 * torch.randn(V, d, generator=g)).requires_grad_()
    t = torch.randint(0, V, (N,), generator=g)
    up = torch.rand(N, generator=g)
    grads, kept = [], []
    for keep in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            per = chunked_cross_entropy(h, w, t, chunk_size=10, keep_logits=keep)
        kept.append(sum(x.numel() for x in per.grad_fn.kept))
        grads.append((per.detach(), *torch.autograd.grad((per * up).sum(), (h, w))))
        assert per.grad_fn.kept == []  # nothing outlives the backward
    assert kept == [0, N * V]  # every chunk's logits were held between forward and backward
    for a, b in zip(*grads):
        assert torch.equal(a, b)  # the same logits, so the very same numbers


@pytest.mark.parametrize("chunk_size", [1, 7, 40, 1000])
def test_chunked_cross_entropy_matches_the_full_logits_for_any_chunking_and_upstream_gradient(chunk_size):
    g = torch.Generator().manual_seed(chunk_size)
    N, d, V = 40, 6, 37  # V not a multiple of most chunk widths: uneven last chunks
    h = torch.randn(N, d, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(V, d, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, V, (N,), generator=g)
    t[:3] = torch.tensor([0, V - 1, V // 2])  # first, last and a middle column
    up = torch.rand(N, generator=g, dtype=torch.float64)  # per-token weights, as the masked mean gives
    per = chunked_cross_entropy(h, w, t, chunk_size=chunk_size)
    ref = F.cross_entropy(F.linear(h, w), t, reduction="none")
    torch.testing.assert_close(per, ref)
    gh, gw = torch.autograd.grad((per * up).sum(), (h, w))
    rh, rw = torch.autograd.grad((ref * up).sum(), (h, w))
    torch.testing.assert_close(gh, rh)
    torch.testing.assert_close(gw, rw)
    # only the input that needs a gradient gets one
    h2 = h.detach()
    (gw2,) = torch.autograd.grad(chunked_cross_entropy(h2, w, t, chunk_size).sum(), (w,))
    torch.testing.assert_close(
        gw2, torch.autograd.grad(F.cross_entropy(F.linear(h2, w), t, reduction="sum"), w)[0]
    )


def test_chunked_cross_entropy_under_bf16_autocast_keeps_fp32_params_grads_close():
    g = torch.Generator().manual_seed(0)
    N, d, V = 64, 32, 300
    h = torch.randn(N, d, generator=g, requires_grad=True)
    w = (0.1 * torch.randn(V, d, generator=g)).requires_grad_()
    t = torch.randint(0, V, (N,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        per = chunked_cross_entropy(h, w, t, chunk_size=8)
    assert per.dtype == torch.float32
    per.mean().backward()
    assert h.grad.dtype == torch.float32 and w.grad.dtype == torch.float32
    ref = F.cross_entropy(F.linear(h, w), t, reduction="none")
    rh, rw = torch.autograd.grad(ref.mean(), (h, w))
    torch.testing.assert_close(per, ref.detach(), atol=0.05, rtol=0.02)  # bf16 matmuls
    torch.testing.assert_close(h.grad, rh, atol=2e-3, rtol=0.05)
    torch.testing.assert_close(w.grad, rw, atol=2e-3, rtol=0.05)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_fused_cross_entropy_matches_full_logits_under_bf16_autocast_for_changing_token_counts():
    """The Inductor-fused chunk passes on CUDA: same loss and gradients as full logits, for several token counts
    (a new count must not break the compiled passes) and a vocabulary that is not a multiple of the chunk."""
    g = torch.Generator(device="cuda").manual_seed(0)
    V, d = 50_003, 256
    w = (0.02 * torch.randn(V, d, device="cuda", generator=g)).requires_grad_()
    for N in (1024, 1536, 777):
        h = torch.randn(N, d, device="cuda", generator=g, requires_grad=True)
        t = torch.randint(0, V, (N,), device="cuda", generator=g)
        up = torch.rand(N, device="cuda", generator=g)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            per = chunked_cross_entropy(h, w, t, chunk_size=256)
        gh, gw = torch.autograd.grad((per * up).sum(), (h, w))
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = F.linear(h, w).float()
        ref = F.cross_entropy(logits, t, reduction="none")
        rh, rw = torch.autograd.grad((ref * up).sum(), (h, w))
        torch.testing.assert_close(per, ref, atol=2e-2, rtol=1e-2)
        torch.testing.assert_close(gh, rh, atol=2e-3, rtol=2e-2)
        torch.testing.assert_close(gw, rw, atol=2e-3, rtol=2e-2)


def test_activation_checkpointing_flag_gives_the_same_gradients():
    batch, text = _batch()
    kw = dict(text=text, text_positions=batch.text_positions, prefix_len=batch.prefix_len)
    grads = []
    for flag in (False, True):
        m = model()
        m.gradient_checkpointing = flag
        m.loss(batch.tokens, batch.loss_mask, **kw).loss.backward()
        grads.append([p.grad for p in m.parameters()])
    for g0, g1 in zip(*grads):
        torch.testing.assert_close(g0, g1)


def test_tiny_model_overfits_one_sequence():
    torch.manual_seed(0)
    m = VideoPoetLM(LMConfig.from_name("debug", n_layer=1))
    video = torch.randint(0, VOCAB.visual_size, (2, 4, 4))
    seq = SequenceBuilder(VOCAB, text_slots=4).text_to_video(video)
    batch = collate([seq])
    text = torch.randn(1, 4, m.cfg.text_dim)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.0)
    start = time.perf_counter()
    first = None
    for _ in range(150):
        out = m.loss(
            batch.tokens,
            batch.loss_mask,
            text=text,
            text_positions=batch.text_positions,
            prefix_len=batch.prefix_len,
        )
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        first = first if first is not None else out.loss.item()
    elapsed = time.perf_counter() - start
    assert first > 5.0 and out.loss.item() < 0.05, (first, out.loss.item())
    assert elapsed < 30, f"{elapsed:.1f} s"


def test_size_table_in_the_docstring_is_current():
    assert size_table() in lm_module.__doc__


def test_flops_per_token_and_param_counts():
    m = model()
    c = m.cfg
    embed = m.tok_emb.weight.numel()
    assert m.num_params() == sum(p.numel() for p in m.parameters())
    assert m.num_params(exclude_embedding=True) == m.num_params() - embed - m.lm_head.weight.numel()
    assert (
        m.flops_per_token(100) == 6 * (m.num_params() - embed) + 12 * c.n_layer * c.n_head * c.head_dim * 100
    )
    with torch.device("meta"):
        big = VideoPoetLM(LMConfig.from_name("300M"))
    assert 300e6 <= big.num_params(exclude_embedding=True) <= 320e6 and big.cfg.vocab_size == Vocab().size


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="d_model"):
        LMConfig.from_name("debug", d_model=66)
    with pytest.raises(ConfigError, match="known sizes"):
        LMConfig.from_name("2B")
    with pytest.raises(ConfigError, match="attn_impl"):
        LMConfig.from_name("debug", attn_impl="xformers")


def test_head_vocabulary_chunks_have_aligned_widths(monkeypatch):
    """Every vocabulary chunk of the fused cross-entropy is a multiple of 8 columns wide (16-byte aligned bf16
    rows: the Hopper GEMM kernels need it), for awkward token counts too, and the loss does not change."""
    from videopoet.model import lm as lm_module

    seen = []
    real = lm_module._LinearCrossEntropy.apply
    monkeypatch.setattr(
        lm_module._LinearCrossEntropy,
        "apply",
        lambda h, w, t, cols, keep: seen.append(cols) or real(h, w, t, cols, keep),
    )
    g = torch.Generator().manual_seed(0)
    V, d = 2000, 16
    w = torch.randn(V, d, generator=g, dtype=torch.float64)
    for N in (7, 300, 1234):
        h = torch.randn(N, d, generator=g, dtype=torch.float64)
        t = torch.randint(0, V, (N,), generator=g)
        ce = lm_module.chunked_cross_entropy(h, w, t, chunk_size=97)
        ref = torch.nn.functional.cross_entropy(h @ w.T, t, reduction="none")
        assert torch.allclose(ce, ref)
        if N <= 97:  # at most chunk_size tokens: one chunk, the whole vocabulary
            assert seen[-1] == V
        else:
            assert seen[-1] < V and seen[-1] % 8 == 0, seen[-1]
