"""FilterStage thresholds on probed real media: each reason fires on the value it names, and only then."""

from __future__ import annotations

import pytest
from mediagen import IMAGE, MUSIC, SPEECH, VIDEO_AUDIO, VIDEO_CITY, read_audio

from videopoet.core.config import ConfigError
from videopoet.pipelines.base import run_local
from videopoet.pipelines.filters import FilterConfig, FilterStage
from videopoet.pipelines.probe import ProbeStage


@pytest.fixture(scope="module")
def probed() -> dict[str, dict]:
    files = {"cockatoo": VIDEO_AUDIO, "city": VIDEO_CITY, "image": IMAGE, "speech": SPEECH, "music": MUSIC}
    rows = run_local([ProbeStage()], [{"uri": str(p), "input_id": k} for k, p in files.items()])
    assert all(r["status"] == "ok" for r in rows)
    return {r["input_id"]: r for r in rows}


def verdicts(rows: list[dict], **cfg) -> dict[str, str | None]:
    out = run_local([FilterStage(cfg=FilterConfig(**cfg))], rows)
    return {r["input_id"]: r.get("reject_reason") for r in out}


def test_defaults_keep_good_media(probed):
    assert verdicts(list(probed.values())) == dict.fromkeys(probed)


@pytest.mark.parametrize(
    ("cfg", "reason"),
    [
        ({"min_duration_s": 2.5}, "too_short"),  # city is 2 s, cockatoo 3 s
        ({"max_duration_s": 2.5}, "too_long"),
        ({"min_short_side": 145}, "low_resolution"),  # both are 256x144
        ({"max_aspect": 1.7}, "bad_aspect"),  # 256/144 = 1.78
        ({"min_fps": 24.0}, "low_fps"),  # cockatoo 20 fps, city 25
        ({"video_codecs": ["vp9", "av1"]}, "codec_not_allowed"),
    ],
)
def test_video_thresholds(probed, cfg, reason):
    got = verdicts([probed["cockatoo"], probed["city"]], **cfg)
    expected = {
        "too_short": {"cockatoo": None, "city": reason},
        "too_long": {"cockatoo": reason, "city": None},
        "low_fps": {"cockatoo": reason, "city": None},
    }.get(reason, {"cockatoo": reason, "city": reason})
    assert got == expected


def test_rejection_detail_names_value_and_key(probed):
    (r,) = run_local([FilterStage(cfg=FilterConfig(min_fps=24.0))], [probed["cockatoo"]])
    assert (
        r["reject_stage"] == "filter"
        and "20.00 fps" in r["reject_detail"]
        and "min_fps 24.0" in r["reject_detail"]
    )


def test_image_thresholds(probed):
    image = [probed["image"]]  # 384x256, aspect 1.5
    assert verdicts(image, image_min_short_side=300) == {"image": "image_too_small"}
    assert verdicts(image, image_max_aspect=1.4) == {"image": "bad_aspect"}
    assert verdicts(image, image_min_short_side=256, image_max_aspect=1.5) == {"image": None}


def test_audio_duration_and_silence(probed, tmp_path):
    quiet = tmp_path / "whisper.wav"  # the same speech 60 dB down: below the -50 dBFS silence level
    _write_wav(quiet, read_audio(SPEECH) * 1e-3, 16000)
    rows = run_local([ProbeStage()], [{"uri": str(quiet), "input_id": "quiet"}]) + [
        probed["speech"],
        probed["music"],
    ]
    assert verdicts(rows) == {"quiet": "silent", "speech": None, "music": None}
    assert verdicts(rows, audio_min_duration_s=2.0) == {
        "quiet": "silent",
        "speech": None,
        "music": "audio_too_short",
    }
    assert verdicts(rows, check_silence=False) == {"quiet": None, "speech": None, "music": None}


def test_silent_soundtrack_does_not_reject_a_video(probed):
    # the cockatoo's AAC track is digital silence; silence is judged only for audio inputs
    assert verdicts([probed["cockatoo"]]) == {"cockatoo": None}


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="'min_aspect'"):
        FilterConfig(min_aspect=3.0, max_aspect=2.0)
    with pytest.raises(ConfigError, match="'max_duration_s'"):
        FilterConfig(min_duration_s=10.0, max_duration_s=5.0)
    with pytest.raises(ConfigError, match="'silence_dbfs'"):
        FilterConfig(silence_dbfs=3.0)


def _write_wav(path, samples, rate):
    import av
    import numpy as np

    with av.open(str(path), "w") as out:
        s = out.add_stream("pcm_s16le", rate=rate)
        s.layout = "mono"
        pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16)[None]
        f = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        f.sample_rate = rate
        for p in s.encode(f):
            out.mux(p)
        for p in s.encode():
            out.mux(p)
