"""SoundStream training: the audio cache (bit-exact, split by source file), a few real training steps of the
debug size, exact resume, the train-tokenizer job's config checks, and (slow) two-rank DDP on CPU."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from scipy.io import wavfile

from videopoet.core.config import ConfigError, from_dict
from videopoet.core.errors import UserError
from videopoet.jobs import cli
from videopoet.tokenizers.soundstream import SoundStream, SoundStreamConfig, SoundStreamLossConfig
from videopoet.tokenizers.soundstream.data import (
    AudioCache,
    AudioInput,
    PrepareConfig,
    SegmentSampler,
    assign_split,
    prepare_cache,
)
from videopoet.tokenizers.soundstream.train import AudioDataConfig, TrainConfig, train

REPO = Path(__file__).resolve().parents[2]
ASSETS = REPO / "tests" / "assets"
SPEECH = ASSETS / "speech_librivox.wav"
MUSIC = ASSETS / "music_loop_amen.flac"


@pytest.fixture(autouse=True)
def one_thread():
    # one intra-op thread: fast on a shared 2-core runner, and bit-reproducible for the resume test
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _speech() -> np.ndarray:
    sr, x = wavfile.read(SPEECH)
    assert sr == 16000 and x.dtype == np.int16, (sr, x.dtype)
    return x


def _write_wav(path: Path, pcm: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm.astype("<i2").tobytes())


@pytest.fixture(scope="module")
def asset_cache(tmp_path_factory) -> str:
    """The debug config's cache: the real speech clip (train) and the real drum loop (held out)."""
    out = str(tmp_path_factory.mktemp("cache"))
    prepare_cache(
        PrepareConfig(
            inputs=[
                AudioInput(uri=str(SPEECH), category="speech", split="train", license="BSD-2-Clause"),
                AudioInput(uri=str(MUSIC), category="music", split="heldout", license="CC0-1.0"),
            ]
        ),
        out,
    )
    return out


def debug_config(cache: str, out_dir: str, **overrides) -> TrainConfig:
    cfg = TrainConfig(
        model=SoundStreamConfig.from_name("debug"),
        loss=SoundStreamLossConfig(
            wave_disc_channels=4, wave_disc_max_channels=16, stft_disc_channels=4, adversarial_start_step=3
        ),
        data=AudioDataConfig(cache=cache, segment_s=0.5, eval_max_seconds=2.0),
        out_dir=out_dir,
        steps=6,
        batch_size=2,
        warmup_steps=2,
        log_every=1,
        eval_every=0,
        ckpt_every=2,
        eval_levels=[4, 1],
        device="cpu",
        tensorboard=False,
    )
    return dataclasses.replace(cfg, **overrides)


# ---- the cache ---------------------------------------------------------------------------------------------
def test_cache_holds_the_audio_bit_exactly(asset_cache):
    cache = AudioCache(asset_cache)
    (speech,) = cache.files("train")
    (music,) = cache.files("heldout")
    assert np.array_equal(cache.audio(speech), _speech())  # 16-bit PCM in, the same samples out
    assert speech["license"] == "BSD-2-Clause" and speech["category"] == "speech"
    # the 44.1 kHz stereo FLAC is mixed down and resampled: 1.75 s at 16 kHz
    assert music["category"] == "music" and abs(music["samples"] - 28000) < 400, music["samples"]
    assert cache.index["totals"]["train/speech"]["files"] == 1
    batch = SegmentSampler(cache, segment_samples=8000, seed=0).batch(3)
    assert batch.shape == (3, 8000) and batch.dtype == np.float32 and np.abs(batch).max() <= 1.0
    # segments are pieces of the real clip, not silence
    assert all(np.sqrt(np.mean(b**2)) > 10 ** (-45 / 20) for b in batch)


def test_split_is_by_source_file(tmp_path):
    """12 different source files (pieces of the real speech clip) and a curation output whose 4 inputs have 3
    clips each: every file lands in exactly one split, all clips of one input land together, the split is a
    pure function of (seed, file id), and trimming a file never puts its remainder anywhere."""
    x = _speech()
    files = tmp_path / "speech"
    for i in range(12):
        _write_wav(files / f"piece{i:02d}.wav", x[i * 1000 : i * 1000 + 20000])
    long_file = tmp_path / "long" / "long.wav"
    _write_wav(long_file, np.concatenate([x, x]))
    clips = tmp_path / "curated"
    rows = []
    for k in range(4):
        for c in range(3):
            wav = clips / "audio" / f"in{k}_c{c}.wav"
            _write_wav(wav, x[c * 2000 : c * 2000 + 17000])
            rows.append(
                {
                    "clip_id": f"in{k}_c{c}",
                    "uri": f"s3://raw/video{k}.mp4",
                    "audio_uri": str(wav),
                    "start_s": 2.0 * c,
                }
            )
    (clips / "clips").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), clips / "clips" / "part-00000.parquet")

    def build(out: str, seed: int) -> dict:
        return prepare_cache(
            PrepareConfig(
                inputs=[
                    AudioInput(uri=str(files), category="speech"),
                    AudioInput(uri=str(clips), category="speech"),
                    AudioInput(
                        uri=str(long_file), category="speech", split="heldout", max_seconds_per_file=2.0
                    ),
                ],
                heldout_fraction=0.4,
                seed=seed,
            ),
            out,
        )

    index = build(str(tmp_path / "a"), seed=0)
    entries = index["files"]
    assert len(entries) == 12 + 12 + 1
    by_source: dict[str, set[str]] = {}
    for e in entries:
        by_source.setdefault(e["source"], set()).add(e["split"])
    assert all(len(s) == 1 for s in by_source.values()), by_source  # no source file in both splits
    assert len([s for s in by_source if s.startswith("s3://raw/")]) == 4  # clips grouped by their input
    splits = {e["source"]: e["split"] for e in entries}
    piece_splits = [splits[f"speech/piece{i:02d}.wav"] for i in range(12)]
    assert "train" in piece_splits and "heldout" in piece_splits, piece_splits
    for sid, split in splits.items():
        if sid != "long/long.wav":
            assert split == assign_split(sid, forced="auto", heldout_fraction=0.4, seed=0)
    (long_entry,) = [e for e in entries if e["source"] == "long/long.wav"]
    assert long_entry["split"] == "heldout" and long_entry["samples"] == 32000  # forced split, trimmed, once
    # the ids do not depend on where the files sit: the same split from another copy of the folder
    again = build(str(tmp_path / "b"), seed=0)
    assert {e["id"]: e["split"] for e in again["files"]} == {e["id"]: e["split"] for e in entries}
    other = build(str(tmp_path / "c"), seed=1)
    assert {e["id"]: e["split"] for e in other["files"]} != {e["id"]: e["split"] for e in entries}
    # the cache holds the files' samples, split by split
    cache = AudioCache(str(tmp_path / "a"))
    e0 = next(e for e in cache.files() if e["source"] == "speech/piece03.wav")
    assert np.array_equal(cache.audio(e0), x[3000:23000])


def test_prepare_errors_name_the_input(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        prepare_cache(PrepareConfig(inputs=[AudioInput(uri=str(tmp_path / "missing"))]), str(tmp_path / "c"))
    with pytest.raises(UserError, match="scheme 'debian:'"):
        prepare_cache(PrepareConfig(inputs=[AudioInput(uri="debian:pkg/x.wav")]), str(tmp_path / "c"))
    with pytest.raises(UserError, match="no audio cache"):
        AudioCache(str(tmp_path / "nothing"))


# ---- training ----------------------------------------------------------------------------------------------
def _train_rows(out_dir: Path) -> list[dict]:
    rows = [json.loads(r) for r in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [
        {k: v for k, v in r.items() if k not in ("step_s", "audio_s_per_s")}
        for r in rows
        if r["kind"] == "train"
    ]


def test_debug_training_steps_on_real_speech(asset_cache, tmp_path):
    out = tmp_path / "run"
    summary = train(debug_config(asset_cache, str(out)))
    assert summary["finished"] and summary["steps"] == 6
    rows = _train_rows(out)
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert all("adv_d" not in r for r in rows[:3]) and all("adv_d" in r and "feat" in r for r in rows[3:])
    assert all(np.isfinite(r["g_total"]) for r in rows)
    held = summary["heldout"]["music"]
    assert set(held) == {"4", "1"} and all(np.isfinite(list(m.values())).all() for m in held.values())
    # the released checkpoint is the EMA generator; it loads and tokenizes real speech at 50 frames/s
    model = SoundStream.from_pretrained(str(out / "checkpoint"))
    wave_ = torch.from_numpy(_speech()[:16000].astype(np.float32) / 32768)[None]
    assert model.encode(wave_).shape == (1, 4, 50)
    sr, example = wavfile.read(out / "examples" / "music_music_loop_amen_L4.wav")
    assert sr == 16000 and example.ndim == 1 and len(example) > 16000
    assert "| music | 4 |" in (out / "report.md").read_text()


def test_resume_reproduces_the_uninterrupted_run(asset_cache, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(debug_config(asset_cache, str(straight)))
    first = train(debug_config(asset_cache, str(split), stop_after_steps=3))
    assert first == {"steps": 3, "finished": False}
    assert len(_train_rows(split)) == 3
    summary = train(debug_config(asset_cache, str(split)))  # a re-run resumes from step 3
    assert summary["steps"] == 6
    assert _train_rows(split) == _train_rows(straight)  # every loss of every step, bit for bit
    a = SoundStream.from_pretrained(str(straight / "checkpoint")).state_dict()
    b = SoundStream.from_pretrained(str(split / "checkpoint")).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    s = json.loads((straight / "summary.json").read_text())
    assert summary["heldout"] == s["heldout"]


# ---- the job -----------------------------------------------------------------------------------------------
def test_job_rejects_bad_config_keys(capsys):
    debug_yaml = str(REPO / "configs" / "tokenizer" / "soundstream_debug.yaml")
    assert cli.run("train-tokenizer", ["--config", debug_yaml, "soundstream.no_such_key=1"]) == 2
    assert "soundstream.no_such_key" in capsys.readouterr().err
    assert cli.run("train-tokenizer", ["--config", debug_yaml, "soundstream.data.segment_s=-1"]) == 2
    assert "soundstream.data.segment_s" in capsys.readouterr().err
    assert cli.run("train-tokenizer", ["--config", debug_yaml, "soundstream.model.num_levls=4"]) == 2
    assert "soundstream.model.num_levls" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"inputs\[0\].speaker"):
        from_dict(
            PrepareConfig, {"inputs": [{"uri": "a.wav", "speaker": "x"}]}, prefix="soundstream.data.prepare."
        )
    if importlib.util.find_spec("videopoet.tokenizers.magvit2.train") is None:
        assert cli.run("train-tokenizer", ["--config", debug_yaml, "kind=magvit2"]) == 1
        assert "not available yet" in capsys.readouterr().err


def test_train_stage_needs_a_cache(tmp_path, capsys):
    debug_yaml = str(REPO / "configs" / "tokenizer" / "soundstream_debug.yaml")
    args = ["--config", debug_yaml, "stage=train", f"soundstream.data.cache={tmp_path / 'none'}"]
    assert cli.run("train-tokenizer", args) == 1
    assert "stage=prepare" in capsys.readouterr().err


DDP_SCRIPT = """
import json, sys, torch
from videopoet.tokenizers.soundstream.train import SoundStreamTrainer, load_train_config
cfg = load_train_config(json.loads(sys.argv[1]))
t = SoundStreamTrainer(cfg)
t.train()
torch.save(t.model.state_dict(), f"{cfg.out_dir}/weights_rank{t.dist.rank}.pt")
"""


@pytest.mark.slow
def test_two_rank_ddp_on_cpu(asset_cache, tmp_path):
    """torchrun with 2 CPU ranks (gloo): both ranks train and end with identical weights and codebooks."""
    from videopoet.core.config import to_dict

    cfg = debug_config(asset_cache, str(tmp_path / "ddp"), steps=4)
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1")
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
        env=env,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    w0 = torch.load(tmp_path / "ddp" / "weights_rank0.pt")
    w1 = torch.load(tmp_path / "ddp" / "weights_rank1.pt")
    assert all(torch.equal(w0[k], w1[k]) for k in w0), [k for k in w0 if not torch.equal(w0[k], w1[k])][:5]
    assert json.loads((tmp_path / "ddp" / "summary.json").read_text())["world_size"] == 2
