"""MAGVIT-v2 tokenizer: causality, image/video consistency, shapes, LFQ bits and entropy, checkpoints,
discriminator regularizers, 2D->3D inflation, and overfitting a real clip. CPU, debug size."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from videopoet.core.config import ConfigError
from videopoet.core.errors import UserError
from videopoet.tokenizers.magvit2 import (
    LFQ,
    Discriminator3D,
    MagvitConfig,
    MagvitV2,
    annealed_weight,
    bits_to_indices,
    deflate_state_dict,
    indices_to_bits,
    inflate_conv_weight,
    inflate_state_dict,
    lecam_regularizer,
    per_frame,
    r1_penalty,
)
from videopoet.tokenizers.magvit2.layers import CausalConv3d

# The overfit test learns the first frames of this real clip (see tests/assets/LICENSES.md); it is
# skipped if the file is missing.
OVERFIT_CLIP = "video_cockatoo_3s.mp4"
OVERFIT_STEPS = 40
OVERFIT_MIN_PSNR = 20.0  # dB on 5x32x32; the untrained model gives ~11 dB, 40 steps ~22.7 dB (Adam 2e-3)


def clip(b: int = 1, t: int = 17, h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, t, h, w, generator=g) * 2 - 1


@pytest.fixture(scope="module")
def model() -> MagvitV2:
    torch.manual_seed(0)
    return MagvitV2(MagvitConfig.from_name("debug")).eval()


# ---- causality and the image/video contract -------------------------------------------------------


@pytest.fixture(scope="module")
def video_latents(model):
    x = clip()
    with torch.no_grad():
        return x, model.encode_latents(x)


@pytest.mark.parametrize("frame", [1, 4, 5, 16])
def test_encoder_is_causal(model, video_latents, frame):
    """Changing frame t leaves every latent and code before t's latent (ceil(t / 4)) bit-identical."""
    x, zx = video_latents
    y = x.clone()
    y[:, :, frame] = torch.rand_like(y[:, :, frame]) * 2 - 1
    with torch.no_grad():
        zy = model.encode_latents(y)
    cx, cy = model.quantize(zx)[1], model.quantize(zy)[1]
    j = math.ceil(frame / 4)
    assert torch.equal(zx[:, :, :j], zy[:, :, :j])
    assert torch.equal(cx[:, :j], cy[:, :j])
    assert not torch.equal(zx[:, :, j], zy[:, :, j]), "the frame's own latent must see the change"
    assert torch.equal(model.encode(y), cy)


def test_decoder_is_causal(model):
    """Output frame f depends only on latents <= ceil(f / 4): changing latent 2 leaves frames 0..4 alone."""
    codes = model.encode(clip())
    other = codes.clone()
    other[:, 2] = (other[:, 2] + 1) % model.vocab_size
    a, b = model.decode(codes), model.decode(other)
    assert torch.equal(a[:, :, :5], b[:, :, :5])
    assert not torch.equal(a[:, :, 5:9], b[:, :, 5:9])


def test_image_tokens_are_first_frame_tokens(model, video_latents):
    """An image is a 1-frame video: its tokens equal latent 0 of any video starting with that frame."""
    video, z_video = video_latents
    image = video[:, :, :1]
    with torch.no_grad():
        z_image = model.encode_latents(image)
    assert z_image.shape[2] == 1
    torch.testing.assert_close(z_image[:, :, 0], z_video[:, :, 0])
    codes = model.encode(image)
    assert torch.equal(codes[:, 0], model.quantize(z_video)[1][:, 0])
    assert model.decode(codes).shape == (1, 3, 1, 32, 32)


# ---- shapes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", ["debug", "base"])
@pytest.mark.parametrize(
    ("frames", "height", "width", "latent"),
    [
        (17, 128, 128, (5, 16, 16)),
        (17, 224, 128, (5, 28, 16)),  # portrait: 128 wide, 224 tall
        (41, 128, 128, (11, 16, 16)),
        (41, 224, 128, (11, 28, 16)),
        (1, 224, 128, (1, 28, 16)),
    ],
)
def test_shape_arithmetic(size, frames, height, width, latent):
    """Runs the real module graph on the meta device (shapes only, no arithmetic)."""
    with torch.device("meta"):
        m = MagvitV2(MagvitConfig.from_name(size)).eval()
    x = torch.empty(2, 3, frames, height, width, device="meta")
    q, codes = m.quantize(m.encode_latents(x))
    assert codes.shape == (2, *latent) and codes.dtype == torch.int64
    assert m.latent_shape(frames, height, width) == latent
    assert m.decode_latents(q).shape == x.shape


def test_17x128x128_is_1280_tokens(model):
    codes = model.encode(clip(t=17, h=128, w=128))
    assert codes.shape == (1, 5, 16, 16) and codes.numel() == 1280
    assert codes.min() >= 0 and codes.max() < 2**10


@pytest.mark.parametrize(
    ("frames", "height", "width"), [(17, 32, 32), (41, 32, 32), (9, 56, 32), (1, 24, 40)]
)
def test_decode_encode_shapes(model, frames, height, width):
    x = clip(t=frames, h=height, w=width)
    y = model.decode(model.encode(x))
    assert y.shape == x.shape and y.dtype == torch.float32
    assert y.min() >= -1 and y.max() <= 1


@pytest.mark.parametrize("shape", [(1, 3, 16, 32, 32), (1, 3, 17, 30, 32), (1, 3, 32, 32), (1, 4, 1, 32, 32)])
def test_bad_shapes_raise_user_errors(model, shape):
    with pytest.raises(UserError, match="MAGVIT-v2"):
        model.encode(torch.zeros(shape))


def test_decode_rejects_foreign_codes(model):
    with pytest.raises(UserError, match=r"\[0, 1024\)"):
        model.decode(torch.full((1, 1, 4, 4), 1024))


def test_eval_is_deterministic_and_batch_independent(model):
    x = clip(b=2, t=9)
    with torch.no_grad():
        z = model.encode_latents(x)
        torch.testing.assert_close(model.encode_latents(x[1:]), z[1:])
    assert torch.equal(model.encode(x), model.encode(x))


def test_channels_last_gives_the_same_latents():
    torch.manual_seed(0)
    m = MagvitV2(MagvitConfig.from_name("debug")).eval()
    x = clip(b=2, t=5)
    with torch.no_grad():
        z, y = m.encode_latents(x), m.decode(m.encode(x))
        m.channels_last_(True)
        torch.testing.assert_close(m.encode_latents(x), z, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(m.decode(m.encode(x)), y, atol=1e-5, rtol=1e-5)


def test_bf16_autocast_keeps_quantizer_fp32(model):
    x = clip(b=1, t=5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = model.encode_latents(x)
        out = model.quantizer(z)
        total, parts = model.loss(x)
    assert z.dtype == torch.bfloat16
    assert out.quantized.dtype == torch.float32 and out.normalized.dtype == torch.float32
    assert set(out.quantized.unique().tolist()) <= {-1.0, 1.0}
    assert torch.isfinite(total) and parts["entropy"].dtype == torch.float32


# ---- LFQ ------------------------------------------------------------------------------------------


def test_bits_round_trip_and_order():
    idx = torch.randint(0, 2**18, (1000,))
    bits = indices_to_bits(idx, 18)
    assert bits.shape == (1000, 18) and set(bits.unique().tolist()) <= {0, 1}
    assert torch.equal(bits_to_indices(bits), idx)
    # LSB first: token 1 has only code dim 0 set, token 2^17 only dim 17.
    assert indices_to_bits(torch.tensor(1), 18).nonzero().flatten().tolist() == [0]
    assert indices_to_bits(torch.tensor(2**17), 18).nonzero().flatten().tolist() == [17]


def test_lfq_quantizes_to_signs_and_inverts_codes():
    lfq = LFQ(18, scale=0.5)
    idx = torch.randint(0, 2**18, (2, 3, 4, 5))
    codes = lfq.indices_to_codes(idx)  # (2, 18, 3, 4, 5)
    assert codes.shape == (2, 18, 3, 4, 5) and set(codes.unique().tolist()) == {-0.5, 0.5}
    out = lfq(codes * torch.rand_like(codes) * 3)  # any positive rescaling keeps every sign
    assert torch.equal(out.indices, idx)
    assert torch.equal(out.quantized, codes)
    # bit i of the token is channel i
    z = torch.full((1, 18), -1.0)
    z[0, 5] = 1.0
    assert lfq(z).indices.item() == 2**5


def test_lfq_straight_through_gradient():
    lfq = LFQ(6)
    z = torch.randn(4, 6, requires_grad=True)
    out = lfq(z)
    assert torch.equal(out.quantized.abs(), torch.ones(4, 6))
    (out.quantized * torch.randn(4, 6)).sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def brute_force_entropy(z: torch.Tensor, inv_temperature: float) -> tuple[float, float]:
    """(mean per-token entropy, entropy of the mean) over the full {-1, 1}^K codebook, distance-based."""
    k = z.shape[1]
    codebook = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=k)), dtype=torch.float64)
    logits = -torch.cdist(z.double(), codebook).square() * inv_temperature
    p = logits.softmax(-1)
    h = lambda q: -(q * q.clamp_min(1e-300).log()).sum(-1)  # noqa: E731
    return h(p).mean().item(), h(p.mean(0)).item()


@pytest.mark.parametrize("inv_temperature", [0.5, 3.0])
def test_entropy_loss_matches_brute_force(inv_temperature):
    g = torch.Generator().manual_seed(1)
    z = torch.randn(3, 6, 4, 5, generator=g)  # 60 tokens of K = 6 bits
    lfq = LFQ(6, group_bits=6, inv_temperature=inv_temperature)
    zn = lfq(z).normalized
    flat = zn.movedim(1, -1).reshape(-1, 6)
    per_token, codebook = brute_force_entropy(flat, inv_temperature)
    losses = lfq.losses(zn)
    assert losses["per_token_entropy"].item() == pytest.approx(per_token, rel=1e-5)
    assert losses["codebook_entropy"].item() == pytest.approx(codebook, rel=1e-5)
    assert losses["entropy"].item() == pytest.approx(per_token - codebook, rel=1e-5, abs=1e-6)

    # Two groups of 3 bits: the per-token term stays exact, the codebook term is an upper bound.
    grouped = LFQ(6, group_bits=3, inv_temperature=inv_temperature).losses(zn)
    assert grouped["per_token_entropy"].item() == pytest.approx(per_token, rel=1e-5)
    assert grouped["codebook_entropy"].item() >= codebook - 1e-6


def test_grouped_entropy_is_exact_for_independent_groups():
    """A batch made of every pairing (a_i, b_j) of two sets of half-vectors has independent bit groups,
    so the factorized codebook entropy equals the exact one (`losses` takes the latent as given)."""
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(5, 3, generator=g), torch.randn(7, 3, generator=g)
    z = torch.cat([a.repeat_interleave(7, 0), b.repeat(5, 1)], dim=1)  # (35, 6)
    exact = LFQ(6, group_bits=6, inv_temperature=2.0).losses(z)
    grouped = LFQ(6, group_bits=3, inv_temperature=2.0).losses(z)
    assert grouped["codebook_entropy"].item() == pytest.approx(exact["codebook_entropy"].item(), rel=1e-5)
    assert grouped["entropy"].item() == pytest.approx(exact["entropy"].item(), rel=1e-5, abs=1e-6)
    # ... while for a batch whose halves are correlated (b = a) the factorized entropy overestimates.
    corr = torch.cat([a, a], dim=1)
    assert (
        LFQ(6, group_bits=3, inv_temperature=2.0).losses(corr)["codebook_entropy"]
        > LFQ(6, group_bits=6, inv_temperature=2.0).losses(corr)["codebook_entropy"] + 0.1
    )


def test_entropy_gradient_is_finite_when_softmax_underflows():
    lfq = LFQ(10, inv_temperature=100.0)
    z = (torch.randn(2, 10, 2, 2) * 5).requires_grad_(True)
    losses = lfq.losses(lfq(z).normalized)
    (losses["entropy"] + losses["commitment"]).backward()
    assert torch.isfinite(z.grad).all()


def test_entropy_weight_anneals_then_holds():
    cfg = MagvitConfig.from_name("debug")
    assert cfg.entropy_weight_at(0) == pytest.approx(0.3)
    assert cfg.entropy_weight_at(1000) == pytest.approx(0.2)
    assert cfg.entropy_weight_at(2000) == pytest.approx(0.1)
    assert cfg.entropy_weight_at(10**6) == pytest.approx(0.1)
    assert annealed_weight(5, 0.1, 0, 3.0) == 0.1


# ---- losses, discriminator ------------------------------------------------------------------------


def test_generator_loss_parts_and_gradients(model):
    m = MagvitV2(model.cfg).train()
    m.load_state_dict(model.state_dict())
    d = Discriminator3D(m.cfg.discriminator)
    calls = []

    def perceptual(recon, target):
        calls.append((recon.shape, target.shape))
        return F.l1_loss(recon, target)

    x = clip(b=2, t=5)
    total, parts = m.loss(x, step=0, discriminator=d, perceptual=perceptual)
    assert {"recon", "commitment", "entropy", "g_adversarial", "perceptual", "psnr"} <= parts.keys()
    assert calls == [(x.shape, x.shape)]
    total.backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)
    assert m.encoder.conv_in.weight.grad.abs().sum() > 0, "gradients must reach the encoder through LFQ"
    _, plain = m.loss(x)
    assert "g_adversarial" not in plain and "perceptual" not in plain


def test_per_frame_folds_time_into_batch():
    seen = []
    loss = per_frame(lambda a, b: (seen.append(a.shape), (a - b).abs().mean())[1])
    assert loss(torch.ones(2, 3, 5, 8, 8), torch.zeros(2, 3, 5, 8, 8)).item() == 1.0
    assert seen == [(10, 3, 8, 8)]


@pytest.mark.parametrize(("t", "h", "w"), [(17, 32, 32), (1, 56, 32)])
def test_discriminator_loss_r1_lecam_finite(t, h, w):
    torch.manual_seed(0)
    d = Discriminator3D(MagvitConfig.from_name("debug").discriminator).train()
    real, fake = clip(b=2, t=t, h=h, w=w), clip(b=2, t=t, h=h, w=w, seed=1)
    total, parts = d.loss(real, fake)
    assert torch.isfinite(total)
    assert parts["r1"] > 0 and torch.isfinite(parts["lecam"])
    total.backward()
    assert all(torch.isfinite(p.grad).all() for p in d.parameters())
    assert bool(d.ema_initialized) and d.ema_real.item() == pytest.approx(parts["logits_real"].item())


def test_r1_is_zero_gradient_safe():
    d = Discriminator3D(MagvitConfig.from_name("debug").discriminator)
    for p in d.parameters():  # a D whose output is constant: grad_x D = 0 exactly
        torch.nn.init.zeros_(p)
    real = clip(b=2, t=5).requires_grad_(True)
    penalty = r1_penalty(real, d(real))
    assert penalty.item() == 0.0
    penalty.backward()
    assert all(torch.isfinite(p.grad).all() for p in d.parameters() if p.grad is not None)
    # and a "discriminator" that ignores its input entirely (no gradient path at all)
    w = torch.ones((), requires_grad=True)
    unused = r1_penalty(clip(b=2, t=1).requires_grad_(True), w.expand(2) * 3)
    unused.backward()
    assert unused.item() == 0.0 and torch.isfinite(w.grad)


def test_lecam_pulls_towards_the_other_sides_ema():
    real, fake = torch.tensor([2.0, 0.0]), torch.tensor([-1.0, 1.0])
    # relu(D(x) - ema_fake)^2 mean + relu(ema_real - D(G(z)))^2 mean
    expected = ((2.0 - 0.5) ** 2 + 0.0) / 2 + ((1.0 + 1.0) ** 2 + 0.0) / 2
    assert lecam_regularizer(real, fake, torch.tensor(1.0), torch.tensor(0.5)).item() == pytest.approx(
        expected
    )


# ---- checkpoints, sizes, config ---------------------------------------------------------------------


@pytest.mark.parametrize("where", ["memory", "local"])
def test_checkpoint_round_trip(model, tmp_path, where):
    url = "memory://magvit2-test/ckpt" if where == "memory" else str(tmp_path / "ckpt")
    model.save_pretrained(url)
    loaded = MagvitV2.from_pretrained(url)
    assert loaded.cfg == model.cfg and not loaded.training
    x = clip(b=2, t=9)
    codes = model.encode(x)
    assert torch.equal(loaded.encode(x), codes)
    assert torch.equal(loaded.decode(codes), model.decode(codes))


def test_bf16_checkpoint_is_half_the_size(model, tmp_path):
    model.save_pretrained(str(tmp_path / "fp32"))
    model.save_pretrained(str(tmp_path / "bf16"), dtype=torch.bfloat16)
    size = lambda p: (p / "model.safetensors").stat().st_size  # noqa: E731
    assert size(tmp_path / "bf16") < 0.55 * size(tmp_path / "fp32")
    x = clip(t=5)
    loaded = MagvitV2.from_pretrained(str(tmp_path / "bf16"))
    assert loaded.dtype == torch.float32 and loaded.encode(x).shape == (1, 2, 4, 4)
    pure = MagvitV2.from_pretrained(str(tmp_path / "bf16"), dtype=torch.bfloat16)  # bf16 weights, fp32 LFQ
    assert pure.dtype == torch.bfloat16
    assert (pure.encode(x) == model.encode(x)).float().mean() > 0.9
    assert pure.decode(pure.encode(x)).dtype == torch.float32


def test_missing_checkpoint_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no MAGVIT-v2 checkpoint"):
        MagvitV2.from_pretrained(str(tmp_path / "nothing"))


def test_named_sizes():
    def gen_params(name: str) -> int:
        with torch.device("meta"):
            m = MagvitV2(MagvitConfig.from_name(name))
        return sum(p.numel() for p in m.parameters())

    assert gen_params("debug") < 1_000_000
    assert gen_params("small") * 2 <= 25e6  # <= 25 MB as a bf16 safetensors file
    assert gen_params("base") > 100_000_000
    assert MagvitConfig.from_name("small").codebook_bits == 18
    assert MagvitConfig.from_name("debug", codebook_bits=8, entropy_group_bits=4).codebook_bits == 8


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="norm_groups"):
        MagvitConfig(channels=24, norm_groups=32)
    with pytest.raises(ConfigError, match="time_downsample"):
        MagvitConfig(time_downsample=(True,))
    with pytest.raises(ConfigError, match="unknown MAGVIT-v2 size"):
        MagvitConfig.from_name("huge")


# ---- 2D -> 3D inflation -----------------------------------------------------------------------------


def test_inflated_conv_acts_per_frame():
    w2 = torch.randn(6, 4, 3, 3)
    conv = CausalConv3d(4, 6, 3)
    with torch.no_grad():
        conv.weight.copy_(inflate_conv_weight(w2, 3))
    x = torch.randn(2, 4, 5, 8, 8)
    expected = torch.stack([F.conv2d(x[:, :, t], w2, conv.bias, padding=1) for t in range(5)], dim=2)
    torch.testing.assert_close(conv(x), expected)


def test_inflated_model_matches_the_image_model_per_frame():
    """Inflate a 2D (image) state dict: frame 0 (and every 4th frame) is encoded as that image alone."""
    torch.manual_seed(0)
    m = MagvitV2(MagvitConfig.from_name("debug")).eval()
    state_2d = deflate_state_dict(m)
    assert state_2d["encoder.conv_in.weight"].ndim == 4
    state_3d, kept = inflate_state_dict(state_2d, m)
    assert kept == []
    m.load_state_dict(state_3d)
    x = clip(t=9)
    with torch.no_grad():
        z = m.encode_latents(x)
        for j in range(3):
            torch.testing.assert_close(z[:, :, j], m.encode_latents(x[:, :, 4 * j : 4 * j + 1])[:, :, 0])
    with pytest.raises(ValueError, match="cannot inflate"):
        inflate_state_dict({"encoder.conv_in.weight": torch.zeros(3, 3, 3, 3)}, m)


# ---- learning on real footage ---------------------------------------------------------------------


def real_clip(path, frames: int = 5, size: int = 32) -> torch.Tensor:
    """The first `frames` frames of a video, centre-cropped square, area-resized, in [-1, 1]: (1, 3, T, s, s)."""
    import av
    import numpy as np

    if not path.exists():
        pytest.skip(f"test asset {path} is missing (a real clip; see tests/assets/LICENSES.md)")
    with av.open(str(path)) as container:
        rgb = [f.to_ndarray(format="rgb24") for f in itertools.islice(container.decode(video=0), frames)]
    x = torch.from_numpy(np.stack(rgb)).permute(3, 0, 1, 2).float() / 127.5 - 1  # (3, T, H, W)
    h, w = x.shape[-2:]
    s = min(h, w)
    x = x[:, :, (h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
    return F.interpolate(x, size=(size, size), mode="area")[None]  # (1, 3, T, size, size)


def test_debug_model_overfits_a_real_clip(assets):
    x = real_clip(assets / OVERFIT_CLIP)
    torch.manual_seed(0)
    m = MagvitV2(MagvitConfig.from_name("debug"))
    opt = torch.optim.Adam(m.parameters(), lr=2e-3)

    def psnr() -> float:
        m.eval()
        y = m.decode(m.encode(x))
        m.train()
        return (10 * torch.log10(4 / F.mse_loss(y, x))).item()

    before = psnr()
    for step in range(OVERFIT_STEPS):
        total, _ = m.loss(x, step=step)
        opt.zero_grad()
        total.backward()
        opt.step()
    after = psnr()
    assert after >= OVERFIT_MIN_PSNR and after >= before + 8, (before, after)


@pytest.mark.gpu
def test_gpu_bf16_train_step_and_eval():
    torch.manual_seed(0)
    m = MagvitV2(MagvitConfig.from_name("debug")).cuda().channels_last_(True)
    d = Discriminator3D(m.cfg.discriminator).cuda()
    x = clip(b=2, t=9, h=64, w=64).cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        rec = m.reconstruct(x)
        total, parts = m.loss_terms(x, rec, discriminator=d)
        d_total, _ = d.loss(x, rec.recon)
    assert rec.normalized.dtype == torch.float32
    (total + d_total).backward()
    assert torch.isfinite(total) and torch.isfinite(d_total)
    m.eval()
    assert m.device.type == "cuda"
    assert torch.equal(m.encode(x), m.encode(x))
    assert torch.equal(m.encode(x[:, :, :1])[:, 0].cpu(), m.encode(x)[:, 0].cpu())
