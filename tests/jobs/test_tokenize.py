"""`videopoet tokenize` on a tiny curated output of real media: samples, shapes, alignment, resume, refusal."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import wave
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from tokenize_fixtures import CLIP_IDS, make_checkpoints, make_curated

from videopoet.core.config import load_config
from videopoet.core.errors import UserError
from videopoet.jobs import tokenize_shards
from videopoet.pipelines.base import run_local
from videopoet.pipelines.media import seek_video_frames
from videopoet.pipelines.shards import ShardReader, file_sha256, load_manifest, validate_dataset
from videopoet.pipelines.tokenize_stages import SRConfig, WindowConfig, WindowDecodeStage, unpack

FAST = [
    "clips_per_shard=2",
    "sr.max_upscale=2.0",
    "video.batch_size=2",
    "audio.batch_size=2",
    "ray.num_cpus=2",
    "ray.object_store_memory_mb=256",
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("tok_inputs")
    magvit, sound = make_checkpoints(root)
    return {"magvit": magvit, "soundstream": sound, "curated": make_curated(root)}


def _cfg(inputs: dict, out: Path, *extra: str) -> tokenize_shards.Config:
    return load_config(
        tokenize_shards.Config,
        "configs/tokenize.yaml",
        [
            f"input={inputs['curated']}",
            f"output={out}",
            f"video.checkpoint={inputs['magvit']}",
            f"audio.checkpoint={inputs['soundstream']}",
            *FAST,
            *extra,
        ],
    )


@pytest.fixture(scope="module")
def ray_up():
    import ray

    from videopoet.core.ray_runtime import RayConfig, init_ray

    init_ray(RayConfig(num_cpus=2, object_store_memory_mb=256))  # one Ray for every run in this module
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def finished(inputs, ray_up, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tok_out") / "tokens"
    tokenize_shards.main(_cfg(inputs, out))
    return out


def _by_clip(out: Path) -> dict[str, dict]:
    rows = list(ShardReader(str(out), shuffle=False, loop=False))
    return {name: next((r for r in rows if r["clip_id"] == cid), None) for name, cid in CLIP_IDS.items()}


def test_video_image_and_audio_samples_with_the_expected_shapes(inputs, finished):
    s = _by_clip(finished)
    launch = s["launch"]  # 3 s at 24 fps with sound, 256x144: one 17-frame window, audio, SR at 2x
    assert launch["modality"] == "video" and launch["sample_id"] == f"{CLIP_IDS['launch']}-w0000"
    assert launch["video_tokens"].shape == (5, 16, 16) and launch["video_tokens"].dtype == np.int32
    assert launch["audio_tokens"].shape == (4, 106) and launch["sr_video_tokens"].shape == (5, 32, 32)
    assert (launch["width"], launch["height"], launch["sr_width"], launch["sr_height"]) == (
        128,
        128,
        256,
        256,
    )
    assert (launch["num_frames"], launch["fps"], launch["start_s"], launch["end_s"]) == (17, 8.0, 0.0, 2.125)
    assert launch["text_embedding"].shape[1] == 384 and launch["text_embedding"].dtype == np.float16
    assert launch["caption"] == "A rocket on a launch pad" and launch["num_tokens"] == 1280 + 424
    cockatoo = s["cockatoo"]  # silent track: no audio_uri from curation, no caption
    assert cockatoo["video_tokens"].shape == (5, 16, 16) and cockatoo["audio_tokens"] is None
    assert cockatoo["text_embedding"] is None and cockatoo["caption"] is None
    assert s["city"] is None  # 2 s < one 2.125 s window
    chelsea = s["chelsea"]  # 384x256 photo: a 1-frame sample, SR without upscaling
    assert chelsea["modality"] == "image" and chelsea["video_tokens"].shape == (1, 16, 16)
    assert chelsea["sr_video_tokens"].shape == (1, 32, 32) and chelsea["num_frames"] == 1
    portrait = s["portrait"]  # 160x256: the 128 wide x 224 tall size
    assert (portrait["width"], portrait["height"]) == (128, 224) and portrait["video_tokens"].shape == (
        1,
        28,
        16,
    )
    assert portrait["sr_video_tokens"].shape == (1, 56, 32)
    speech = s["speech"]
    assert speech["modality"] == "audio" and speech["video_tokens"] is None
    assert speech["audio_tokens"].shape == (4, 106) and speech["text_embedding"] is not None
    assert not np.array_equal(speech["audio_tokens"], launch["audio_tokens"])
    assert speech["audio_tokens"].max() < 256 and launch["video_tokens"].max() < 1024  # debug vocabularies

    manifest = load_manifest(str(finished))
    assert manifest["totals"]["rows"] == 5 and manifest["totals"]["rows_by_modality"] == {
        "audio": 1,
        "image": 2,
        "video": 2,
    }
    for shard in manifest["shards"]:
        assert shard["sha256"] == file_sha256(str(finished / shard["name"]))
    meta = manifest["meta"]
    assert meta["video_tokenizer"]["sha256"] == file_sha256(
        str(Path(meta["video_tokenizer"]["checkpoint"]) / "model.safetensors")
    )
    assert meta["vocab"]["visual_bits"] == 10 and meta["vocab"]["audio_codebook_size"] == 256
    assert meta["text_encoder"]["id"].startswith("minilm:") and meta["text_encoder"]["dim"] == 384
    assert validate_dataset(str(finished)) == []
    rejects = pq.read_table(finished / "rejects").to_pylist()
    assert [(r["clip_id"], r["stage"], r["reason"]) for r in rejects] == [
        (CLIP_IDS["city"], "decode", "too_short")
    ]
    clips = {c["clip_id"]: c for c in pq.read_table(inputs["curated"] / "clips").to_pylist()}
    assert rejects[0]["input_id"] == clips[CLIP_IDS["city"]]["input_id"] != ""  # the ledger names the input
    stats = json.loads((finished / "stats.json").read_text())
    assert stats["samples"] == 5 and stats["rejections_by_stage_reason"] == {"decode:too_short": 1}
    assert (finished / "config.yaml").exists()


def test_windows_are_the_clip_frames_and_audio_aligned(inputs):
    """The decode stage alone (no Ray): frames at 8 fps, SR target downsampled = low-res, audio slice."""
    clips = {r["clip_id"]: r for r in tokenize_shards.read_clips(str(inputs["curated"]))}
    row = dict(clips[CLIP_IDS["launch"]], partition=0)
    window = WindowConfig(stride_s=0.5, max_windows_per_clip=2)
    stage = WindowDecodeStage(window=window, sr=SRConfig(max_upscale=2.0))
    out = run_local([stage], [row])
    assert [r["window_index"] for r in out] == [0, 1] and [r["window_count"] for r in out] == [2, 2]
    assert [r["start_s"] for r in out] == [0.0, 0.5]
    second = out[1]
    low = unpack(second, "pixels", np.uint8)
    sr = unpack(second, "sr_pixels", np.uint8)
    assert low.shape == (17, 128, 128, 3) and sr.shape == (17, 256, 256, 3)
    # frame j of window k is the source frame shown at 0.5 k + j / 8 s, scaled to cover and centre-cropped
    times = [0.5 + j / 8 for j in (0, 8, 16)]
    ref = seek_video_frames(row["uri"], times, width=455, height=256, fmt="rgb24")
    for j, frame in zip((0, 8, 16), ref):
        want = frame[:, 99:355]
        assert np.abs(sr[j].astype(int) - want.astype(int)).mean() < 2.0
    small = sr.reshape(17, 128, 2, 128, 2, 3).mean(axis=(2, 4))
    assert np.abs(small - low).mean() < 1.5  # the low-res frames are the SR frames, area-downsampled
    with wave.open(str(row["audio_uri"])) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768
    audio = unpack(second, "wave", np.float32)
    assert audio.shape == (34000,) and np.array_equal(audio, pcm[8000 : 8000 + 34000])


def test_rerun_of_a_finished_job_does_nothing(inputs, finished):
    stamp = {p: p.stat().st_mtime_ns for p in finished.rglob("*") if p.is_file()}
    stats = tokenize_shards.main(_cfg(inputs, finished))
    assert stats == json.loads((finished / "_state" / "done.json").read_text())
    assert stamp == {p: p.stat().st_mtime_ns for p in finished.rglob("*") if p.is_file()}


def test_a_run_killed_after_some_commits_resumes_to_the_same_dataset(inputs, finished, tmp_path):
    out = tmp_path / "killed"
    shutil.copytree(finished, out)
    # what kills leave: a shard written but not committed (killed before its marker), the temporary file
    # of an interrupted write, no manifest / stats / done marker
    (out / "_state" / "committed" / "part-00002.json").unlink()  # the launch video (+ SR, audio) and speech
    (out / "shards" / ".part-00002.parquet.tmp-1a2b3c4d").write_bytes(b"PAR1 half a shard")
    for name in ("manifest.json", "stats.json", "_state/done.json"):
        (out / name).unlink()
    committed = out / "shards" / "part-00000.parquet"
    before = committed.stat().st_mtime_ns
    stats = tokenize_shards.main(_cfg(inputs, out))
    assert (
        committed.stat().st_mtime_ns == before and stats["this_run"]["partitions"] == 1
    )  # only shard 2 redone
    a, b = load_manifest(str(finished)), load_manifest(str(out))
    assert [(s["name"], s["rows"], s["sha256"]) for s in a["shards"]] == [
        (s["name"], s["rows"], s["sha256"]) for s in b["shards"]
    ]
    assert a["meta"] == b["meta"] and validate_dataset(str(out)) == []
    assert not list(out.rglob("*.tmp-*"))  # the interrupted write's temporary is gone


def test_resume_with_another_checkpoint_is_refused(inputs, finished, tmp_path):
    out = tmp_path / "other"
    shutil.copytree(finished, out)
    (out / "_state" / "done.json").unlink()
    (out / "_state" / "committed" / "part-00002.json").unlink()
    other = tmp_path / "magvit2"
    shutil.copytree(inputs["magvit"], other)
    from videopoet.tokenizers.magvit2 import MagvitV2

    model = MagvitV2.from_pretrained(str(other))
    model.encoder.conv_in.weight.data.add_(0.01)
    model.save_pretrained(str(other))
    with pytest.raises(UserError, match="different video_tokenizer"):
        tokenize_shards.main(_cfg(inputs, out, f"video.checkpoint={other}"))


def test_refuses_to_run_without_tokenizer_checkpoints(inputs, tmp_path):
    out = tmp_path / "refused"
    cfg = load_config(
        tokenize_shards.Config, "configs/tokenize.yaml", [f"input={inputs['curated']}", f"output={out}"]
    )
    with pytest.raises(UserError, match=r"video\.checkpoint is not set.*never tokenizes with random weights"):
        tokenize_shards.main(cfg)
    cfg = _cfg(inputs, out, "audio.checkpoint=null")
    with pytest.raises(UserError, match=r"audio\.checkpoint is not set"):
        tokenize_shards.main(cfg)
    cfg = _cfg(inputs, out, f"video.checkpoint={tmp_path / 'nothing'}")
    with pytest.raises(UserError, match="is not a MAGVIT-v2 checkpoint"):
        tokenize_shards.main(cfg)
    with pytest.raises(UserError, match="1 \\+ 4n frames"):
        tokenize_shards.main(_cfg(inputs, out, "window.frames=16"))
    assert not out.exists()


@pytest.mark.slow
def test_kill_9_mid_run_then_rerun_gives_the_same_dataset(inputs, finished, tmp_path):
    out = tmp_path / "killed9"
    cmd = [
        sys.executable,
        "jobs/tokenize_shards.py",
        str(inputs["curated"]),
        f"output={out}",
        f"video.checkpoint={inputs['magvit']}",
        f"audio.checkpoint={inputs['soundstream']}",
        *FAST,
        "clips_per_shard=1",
        "batch_windows=1",
    ]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(
        cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
    )
    committed = out / "_state" / "committed"
    deadline = time.time() + 300
    while time.time() < deadline and len(list(committed.glob("*.json"))) < 2 and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "_state" / "done.json").exists(), "the kill did not land mid-run"
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    a = {r["sample_id"]: r for r in ShardReader(str(finished), shuffle=False, loop=False)}
    b = {r["sample_id"]: r for r in ShardReader(str(out), shuffle=False, loop=False)}
    assert a.keys() == b.keys()
    for k in a:
        for col in ("video_tokens", "audio_tokens", "sr_video_tokens"):
            assert (a[k][col] is None) == (b[k][col] is None) and (
                a[k][col] is None or np.array_equal(a[k][col], b[k][col])
            )


@pytest.mark.gpu
def test_page_locked_staging_returns_each_calls_own_arrays_across_threads(tmp_path):
    """The CUDA workers stack inputs into reused page-locked buffers: concurrent calls (threads of one actor)
    and back-to-back calls of one thread each get exactly their own arrays, and the tokens match a fresh
    stack of the same arrays."""
    import threading

    import torch

    from videopoet.pipelines.tokenize_stages import PoolConfig, VideoTokenizerConfig, VideoTokenizeStage

    magvit, _ = make_checkpoints(tmp_path)
    stage = VideoTokenizeStage(VideoTokenizerConfig(checkpoint=str(magvit)), PoolConfig(device="cuda"))
    stage.setup()
    rng = np.random.default_rng(0)
    batches = [[rng.integers(0, 256, (17, 32, 32, 3), dtype=np.uint8) for _ in range(4)] for _ in range(8)]
    got: dict[int, bool] = {}

    def work(k: int) -> None:
        for i in range(k, len(batches), 2):
            x = stage._to_device(batches[i])
            got[i] = bool(torch.equal(x.cpu(), torch.from_numpy(np.stack(batches[i]))))

    threads = [threading.Thread(target=work, args=(k,)) for k in (0, 1)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert got == {i: True for i in range(len(batches))}
    codes = stage._encode(batches[0])
    x = torch.from_numpy(np.stack(batches[0])).cuda().permute(0, 4, 1, 2, 3).to(stage.dtype) / 127.5 - 1.0
    with torch.inference_mode():
        ref = stage.model.encode(x).to(torch.int32).cpu().numpy()
    assert all(np.array_equal(c, r) for c, r in zip(codes, ref))


@pytest.mark.gpu
def test_concurrent_gpu_calls_on_their_own_streams_give_the_serial_tokens(tmp_path):
    """A GPU worker runs `pool.concurrent_calls` calls at once, each on its thread's CUDA stream: every
    window's tokens equal those of the same calls run one after another."""
    import threading

    from videopoet.pipelines.tokenize_stages import (
        ChainStage,
        PoolConfig,
        VideoTokenizerConfig,
        VideoTokenizeStage,
    )

    magvit, _ = make_checkpoints(tmp_path)
    video = VideoTokenizeStage(
        VideoTokenizerConfig(checkpoint=str(magvit), batch_size=4), PoolConfig(device="cuda")
    )
    chain = ChainStage([video])
    chain.setup()
    rng = np.random.default_rng(1)
    calls = [
        [
            {
                "status": "ok",
                "pixels": rng.integers(0, 256, (17, 32, 32, 3), np.uint8).tobytes(),
                "pixels_shape": [17, 32, 32, 3],
            }
            for _ in range(4)
        ]
        for _ in range(8)
    ]
    serial = [chain.process_rows(c) for c in calls]
    parallel: dict[int, list] = {}

    def work(k: int) -> None:
        for i in range(k, len(calls), 2):
            parallel[i] = chain.process_rows(calls[i])

    threads = [threading.Thread(target=work, args=(k,)) for k in (0, 1)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    for i, rows in enumerate(serial):
        assert [r["video_tokens"] for r in parallel[i]] == [r["video_tokens"] for r in rows]


@pytest.mark.gpu
def test_concurrent_calls_get_their_own_streams_at_distinct_priorities():
    """Each call thread of a GPU worker computes on its own stream, ranked by priority (so the GPU finishes
    one call before the next instead of all at once), and copies to the device on a side stream."""
    import threading

    import torch

    from videopoet.pipelines.tokenize_stages import _copy_stream, thread_stream

    device = torch.device("cuda")
    seen: dict[int, tuple] = {}

    def work(k: int) -> None:
        with thread_stream(device):
            s = torch.cuda.current_stream(device)
            seen[k] = (s.stream_id, s.priority, _copy_stream(device).stream_id)

    for k in range(3):  # one after another: the ranks follow the order in which threads first ask
        t = threading.Thread(target=work, args=(k,))
        t.start()
        t.join()
    low, high = torch.cuda.Stream.priority_range()
    ids = {v[0] for v in seen.values()} | {v[2] for v in seen.values()}
    assert len(ids) == 6, seen  # 3 compute + 3 copy streams, none the default one
    prios = [seen[k][1] for k in range(3)]
    assert len(set(prios)) == min(3, low - high + 1) and all(high <= p <= low for p in prios), prios


@pytest.mark.gpu
def test_the_compiled_gpu_encoder_gives_the_eager_tokens_up_to_near_ties(tmp_path):
    """video.compile (the default) fuses the encoder's kernels on GPU workers; tokens are the eager encoder's
    except for latent channels within rounding of zero, whose sign bit may flip."""
    import torch

    from videopoet.pipelines.tokenize_stages import PoolConfig, VideoTokenizerConfig, VideoTokenizeStage
    from videopoet.tokenizers.magvit2.lfq import indices_to_bits

    magvit, _ = make_checkpoints(tmp_path)
    stages = {}
    for compiled in (False, True):
        cfg = VideoTokenizerConfig(checkpoint=str(magvit), batch_size=4, compile=compiled)
        stages[compiled] = VideoTokenizeStage(cfg, PoolConfig(device="cuda"))
        stages[compiled].setup()
    assert hasattr(stages[True].model.encoder, "_compiled_call_impl")
    assert getattr(stages[False].model.encoder, "_compiled_call_impl", None) is None
    rng = np.random.default_rng(2)
    arrays = [rng.integers(0, 256, (17, 32, 32, 3), dtype=np.uint8) for _ in range(4)]
    eager, fused = (torch.from_numpy(np.stack(stages[c]._encode(arrays))).long() for c in (False, True))
    bits = stages[True].model.cfg.codebook_bits
    same = (indices_to_bits(eager, bits) == indices_to_bits(fused, bits)).float().mean().item()
    assert same > 0.99, same


def test_gpu_workers_reserve_their_host_cores_but_leave_one_for_decoding(inputs, tmp_path):
    """A GPU worker reserves pool.gpu_worker_cpus, at most all but a decode task's share of the cluster (or
    nothing could decode); CPU workers keep pool.cpus."""

    def reserved(*extra, num_cpus=16.0, gpu=True):
        cfg = _cfg(inputs, tmp_path / "out", "text.enabled=false", *extra)
        _, chain = tokenize_shards.build_stages(cfg, cluster_has_gpu=gpu, num_cpus=num_cpus, num_gpus=1)
        return chain.resources.cpus, chain.resources.gpus

    assert reserved() == (2.0, 1.0)
    assert reserved("pool.gpu_worker_cpus=4") == (4.0, 1.0)
    assert reserved("pool.gpu_worker_cpus=4", num_cpus=3.0) == (2.0, 1.0)  # 3 CPUs: 1 left for a decode task
    assert reserved("pool.cpus=1", gpu=False) == (1.0, 0.0)
