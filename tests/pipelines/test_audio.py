"""AudioExtractStage: 16 kHz mono WAVs of exactly the clip's span, in sync; standalone audio filters."""

from __future__ import annotations

import wave

import fsspec
import numpy as np
import pytest
from mediagen import IMAGE, MUSIC, SPEECH, VIDEO_AUDIO, VIDEO_CITY, read_audio, read_frames, write_video

from videopoet.core.config import ConfigError
from videopoet.pipelines.audio import AudioConfig, AudioExtractStage
from videopoet.pipelines.base import run_local
from videopoet.pipelines.probe import ProbeStage
from videopoet.pipelines.scenes import SceneConfig, SceneSplitStage


def read_wav(path) -> tuple[np.ndarray, int, int]:
    with wave.open(str(path)) as w:
        data = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32767
        return data, w.getframerate(), w.getnchannels()


def pipeline(uris, out_dir, scenes=None, **audio_cfg) -> list[dict]:
    rows = [{"uri": str(u), "input_id": f"i{k}"} for k, u in enumerate(uris)]
    stages = [
        ProbeStage(),
        SceneSplitStage(cfg=scenes or SceneConfig()),
        AudioExtractStage(cfg=AudioConfig(**audio_cfg), output=str(out_dir)),
    ]
    return run_local(stages, rows)


@pytest.fixture(scope="module")
def talking_city(tmp_path_factory):
    """The 2 s city shot with the real LibriVox speech as its soundtrack (AAC, 16 kHz)."""
    speech = read_audio(SPEECH)
    path = tmp_path_factory.mktemp("media") / "talking_city.mp4"
    return write_video(path, read_frames(VIDEO_CITY), 25, audio=(speech[: 2 * 16000], 16000)), speech


def test_clip_audio_is_16k_mono_of_the_span_length_and_in_sync(talking_city, tmp_path):
    video, speech = talking_city
    rows = pipeline([video], tmp_path / "out", scenes=SceneConfig(max_clip_s=0.8, min_clip_s=0.5))
    assert [(int(r["start_frame"]), int(r["end_frame"])) for r in rows] == [(0, 17), (17, 34), (34, 50)]
    for r in rows:
        assert r["status"] == "ok" and r["audio_uri"] == str(
            tmp_path / "out" / "audio" / f"{r['clip_id']}.wav"
        )
        data, rate, channels = read_wav(r["audio_uri"])
        n = round((r["end_s"] - r["start_s"]) * 16000)
        assert (rate, channels, len(data)) == (16000, 1, n)
        assert r["audio_duration_s"] == pytest.approx(n / 16000)
        # same samples as the source recording at that time (AAC round trip: correlation, not equality)
        ref = speech[round(r["start_s"] * 16000) :][:n]
        corr = np.corrcoef(data[2000 : n - 2000], ref[2000 : n - 2000])[0, 1]
        assert corr > 0.99, (r["start_s"], corr)  # 0.91 one sample off: this is sample-exact sync


def test_silent_soundtrack_and_no_soundtrack_keep_the_clip_without_a_file(tmp_path):
    rows = pipeline([VIDEO_AUDIO, VIDEO_CITY, IMAGE], tmp_path / "out")  # cockatoo's track is digital silence
    assert [r["status"] for r in rows] == ["ok"] * 3
    assert all(r.get("audio_uri") is None for r in rows)
    assert not (tmp_path / "out" / "audio").exists()


def test_standalone_audio_transcoded_or_rejected(tmp_path):
    rows = pipeline([SPEECH, MUSIC], tmp_path / "out")
    speech, music = rows
    data, rate, channels = read_wav(speech["audio_uri"])
    assert (rate, channels) == (16000, 1) and len(data) == pytest.approx(2.99 * 16000, abs=2)
    assert np.corrcoef(data, read_audio(SPEECH)[: len(data)])[0, 1] > 0.99
    data, rate, _ = read_wav(music["audio_uri"])  # 44.1 kHz stereo -> 16 kHz mono
    assert rate == 16000 and len(data) == pytest.approx(1.7533 * 16000, abs=2)
    rows = pipeline([MUSIC], tmp_path / "out2", min_duration_s=2.0)
    assert rows[0]["reject_reason"] == "audio_too_short" and rows[0]["reject_stage"] == "audio"


def test_silent_standalone_audio_rejected(tmp_path):
    quiet = tmp_path / "quiet.wav"
    _write_wav(quiet, read_audio(SPEECH) * 1e-3)
    (r,) = pipeline([quiet], tmp_path / "out")
    assert r["reject_reason"] == "silent" and "dBFS" in r["reject_detail"]


def test_writes_to_an_fsspec_output(talking_city):
    video, _ = talking_city
    fs = fsspec.filesystem("memory")
    try:
        rows = pipeline([video], "memory://audio-test/run")
        (r,) = rows
        assert r["audio_uri"] == f"memory://audio-test/run/audio/{r['clip_id']}.wav"
        assert fs.cat_file(f"/audio-test/run/audio/{r['clip_id']}.wav")[:4] == b"RIFF"
    finally:
        if fs.exists("/audio-test"):
            fs.rm("/audio-test", recursive=True)


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="'sample_rate'"):
        AudioConfig(sample_rate=1000)
    with pytest.raises(ConfigError, match="'silence_dbfs'"):
        AudioConfig(silence_dbfs=0.0)


def _write_wav(path, samples, rate=16000):
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
