"""ClipScoreStage and the weights pre-flight, on a tiny real open_clip model loaded through `clip.weights`.

The tiny model has random (but saved and reloaded) weights, so scores carry no meaning; the tests check what
a user relies on: weights load only from what was configured, embeddings are normalized and reproducible,
the caption threshold touches captioned rows only, and bad weights stop the job before it starts.
"""

from __future__ import annotations

import json

import fsspec
import numpy as np
import pandas as pd
import pytest
import torch

from videopoet.core.config import ConfigError, from_dict
from videopoet.core.errors import UserError
from videopoet.pipelines.base import REJECTED, run_local
from videopoet.pipelines.clip import ClipConfig, ClipScoreStage, check_clip_weights

open_clip = pytest.importorskip("open_clip")

TINY = "videopoet-test-tiny-clip"
TINY_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> str:
    """Register the tiny architecture with open_clip and save one random init of it as a checkpoint."""
    d = tmp_path_factory.mktemp("tiny_clip")
    (d / f"{TINY}.json").write_text(json.dumps(TINY_CFG))
    open_clip.add_model_config(d / f"{TINY}.json")
    torch.manual_seed(0)
    model = open_clip.create_model(TINY)
    path = d / "tiny_clip.bin"
    torch.save(model.state_dict(), path)
    return str(path)


def _cfg(weights: str, tmp_path, **kw) -> ClipConfig:
    return ClipConfig(model=TINY, weights=weights, device="cpu", cache_dir=str(tmp_path / "cache"), **kw)


def _rows(n_frames: int = 3, size: int = 32) -> list[dict]:
    rng = np.random.default_rng(1)

    def frames():
        return rng.integers(0, 256, (n_frames, size, size, 3), dtype=np.uint8)

    return [
        {"clip_id": "a", "modality": "video", "caption": "a dog on a beach", "frames": frames()},
        {"clip_id": "b", "modality": "video", "caption": None, "frames": frames()},
        {"clip_id": "c", "modality": "image", "caption": "a red car", "frames": frames()[:1]},
        {"clip_id": "d", "modality": "video", "caption": "   ", "frames": frames()},
        {"clip_id": "e", "modality": "audio", "caption": "birdsong"},  # no frames: passes through
    ]


def _by_id(rows):
    return {r["clip_id"]: r for r in rows}


def test_embeddings_normalized_deterministic_and_frames_dropped(tiny_weights, tmp_path):
    rows = _rows()
    out1 = _by_id(run_local([ClipScoreStage(_cfg(tiny_weights, tmp_path))], rows))
    out2 = _by_id(run_local([ClipScoreStage(_cfg(tiny_weights, tmp_path))], rows))
    assert set(out1) == {"a", "b", "c", "d", "e"}
    for cid in "abcd":
        r = out1[cid]
        assert "frames" not in r
        emb = np.asarray(r["clip_embedding"])
        assert emb.shape == (32,)
        assert abs(np.linalg.norm(emb) - 1) < 1e-5
        assert r["clip_embedding"] == out2[cid]["clip_embedding"]  # fresh worker, same weights file
        assert r["clip_model"].startswith(f"{TINY}:tiny_clip.bin@sha256:")
    assert "clip_embedding" not in out1["e"] and "frames" not in out1["e"]
    # different inputs give different embeddings (the frames actually reach the model)
    assert not np.allclose(out1["a"]["clip_embedding"], out1["b"]["clip_embedding"])


def test_embedding_independent_of_batch_and_frame_size(tiny_weights, tmp_path):
    """A clip's embedding must not depend on what else is in its batch; non-model-size frames get resized."""
    rows = _rows()
    stage = ClipScoreStage(_cfg(tiny_weights, tmp_path))
    stage.setup()
    alone = stage.process_rows([rows[0]])[0]["clip_embedding"]
    together = _by_id(stage.process_rows(rows))["a"]["clip_embedding"]
    np.testing.assert_allclose(alone, together, atol=1e-5)

    # forward passes of 2 images split rows' frames across passes: same embeddings
    small = ClipScoreStage(_cfg(tiny_weights, tmp_path, batch_size=2))
    small.setup()
    split = _by_id(small.process_rows(rows))
    for cid in "abcd":
        np.testing.assert_allclose(
            split[cid]["clip_embedding"], _by_id(stage.process_rows(rows))[cid]["clip_embedding"], atol=1e-5
        )
        assert split[cid].get("clip_text_score") == pytest.approx(
            _by_id(stage.process_rows(rows))[cid].get("clip_text_score"), abs=1e-5
        )

    big = dict(rows[0], frames=np.random.default_rng(2).integers(0, 256, (2, 48, 64, 3), dtype=np.uint8))
    out = _by_id(stage.process_rows([big, rows[1]]))  # two frame sizes in one batch
    assert len(out["a"]["clip_embedding"]) == 32 and len(out["b"]["clip_embedding"]) == 32


def test_num_frames_subsamples_evenly(tiny_weights, tmp_path):
    frames = np.random.default_rng(3).integers(0, 256, (9, 32, 32, 3), dtype=np.uint8)
    stage = ClipScoreStage(_cfg(tiny_weights, tmp_path, num_frames=3))
    stage.setup()
    many = stage.process_rows([{"clip_id": "x", "frames": frames}])[0]["clip_embedding"]
    picked = stage.process_rows([{"clip_id": "x", "frames": frames[[0, 4, 8]]}])[0]["clip_embedding"]
    np.testing.assert_allclose(many, picked, atol=1e-6)


def test_same_embeddings_from_memory_url(tiny_weights, tmp_path):
    url = "memory://models/tiny_clip.bin"
    with open(tiny_weights, "rb") as src, fsspec.open(url, "wb") as dst:
        dst.write(src.read())
    rows = _rows()
    local = _by_id(run_local([ClipScoreStage(_cfg(tiny_weights, tmp_path))], rows))
    remote = _by_id(run_local([ClipScoreStage(_cfg(url, tmp_path))], rows))
    assert list((tmp_path / "cache" / "url").glob("*/tiny_clip.bin"))  # copied to the local cache
    for cid in "abcd":
        assert local[cid]["clip_embedding"] == remote[cid]["clip_embedding"]
        assert local[cid]["clip_model"] == remote[cid]["clip_model"]  # identity is the content hash


def test_text_score_only_for_captioned_rows_and_threshold(tiny_weights, tmp_path):
    rows = _rows()
    scored = _by_id(run_local([ClipScoreStage(_cfg(tiny_weights, tmp_path))], rows))
    assert set(r for r in scored if "clip_text_score" in scored[r]) == {"a", "c"}  # None / blank: no score
    sa, sc = scored["a"]["clip_text_score"], scored["c"]["clip_text_score"]
    assert -1 <= sa <= 1 and -1 <= sc <= 1 and sa != sc

    lo, hi = sorted([sa, sc])
    thr = (lo + hi) / 2
    out = _by_id(run_local([ClipScoreStage(_cfg(tiny_weights, tmp_path, min_text_score=thr))], rows))
    low = "a" if sa < sc else "c"
    assert out[low]["status"] == REJECTED
    assert out[low]["reject_reason"] == "low_clip_score" and out[low]["reject_stage"] == "clip"
    assert f"{out[low]['clip_text_score']:.4f}" in out[low]["reject_detail"]
    assert str(thr) in out[low]["reject_detail"]
    assert "frames" not in out[low]
    assert all(out[c]["status"] == "ok" for c in "abcde" if c != low)

    # the strictest threshold rejects every captioned row and never an uncaptioned one
    out = _by_id(run_local([ClipScoreStage(_cfg(tiny_weights, tmp_path, min_text_score=1.0))], rows))
    assert {c for c, r in out.items() if r["status"] == REJECTED} == {"a", "c"}


def test_text_score_max_is_at_least_mean(tiny_weights, tmp_path):
    rows = _rows()[:1]
    mean = run_local([ClipScoreStage(_cfg(tiny_weights, tmp_path))], rows)[0]["clip_text_score"]
    mx = run_local([ClipScoreStage(_cfg(tiny_weights, tmp_path, text_score="max"))], rows)[0][
        "clip_text_score"
    ]
    assert mx > mean


def test_dataframe_call_drops_frames_and_passes_rejected_rows(tiny_weights, tmp_path):
    rows = _rows()
    rows[1] = {**rows[1], "status": REJECTED, "reject_reason": "static"}
    stage = ClipScoreStage(_cfg(tiny_weights, tmp_path))
    stage.setup()
    frame = stage(pd.DataFrame.from_records([{"status": "ok", **r} for r in rows]))
    assert "frames" not in frame.columns
    assert len(frame) == 5
    rejected = frame[frame.clip_id == "b"].iloc[0]
    assert rejected.status == REJECTED and not isinstance(rejected.clip_embedding, list)


def test_malformed_frames_become_error_rejection(tiny_weights, tmp_path):
    rows = _rows()[:2]
    rows[1] = dict(rows[1], frames=np.zeros((2, 32, 32), dtype=np.float32))
    out = _by_id(run_local([ClipScoreStage(_cfg(tiny_weights, tmp_path))], rows))
    assert out["a"]["status"] == "ok"
    assert out["b"]["status"] == REJECTED and out["b"]["reject_reason"] == "error"
    assert "frames" in out["b"]["reject_detail"]


# -- weights pre-flight -------------------------------------------------------------------------------------


def test_check_clip_weights_accepts_good_file(tiny_weights, tmp_path):
    ident = check_clip_weights(_cfg(tiny_weights, tmp_path))
    assert ident.startswith(f"{TINY}:tiny_clip.bin@sha256:")
    assert check_clip_weights(ClipConfig(enabled=False, model=TINY, weights="")) is None


def test_check_clip_weights_refuses_missing_path(tiny_weights, tmp_path):
    missing = str(tmp_path / "nope" / "open_clip_model.bin")
    with pytest.raises(UserError) as e:
        check_clip_weights(_cfg(missing, tmp_path))
    msg = str(e.value)
    assert missing in msg and "clip.weights=" in msg and "clip.enabled=false" in msg


def test_check_clip_weights_refuses_missing_url(tiny_weights, tmp_path):
    with pytest.raises(UserError, match="memory://models/absent.bin"):
        check_clip_weights(_cfg("memory://models/absent.bin", tmp_path))


def test_check_clip_weights_refuses_garbage_and_wrong_architecture(tiny_weights, tmp_path):
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"not a checkpoint" * 10)
    with pytest.raises(UserError, match="garbage.bin.*cannot be loaded"):
        check_clip_weights(_cfg(str(garbage), tmp_path))

    other = open_clip.create_model(TINY).state_dict()
    other.pop("logit_scale")  # a checkpoint of another architecture: keys do not line up
    wrong = tmp_path / "wrong.bin"
    torch.save(other, wrong)
    with pytest.raises(UserError, match="wrong.bin.*matches clip.model"):
        check_clip_weights(_cfg(str(wrong), tmp_path))


def test_random_weights_are_refused(tiny_weights, tmp_path):
    with pytest.raises(ConfigError, match="weights"):
        _cfg("", tmp_path)
    with pytest.raises(ConfigError, match="clip.weights"):
        from_dict(ClipConfig, {"weights": " "}, prefix="clip.")


def test_pretrained_tag_offline_fails_fast(tiny_weights, tmp_path, monkeypatch):
    """A hub tag that is not cached, while offline, is a UserError naming the tag (not a 45 s retry loop)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = ClipConfig(model="ViT-B-32", weights="laion2b_s34b_b79k", cache_dir=str(tmp_path / "cache"))
    with pytest.raises(UserError) as e:
        check_clip_weights(cfg)
    assert "laion2b_s34b_b79k" in str(e.value) and "clip.weights=" in str(e.value)


def test_unknown_tag_or_model(tiny_weights, tmp_path):
    with pytest.raises(UserError, match="not an open_clip pretrained tag"):
        check_clip_weights(_cfg("laion2b_s34b_b79k", tmp_path))  # a real tag, but not of the tiny model
    with pytest.raises(UserError, match="not an open_clip model"):
        check_clip_weights(ClipConfig(model="ViT-Nope", weights=tiny_weights))


@pytest.mark.gpu
def test_gpu_matches_cpu(tiny_weights, tmp_path):
    """bf16/fp16 autocast on the GPU gives the CPU fp32 embeddings to within low-precision rounding."""
    rows = _rows(n_frames=4, size=48)
    cpu = _by_id(run_local([ClipScoreStage(_cfg(tiny_weights, tmp_path))], rows))
    gpu_cfg = ClipConfig(model=TINY, weights=tiny_weights, device="cuda", cache_dir=str(tmp_path / "c"))
    stage = ClipScoreStage(gpu_cfg)
    assert stage.resources.gpus == 1
    gpu = _by_id(run_local([stage], rows))
    for cid in "abcd":
        a, b = np.asarray(cpu[cid]["clip_embedding"]), np.asarray(gpu[cid]["clip_embedding"])
        assert a @ b > 0.99
    for cid in "ac":
        assert gpu[cid]["clip_text_score"] == pytest.approx(cpu[cid]["clip_text_score"], abs=0.03)


def test_caption_cache_gives_same_scores(tiny_weights, tmp_path):
    """Clips of one video share its caption; the per-worker caption cache must not change any score."""
    rows = _rows()
    rows[1] = dict(rows[1], caption=rows[0]["caption"])  # two clips, one caption
    stage = ClipScoreStage(_cfg(tiny_weights, tmp_path))
    stage.setup()
    cold = _by_id(stage.process_rows(rows))
    assert len(stage._text_cache) == 2  # "a dog on a beach" once, "a red car"
    warm = _by_id(stage.process_rows(rows))
    fresh = ClipScoreStage(_cfg(tiny_weights, tmp_path))
    fresh.setup()
    alone = fresh.process_rows([rows[1]])[0]
    for cid in "abc":
        assert cold[cid]["clip_text_score"] == warm[cid]["clip_text_score"]
    assert alone["clip_text_score"] == pytest.approx(cold["b"]["clip_text_score"], abs=1e-6)
