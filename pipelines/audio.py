"""AudioExtractStage: the sound of each kept clip as a mono 16 kHz WAV, for the audio tokenizer.

Video clips with an audio track get the audio of exactly their span (`start_s`..`end_s`, on the video's
clock: the cut is in sync with the frames), as round(span * 16000) samples; a track that starts late or
ends early is padded with silence. Clips whose span is silent (RMS below `silence_dbfs`) keep their
row but get no file (`audio_uri` null) - a silent clip is still a good video clip. Standalone audio
inputs are transcoded whole, and rejected when too short (`audio_too_short`) or silent (`silent`).
Files go to `<output>/audio/<clip_id>.wav`, written atomically; a re-run overwrites them with the same
bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from videopoet.core.config import check
from videopoet.core.io import atomic_write_bytes, join
from videopoet.pipelines.base import Resources, Row, Stage, reject
from videopoet.pipelines.media import (
    decode_audio,
    flag,
    local_path,
    num,
    rms_dbfs,
    stream_start_s,
    video_stream,
    wav_bytes,
)


@dataclass(kw_only=True)
class AudioConfig:
    enabled: bool = True
    """Extract audio at all; false passes every row through without `audio_uri`."""
    sample_rate: int = 16000
    """Output sample rate (Hz) of the mono WAV files."""
    min_duration_s: float = 1.0
    """Standalone audio inputs shorter than this are rejected (`audio_too_short`)."""
    max_duration_s: float = 600.0
    """Standalone audio inputs longer than this are rejected (`too_long`): the whole file is held in
    memory while it is transcoded."""
    silence_dbfs: float = -50.0
    """Audio whose RMS level is below this is silent: standalone inputs are rejected (`silent`), video
    clips keep their row without a WAV."""

    def __post_init__(self):
        check(8000 <= self.sample_rate <= 48000, "sample_rate", self.sample_rate, "in [8000, 48000]")
        check(self.min_duration_s >= 0, "min_duration_s", self.min_duration_s, ">= 0")
        check(
            self.max_duration_s > self.min_duration_s,
            "max_duration_s",
            self.max_duration_s,
            "> min_duration_s",
        )
        check(self.silence_dbfs < 0, "silence_dbfs", self.silence_dbfs, "< 0 (dB relative to full scale)")


class AudioExtractStage(Stage):
    """Adds `audio_uri` and `audio_duration_s` (docs/CURATION.md)."""

    name: ClassVar[str] = "audio"

    def __init__(self, *, cfg: AudioConfig | None = None, output: str):
        self.cfg = cfg or AudioConfig()
        self.output = output
        """Output URL of the run; WAVs go under `<output>/audio/`."""
        self.resources = Resources(cpus=1.0)

    def audio_url(self, clip_id: str) -> str:
        return join(self.output, "audio", f"{clip_id}.wav")

    def process_row(self, row: Row) -> Row:
        modality = row.get("modality")
        if not self.cfg.enabled or modality == "image":
            return row
        if modality == "audio":
            return self._standalone(row)
        if modality == "video" and flag(row, "has_audio"):
            return self._clip(row)
        return row

    def _clip(self, row: Row) -> Row:
        import av

        start, end = num(row, "start_s") or 0.0, num(row, "end_s") or 0.0
        out = dict(row, audio_uri=None, audio_duration_s=None)
        if end <= start:
            return out
        with local_path(row["uri"]) as path:
            with av.open(path, metadata_errors="ignore") as c:  # the video's clock is the span's origin
                vs = video_stream(c)
                origin = stream_start_s(vs) if vs is not None else 0.0
            samples = decode_audio(path, rate=self.cfg.sample_rate, start_s=start, end_s=end, origin_s=origin)
        if rms_dbfs(samples) < self.cfg.silence_dbfs:
            return out
        return self._write(out, samples)

    def _standalone(self, row: Row) -> Row:
        c = self.cfg
        dur = num(row, "duration_s") or 0.0
        if dur > c.max_duration_s:
            return reject(
                row, self.name, "too_long", f"duration {dur:.1f}s > max_duration_s {c.max_duration_s}"
            )
        with local_path(row["uri"]) as path:
            samples = decode_audio(path, rate=c.sample_rate)
        seconds = len(samples) / c.sample_rate
        if seconds < c.min_duration_s:
            return reject(
                row,
                self.name,
                "audio_too_short",
                f"{seconds:.2f}s decoded < min_duration_s {c.min_duration_s}",
            )
        level = rms_dbfs(samples)
        if level < c.silence_dbfs:
            return reject(
                row, self.name, "silent", f"RMS level {level:.1f} dBFS < silence_dbfs {c.silence_dbfs}"
            )
        return self._write(dict(row), samples)

    def _write(self, row: Row, samples) -> Row:
        url = self.audio_url(row["clip_id"])
        atomic_write_bytes(url, wav_bytes(samples, self.cfg.sample_rate))
        row.update(audio_uri=url, audio_duration_s=len(samples) / self.cfg.sample_rate)
        return row
