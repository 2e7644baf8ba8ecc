"""ProbeStage: what is this file? Content hash, modality decided from the bytes, container/stream metadata.

Modality never comes from the file name: Pillow is asked first (restricted to real image formats, and
the image is fully decoded so a truncated one is caught), then PyAV: a video stream with more than one
frame is a video, a single frame is an image, audio streams alone are audio. Cover art attached to an
audio file is not a video stream. Broken inputs (zero bytes, truncated, random bytes) become rejections
(`empty_file`, `undecodable`, `no_media_streams`) whose detail says what was found.

Run alone:

    from videopoet.pipelines.base import run_local
    from videopoet.pipelines.probe import ProbeConfig, ProbeStage
    run_local([ProbeStage(cfg=ProbeConfig())], [{"uri": "clip.mp4", "input_id": "x"}])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from videopoet.core.config import check
from videopoet.pipelines.base import Resources, Row, Stage, reject
from videopoet.pipelines.media import decode_resilient, fetch_local, stream_fps, stream_start_s, video_stream

DEFAULT_IMAGE_FORMATS = ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO", "AVIF", "JPEG2000", "PPM", "QOI"]


@dataclass(kw_only=True)
class ProbeConfig:
    image_formats: list[str] = field(default_factory=lambda: list(DEFAULT_IMAGE_FORMATS))
    """Pillow format names tried before PyAV. Header-less formats (TGA, ...) and Pillow's MPEG header
    reader are left out on purpose: they would claim random bytes or videos as images."""
    text_formats: list[str] = field(default_factory=lambda: ["tty", "bin", "xbin", "adf", "idf"])
    """ffmpeg demuxers that render any text file as 'video' (ANSI/text art): inputs they claim are
    rejected (`undecodable`) instead of becoming videos of rendered text."""
    max_image_pixels: int = 200_000_000
    """Images with more pixels are rejected (`undecodable`, decompression-bomb guard)."""
    scan_packets: bool = True
    """Demux (not decode) every video packet: exact frame count, and truncation detection for files whose
    header promises more than the file holds. Costs one read of the file, no decoding."""
    truncation_tolerance_s: float = 0.5
    """A video whose packets end this much (and 5%) before its declared duration is `undecodable`."""

    def __post_init__(self):
        check(len(self.image_formats) > 0, "image_formats", self.image_formats, "at least one Pillow format")
        check(self.max_image_pixels > 0, "max_image_pixels", self.max_image_pixels, "> 0")
        check(self.truncation_tolerance_s >= 0, "truncation_tolerance_s", self.truncation_tolerance_s, ">= 0")


class _Reject(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class ProbeStage(Stage):
    """Adds `modality`, `content_sha256`, `bytes`, `container` and stream metadata (docs/CURATION.md)."""

    name: ClassVar[str] = "probe"

    def __init__(self, *, cfg: ProbeConfig | None = None):
        self.cfg = cfg or ProbeConfig()
        self.resources = Resources(cpus=1.0)

    def process_row(self, row: Row) -> Row:
        uri = row["uri"]
        try:
            with fetch_local(uri) as fetched:
                if fetched.nbytes == 0:
                    return reject(row, self.name, "empty_file", f"{uri} is 0 bytes")
                meta = self.probe_path(fetched.path)
        except _Reject as r:
            return reject(row, self.name, r.reason, f"{uri}: {r.detail}")
        except OSError as e:
            return reject(row, self.name, "unreadable", f"{uri}: {type(e).__name__}: {e}")
        out = dict(row)
        out.update(content_sha256=fetched.sha256, bytes=fetched.nbytes, **meta)
        return out

    def probe_path(self, path: str) -> dict[str, Any]:
        """Metadata of a local file; raises `_Reject` for anything that is not decodable media."""
        image = self._probe_image(path)
        if image is not None and not image.pop("_animated", False):
            return image
        try:
            return self._probe_av(path)
        except _Reject:
            if image is not None:  # an animated image ffmpeg cannot read: keep its first frame
                return image
            raise

    def _probe_image(self, path: str) -> dict[str, Any] | None:
        from PIL import Image, UnidentifiedImageError

        Image.init()
        formats = [f.upper() for f in self.cfg.image_formats if f.upper() in Image.OPEN]  # MPO rides on JPEG
        try:
            img = Image.open(path, formats=formats)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
            return None  # not an image format we accept: PyAV decides
        with img:
            fmt = (img.format or "image").lower()
            w, h = img.size
            if w * h > self.cfg.max_image_pixels:
                raise _Reject("undecodable", f"{fmt} image of {w}x{h} pixels exceeds max_image_pixels")
            animated = getattr(img, "n_frames", 1) > 1
            try:
                img.load()  # a truncated or corrupt image fails here, not later in a worker
                if img.getexif().get(0x0112) in (5, 6, 7, 8):  # EXIF says rotate by 90 degrees
                    w, h = h, w
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
                raise _Reject("undecodable", f"{fmt} image does not decode: {e}") from None
        return {
            "modality": "image",
            "container": fmt,
            "duration_s": 0.0,
            "fps": None,
            "num_frames": 1,
            "width": int(w),
            "height": int(h),
            "video_codec": fmt,
            "has_audio": False,
            "audio_codec": None,
            "sample_rate": None,
            "audio_channels": None,
            "_animated": animated,
        }

    def _probe_av(self, path: str) -> dict[str, Any]:
        import av

        try:
            container = av.open(path, metadata_errors="ignore")
        except av.error.FFmpegError as e:
            raise _Reject(
                "undecodable", f"neither an image nor a container ffmpeg can read ({e.strerror})"
            ) from None
        with container:
            if container.format.name in self.cfg.text_formats:
                raise _Reject(
                    "undecodable",
                    f"not media: ffmpeg reads it only as text art ({container.format.name} demuxer)",
                )
            vs = video_stream(container)
            audio = container.streams.audio[0] if container.streams.audio else None
            if vs is None and audio is None:
                kinds = sorted({s.type for s in container.streams}) or ["none"]
                raise _Reject(
                    "no_media_streams",
                    f"{container.format.name} container with no video or audio stream (streams: {', '.join(kinds)})",
                )
            meta: dict[str, Any] = {"container": container.format.name, "has_audio": audio is not None}
            if audio is not None:
                meta.update(
                    audio_codec=audio.codec_context.name,
                    sample_rate=int(audio.rate or 0) or None,
                    audio_channels=int(audio.channels or 0) or None,
                )
            else:
                meta.update(audio_codec=None, sample_rate=None, audio_channels=None)
            if vs is not None:
                meta.update(self._video_meta(container, vs))
            else:
                meta.update(self._audio_meta(container, audio))
            return meta

    def _video_meta(self, container, vs) -> dict[str, Any]:
        fps = stream_fps(vs)
        declared = _duration(container, vs)
        # decode the first two frames: proves the stream decodes and tells a video from a still
        vs.thread_count = 1  # two frames: a thread pool would cost more than it saves
        decoded = 0
        first = None
        for frame in decode_resilient(container, vs, max_errors=50):
            if first is None:
                first = frame
            decoded += 1
            if decoded >= 2:
                break
        if decoded == 0:
            raise _Reject("undecodable", f"{vs.codec_context.name} video stream holds no decodable frame")
        width, height = int(first.width), int(first.height)
        codec = vs.codec_context.name
        if decoded == 1:
            return {
                "modality": "image",
                "duration_s": 0.0,
                "fps": None,
                "num_frames": 1,
                "width": width,
                "height": height,
                "video_codec": codec,
            }
        num_frames = int(vs.frames or 0)
        if self.cfg.scan_packets:
            count, end_s = _scan_packets(container.name, vs.index)
            if count:
                num_frames = count
            tol = max(self.cfg.truncation_tolerance_s, 0.05 * (declared or 0.0))
            if declared and end_s is not None and end_s < declared - tol:
                raise _Reject(
                    "undecodable",
                    f"truncated: video packets end at {end_s:.2f}s of a declared {declared:.2f}s",
                )
            if declared is None and end_s is not None:
                declared = end_s
        if not num_frames and declared and fps:
            num_frames = round(declared * fps)
        if declared is None and num_frames and fps:
            declared = num_frames / fps
        return {
            "modality": "video",
            "duration_s": float(declared or 0.0),
            "fps": fps,
            "num_frames": int(num_frames or 0),
            "width": width,
            "height": height,
            "video_codec": codec,
        }

    def _audio_meta(self, container, audio) -> dict[str, Any]:
        import av

        try:
            got = next(iter(container.decode(audio)), None)
        except av.error.FFmpegError as e:
            raise _Reject(
                "undecodable", f"{audio.codec_context.name} audio stream does not decode: {e.strerror}"
            ) from None
        if got is None:
            raise _Reject(
                "undecodable", f"{audio.codec_context.name} audio stream holds no decodable samples"
            )
        return {
            "modality": "audio",
            "duration_s": float(_duration(container, audio) or 0.0),
            "fps": None,
            "num_frames": 0,
            "width": None,
            "height": None,
            "video_codec": None,
        }


def _duration(container, stream) -> float | None:
    """Declared duration in seconds: the stream's own, else the container's."""
    if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
        return float(stream.duration * stream.time_base)
    if container.duration is not None and container.duration > 0:
        return container.duration / 1_000_000
    return None


def _scan_packets(path: str, index: int) -> tuple[int, float | None]:
    """(video packet count, end of the last packet relative to the stream start), demuxing only."""
    import av

    count = 0
    end = None
    with av.open(path, metadata_errors="ignore") as container:
        vs = container.streams[index]
        tb = vs.time_base
        origin = stream_start_s(vs)
        try:
            for pkt in container.demux(vs):
                if pkt.size == 0:
                    continue
                count += 1
                if pkt.pts is not None and tb is not None:
                    t = float((pkt.pts + (pkt.duration or 0)) * tb) - origin
                    end = t if end is None else max(end, t)
        except av.error.FFmpegError:
            pass  # damaged data: the end reached so far is the answer
    return count, end
