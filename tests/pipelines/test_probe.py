"""ProbeStage on real media and on broken inputs: modality from content, metadata, rejections not crashes."""

from __future__ import annotations

import hashlib
import random
import shutil
import tempfile

import fsspec
import pytest
from mediagen import (
    ASSETS,
    IMAGE,
    KNOWN_CUT,
    MUSIC,
    SPEECH,
    VIDEO_AUDIO,
    VIDEO_CITY,
    read_frames,
    write_video,
)

from videopoet.core.config import ConfigError
from videopoet.pipelines.base import run_local
from videopoet.pipelines.probe import ProbeConfig, ProbeStage


def av_open(path, mode="r"):
    import av

    return av.open(str(path), mode)


def probe(*uris, cfg: ProbeConfig | None = None) -> list[dict]:
    rows = [{"uri": str(u), "input_id": f"i{k}"} for k, u in enumerate(uris)]
    out = run_local([ProbeStage(cfg=cfg)], rows)
    assert [r["input_id"] for r in out] == [r["input_id"] for r in rows]  # one row back per input
    return out


def test_real_video_with_audio():
    (r,) = probe(VIDEO_AUDIO)
    assert r["status"] == "ok", r
    assert r["modality"] == "video"
    assert (r["width"], r["height"], r["fps"], r["num_frames"]) == (256, 144, 20.0, 60)
    assert r["duration_s"] == pytest.approx(3.0, abs=0.06)
    assert r["video_codec"] == "h264" and "mp4" in r["container"]
    assert r["has_audio"] and r["audio_codec"] == "aac"
    assert (r["sample_rate"], r["audio_channels"]) == (16000, 1)
    data = VIDEO_AUDIO.read_bytes()
    assert r["content_sha256"] == hashlib.sha256(data).hexdigest() and r["bytes"] == len(data)


def test_real_image_audio_and_video_without_sound():
    img, speech, music, city = probe(IMAGE, SPEECH, MUSIC, VIDEO_CITY)
    assert img["modality"] == "image" and (img["width"], img["height"]) == (384, 256)
    assert img["container"] == "jpeg" and img["num_frames"] == 1
    assert speech["modality"] == "audio" and speech["sample_rate"] == 16000
    assert speech["duration_s"] == pytest.approx(2.99, abs=0.01)
    assert music["modality"] == "audio" and (music["sample_rate"], music["audio_channels"]) == (44100, 2)
    assert city["modality"] == "video" and not city["has_audio"] and city["num_frames"] == 50


def test_modality_comes_from_content_not_extension(tmp_path):
    video_as_jpg = tmp_path / "holiday.jpg"
    image_as_mp4 = tmp_path / "clip.mp4"
    audio_as_mp4 = tmp_path / "talk.mp4"
    shutil.copy(KNOWN_CUT, video_as_jpg)
    shutil.copy(IMAGE, image_as_mp4)
    shutil.copy(SPEECH, audio_as_mp4)
    got = [r["modality"] for r in probe(video_as_jpg, image_as_mp4, audio_as_mp4)]
    assert got == ["video", "image", "audio"]


def test_one_frame_video_is_an_image_and_audio_only_container_is_audio(tmp_path):
    one = write_video(tmp_path / "one_frame.mp4", read_frames(VIDEO_CITY, 10, 1), 25)
    audio_only = tmp_path / "audio_only.m4a"
    with av_open(VIDEO_AUDIO) as src, av_open(audio_only, "w") as dst:  # stream-copy the AAC track alone
        a = dst.add_stream_from_template(src.streams.audio[0])
        for p in src.demux(audio=0):
            if p.size:
                p.stream = a
                dst.mux(p)
    r_one, r_audio = probe(one, audio_only)
    assert r_one["status"] == "ok" and r_one["modality"] == "image" and r_one["width"] == 256
    assert r_audio["status"] == "ok" and r_audio["modality"] == "audio" and r_audio["audio_codec"] == "aac"


def test_broken_inputs_become_rejections_with_reasons(tmp_path):
    data = KNOWN_CUT.read_bytes()
    (tmp_path / "zero.mp4").write_bytes(b"")
    (tmp_path / "random.mp4").write_bytes(random.Random(0).randbytes(64 << 10))
    (tmp_path / "head_only.mp4").write_bytes(data[: len(data) // 2])  # index (moov) is at the end: lost
    (tmp_path / "cut_image.jpg").write_bytes(IMAGE.read_bytes()[:5000])
    (tmp_path / "notes.txt").write_text("not media at all\n" * 50)
    faststart = write_video(tmp_path / "faststart.mp4", read_frames(VIDEO_CITY), 25, faststart=True)
    fs_bytes = faststart.read_bytes()
    (tmp_path / "tail_lost.mp4").write_bytes(
        fs_bytes[: len(fs_bytes) // 2]
    )  # index first, half the frames gone
    names = ["zero.mp4", "random.mp4", "head_only.mp4", "cut_image.jpg", "notes.txt", "tail_lost.mp4"]
    out = probe(*[tmp_path / n for n in names])
    got = {n: (r["status"], r.get("reject_reason")) for n, r in zip(names, out)}
    assert got == {
        "zero.mp4": ("rejected", "empty_file"),
        "random.mp4": ("rejected", "undecodable"),
        "head_only.mp4": ("rejected", "undecodable"),
        "cut_image.jpg": ("rejected", "undecodable"),
        "notes.txt": ("rejected", "undecodable"),
        "tail_lost.mp4": ("rejected", "undecodable"),
    }
    details = {n: r["reject_detail"] for n, r in zip(names, out)}
    assert "0 bytes" in details["zero.mp4"]
    assert "truncated" in details["tail_lost.mp4"] and "declared 2.00s" in details["tail_lost.mp4"]
    assert "does not decode" in details["cut_image.jpg"]
    assert all(str(tmp_path) in d for d in details.values())  # every detail names the file


def test_memory_url_is_hashed_streamed_and_temp_copy_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the decode copy goes
    fs = fsspec.filesystem("memory")
    fs.pipe("/probe-test/clip.bin", VIDEO_AUDIO.read_bytes())
    try:
        (r,) = probe("memory://probe-test/clip.bin")
    finally:
        fs.rm("/probe-test", recursive=True)
    assert r["status"] == "ok" and r["modality"] == "video" and r["num_frames"] == 60
    assert r["content_sha256"] == hashlib.sha256(VIDEO_AUDIO.read_bytes()).hexdigest()
    assert list(tmp_path.iterdir()) == []  # the local copy is gone


def test_every_asset_probes_without_error():
    files = sorted(p for p in ASSETS.iterdir() if p.suffix in {".mp4", ".jpg", ".wav", ".flac"})
    out = probe(*files)
    assert all(r["status"] == "ok" for r in out), [
        (r["uri"], r.get("reject_detail")) for r in out if r["status"] != "ok"
    ]


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="image_formats"):
        ProbeConfig(image_formats=[])
    with pytest.raises(ConfigError, match="truncation_tolerance_s"):
        ProbeConfig(truncation_tolerance_s=-1)
