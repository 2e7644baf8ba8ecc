"""FilterStage: input-level keep/reject decisions from probed metadata (and, for audio, its loudness).

Videos: duration, resolution (short side), aspect ratio, frame rate, codec allow-list. Images: size and
aspect ratio. Audio: duration, and silence as the RMS level in dBFS of the whole file decoded at 16 kHz
mono (the only check here that decodes anything). Each rejection's detail gives the value and the
threshold, so a user can tell which config key to change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from videopoet.core.config import check
from videopoet.pipelines.base import Resources, Row, Stage, reject
from videopoet.pipelines.media import audio_level_dbfs, local_path, num


@dataclass(kw_only=True)
class FilterConfig:
    min_duration_s: float = 1.0
    """Videos shorter than this are rejected (`too_short`)."""
    max_duration_s: float | None = 4 * 3600.0
    """Videos (and audio files) longer than this are rejected (`too_long`); null = no limit."""
    min_short_side: int = 128
    """Videos whose shorter side has fewer pixels are rejected (`low_resolution`)."""
    min_aspect: float = 0.4
    """Lowest width/height ratio kept (`bad_aspect` below: e.g. 0.4 keeps 9:16 portrait, drops 1:3)."""
    max_aspect: float = 2.5
    """Highest width/height ratio kept (`bad_aspect` above: e.g. 2.5 keeps 21:9, drops 3:1 panoramas)."""
    min_fps: float = 10.0
    """Videos with a lower frame rate are rejected (`low_fps`)."""
    video_codecs: list[str] | None = None
    """Allowed ffmpeg video decoder names (e.g. [h264, hevc, vp9, av1]); null = any (`codec_not_allowed`)."""
    image_min_short_side: int = 128
    """Images whose shorter side has fewer pixels are rejected (`image_too_small`)."""
    image_min_aspect: float = 0.4
    """Lowest width/height ratio of images kept (`bad_aspect`)."""
    image_max_aspect: float = 2.5
    """Highest width/height ratio of images kept (`bad_aspect`)."""
    audio_min_duration_s: float = 1.0
    """Audio files shorter than this are rejected (`audio_too_short`)."""
    silence_dbfs: float = -50.0
    """Audio files whose RMS level (16 kHz mono, whole file) is below this are rejected (`silent`)."""
    check_silence: bool = True
    """Decode audio files to measure their level; false skips the `silent` check (no decoding here)."""

    def __post_init__(self):
        check(self.min_duration_s >= 0, "min_duration_s", self.min_duration_s, ">= 0")
        check(
            self.max_duration_s is None or self.max_duration_s > self.min_duration_s,
            "max_duration_s",
            self.max_duration_s,
            f"null or > min_duration_s ({self.min_duration_s})",
        )
        check(self.min_short_side >= 0, "min_short_side", self.min_short_side, ">= 0")
        check(
            0 < self.min_aspect <= self.max_aspect,
            "min_aspect",
            self.min_aspect,
            f"> 0 and <= max_aspect ({self.max_aspect})",
        )
        check(
            0 < self.image_min_aspect <= self.image_max_aspect,
            "image_min_aspect",
            self.image_min_aspect,
            f"> 0 and <= image_max_aspect ({self.image_max_aspect})",
        )
        check(self.min_fps >= 0, "min_fps", self.min_fps, ">= 0")
        check(
            self.video_codecs is None or len(self.video_codecs) > 0,
            "video_codecs",
            self.video_codecs,
            "null or a non-empty list",
        )
        check(self.image_min_short_side >= 0, "image_min_short_side", self.image_min_short_side, ">= 0")
        check(self.audio_min_duration_s >= 0, "audio_min_duration_s", self.audio_min_duration_s, ">= 0")
        check(self.silence_dbfs < 0, "silence_dbfs", self.silence_dbfs, "< 0 (dB relative to full scale)")


class FilterStage(Stage):
    """Rejects inputs outside the configured ranges (docs/CURATION.md); adds nothing to kept rows."""

    name: ClassVar[str] = "filter"

    def __init__(self, *, cfg: FilterConfig | None = None):
        self.cfg = cfg or FilterConfig()
        self.resources = Resources(cpus=1.0)

    def process_row(self, row: Row) -> Row:
        modality = row.get("modality")
        if modality == "video":
            verdict = self.check_video(row)
        elif modality == "image":
            verdict = self.check_image(row)
        elif modality == "audio":
            verdict = self.check_audio(row)
        else:
            verdict = ("undecodable", f"unknown modality {modality!r}")
        return reject(row, self.name, *verdict) if verdict else row

    def check_video(self, row: Row) -> tuple[str, str] | None:
        c = self.cfg
        dur = num(row, "duration_s") or 0.0
        w, h = num(row, "width") or 0, num(row, "height") or 0
        fps = num(row, "fps") or 0.0
        if dur < c.min_duration_s:
            return "too_short", f"duration {dur:.2f}s < min_duration_s {c.min_duration_s}"
        if c.max_duration_s is not None and dur > c.max_duration_s:
            return "too_long", f"duration {dur:.1f}s > max_duration_s {c.max_duration_s}"
        if min(w, h) < c.min_short_side:
            return "low_resolution", f"{w:.0f}x{h:.0f}: short side < min_short_side {c.min_short_side}"
        aspect = w / h if h else 0.0
        if not c.min_aspect <= aspect <= c.max_aspect:
            return (
                "bad_aspect",
                f"{w:.0f}x{h:.0f}: aspect {aspect:.2f} outside [min_aspect {c.min_aspect}, max_aspect {c.max_aspect}]",
            )
        if fps < c.min_fps:
            return "low_fps", f"{fps:.2f} fps < min_fps {c.min_fps}"
        codec = row.get("video_codec")
        if c.video_codecs is not None and codec not in c.video_codecs:
            return "codec_not_allowed", f"video codec {codec!r} not in video_codecs {c.video_codecs}"
        return None

    def check_image(self, row: Row) -> tuple[str, str] | None:
        c = self.cfg
        w, h = num(row, "width") or 0, num(row, "height") or 0
        if min(w, h) < c.image_min_short_side:
            return (
                "image_too_small",
                f"{w:.0f}x{h:.0f}: short side < image_min_short_side {c.image_min_short_side}",
            )
        aspect = w / h if h else 0.0
        if not c.image_min_aspect <= aspect <= c.image_max_aspect:
            return (
                "bad_aspect",
                f"{w:.0f}x{h:.0f}: aspect {aspect:.2f} outside [image_min_aspect {c.image_min_aspect}, "
                f"image_max_aspect {c.image_max_aspect}]",
            )
        return None

    def check_audio(self, row: Row) -> tuple[str, str] | None:
        c = self.cfg
        dur = num(row, "duration_s") or 0.0
        if dur < c.audio_min_duration_s:
            return "audio_too_short", f"duration {dur:.2f}s < audio_min_duration_s {c.audio_min_duration_s}"
        if c.max_duration_s is not None and dur > c.max_duration_s:
            return "too_long", f"duration {dur:.1f}s > max_duration_s {c.max_duration_s}"
        if c.check_silence:
            with local_path(row["uri"]) as path:
                level, _ = audio_level_dbfs(path, rate=16000)
            if level < c.silence_dbfs:
                return "silent", f"RMS level {level:.1f} dBFS < silence_dbfs {c.silence_dbfs}"
        return None
