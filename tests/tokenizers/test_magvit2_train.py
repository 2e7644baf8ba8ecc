"""MAGVIT-v2 training: the JPEG frame cache (round trip, split by source file), batches, image -> video
inflation, a few real training steps of the debug size with the GAN on, exact resume, the released
checkpoint, the metrics (SSIM, codebook usage) and the train-tokenizer job's magvit2 branch. CPU, small."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from videopoet.core.config import describe, from_dict, load_config
from videopoet.core.errors import UserError
from videopoet.jobs import cli
from videopoet.jobs.train_tokenizer import Config as JobConfig
from videopoet.tokenizers.magvit2 import Discriminator3D, MagvitConfig, MagvitV2, inflate_image_trained
from videopoet.tokenizers.magvit2.data import (
    ClipLoader,
    MediaInput,
    PrepareConfig,
    VideoCache,
    cut_windows,
    decode_frames,
    prepare_cache,
)
from videopoet.tokenizers.magvit2.metrics import codebook_stats, psnr, ssim
from videopoet.tokenizers.magvit2.train import TrainConfig, train

REPO = Path(__file__).resolve().parents[2]
ASSETS = REPO / "tests" / "assets"
DEBUG_YAML = REPO / "configs" / "tokenizer" / "magvit2_debug.yaml"
LOSS_KEYS = ("total", "recon", "commitment", "entropy", "psnr", "g_adversarial", "d_adversarial", "d_total")


@pytest.fixture(autouse=True)
def one_thread():
    # one intra-op thread: fast on a shared 2-core runner, and bit-reproducible for the resume test
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def debug_config(**overrides) -> TrainConfig:
    """The run of configs/tokenizer/magvit2_debug.yaml, with overrides (dotted keys as in the job)."""
    job = load_config(JobConfig, str(DEBUG_YAML))
    raw = json.loads(json.dumps(job.magvit2))  # a deep copy
    for key, value in overrides.items():
        node = raw
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return from_dict(TrainConfig, raw, prefix="magvit2.")


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    """The debug config's cache: real clips and photos of tests/assets at short side 48."""
    out = str(tmp_path_factory.mktemp("video_cache"))
    cfg = debug_config()
    inputs = [dataclasses.replace(i, uri=str(REPO / i.uri)) for i in cfg.data.prepare.inputs]
    prepare_cache(dataclasses.replace(cfg.data.prepare, inputs=inputs), out)
    return out


# ---- the cache -------------------------------------------------------------------------------------------
def test_windows_pick_frames_by_time():
    """8 fps windows of a 24 fps video take every 3rd frame; native windows are consecutive frames."""
    times = [i / 24 for i in range(120)]  # 5 s
    cfg = PrepareConfig(window_frames=17, fps=[8.0], native_fps=True, max_windows_per_file=None)
    windows = cut_windows(times, 24.0, cfg)
    at8 = [w for w in windows if w["tag"] == "8fps"]
    native = [w for w in windows if w["tag"] == "native"]
    assert [w["indices"] for w in at8] == [list(range(0, 49, 3)), list(range(51, 100, 3))]  # 2.125 s apart
    assert len(native) == 120 // 17 and native[1]["indices"] == list(range(17, 34))
    capped = cut_windows(times, 24.0, dataclasses.replace(cfg, max_windows_per_file=2))
    assert [w["start_s"] for w in capped if w["tag"] == "native"] == [0.0, times[17 * 6]]  # first and last
    assert cut_windows(times, 6.0, cfg) == [w for w in cut_windows(times, 6.0, cfg) if w["tag"] == "native"]


def test_cache_round_trip(cache):
    """A row holds `window_frames` JPEG frames of its stored size (short side 48) that decode back to the
    source's frames at the window's times (JPEG-close)."""
    from videopoet.pipelines.media import iter_video_frames

    rows = {r["clip_id"]: r for r in VideoCache(cache).rows("train")}
    row = rows["assets/video_cockatoo_3s.mp4@8fps+0.000"]
    assert (row["num_frames"], row["height"], row["width"], row["kind"]) == (17, 48, 85, "video")
    assert row["fps"] == 8.0 and row["source_fps"] == 20.0 and row["license"] == "BSD-2-Clause"
    src = [
        f.image
        for f in iter_video_frames(str(ASSETS / "video_cockatoo_3s.mp4"), width=85, height=48, fmt="rgb24")
    ]
    decoded = decode_frames(row["frames"])
    assert len(decoded) == 17 and all(tuple(f.shape) == (3, 48, 85) for f in decoded)
    for k, i in (
        (0, 0),
        (2, 5),
        (16, 40),
    ):  # frame k of an 8 fps window of a 20 fps video: source frame 2.5 k
        a = decoded[k].permute(1, 2, 0).float()
        b = torch.from_numpy(src[i]).float()
        assert 10 * np.log10(255**2 / float((a - b).square().mean())) > 30
    image = rows["assets/image_astronaut.jpg"]
    assert (image["kind"], image["num_frames"], image["height"], image["width"]) == ("image", 1, 48, 48)


def test_cache_splits_by_source_file(cache, tmp_path):
    index = json.loads((Path(cache) / "index.json").read_text())
    c = VideoCache(cache)
    rows = {s: c.rows(s) for s in ("train", "heldout")}
    assert {r["source"] for r in rows["heldout"]} == {"assets/video_launch_3s.mp4", "assets/image_city.jpg"}
    assert not {r["source"] for r in rows["train"]} & {r["source"] for r in rows["heldout"]}
    for s in index["sources"]:  # every row of a file is on its file's side
        assert all(r["split"] == s["split"] for r in rows[s["split"]] if r["source"] == s["source"])
        assert sum(r["source"] == s["source"] for r in rows[s["split"]]) == s["rows"]

    # auto split: decided per file by a hash, so many windows of one file never straddle the split
    files = [
        ASSETS / n
        for n in ("video_cockatoo_3s.mp4", "video_city_2s.mp4", "video_launch_3s.mp4", "known_cut.mp4")
    ]
    cfg = PrepareConfig(
        inputs=[MediaInput(uri=str(f)) for f in files],
        short_side=32,
        heldout_fraction=0.5,
        max_windows_per_file=3,
    )
    prepare_cache(cfg, str(tmp_path / "auto"))
    auto = VideoCache(str(tmp_path / "auto"))
    train_src = {r["source"] for r in auto.rows("train")}
    held_src = {r["source"] for r in auto.rows("heldout")}
    assert train_src and held_src and not train_src & held_src
    assert len(auto.rows("train")) + len(auto.rows("heldout")) > len(files)  # several windows per file


def test_loader_batches_crops_and_resume(cache):
    c = VideoCache(cache)
    loader = ClipLoader(c, frames=5, crop=(32, 32), seed=0)
    x = loader.video_batch(3)
    assert x.shape == (3, 3, 5, 32, 32) and x.dtype == torch.float32
    assert -1 <= float(x.min()) < float(x.max()) <= 1
    assert loader.image_batch(4).shape == (4, 3, 1, 32, 32)
    portrait = ClipLoader(c, frames=17, crop=(224, 128), seed=0)  # frames are 48 px high: scaled up to fit
    assert portrait.video_batch(1).shape == (1, 3, 17, 224, 128)
    state = loader.state_dict()
    a = loader.video_batch(2)
    loader.load_state_dict(state)
    assert torch.equal(loader.video_batch(2), a)
    with pytest.raises(UserError, match="no train windows of >= 33 frames"):
        ClipLoader(c, frames=33, crop=(32, 32), seed=0).video_batch(1)


def test_still_motion_clips_are_constant_speed_camera_moves_inside_the_image(cache):
    """`still_motion` clips move a box at constant speed over a cached image; a whole-pixel box of the crop's
    size reproduces the plain crop exactly, and the clips resume like video batches."""
    from videopoet.tokenizers.magvit2.data import _move_over

    loader = ClipLoader(VideoCache(cache), frames=5, crop=(32, 32), seed=0, still_motion=1.0, still_zoom=1.3)
    specs = loader.sample_video(64)
    assert all(s.boxes is not None and s.frames == [0] * 5 for s in specs)
    for s in specs:
        h, w = s.size
        b = np.array(s.boxes)  # (T, 4): top, left, height, width
        assert (b[:, 0] >= -1e-6).all() and (b[:, 1] >= -1e-6).all()
        assert (b[:, 0] + b[:, 2] <= h + 1e-6).all() and (b[:, 1] + b[:, 3] <= w + 1e-6).all()
        assert np.allclose(np.diff(b, 2, axis=0), 0, atol=1e-6), "constant speed"
        assert (b[:, 2:] >= 32 - 1e-6).all(), "never upsamples past the stored pixels"
    assert sum(not np.allclose(s.boxes[0], s.boxes[-1]) for s in specs) > 48, "the camera moves"
    x = loader.load(specs[:3])
    assert x.shape == (3, 3, 5, 32, 32) and -1 <= float(x.min()) < float(x.max()) <= 1
    assert not torch.equal(x[:, :, 0], x[:, :, -1])

    image = torch.rand(3, 48, 64) * 255
    moved = _move_over(image, [(5.0, 7.0, 32.0, 32.0), (6.0, 9.0, 32.0, 32.0)], (32, 32), flip=False)
    assert torch.allclose(moved[0], image[:, 5:37, 7:39], atol=1e-3)
    assert torch.allclose(moved[1], image[:, 6:38, 9:41], atol=1e-3)

    state = loader.state_dict()
    a = loader.video_batch(2)
    loader.load_state_dict(state)
    assert torch.equal(loader.video_batch(2), a)
    mixed = ClipLoader(VideoCache(cache), frames=5, crop=(32, 32), seed=0, still_motion=0.5)
    kinds = [s.boxes is None for s in mixed.sample_video(200)]
    assert 60 < sum(kinds) < 140, "about half real windows"


def test_init_from_starts_a_new_run_from_released_weights(cache, tmp_path):
    from videopoet.tokenizers.magvit2.train import MagvitTrainer

    common = {"data.cache": cache, "steps": 2, "image_steps": 0, "gan_start_step": None, "eval_every": 0,
              "tensorboard": False, "data.eval_clips": 1, "data.eval_images": 0, "data.eval_examples": 0}  # fmt: skip
    first = tmp_path / "first"
    train(debug_config(**common, out_dir=str(first), seed=3))
    released = MagvitV2.from_pretrained(str(first / "checkpoint")).state_dict()
    trainer = MagvitTrainer(
        debug_config(**common, out_dir=str(tmp_path / "second"), init_from=str(first / "checkpoint"))
    )
    got = trainer.model.state_dict()
    assert all(torch.equal(got[k], released[k].float()) for k in released)
    fresh = MagvitTrainer(debug_config(**common, out_dir=str(tmp_path / "third"))).model.state_dict()
    assert not all(torch.equal(fresh[k], got[k]) for k in got)
    with pytest.raises(UserError, match="different architecture.*channels: 8 vs 16"):
        MagvitTrainer(
            debug_config(
                **common,
                out_dir=str(tmp_path / "fourth"),
                init_from=str(first / "checkpoint"),
                **{"model.channels": 16},
            )
        )


# ---- inflation -------------------------------------------------------------------------------------------
def test_inflation_keeps_images_and_makes_frames_independent():
    torch.manual_seed(0)
    m = MagvitV2(MagvitConfig.from_name("debug")).eval()
    d = Discriminator3D(m.cfg.discriminator).eval()
    x = torch.rand(1, 3, 9, 32, 32) * 2 - 1
    with torch.no_grad():
        before = m.decode_latents(m.quantize(m.encode_latents(x[:, :, :1]))[0]), d(x[:, :, :1])
        z_before = m.encode_latents(x)
    assert inflate_image_trained(m) and inflate_image_trained(d)
    with torch.no_grad():
        after = m.decode_latents(m.quantize(m.encode_latents(x[:, :, :1]))[0]), d(x[:, :, :1])
        z = m.encode_latents(x)
        frames = [m.encode_latents(x[:, :, 4 * j : 4 * j + 1])[:, :, 0] for j in range(3)]
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])  # images: bit-identical
    assert not torch.allclose(z_before[:, :, 1], frames[1], atol=1e-4)  # random time taps mixed frames
    for j in range(3):  # inflated: latent j sees frame 4j only, as the image model would
        torch.testing.assert_close(z[:, :, j], frames[j])


# ---- training ---------------------------------------------------------------------------------------------
def _rows(out: Path, kind: str = "train") -> list[dict]:
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


def test_debug_training_with_gan_learns_and_saves_a_loadable_checkpoint(cache, tmp_path):
    out = tmp_path / "run"
    cfg = debug_config(**{"data.cache": cache, "out_dir": str(out), "log_every": 1, "steps": 24,
                          "image_steps": 6, "gan_start_step": 10, "eval_every": 0, "tensorboard": False})  # fmt: skip
    summary = train(cfg)
    rows = _rows(out)
    assert [r["phase"] for r in rows] == ["image"] * 6 + ["video"] * 4 + ["video+gan"] * 14
    for r in rows:
        assert all(np.isfinite(r[k]) for k in LOSS_KEYS if k in r), r
    assert all("d_adversarial" in r and "g_adversarial" in r for r in rows[10:])
    assert sum("r1" in r for r in rows[10:]) == 7  # lazy R1 every 2nd discriminator step
    train_psnr = [r["psnr"] for r in rows]  # random crops of varied content: noisy, but trending up
    assert np.mean(train_psnr[-8:]) > np.mean(train_psnr[:3]) + 1.0, train_psnr

    # held out: the trained EMA generator against the same initial weights (the trainer seeds them), same clips
    assert summary["finished"] and summary["schedule"]["inflated"]
    torch.manual_seed(cfg.seed)
    initial = MagvitV2(cfg.model).eval()
    held = ClipLoader(VideoCache(cache), split="heldout", frames=5, crop=(32, 32), seed=0)
    x = held.load(held.eval_specs("video", cfg.data.eval_clips))
    psnr_before = float(psnr(initial.decode(initial.encode(x)), x).mean())
    assert summary["heldout"]["video"]["psnr"] > psnr_before + 3.0, (psnr_before, summary["heldout"]["video"])
    for kind in ("video", "image"):
        m = summary["heldout"][kind]
        assert m["psnr"] > 10 and 0 < m["ssim"] <= 1 and 0 < m["usage"] <= 1 and m["codes_used"] >= 1
    assert (out / "report.md").exists() and (out / "examples" / "video_00.jpg").exists()

    # the released checkpoint is the EMA generator: it loads alone and tokenizes deterministically
    model = MagvitV2.from_pretrained(str(out / "checkpoint"))
    assert model.cfg == cfg.model
    x = ClipLoader(VideoCache(cache), frames=5, crop=(32, 32), seed=1).video_batch(2)
    codes = model.encode(x)
    assert codes.shape == (2, 2, 4, 4) and torch.equal(codes, model.encode(x))
    assert torch.equal(model.encode(x[:1]), codes[:1])
    assert summary["checkpoint"]["bytes"] == (out / "checkpoint" / "model.safetensors").stat().st_size


def test_resume_reproduces_the_uninterrupted_run(cache, tmp_path):
    """Stopping after 4 steps and re-running gives bit-identical losses and weights (image -> video switch,
    inflation and GAN with lazy R1 all inside the window)."""
    common = {"data.cache": cache, "log_every": 1, "steps": 7, "image_steps": 2, "gan_start_step": 3,
              "eval_every": 0, "tensorboard": False, "data.eval_clips": 1, "data.eval_images": 0,
              "data.eval_examples": 0}  # fmt: skip
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(debug_config(**common, out_dir=str(straight)))
    assert train(debug_config(**common, out_dir=str(split), stop_after_steps=4)) == {
        "steps": 4,
        "finished": False,
    }
    summary = train(debug_config(**common, out_dir=str(split)))
    assert summary["steps"] == 7

    def losses(out):
        return [{k: r[k] for k in LOSS_KEYS + ("r1", "grad_norm") if k in r} for r in _rows(out)]

    assert losses(split) == losses(straight)
    a = MagvitV2.from_pretrained(str(straight / "checkpoint")).state_dict()
    b = MagvitV2.from_pretrained(str(split / "checkpoint")).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert summary["heldout"] == json.loads((straight / "summary.json").read_text())["heldout"]


# ---- metrics ----------------------------------------------------------------------------------------------
def test_ssim_is_one_for_identical_images_and_falls_with_noise(assets):
    from PIL import Image

    img = np.asarray(Image.open(assets / "image_astronaut.jpg").convert("RGB"), dtype=np.float32) / 255
    x = torch.from_numpy(img).permute(2, 0, 1)[None]  # (1, 3, 256, 256)
    assert float(ssim(x, x)) == pytest.approx(1.0, abs=1e-12)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(x.shape, generator=g)
    scores = [float(ssim((x + s * noise).clamp(0, 1), x)) for s in (0.02, 0.05, 0.1, 0.3)]
    assert scores == sorted(scores, reverse=True) and scores[0] < 1 and scores[-1] < 0.3, scores
    assert float(ssim(torch.zeros(1, 3, 16, 16), torch.ones(1, 3, 16, 16))) < 0.01
    assert float(psnr(x * 2 - 1, x * 2 - 1)) > 90


def test_codebook_stats():
    g = torch.Generator().manual_seed(0)
    uniform = torch.randint(0, 2**18, (65536,), generator=g)
    s = codebook_stats(uniform, 18)
    assert s["usage_vs_uniform"] == pytest.approx(1.0, abs=0.01)
    assert s["usage"] == pytest.approx(0.885, abs=0.01)  # collisions of 2^16 uniform draws from 2^18 codes
    assert s["bit_balance_min"] > 0.97 and s["bit_entropy_mean"] > 0.999
    collapsed = codebook_stats(torch.tensor([5, 5, 5, 7]), 3)
    assert collapsed["codes_used"] == 2 and collapsed["usage"] == 0.5
    assert collapsed["bit_balance_min"] == 0  # bit 0 is set on every token, bit 2 on none
    assert (
        codebook_stats(torch.arange(8), 3)["usage"] == 1
        and codebook_stats(torch.arange(8), 3)["bit_balance_min"] == 1
    )


# ---- the job -----------------------------------------------------------------------------------------------
def _flatten(d: dict, prefix: str = "") -> set[str]:
    keys = set()
    for k, v in d.items():
        if isinstance(v, dict) and v:
            keys |= _flatten(v, f"{prefix}{k}.")
        else:
            keys.add(f"{prefix}{k}")
    return keys


@pytest.mark.parametrize("name", ["magvit2_debug", "magvit2_small"])
def test_yaml_documents_every_key(name):
    path = REPO / "configs" / "tokenizer" / f"{name}.yaml"
    text = path.read_text()
    raw = yaml.safe_load(text)
    assert raw["kind"] == "magvit2"
    assert _flatten(raw["magvit2"]) == {row[0] for row in describe(TrainConfig)}
    from_dict(TrainConfig, raw["magvit2"])  # valid as written
    lines = text.splitlines()
    for i, line in enumerate(lines):
        s = line.strip()
        if s and not s.startswith(("#", "- ")) and ":" in s:
            assert lines[i - 1].strip().startswith("#"), (
                f"{path.name}:{i + 1} key without a comment: {line!r}"
            )


def test_job_runs_magvit2_debug_and_checks_keys(cache, tmp_path, capsys):
    out = tmp_path / "job"
    args = ["--config", str(DEBUG_YAML), "stage=train", f"magvit2.data.cache={cache}", f"magvit2.out_dir={out}",
            "magvit2.steps=3", "magvit2.image_steps=1", "magvit2.gan_start_step=2", "magvit2.eval_every=0",
            "magvit2.data.eval_examples=0", "magvit2.tensorboard=false"]  # fmt: skip
    assert cli.run("train-tokenizer", args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["kind"] == "magvit2"
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["kind"] == "magvit2" and saved["magvit2"]["steps"] == 3 and "model" in saved["magvit2"]

    assert cli.run("train-tokenizer", ["--config", str(DEBUG_YAML), "magvit2.data.frames=4"]) == 2
    assert "magvit2.data.frames" in capsys.readouterr().err
    assert cli.run("train-tokenizer", ["--config", str(DEBUG_YAML), "magvit2.data.no_such_key=1"]) == 2
    assert "magvit2.data.no_such_key" in capsys.readouterr().err
    none = ["--config", str(DEBUG_YAML), "stage=train", f"magvit2.data.cache={tmp_path / 'none'}"]
    assert cli.run("train-tokenizer", none) == 1
    assert "stage=prepare" in capsys.readouterr().err


DDP_SCRIPT = """
import json, sys, torch
from videopoet.tokenizers.magvit2.train import MagvitTrainer, load_train_config
cfg = load_train_config(json.loads(sys.argv[1]))
t = MagvitTrainer(cfg)
t.train()
torch.save({"g": t.model.state_dict(), "d": t.disc.state_dict()}, f"{cfg.out_dir}/weights_rank{t.dist.rank}.pt")
"""


@pytest.mark.slow
def test_two_rank_ddp_on_cpu(cache, tmp_path):
    """torchrun with 2 CPU ranks (gloo): generator (DDP) and discriminator (hand all-reduce, LeCAM EMAs
    averaged) end identical on both ranks after image, video and GAN steps with R1."""
    import os
    import subprocess
    import sys

    from videopoet.core.config import to_dict

    out = tmp_path / "ddp"
    cfg = debug_config(**{"data.cache": cache, "out_dir": str(out), "steps": 4, "image_steps": 1,
                          "gan_start_step": 2, "eval_every": 0, "tensorboard": False})  # fmt: skip
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            str(script),
            json.dumps(to_dict(cfg)),
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        timeout=900,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    w0, w1 = (torch.load(out / f"weights_rank{r}.pt") for r in (0, 1))
    for part in ("g", "d"):
        assert all(torch.equal(w0[part][k], w1[part][k]) for k in w0[part]), part
    assert json.loads((out / "summary.json").read_text())["world_size"] == 2
