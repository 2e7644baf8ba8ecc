"""`videopoet curate` end to end on real media and broken files: accounting, resume, refusal."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from videopoet.core.config import load_config
from videopoet.core.errors import UserError
from videopoet.jobs import curate, sample_data

REAL = [
    "video_cockatoo_3s.mp4",
    "known_cut.mp4",
    "image_chelsea.jpg",
    "image_chelsea.txt",
    "speech_librivox.wav",
]
FAST = ["clip.enabled=false", "partition_size=2", "ray.num_cpus=2", "ray.object_store_memory_mb=256"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Real clips and every kind of broken input, with awkward file names."""
    assets = Path(__file__).resolve().parents[1] / "assets"
    root = tmp_path_factory.mktemp("corpus")
    (root / "ok dir ü").mkdir()
    for name in REAL:
        shutil.copy(assets / name, root / "ok dir ü" / name)
    shutil.copy(assets / "video_city_2s.mp4", root / "city; $(rm -rf x) 'q'.mp4")
    shutil.copy(assets / "video_cockatoo_3s.mp4", root / "copy of cockatoo.mp4")  # exact duplicate
    shutil.copy(assets / "video_launch_3s.mp4", root / "launch_named_as.jpg")  # wrong extension
    bad = root / "broken"
    bad.mkdir()
    sample_data.write_zero_bytes(bad / "zero.mp4")
    sample_data.write_random_bytes(bad / "random.mp4", 20000, seed=1)
    sample_data.write_truncated(assets / "video_city_2s.mp4", bad / "truncated.mp4")
    (bad / "notes.mp4").write_text("this is text, not a video\n")
    return root


def _run(corpus: Path, out: Path, *extra: str) -> dict:
    cfg = load_config(
        curate.Config,
        "configs/curate.yaml",
        [f"inputs=[{json.dumps(str(corpus))}]", f"output={out}", *FAST, *extra],
    )
    return curate.main(cfg)


def _rows(out: Path, sub: str) -> list[tuple]:
    table = pq.read_table(out / sub)
    cols = ["uri", "clip_id", "start_s", "end_s"] + (["reason"] if sub == "rejects" else ["modality"])
    return sorted(tuple(r[c] for c in cols) for r in table.to_pylist())


@pytest.fixture(scope="module")
def finished(corpus, tmp_path_factory) -> Path:
    import ray

    out = tmp_path_factory.mktemp("out") / "curated"
    _run(corpus, out)
    ray.shutdown()
    return out


def test_every_input_appears_exactly_once_kept_or_rejected(corpus, finished):
    inputs = pq.read_table(finished / "inputs.parquet").to_pylist()
    listed = sorted(str(p) for p in corpus.rglob("*") if p.is_file() and p.name != "image_chelsea.txt")
    assert sorted(r["uri"] for r in inputs) == listed  # the caption sidecar is not an input
    assert all(r["outcome"] in ("kept", "rejected") and r["reason"] != "unaccounted" for r in inputs)
    outcome = {Path(r["uri"]).name: (r["outcome"], r["reason"]) for r in inputs}
    for name in ("zero.mp4", "random.mp4", "truncated.mp4", "notes.mp4"):
        assert outcome[name][0] == "rejected" and outcome[name][1].startswith("probe:"), (name, outcome[name])
    assert outcome["launch_named_as.jpg"][0] == "kept" or "scenes:" in outcome["launch_named_as.jpg"][1]
    assert outcome["city; $(rm -rf x) 'q'.mp4"][0] in ("kept", "rejected")
    # the byte-identical copy loses to the smaller uri and says which clip it duplicates
    dups = [r for r in pq.read_table(finished / "rejects").to_pylist() if r["reason"] == "duplicate_exact"]
    assert dups and all(
        Path(r["uri"]).name in ("copy of cockatoo.mp4", "video_cockatoo_3s.mp4") for r in dups
    )
    stats = json.loads((finished / "stats.json").read_text())
    assert stats["inputs"] == len(listed) == stats["inputs_kept"] + stats["inputs_rejected"]
    assert stats["inputs_unaccounted"] == 0
    clips = pq.read_table(finished / "clips").to_pylist()
    assert {c["modality"] for c in clips} == {"video", "image", "audio"}
    assert next(c for c in clips if c["modality"] == "image")["caption"].startswith("Close-up of a tabby cat")
    assert len({c["clip_id"] for c in clips}) == len(clips)
    for c in clips:
        if c["audio_uri"]:
            assert c["audio_uri"].startswith(str(finished)) and os.path.exists(c["audio_uri"])


def test_nothing_is_written_outside_the_output(corpus, finished):
    before = sorted(str(p) for p in corpus.rglob("*"))
    assert all(not p.name.endswith((".tmp", ".wav")) or "ok dir" in str(p) for p in corpus.rglob("*"))
    assert before == sorted(str(p) for p in corpus.rglob("*"))
    assert (finished / "config.yaml").exists()


def test_rerun_of_a_finished_job_does_nothing(corpus, finished):
    stamp = {p: p.stat().st_mtime_ns for p in finished.rglob("*") if p.is_file()}
    stats = _run(corpus, finished)
    assert stats == json.loads((finished / "_state" / "done.json").read_text())
    assert stamp == {p: p.stat().st_mtime_ns for p in finished.rglob("*") if p.is_file()}


def test_kill_9_mid_run_then_rerun_gives_the_same_output(corpus, finished, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "jobs/curate.py", str(corpus), f"output={out}", *FAST, "partition_size=1"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    committed = out / "_state" / "committed"
    deadline = time.time() + 240
    while time.time() < deadline and len(list(committed.glob("*.json"))) < 2 and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its embedded Ray, mid-run
    proc.wait()
    n_before = len(list(committed.glob("*.json")))
    assert n_before > 0 and not (out / "_state" / "done.json").exists(), "the kill did not land mid-run"
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert _rows(out, "clips") == _rows(finished, "clips")
    assert _rows(out, "rejects") == _rows(finished, "rejects")


def test_a_kill_inside_the_final_steps_leaves_nothing_that_changes_the_output(corpus, finished, tmp_path):
    out = tmp_path / "killed_in_finalize"
    shutil.copytree(finished, out)
    (out / "_state" / "done.json").unlink()  # every partition committed; killed while finalize wrote
    shutil.copy(out / "rejects" / "dedup.parquet", out / "rejects" / ".dedup.parquet.tmp-0123abcd")
    shutil.copy(out / "clips" / "part-00000.parquet", out / "clips" / ".part-00000.parquet.tmp-4567cdef")
    assert _rows(out, "rejects") == _rows(finished, "rejects")  # readers skip the hidden temporaries
    _run(corpus, out)
    assert not list(out.rglob("*.tmp-*"))
    assert _rows(out, "clips") == _rows(finished, "clips")
    assert _rows(out, "rejects") == _rows(finished, "rejects")
    inputs = pq.read_table(out / "inputs.parquet").to_pylist()
    assert inputs == pq.read_table(finished / "inputs.parquet").to_pylist()


def test_clip_enabled_without_weights_refuses_before_any_work(corpus, tmp_path):
    out = tmp_path / "refused"
    cfg = load_config(
        curate.Config,
        "configs/curate.yaml",
        [
            f"inputs=[{json.dumps(str(corpus))}]",
            f"output={out}",
            "clip.enabled=true",
            f"clip.weights={tmp_path / 'no_such_clip.bin'}",
        ],
    )
    with pytest.raises(UserError, match="no_such_clip.bin"):
        curate.main(cfg)
    assert not out.exists()
