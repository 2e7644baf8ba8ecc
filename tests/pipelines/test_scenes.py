"""SceneSplitStage: known cuts found, spans exact and complete, clip scores and filters, bounded memory."""

from __future__ import annotations

import random
import tracemalloc

import pytest
from mediagen import (
    IMAGE,
    KNOWN_CUT,
    SPEECH,
    VIDEO_AUDIO,
    VIDEO_CITY,
    concat_cut_video,
    known_cut_truth,
    read_frames,
    repeat_remux,
    scaled_video,
    still_video,
    write_video,
)

from videopoet.core.config import ConfigError
from videopoet.pipelines.base import run_local
from videopoet.pipelines.probe import ProbeStage
from videopoet.pipelines.scenes import SceneConfig, SceneSplitStage, analyze_video, scene_spans


def split(*uris, **cfg) -> list[dict]:
    rows = [{"uri": str(u), "input_id": f"i{k}"} for k, u in enumerate(uris)]
    return run_local([ProbeStage(), SceneSplitStage(cfg=SceneConfig(**cfg))], rows)


def cut_frames(rows: list[dict]) -> list[int]:
    return [int(r["start_frame"]) for r in rows if int(r["clip_index"]) > 0]


@pytest.mark.parametrize("detector", ["content", "adaptive"])
def test_known_cuts_found_within_two_frames(detector):
    truth = known_cut_truth()
    rows = split(KNOWN_CUT, detector=detector)
    found = cut_frames(rows)
    assert len(found) == len(truth["cut_frames"]), (found, truth["cut_frames"])
    for f, t in zip(found, truth["cut_frames"]):
        assert abs(f - t) <= 2, (found, truth["cut_frames"])


def test_cuts_in_a_longer_concatenation(tmp_path):
    # 2 s of cockatoo, 1.6 s of city, the cockatoo's last second: two real cuts at known frames
    path = tmp_path / "cuts.mp4"
    truth = concat_cut_video(path, [(VIDEO_AUDIO, 0, 50), (VIDEO_CITY, 5, 40), (VIDEO_AUDIO, 40, 20)], fps=25)
    rows = split(path)
    assert all(abs(f - t) <= 2 for f, t in zip(cut_frames(rows), truth)) and len(cut_frames(rows)) == len(
        truth
    )


def test_spans_cover_the_video_without_overlap_and_ids_are_stable():
    rows = split(KNOWN_CUT, max_clip_s=0.5, min_clip_s=0.25)
    n = len(rows)
    assert [int(r["clip_index"]) for r in rows] == list(range(n))
    assert all(int(r["clip_count"]) == n for r in rows)
    assert int(rows[0]["start_frame"]) == 0 and int(rows[-1]["end_frame"]) == 36
    for a, b in zip(rows, rows[1:]):
        assert int(a["end_frame"]) == int(b["start_frame"])
        assert a["end_s"] == pytest.approx(b["start_s"])
    for r in rows:  # frame-accurate seconds at 12 fps, and every window at most max_clip_s
        assert r["start_s"] == pytest.approx(int(r["start_frame"]) / 12)
        assert r["end_s"] == pytest.approx(int(r["end_frame"]) / 12)
        assert r["end_s"] - r["start_s"] <= 0.5 + 1e-9
    assert len({r["clip_id"] for r in rows}) == n
    assert [r["clip_id"] for r in split(KNOWN_CUT, max_clip_s=0.5, min_clip_s=0.25)] == [
        r["clip_id"] for r in rows
    ]


def test_long_scene_cut_into_equal_windows_and_short_scenes_rejected():
    rows = split(VIDEO_AUDIO, max_clip_s=1.4)  # one 3 s shot -> 3 windows of 1 s
    assert [(int(r["start_frame"]), int(r["end_frame"])) for r in rows] == [(0, 20), (20, 40), (40, 60)]
    rows = split(KNOWN_CUT, min_clip_s=1.5)  # three 1 s shots, all too short, all still accounted for
    assert [r["reject_reason"] for r in rows] == ["clip_too_short"] * 3
    assert all(r["reject_stage"] == "scenes" and r["clip_id"] and int(r["clip_count"]) == 3 for r in rows)


def test_scene_spans_by_time_for_variable_frame_rate():
    times = [0.0, 0.1, 0.2, 3.0, 3.1, 6.0, 6.1, 9.0]  # dropped frames: 8 frames over 9.5 s
    spans = scene_spans([], times, 9.5, max_s=4.0)
    assert spans[0][0] == 0 and spans[-1][1] == 8
    ends = [times[e] if e < 8 else 9.5 for _, e in spans]
    assert all(t1 - times[s] <= 4.0 for (s, _), t1 in zip(spans, ends))


def test_static_black_dark_and_low_motion_clips_are_rejected(tmp_path):
    still = still_video(tmp_path / "still.mp4")  # a real photo held still
    black = scaled_video(VIDEO_CITY, tmp_path / "black.mp4", 0.05, 25)  # the city shot, 26 dB under-exposed
    dark = scaled_video(VIDEO_AUDIO, tmp_path / "dark.mp4", 0.1, 20)  # the cockatoo, 20 dB under-exposed
    rows = split(still, black, dark, VIDEO_CITY, VIDEO_AUDIO)
    got = {r["input_id"]: r.get("reject_reason") for r in rows}
    assert got == {"i0": "static", "i1": "black", "i2": "too_dark", "i3": None, "i4": None}
    by = {r["input_id"]: r for r in rows}
    assert by["i0"]["is_static"] and by["i0"]["motion_score"] < 0.05
    assert by["i1"]["is_black"] and not by["i3"]["is_black"]
    assert by["i2"]["brightness"] < 30 < by["i4"]["brightness"]
    assert by["i4"]["motion_score"] > by["i3"]["motion_score"] > 1.0  # handheld cockatoo > city at night
    threshold = (by["i3"]["motion_score"] + by["i4"]["motion_score"]) / 2
    got = {
        r["input_id"]: r.get("reject_reason") for r in split(VIDEO_CITY, VIDEO_AUDIO, min_motion=threshold)
    }
    assert got == {"i0": "low_motion", "i1": None}


def test_corrupt_packets_reject_the_video_unless_tolerated(tmp_path):
    clean = write_video(tmp_path / "clean.mp4", read_frames(VIDEO_CITY), 25, faststart=True)
    data = bytearray(clean.read_bytes())
    rng = random.Random(0)
    for k in range(4):  # damage 4 stretches of the payload (the index is up front and stays intact)
        off = len(data) // 4 + k * len(data) // 8
        data[off : off + 2048] = rng.randbytes(2048)
    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(bytes(data))
    (r,) = split(bad)
    assert r["reject_stage"] == "scenes" and r["reject_reason"] == "undecodable"
    assert "corrupt packets" in r["reject_detail"] and "clip_id" not in r
    rows = split(
        bad, max_decode_errors=1000
    )  # tolerated: the decode pass skipped the bad packets and went on
    assert rows[0]["status"] == "ok" and 25 < int(rows[-1]["end_frame"]) < 50


def test_images_and_audio_pass_through_as_one_clip():
    img, speech = split(IMAGE, SPEECH)
    assert (img["clip_index"], img["clip_count"], img["start_frame"], img["end_frame"]) == (0, 1, 0, 1)
    assert (speech["clip_index"], speech["clip_count"]) == (0, 1)
    assert speech["end_s"] == pytest.approx(2.99, abs=0.01)
    assert img["clip_id"] != speech["clip_id"] and img["status"] == speech["status"] == "ok"


def test_decode_holds_a_bounded_number_of_frames(tmp_path):
    """Peak traced memory must not grow with video length (holding frames would add ~22 KB each)."""
    short, long = tmp_path / "short.mp4", tmp_path / "long.mp4"
    n_short = repeat_remux(VIDEO_CITY, short, 4)  # 200 frames
    n_long = repeat_remux(VIDEO_CITY, long, 20)  # 1000 frames, 40 s
    cfg = SceneConfig()
    peaks = {}
    for name, path in (("short", short), ("long", long)):
        tracemalloc.start()
        a = analyze_video(str(path), cfg, width=256, height=144, fps=25.0)
        peaks[name] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert a.peak_frames_held <= a.step + 1 <= 5
    assert a.num_frames == n_long and n_long - n_short == 800
    assert peaks["long"] - peaks["short"] < 1_000_000, peaks  # vs ~17 MB if the extra 800 frames were kept


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="'max_clip_s'"):
        SceneConfig(min_clip_s=5.0, max_clip_s=2.0)
    with pytest.raises(ConfigError, match="'hist_gate'"):
        SceneConfig(hist_gate=1.5)
    with pytest.raises(ConfigError, match="'detector'"):
        from videopoet.core.config import from_dict

        from_dict(SceneConfig, {"detector": "histogram"})


@pytest.mark.parametrize("base", ["ContentDetector", "AdaptiveDetector"])
def test_fast_content_score_equals_pyscenedetect(base):
    """The gated detector computes PySceneDetect's content score itself (faster): the numbers must agree."""
    import scenedetect
    from scenedetect import FrameTimecode

    from videopoet.pipelines.media import iter_video_frames
    from videopoet.pipelines.scenes import _hist_gated

    cls = getattr(scenedetect, base)
    stock, fast = cls(), _hist_gated(cls)(hist_gate=1e-12)  # a gate that never closes on real footage
    rate = FrameTimecode(0, 20.0)
    for f in iter_video_frames(str(VIDEO_AUDIO), width=160, height=90, fmt="bgr24"):
        tc = FrameTimecode(f.index, rate)
        assert stock.process_frame(tc, f.image) == fast.process_frame(tc, f.image)
        assert fast._frame_score == pytest.approx(stock._frame_score, abs=1e-9)
