"""Global dedup: exact (same bytes), near (embedding cosine), keep rule, determinism, and scale."""

from __future__ import annotations

import random
import time
import tracemalloc

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from videopoet.core.config import ConfigError
from videopoet.pipelines.dedup import DedupConfig, dedup_rows, greedy_near_duplicates


def _unit(v):
    v = np.asarray(v, dtype=np.float64)
    return (v / np.linalg.norm(v)).tolist()


def _at_angle(deg: float, dim: int = 8) -> list[float]:
    """A unit vector in the (e0, e1) plane at `deg` degrees from e0: cosine between two is cos(delta)."""
    v = np.zeros(dim)
    v[0], v[1] = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    return v.tolist()


def _clip(
    cid, emb=None, *, sha=None, uri=None, w=640, h=360, dur=5.0, modality="video", key="clip_embedding"
):
    row = {
        "clip_id": cid,
        "uri": uri or f"s3://b/{cid}.mp4",
        "content_sha256": sha or f"sha-{cid}",
        "modality": modality,
        "width": w,
        "height": h,
        "duration_s": dur,
        "status": "ok",
    }
    if emb is not None:
        row[key] = emb
    return row


def _ids(rows):
    return sorted(r["clip_id"] for r in rows)


def test_exact_duplicates_keep_smallest_uri():
    # the same file under two URIs: each of its clips exists twice with the same clip_id
    rows = [
        _clip("c0", sha="X", uri="s3://b/z_copy.mp4"),
        _clip("c1", sha="X", uri="s3://b/z_copy.mp4"),
        _clip("c0", sha="X", uri="s3://b/a_orig.mp4"),
        _clip("c1", sha="X", uri="s3://b/a_orig.mp4"),
        _clip("other", sha="Y"),
    ]
    kept, rejected = dedup_rows(rows, DedupConfig(near=False))
    assert sorted((r["clip_id"], r["uri"]) for r in kept) == [
        ("c0", "s3://b/a_orig.mp4"),
        ("c1", "s3://b/a_orig.mp4"),
        ("other", "s3://b/other.mp4"),
    ]
    assert len(rejected) == 2
    for r in rejected:
        assert r["uri"] == "s3://b/z_copy.mp4"
        assert r["status"] == "rejected" and r["reject_stage"] == "dedup"
        assert r["reject_reason"] == "duplicate_exact"
        assert f"kept clip {r['clip_id']}" in r["reject_detail"] and "s3://b/a_orig.mp4" in r["reject_detail"]


def test_near_duplicates_keep_highest_resolution_then_longest_then_smallest_id():
    e = _at_angle(0)
    near = _at_angle(10)  # cos 10 deg = 0.985 >= 0.95
    rows = [
        _clip("small", e, w=320, h=180, dur=60.0),
        _clip("big", near, w=1920, h=1080, dur=2.0),
        _clip("far", _at_angle(90)),  # orthogonal: kept
    ]
    kept, rejected = dedup_rows(rows)
    assert _ids(kept) == ["big", "far"]
    (r,) = rejected
    assert r["clip_id"] == "small" and r["reject_reason"] == "duplicate_near"
    assert "big" in r["reject_detail"] and "0.9848" in r["reject_detail"]

    # same resolution: longest wins; then the smallest clip_id
    rows = [_clip("b", e, dur=3.0), _clip("a", near, dur=3.0), _clip("c", e, dur=9.0)]
    kept, _ = dedup_rows(rows)
    assert _ids(kept) == ["c"]
    rows = [_clip("b", e), _clip("a", near)]
    kept, rejected = dedup_rows(rows)
    assert _ids(kept) == ["a"] and "near-duplicate of clip a" in rejected[0]["reject_detail"]


def test_threshold_is_inclusive_and_configurable():
    rows = [_clip("a", _at_angle(0)), _clip("b", _at_angle(30))]  # cosine 0.866
    assert len(dedup_rows(rows, DedupConfig(threshold=0.95))[0]) == 2
    assert _ids(dedup_rows(rows, DedupConfig(threshold=0.86))[0]) == ["a"]
    same = [_clip("a", _at_angle(0)), _clip("b", _at_angle(0))]
    assert _ids(dedup_rows(same, DedupConfig(threshold=1.0))[0]) == ["a"]


def test_transitive_chain_is_greedy_against_kept_clips():
    # A~B (cos 0.974) and B~C (cos 0.974) but A vs C is cos 0.899 < 0.95. A has priority (biggest).
    # Greedy: A kept; B dropped (near A); C is only compared with kept clips (A) -> kept.
    rows = [
        _clip("C", _at_angle(26), w=320, h=180),
        _clip("A", _at_angle(0), w=1280, h=720),
        _clip("B", _at_angle(13), w=640, h=360),
    ]
    kept, rejected = dedup_rows(rows)
    assert _ids(kept) == ["A", "C"]
    assert [r["clip_id"] for r in rejected] == ["B"] and "clip A" in rejected[0]["reject_detail"]

    # If the middle of the chain has priority, it absorbs both ends.
    rows[2]["width"], rows[2]["height"] = 3840, 2160
    kept, rejected = dedup_rows(rows)
    assert _ids(kept) == ["B"]
    assert all("clip B" in r["reject_detail"] for r in rejected)


def test_near_dedup_is_per_modality_and_embedding_kind():
    e = _at_angle(0)
    rows = [
        _clip("v", e, modality="video"),
        _clip("i", e, modality="image"),  # same vector, other modality: kept
        _clip("t1", e, key="thumb_embedding"),  # no CLIP embedding: compared on thumbnails only
        _clip("t2", e, key="thumb_embedding", w=100, h=100),
        _clip("audio", None, modality="audio"),  # no embedding at all: kept
    ]
    kept, rejected = dedup_rows(rows)
    assert _ids(kept) == ["audio", "i", "t1", "v"]
    assert [r["clip_id"] for r in rejected] == ["t2"] and "thumb_embedding" in rejected[0]["reject_detail"]


def test_exact_runs_before_near_and_each_clip_rejected_once():
    e = _at_angle(0)
    rows = [_clip("x", e, sha="S", uri="s3://b/2.mp4"), _clip("x", e, sha="S", uri="s3://b/1.mp4")]
    rows.append(_clip("y", _at_angle(5)))
    kept, rejected = dedup_rows(rows)
    assert [(r["clip_id"], r["uri"]) for r in kept] == [("x", "s3://b/1.mp4")]
    assert sorted(r["reject_reason"] for r in rejected) == ["duplicate_exact", "duplicate_near"]


def _random_corpus(n=300, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(40, 16))
    rows = []
    for k in range(n):
        c = centers[k % 40]
        emb = c + rng.normal(scale=rng.choice([0.05, 0.3, 1.0]), size=16)
        rows.append(
            _clip(
                f"clip{k:04d}",
                _unit(emb),
                sha=f"sha{k % 250}",  # some exact duplicates too
                uri=f"s3://b/{k:04d}.mp4",
                w=int(rng.choice([320, 640, 1280])),
                h=int(rng.choice([180, 360, 720])),
                dur=float(rng.choice([2.0, 4.0])),
            )
        )
    # exact duplicates share clip_id (clip_id derives from content + span)
    for k in range(250, n):
        rows[k]["clip_id"] = rows[k - 250]["clip_id"]
    return rows


def test_result_is_independent_of_input_order():
    rows = _random_corpus()
    kept, rejected = dedup_rows(rows, DedupConfig(block_size=64))
    assert 0 < len(rejected) < len(rows) and len(kept) + len(rejected) == len(rows)

    def key(rs):
        return sorted((r["clip_id"], r["uri"], r.get("reject_detail", "")) for r in rs)

    for seed in range(3):
        shuffled = rows[:]
        random.Random(seed).shuffle(shuffled)
        k2, r2 = dedup_rows(shuffled, DedupConfig(block_size=64))
        assert key(k2) == key(kept) and key(r2) == key(rejected)
    # the block size is an implementation detail, not a semantic one
    k3, r3 = dedup_rows(rows, DedupConfig(block_size=7))
    assert key(k3) == key(kept) and key(r3) == key(rejected)


def test_blocked_greedy_matches_brute_force():
    rng = np.random.default_rng(5)
    emb = rng.normal(size=(500, 4)).astype(np.float32)  # 4-d: many pairs above the threshold
    keep, match, _ = greedy_near_duplicates(emb, 0.97, block_size=37)
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    sims = unit @ unit.T
    ref = []
    for i in range(len(emb)):
        if not any(sims[i, j] >= 0.97 for j in ref):
            ref.append(i)
    assert np.flatnonzero(keep).tolist() == ref
    for i in np.flatnonzero(~keep):
        assert keep[match[i]] and sims[i, match[i]] >= 0.97 - 1e-6


def test_pandas_and_arrow_inputs_give_same_result():
    rows = _random_corpus(120)
    kept, rejected = dedup_rows(rows)
    kdf, rdf = dedup_rows(pd.DataFrame.from_records(rows))
    ktb, rtb = dedup_rows(pa.Table.from_pylist(rows))
    assert isinstance(kdf, pd.DataFrame) and isinstance(rtb, pa.Table)
    assert sorted(kdf.uri) == sorted(r["uri"] for r in kept) == sorted(ktb.column("uri").to_pylist())
    assert sorted(rdf.reject_detail) == sorted(r["reject_detail"] for r in rejected)
    assert sorted(rtb.column("reject_reason").to_pylist()) == sorted(r["reject_reason"] for r in rejected)


def test_config_validation():
    with pytest.raises(ConfigError, match="threshold"):
        DedupConfig(threshold=1.5)
    with pytest.raises(ConfigError, match="block_size"):
        DedupConfig(block_size=0)


def test_scale_20k_fast_and_memory_bounded():
    n, d = 20_000, 64
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(n, d)).astype(np.float32)
    emb[1::10] = emb[::10] + 0.01 * rng.normal(size=(n // 10, d)).astype(np.float32)  # 2000 planted dups
    tracemalloc.start()
    t0 = time.perf_counter()
    keep, match, _ = greedy_near_duplicates(emb, 0.95, block_size=4096)
    elapsed = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert (~keep).sum() == n // 10
    assert (match[1::10] == np.arange(0, n, 10)).all()
    assert elapsed < 20, f"20k x 64-d dedup took {elapsed:.1f}s"
    full_matrix = n * n * 4  # 1.6 GB: what a non-blocked version would allocate
    assert peak < 0.15 * full_matrix, f"peak {peak / 1e6:.0f} MB"
