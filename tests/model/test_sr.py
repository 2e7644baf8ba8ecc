"""SR transformer: windowed attention against full attention under the same-window mask, token factorization,
the mask schedule, what the model may and may not read, guided iterative decoding, and learning a mapping."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from videopoet.model import sr as sr_module
from videopoet.model.sr import (
    SRConfig,
    SRTransformer,
    factorize,
    from_windows,
    mask_ratio,
    masked_after_step,
    size_table,
    to_windows,
    unfactorize,
    window_grid,
    window_mask,
)
from videopoet.model.sr_generate import SRSamplingConfig, sample_sr
from videopoet.tokenizers.magvit2 import indices_to_bits

SMALL_WINDOWS = dict(window_vertical=(1, 8, 2), window_horizontal=(1, 2, 8), window_temporal=(3, 2, 4))


def model(seed: int = 0, **overrides) -> SRTransformer:
    torch.manual_seed(seed)
    return SRTransformer(SRConfig.from_name("debug", **{**SMALL_WINDOWS, **overrides})).eval()


def inputs(B=2, grid=(3, 8, 8), bits=10, seed=1, text_len=5):
    g = torch.Generator().manual_seed(seed)
    T, H, W = grid
    hr = torch.randint(0, 2**bits, (B, T, H, W), generator=g)
    lr = torch.randint(0, 2**bits, (B, T, H // 2, W // 2), generator=g)
    mask = torch.rand(B, T, H, W, generator=g) < 0.5
    text = torch.randn(B, text_len, 384, generator=g)
    text_mask = torch.arange(text_len)[None, :] < torch.tensor([[3], [text_len]])[:B]
    return hr, mask, lr, dict(text=text, text_mask=text_mask)


# ---------------------------------------------------------------------------------------------------------
# windows


@pytest.mark.parametrize(
    "grid,window,kv_grid,kv_window",
    [
        ((3, 8, 8), (1, 8, 2), (3, 8, 8), (1, 8, 2)),  # self-attention, vertical
        ((3, 8, 8), (3, 2, 4), (3, 8, 8), (3, 2, 4)),  # self-attention, temporal
        ((3, 8, 8), (1, 2, 8), (3, 4, 4), (1, 1, 4)),  # cross-attention to the LR grid: half the window
        ((5, 12, 8), (5, 4, 4), (5, 6, 4), (5, 2, 2)),
    ],
)
def test_windowed_attention_equals_full_attention_under_the_same_window_mask(
    grid, window, kv_grid, kv_window
):
    g = torch.Generator().manual_seed(0)
    B, nh, hs = 2, 3, 8
    q = torch.randn(B, *grid, nh * hs, generator=g)
    k = torch.randn(B, *kv_grid, nh * hs, generator=g)
    v = torch.randn(B, *kv_grid, nh * hs, generator=g)

    def heads(x):  # (B', L, nh*hs) -> (B', nh, L, hs)
        return x.unflatten(-1, (nh, hs)).transpose(1, 2)

    qw, kw, vw = to_windows(q, window), to_windows(k, kv_window), to_windows(v, kv_window)
    assert qw.shape[0] == kw.shape[0], "the query and key window grids are isomorphic"
    y = F.scaled_dot_product_attention(heads(qw), heads(kw), heads(vw))  # no mask: one window per row
    windowed = from_windows(y.transpose(1, 2).flatten(2), window, grid)  # (B, T, H, W, nh*hs)

    mask = window_mask(grid, window, kv_grid, kv_window)  # (Nq, Nk)
    full = F.scaled_dot_product_attention(
        heads(q.flatten(1, 3)), heads(k.flatten(1, 3)), heads(v.flatten(1, 3)), attn_mask=mask
    )
    full = full.transpose(1, 2).flatten(2).unflatten(1, grid)
    assert torch.allclose(windowed, full, atol=1e-5), (windowed - full).abs().max()
    # and the mask is not trivial: each query sees exactly one window's keys
    assert bool((mask.sum(1) == math.prod(kv_window)).all()) and mask.float().mean() < 1


def test_to_windows_round_trips_and_keeps_each_window_contiguous():
    x = torch.arange(3 * 8 * 8).view(1, 3, 8, 8, 1).float()
    w = to_windows(x, (1, 8, 2))  # (3 frames x 4 column strips, 16 tokens, 1)
    assert w.shape == (12, 16, 1)
    first = w[0, :, 0].long().view(8, 2)  # frame 0, columns 0-1, all rows
    assert torch.equal(first, torch.arange(8)[:, None] * 8 + torch.arange(2)[None, :])
    assert torch.equal(from_windows(w, (1, 8, 2), (3, 8, 8)), x)


def test_the_windowed_model_equals_the_dense_mask_reference():
    m = model()
    dense = SRTransformer(dataclasses.replace(m.cfg, attn_impl="dense")).eval()
    dense.load_state_dict(m.state_dict())
    hr, mask, lr, cond = inputs()
    keep = dict(lr_keep=torch.tensor([True, False]), text_keep=torch.tensor([False, True]))
    with torch.no_grad():
        a, b = m(hr, mask, lr, **cond, **keep), dense(hr, mask, lr, **cond, **keep)
    assert a.shape == (2, 3, 8, 8, 2, 32)
    assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()


def test_paper_windows_on_the_paper_grid_and_their_fit_to_other_grids():
    cfg = SRConfig()
    assert window_grid(cfg, (5, 56, 32)) == [
        ((1, 56, 4), (1, 28, 2)),
        ((1, 8, 32), (1, 4, 16)),
        ((5, 8, 8), (5, 4, 4)),
    ]
    square = window_grid(cfg, (5, 32, 32))  # 256 x 256: the vertical window spans the 32 rows
    assert square[0] == ((1, 32, 4), (1, 16, 2))
    landscape = window_grid(cfg, (5, 32, 56))  # the largest divisor of 56 up to 32 (and even): 28
    assert landscape[1] == ((1, 8, 28), (1, 4, 14))
    for grid in ((5, 56, 32), (5, 32, 32), (5, 32, 56), (1, 32, 32), (3, 8, 8)):
        for hr, lr in window_grid(cfg, grid):
            assert all(g % w == 0 for g, w in zip(grid, hr)), (grid, hr)
            assert [g // w for g, w in zip(grid, hr)] == [
                g // w for g, w in zip((grid[0], grid[1] // 2, grid[2] // 2), lr)
            ]


# ---------------------------------------------------------------------------------------------------------
# factorization and the mask schedule


@pytest.mark.parametrize("bits,k", [(18, 2), (10, 2), (18, 3), (10, 1)])
def test_factorized_heads_round_trip_to_the_full_index(bits, k):
    codes = torch.randint(0, 2**bits, (4, 5, 7, 3))
    codes.view(-1)[:2] = torch.tensor([0, 2**bits - 1])
    f = factorize(codes, bits, k)
    assert f.shape == (*codes.shape, k) and int(f.min()) >= 0 and int(f.max()) < 2 ** (bits // k)
    assert torch.equal(unfactorize(f, bits), codes)
    if (bits, k) == (18, 2):  # 2^18 -> 2 x 512: the low and high 9 bits (MAGVIT-v2's LFQ entropy groups)
        b = indices_to_bits(codes, 18)
        assert torch.equal(indices_to_bits(f[..., 0], 9), b[..., :9])
        assert torch.equal(indices_to_bits(f[..., 1], 9), b[..., 9:])
    m = SRTransformer(SRConfig.from_name("debug", visual_bits=bits, factors=k, **SMALL_WINDOWS))
    assert m.head.out_features == k * 2 ** (bits // k)


def test_cosine_mask_schedule():
    assert float(mask_ratio(0.0)) == pytest.approx(1.0) and float(mask_ratio(1.0)) == pytest.approx(0.0)
    u = torch.linspace(0, 1, 101)
    r = mask_ratio(u)
    assert bool((r[1:] < r[:-1]).all()), "monotone decreasing"
    assert float(r.mean()) == pytest.approx(2 / math.pi, abs=0.01), "E[cos(pi u / 2)] = 2/pi"
    n, steps = 5 * 56 * 32, 24
    left = [masked_after_step(n, s, steps) for s in range(steps)]
    assert left[0] == math.floor(n * math.cos(math.pi / 2 / steps)) and left[-1] == 0
    assert all(a > b for a, b in zip([n, *left], left)), "every step reveals tokens"
    assert left[steps // 2 - 1] == math.floor(n * math.cos(math.pi / 4))


# ---------------------------------------------------------------------------------------------------------
# what the model reads


@torch.no_grad()
def test_masked_positions_are_never_read_and_unmasked_ones_are():
    m = model()
    hr, mask, lr, cond = inputs()
    base = m(hr, mask, lr, **cond)
    other = torch.where(mask, (hr + 1) % 1024, hr)
    assert torch.equal(m(other, mask, lr, **cond), base)
    flip = hr.clone()
    idx = (~mask).nonzero()[0].tolist()
    flip[tuple(idx)] = (flip[tuple(idx)] + 1) % 1024
    assert not torch.allclose(m(flip, mask, lr, **cond), base, atol=1e-5)


@torch.no_grad()
def test_dropped_conditions_are_ignored_and_kept_ones_used():
    m = model()
    hr, mask, lr, cond = inputs()
    other_lr, other_text = (lr + 7) % 1024, torch.randn_like(cond["text"])
    drop = dict(lr_keep=torch.tensor([False, False]), text_keep=torch.tensor([False, False]))
    base = m(hr, mask, lr, **cond, **drop)
    assert torch.equal(m(hr, mask, other_lr, text=other_text, text_mask=cond["text_mask"], **drop), base)
    assert torch.allclose(m(hr, mask, lr, **drop), base, atol=1e-5), "a dropped caption = no caption"
    kept = m(hr, mask, lr, **cond)
    assert not torch.allclose(m(hr, mask, other_lr, **cond), kept, atol=1e-4)
    assert not torch.allclose(m(hr, mask, lr, text=other_text, text_mask=cond["text_mask"]), kept, atol=1e-4)
    # padding embeddings (text_mask False) are ignored
    padded = cond["text"].clone()
    padded[0, 3:] = 100.0
    assert torch.allclose(m(hr, mask, lr, text=padded, text_mask=cond["text_mask"])[0], kept[0], atol=1e-5)


@torch.no_grad()
def test_loss_is_the_factor_summed_cross_entropy_of_the_masked_tokens():
    m = model()
    hr, mask, lr, cond = inputs()
    out = m.loss(hr, mask, lr, **cond)
    logits = m(hr, mask, lr, **cond)  # (B, T, H, W, k, V)
    target = factorize(hr, 10, 2)
    ce = -logits.log_softmax(-1).gather(-1, target[..., None]).squeeze(-1).sum(-1)  # (B, T, H, W)
    assert torch.equal(out.counts, mask.flatten(1).sum(1))
    assert torch.allclose(out.sums, (ce * mask).flatten(1).sum(1), rtol=1e-5)
    assert float(out.loss) == pytest.approx(float(ce[mask].mean()), rel=1e-5)
    assert float(out.loss) == pytest.approx(2 * math.log(32), rel=0.05), "near uniform at init"


def test_flops_and_param_counts():
    m = model()
    c = m.cfg
    emb = sum(p.numel() for mod in (m.hr_emb, m.lr_emb, m.special, m.lr_phase) for p in mod.parameters())
    assert m.num_params(exclude_embedding=True) == m.num_params() - emb
    keys = sum(math.prod(a) + math.prod(b) for a, b in window_grid(c, (3, 8, 8)))
    assert m.flops_per_token((3, 8, 8), 4) == 6 * (m.num_params() - emb) + 12 * 64 * (keys + 5)


def test_size_table_in_the_docstring_is_current():
    assert size_table() in sr_module.__doc__


# ---------------------------------------------------------------------------------------------------------
# sampling


@torch.no_grad()
def test_one_greedy_step_with_guidance_is_the_argmax_of_the_guided_logits():
    m = model()
    _, _, lr, cond = inputs(B=2)
    all_masked = torch.ones(2, 3, 8, 8, dtype=torch.bool)
    zeros = torch.zeros(2, 3, 8, 8, dtype=torch.long)
    no = torch.tensor([False, False])
    l_c = m(zeros, all_masked, lr, **cond)
    l_lr = m(zeros, all_masked, lr, **cond, text_keep=no)
    l_0 = m(zeros, all_masked, lr, **cond, text_keep=no, lr_keep=no)
    for w_lr, w_text in ((1.0, 1.0), (1.0, 3.0), (2.0, 1.0), (2.5, 4.0)):
        sp = SRSamplingConfig(steps=1, temperature=0, lr_guidance=w_lr, text_guidance=w_text)
        got = sample_sr(m, lr, **cond, sampling=sp)
        guided = l_0 + w_lr * (l_lr - l_0) + w_text * (l_c - l_lr)
        assert torch.equal(got, unfactorize(guided.argmax(-1), 10)), (w_lr, w_text)


@torch.no_grad()
def test_iterative_decoding_fills_every_position_reproducibly():
    m = model()
    _, _, lr, cond = inputs(B=2)
    sp = SRSamplingConfig(steps=6, text_guidance=2.0, lr_guidance=1.5)
    a = sample_sr(m, lr, **cond, sampling=sp, generator=torch.Generator().manual_seed(3))
    b = sample_sr(m, lr, **cond, sampling=sp, generator=torch.Generator().manual_seed(3))
    c = sample_sr(m, lr, **cond, sampling=sp, generator=torch.Generator().manual_seed(4))
    assert a.shape == (2, 3, 8, 8) and a.dtype == torch.long and int(a.max()) < 1024
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_a_trained_stage_decodes_its_training_pair_exactly():
    """60 steps on one pair whose HR codes follow from the LR codes and the position: the model learns the mapping,
    and 8-step greedy decoding from the LR codes alone reproduces the HR codes."""
    torch.manual_seed(0)
    m = SRTransformer(SRConfig.from_name("debug", **SMALL_WINDOWS))
    g = torch.Generator().manual_seed(0)
    lr = torch.randint(0, 1024, (1, 1, 4, 4), generator=g)
    phase = (torch.arange(8)[:, None] % 2) * 2 + torch.arange(8)[None, :] % 2
    hr = (lr.repeat_interleave(2, 2).repeat_interleave(2, 3) * 4 + phase) % 1024  # (1, 1, 8, 8)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    for _ in range(60):
        ratio = float(mask_ratio(torch.rand(1, generator=g)))
        mask = torch.rand(1, 1, 8, 8, generator=g) < max(ratio, 1 / 64)
        loss = m.loss(hr, mask, lr).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    got = sample_sr(m, lr, sampling=SRSamplingConfig(steps=8, temperature=0))
    assert loss.item() < 1.0, loss.item()
    assert torch.equal(got, hr), (got != hr).sum()


def test_residual_stream_dtype_under_autocast():
    """The "autocast" residual dtype carries the residual stream in bf16 under autocast (and gets gradients through it); "float32"
    keeps it in fp32; both agree to bf16 precision, and without autocast the option changes nothing."""
    hr, mask, lr, cond = inputs()
    seen = {}
    outs = {}
    for kind in ("autocast", "float32"):
        m = model(residual_dtype=kind).train()
        hook = m.blocks[0].register_forward_hook(
            lambda mod, a, out, kind=kind: seen.__setitem__(kind, out.dtype)
        )
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = m.loss(hr, mask, lr, **cond)
        hook.remove()
        out.loss.backward()
        assert all(p.grad is not None for p in m.blocks.parameters())
        outs[kind] = float(out.loss)
        with torch.no_grad():
            plain = m.loss(hr, mask, lr, **cond)
        assert plain.loss.dtype == torch.float32
    assert seen == {"autocast": torch.bfloat16, "float32": torch.float32}
    assert outs["autocast"] == pytest.approx(outs["float32"], rel=0.02)
    with torch.no_grad():
        a = model(residual_dtype="autocast").loss(hr, mask, lr, **cond).loss
        b = model(residual_dtype="float32").loss(hr, mask, lr, **cond).loss
    assert torch.equal(a, b)
