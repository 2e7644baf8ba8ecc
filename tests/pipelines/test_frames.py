"""FrameSampleStage: frame shapes, frames from inside the clip's span, determinism, thumbnail embeddings."""

from __future__ import annotations

import fsspec
import numpy as np
import pytest
from mediagen import IMAGE, KNOWN_CUT, SPEECH, VIDEO_AUDIO, VIDEO_CITY, read_frames, write_video

from videopoet.pipelines.base import run_local
from videopoet.pipelines.frames import FrameSampleConfig, FrameSampleStage, sample_positions, thumb_embedding
from videopoet.pipelines.probe import ProbeStage
from videopoet.pipelines.scenes import SceneSplitStage


@pytest.fixture(scope="module")
def clips() -> list[dict]:
    """The known-cut video (3 shots of 12 frames) and an image and a recording, through probe + split."""
    rows = [{"uri": str(p), "input_id": f"i{k}"} for k, p in enumerate([KNOWN_CUT, IMAGE, SPEECH])]
    out = run_local([ProbeStage(), SceneSplitStage()], rows)
    assert [r["status"] for r in out] == ["ok"] * 5
    return out


def sample(rows, **kw) -> list[dict]:
    with_clip_frames = kw.pop("with_clip_frames", True)
    return run_local([FrameSampleStage(cfg=FrameSampleConfig(**kw), with_clip_frames=with_clip_frames)], rows)


def test_shapes_and_embedding(clips):
    out = sample(clips)
    video, image, audio = out[:3], out[3], out[4]
    for r in video:
        assert r["frames"].shape == (3, 224, 224, 3) and r["frames"].dtype == np.uint8
    assert image["frames"].shape == (1, 224, 224, 3)
    assert "frames" not in audio and "thumb_embedding" not in audio
    for r in [*video, image]:
        e = np.asarray(r["thumb_embedding"])
        assert (
            e.shape == (256,) and abs(e.mean()) < 1e-5 and np.linalg.norm(e) == pytest.approx(1.0, abs=1e-5)
        )
    # three different shots: their thumbnails are not near-duplicates of each other
    e = np.stack([r["thumb_embedding"] for r in video])
    sims = e @ e.T
    assert np.all(sims[~np.eye(3, dtype=bool)] < 0.9), sims


def test_frames_come_from_inside_the_span(clips):
    """Each sampled frame equals the frame at its sample position, decoded sequentially (12 fps shots)."""
    full = read_frames(KNOWN_CUT)  # 256x144 RGB
    out = sample(clips[:3], size=144)
    for r in out:
        s, e = int(r["start_frame"]), int(r["end_frame"])
        for k, idx in enumerate(sample_positions(s, e, 3)):
            expected = full[idx][:, 56:200]  # the 144x144 centre crop
            assert np.abs(r["frames"][k].astype(int) - expected).mean() < 3.0, (s, e, k, idx)


def test_deterministic_and_thumb_only_mode_agrees(clips):
    a, b = sample(clips[:3]), sample(clips[:3])
    for x, y in zip(a, b):
        assert np.array_equal(x["frames"], y["frames"]) and x["thumb_embedding"] == y["thumb_embedding"]
    thumbs_only = sample(clips[:3], with_clip_frames=False)
    for x, y in zip(a, thumbs_only):
        assert "frames" not in y
        assert np.allclose(x["thumb_embedding"], y["thumb_embedding"])


def test_decord_backend_matches_pyav(clips):
    a = sample(clips[:3], backend="pyav")
    b = sample(clips[:3], backend="decord")
    for x, y in zip(a, b):
        assert np.abs(x["frames"].astype(int) - y["frames"]).mean() < 3.0


def test_frame_count_size_and_remote_input(clips):
    fs = fsspec.filesystem("memory")
    fs.pipe("/frames-test/clip.mp4", VIDEO_AUDIO.read_bytes())
    try:
        rows = run_local(
            [ProbeStage(), SceneSplitStage()], [{"uri": "memory://frames-test/clip.mp4", "input_id": "m"}]
        )
        (r,) = sample(rows, num_frames=5, size=96)
    finally:
        fs.rm("/frames-test", recursive=True)
    assert r["frames"].shape == (5, 96, 96, 3)


def test_sample_positions_and_uniform_thumb():
    assert sample_positions(0, 12, 3) == [2, 6, 10]
    assert sample_positions(24, 36, 1) == [30]
    assert sample_positions(5, 6, 3) == [5, 5, 5]  # a one-frame span repeats its frame
    assert thumb_embedding(np.full((32, 32, 3), 90, np.uint8)) == [0.0] * 256


def test_one_frame_video_is_sampled_as_an_image(tmp_path):
    one = write_video(tmp_path / "still.mp4", read_frames(VIDEO_CITY, 20, 1), 25)
    rows = run_local([ProbeStage(), SceneSplitStage()], [{"uri": str(one), "input_id": "s"}])
    (r,) = sample(rows)
    assert r["modality"] == "image" and r["status"] == "ok" and r["frames"].shape == (1, 224, 224, 3)
