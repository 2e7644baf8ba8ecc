"""videopoet train-sr: SR pairs from token shards (one grid per batch, rows without a pair skipped), the mask
schedule, noise augmentation and independent condition dropout, exact data resume, bad shards refused before
training, a DeepSpeed run with checkpoints and an export, and kill-and-resume equal to an uninterrupted run.

The datasets are synthetic token grids written with pipelines/shards.py (tests/jobs/lm_fixtures.py): low-
resolution codes (3 x 4 x 4 videos, 1 x 4 x 4 images, debug 10-bit codes) whose 2x targets follow from
them (`lm_fixtures.sr_tokens`), random caption embeddings of the debug width (384) under an encoder id
that says so. DeepSpeed runs are subprocesses of the debug stage (DS_ACCELERATOR=cpu, gloo).
The slow end-to-end test trains on real MAGVIT-v2 tokens (checkpoints/magvit2_small) of the test videos
and compares decoded pixels against bicubic upsampling.
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import lm_fixtures as F
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from videopoet.core.config import load_config
from videopoet.jobs import cli, train_sr
from videopoet.jobs.sr_data import TASK, PairKey, SRData, SRDataConfig
from videopoet.model.vocab import Vocab

TEXT_ENCODER = "test:random-embeddings-384"


def sr_meta(sha: str = "ab" * 32, scale: int = 2) -> dict:
    return {
        "schema_version": 1,
        "video_tokenizer": {
            "kind": "magvit2",
            "id": f"magvit2:test:sha256-{sha[:16]}",
            "checkpoint": None,
            "sha256": sha,
            "codebook_bits": 10,
            "vocab_size": 1024,
            "spatial_factor": 8,
            "time_factor": 4,
        },
        "audio_tokenizer": None,
        "text_encoder": {"id": TEXT_ENCODER, "dim": 384, "max_tokens": 64},
        "vocab": Vocab.debug().metadata(),
        "window": {"frames": 9, "fps": 8.0, "seconds": 1.125, "sizes": [[32, 32]], "latent_frames": 3},
        "sr": {"scale": scale, "max_upscale": 1.0},
        "precision": "float32",
    }


def sr_rows(n_video: int = 12, n_image: int = 6, n_plain: int = 3, seed: int = 0) -> list[dict]:
    """Videos and images with a 2x pair (two thirds captioned), and `n_plain` videos without one."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_video + n_image + n_plain):
        kind = "video" if i < n_video else "image" if i < n_video + n_image else "plain"
        t = 1 if kind == "image" else 3
        lr = rng.integers(0, 1024, (t, 4, 4)).astype(np.int32)
        emb = rng.standard_normal((int(rng.integers(3, 9)), 384)).astype(np.float16) if i % 3 else None
        rows.append(
            {
                "sample_id": f"{kind}-{i:03d}-w0000",
                "clip_id": f"{kind}-{i:03d}",
                "window_index": 0,
                "uri": f"memory://{kind}-{i:03d}.mp4",
                "modality": "image" if kind == "image" else "video",
                "caption": None if emb is None else f"caption {i}",
                "num_frames": 1 if kind == "image" else 9,
                "video_tokens": lr,
                "audio_tokens": None,
                "text_embedding": emb,
                "sr_video_tokens": None if kind == "plain" else F.sr_tokens(lr),
                "num_tokens": lr.size,
            }
        )
    return rows


@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> str:
    return str(F.write_dataset(tmp_path_factory.mktemp("sr_data"), sr_rows(), sr_meta()))


def sr_data(url: str, *, rank=0, world=1, streams=None, grad_accum=1, micro_batch=2, **data) -> SRData:
    cfg = SRDataConfig(url=url, text_slots=16, streams=streams, **data)
    return SRData(
        cfg,
        scale=2,
        visual_bits=10,
        text_dim=384,
        seed=0,
        micro_batch=micro_batch,
        grad_accum=grad_accum,
        rank=rank,
        world_size=world,
    )


# ---------------------------------------------------------------------------------------------------------
# data


def test_batches_hold_pairs_of_one_grid_and_rows_without_a_pair_are_skipped(ds):
    data = sr_data(ds, micro_batch=3)
    grids = set()
    for step in range(12):
        (mb,) = data.micro_batches(step)
        assert mb.hr.shape[0] == 3 and mb.hr.shape[2:] == (8, 8)
        assert mb.lr.shape == (3, mb.hr.shape[1], 4, 4), "the LR grid of the same window"
        assert all(not sid.startswith("plain") for sid in mb.sample_ids)
        assert {sid.split("-")[0] for sid in mb.sample_ids} == {"video" if mb.grid[0] == 3 else "image"}
        if mb.text is not None:
            assert mb.text.shape[0] == 3 and mb.text.shape[2] == 384 and mb.text_mask.dtype == torch.bool
            assert bool((mb.text[~mb.text_mask] == 0).all())
        grids.add(mb.grid)
    assert grids == {(3, 8, 8), (1, 8, 8)}
    assert data.skipped_rows >= 3, "the rows without a pair were read (more than one epoch) and skipped"
    assert PairKey.of({"video_tokens": np.zeros((3, 4, 4)), "sr_video_tokens": None}) is None


def test_mask_schedule_noise_augmentation_and_independent_condition_dropout(ds):
    data = sr_data(ds, lr_noise_max=0.3)
    row = next(r for r in sr_rows() if r["text_embedding"] is not None and r["sr_video_tokens"] is not None)
    rng = np.random.default_rng(0)
    n = 4000
    draws = [data.sample(row, rng) for _ in range(n)]
    frac = np.array([d["mask"].mean() for d in draws])
    assert frac.min() >= 1 / row["sr_video_tokens"].size, "at least one position is masked"
    assert abs(frac.mean() - 2 / math.pi) < 0.02, frac.mean()  # E[cos(pi u / 2)] for u ~ U[0, 1)
    noise = np.array([(d["lr"] != row["video_tokens"]).mean() for d in draws])
    assert abs(noise.mean() - 0.15) < 0.01, (
        noise.mean()
    )  # ~ U[0, 0.3] resampled (1/1024 land on the same code)
    assert all(np.array_equal(d["hr"], row["sr_video_tokens"]) for d in draws[:50]), (
        "targets are never noised"
    )
    lr_keep = np.array([d["lr_keep"] for d in draws])
    text_keep = np.array([d["text_keep"] for d in draws])
    assert abs((~lr_keep).mean() - 0.1) < 0.015 and abs((~text_keep).mean() - 0.1) < 0.015
    assert abs((~lr_keep & ~text_keep).mean() - 0.01) < 0.006, "dropped independently"
    assert draws[0]["emb"].shape == (len(row["text_embedding"]), 384)


def test_data_state_resumes_exactly_with_rows_waiting_in_the_buffers(ds):
    a = sr_data(ds, micro_batch=4)
    for step in range(3):
        a.micro_batches(step)
    state = json.loads(json.dumps(a.state_dict()))  # what a checkpoint keeps
    assert any(st["live"] for st in state.values()), "the test needs buffered rows at the checkpoint"
    after = [a.micro_batches(s) for s in range(3, 10)]
    b = sr_data(ds, micro_batch=4)
    b.load_state_dict(state)
    for s, ref in zip(range(3, 10), after):
        (got,) = b.micro_batches(s)
        assert got.sample_ids == ref[0].sample_ids
        for key in ("hr", "mask", "lr", "lr_keep", "text_keep"):
            assert torch.equal(getattr(got, key), getattr(ref[0], key)), key


def test_a_fixed_number_of_streams_gives_the_same_global_batch_on_any_number_of_ranks(ds):
    one = sr_data(ds, streams=2, grad_accum=2)
    two = [sr_data(ds, rank=r, world=2, streams=2) for r in range(2)]
    for step in range(5):
        a = one.micro_batches(step)
        b = [two[r].micro_batches(step)[0] for r in range(2)]
        assert [m.sample_ids for m in a] == [m.sample_ids for m in b]
        assert all(torch.equal(x.mask, y.mask) and torch.equal(x.lr, y.lr) for x, y in zip(a, b))


# ---------------------------------------------------------------------------------------------------------
# shards that do not fit are refused before training


def test_datasets_without_pairs_or_of_another_scale_or_tokenizer_are_refused(ds, tmp_path, capsys):
    plain = [dict(r, sr_video_tokens=None) for r in sr_rows()]
    none = F.write_dataset(tmp_path / "none", plain, dict(sr_meta(), sr=None))
    debug = str(F.REPO_ROOT / "configs/train_sr_debug.yaml")
    cases = [
        (none, [], ["holds no super-resolution pairs"]),
        (ds, ["model.scale=4"], ["SR pairs at scale 2", "model.scale=2"]),
        (ds, ["data.expect_video_tokenizer=" + "f" * 16], ["part-00000.parquet", "not the expected ffff"]),
        (ds, ["model.visual_bits=8"], ["visual_bits = 10 in the data, 8 in the model"]),
        (ds, ["model.overrides=[text_dim=512]"], ["caption embeddings are 384-d, the model takes 512-d"]),
    ]
    for i, (url, extra, needles) in enumerate(cases):
        out = tmp_path / f"run{i}"
        assert cli.run("train-sr", ["--config", debug, f"data.url={url}", f"output={out}", *extra]) == 1
        err = capsys.readouterr().err
        for needle in needles:
            assert needle in err, (needle, err)
        assert not out.exists(), "refused before any training"


def test_configs_load_and_document_every_key():
    for name in ("train_sr.yaml", "train_sr_debug.yaml"):
        cfg = load_config(train_sr.Config, str(F.REPO_ROOT / "configs" / name), ["data.url=x", "output=y"])
        assert cfg.train.max_steps >= 1
    gpu = load_config(train_sr.Config, str(F.REPO_ROOT / "configs/train_sr.yaml"), ["data.url=x", "output=y"])
    sr = gpu.model.sr_config(sr_meta())
    assert (sr.text_dim, sr.visual_bits, sr.scale, sr.n_block) == (2048, 10, 2, 8)
    assert sr.windows() == ((1, 56, 4), (1, 8, 32), (5, 8, 8)), "the paper's windows for a 2x stage"


# ---------------------------------------------------------------------------------------------------------
# DeepSpeed runs


def _args(url: str, out: Path, *extra: str) -> list[str]:
    return [f"data.url={url}", f"output={out}", "data.streams=2", "train.grad_accum=2", *extra]


def _check(res: subprocess.CompletedProcess) -> None:
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]


@pytest.fixture(scope="module")
def reference(ds, tmp_path_factory) -> Path:
    """One process, 2 streams x 2 accumulated micro-batches of 2, 8 steps."""
    out = tmp_path_factory.mktemp("sr_ref")
    _check(F.train(_args(ds, out), job="train_sr"))
    return out


def test_one_process_run_writes_metrics_checkpoints_and_an_export(reference):
    recs = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == list(range(1, 9)) and {r["task"] for r in recs} == {TASK}
    assert all(math.isfinite(r["loss"]) and 0 <= r["accuracy"] <= 1 and r["mfu"] > 0 for r in recs)
    assert recs[0]["loss"] == pytest.approx(2 * math.log(32), rel=0.05), "2 x 32-way heads start near uniform"
    assert recs[-1]["loss"] < recs[0]["loss"] - 0.3, "8 steps on the patterned pairs lower the loss"
    assert {tuple(r["grid"]) for r in recs} <= {(3, 8, 8), (1, 8, 8)}
    assert list((reference / "tb").glob("events.out.tfevents.*"))
    info = json.loads((reference / "config.json").read_text())
    assert info["format"] == train_sr.EXPORT_FORMAT and info["step"] == 8
    assert info["sr"]["visual_bits"] == 10 and info["shards"]["text_encoder"]["id"] == TEXT_ENCODER
    state = load_file(str(reference / "model.safetensors"))
    assert state["head.weight"].shape == (2 * 32, 64)
    export, ckpt = (
        train_sr.load_trained_sr(str(reference)),
        train_sr.load_trained_sr(str(reference / "checkpoints")),
    )
    a, b = export.model.state_dict(), ckpt.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), "the export holds the last checkpoint's weights"


def test_stopped_and_resumed_run_reproduces_the_uninterrupted_one_exactly(ds, reference, tmp_path):
    out = tmp_path / "resumed"
    _check(F.train([*_args(ds, out), "train.stop_at=3"], job="train_sr"))
    assert sorted(F.losses(out)) == [1, 2, 3] and not (out / "model.safetensors").exists()
    _check(F.train(_args(ds, out), job="train_sr"))
    assert F.losses(out) == F.losses(reference)
    a, b = load_file(str(reference / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_two_rank_zero3_run_matches_one_process(ds, reference, tmp_path):
    out = tmp_path / "zero3"
    args = [f"data.url={ds}", f"output={out}", "data.streams=2", "train.ds_config=configs/ds/zero3.json"]
    _check(F.train(args, nproc=2, job="train_sr"))
    ref, got = F.losses(reference), F.losses(out)
    for step in ref:
        assert abs(got[step][1] - ref[step][1]) < 1e-4, (step, got[step], ref[step])
    a, b = load_file(str(reference / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-4


# ---------------------------------------------------------------------------------------------------------
# end to end on real MAGVIT-v2 tokens

MAGVIT = F.REPO_ROOT / "checkpoints" / "magvit2_small"
CLIPS = ("video_city_2s.mp4", "video_cockatoo_3s.mp4", "video_launch_3s.mp4")


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


@pytest.mark.slow
@pytest.mark.skipif(not (MAGVIT / "model.safetensors").is_file(), reason="needs checkpoints/magvit2_small")
def test_debug_stage_trained_on_cpu_beats_bicubic_upsampling_in_psnr_on_its_training_clips(tmp_path):
    """Three 9-frame clips of the test videos at 128 x 128 and their area-downsampled 64 x 64 copies (how the
    tokenize job makes SR pairs), tokenized by the real MAGVIT-v2 (2^18 codes: 3 x 16 x 16 and 3 x 8 x 8);
    `train-sr` trains the debug stage on them on CPU; its 24-step sampling from the LR codes, decoded, must
    beat the decoded LR video upsampled bicubically, in PSNR against the original 128 x 128 frames."""
    import cv2

    from videopoet.jobs.generate import _pixels_to_rgb, _rgb_to_pixels, read_video_window
    from videopoet.model.sr_generate import SRSamplingConfig, sample_sr
    from videopoet.pipelines.tokenize_stages import checkpoint_info
    from videopoet.tokenizers.magvit2 import MagvitV2

    torch.set_num_threads(2)
    magvit = MagvitV2.from_pretrained(str(MAGVIT))
    frames, rows = [], []
    for i, name in enumerate(CLIPS):
        hr = read_video_window(str(F.ASSETS / name), 9, 8.0, (128, 128), [[128, 128]])
        lr = np.stack([cv2.resize(f, (64, 64), interpolation=cv2.INTER_AREA) for f in hr])
        with torch.no_grad():
            hr_codes = magvit.encode(_rgb_to_pixels(hr))[0].numpy().astype(np.int32)  # (3, 16, 16)
            lr_codes = magvit.encode(_rgb_to_pixels(lr))[0].numpy().astype(np.int32)  # (3, 8, 8)
        frames.append(hr)
        rows.append(
            {
                "sample_id": f"clip{i}-w0000",
                "clip_id": f"clip{i}",
                "window_index": 0,
                "uri": str(F.ASSETS / name),
                "modality": "video",
                "num_frames": 9,
                "width": 64,
                "height": 64,
                "video_tokens": lr_codes,
                "sr_video_tokens": hr_codes,
                "sr_width": 128,
                "sr_height": 128,
                "num_tokens": lr_codes.size,
            }
        )
    meta = {
        **sr_meta(),
        "video_tokenizer": checkpoint_info(str(MAGVIT), "magvit2", "video.checkpoint"),
        "text_encoder": None,
        "vocab": Vocab(visual_bits=18).metadata(),
    }
    url = F.write_dataset(tmp_path / "tokens", rows, meta)
    out = tmp_path / "sr"
    args = [f"data.url={url}", f"output={out}", "train.max_steps=600", "train.micro_batch=3"]
    args += ["train.warmup_steps=20", "log.every=50", "checkpoint.every=600"]
    _check(F.train(args, job="train_sr", timeout=1500))
    stage = train_sr.load_trained_sr(str(out))
    assert stage.model.cfg.visual_bits == 18 and stage.model.cfg.factor_size == 512

    lr_codes = torch.from_numpy(np.stack([r["video_tokens"] for r in rows])).long()
    hr_codes = torch.from_numpy(np.stack([r["sr_video_tokens"] for r in rows])).long()
    got = sample_sr(
        stage.model, lr_codes, sampling=SRSamplingConfig(), generator=torch.Generator().manual_seed(0)
    )
    results = []
    with torch.no_grad():
        for i, hr in enumerate(frames):
            sr_rgb = _pixels_to_rgb(magvit.decode(got[i : i + 1]))
            lr_rgb = _pixels_to_rgb(magvit.decode(lr_codes[i : i + 1]))
            bicubic = np.stack([cv2.resize(f, (128, 128), interpolation=cv2.INTER_CUBIC) for f in lr_rgb])
            results.append((_psnr(sr_rgb, hr), _psnr(bicubic, hr)))
    accuracy = float((got == hr_codes).float().mean())
    print(f"\nSR codes right: {accuracy:.3f}; PSNR SR vs bicubic per clip: {results}")
    sr_psnr, bicubic_psnr = np.mean(results, axis=0)
    # measured: 99% of the codes right, 19.5 / 21.2 / 21.7 dB against 16.3 / 18.7 / 19.2 dB (+2.8 dB)
    assert all(s > b + 1.0 for s, b in results), results
    assert sr_psnr > bicubic_psnr + 1.5, (sr_psnr, bicubic_psnr)
