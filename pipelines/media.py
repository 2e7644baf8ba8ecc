"""Decode helpers shared by the curation stages: fetch + hash, streamed video frames, audio at 16 kHz.

Everything here streams: `iter_video_frames` yields one reduced-size frame at a time (the caller decides
what to keep), `decode_audio` reads only the requested span, and `fetch_local` hashes a file in chunks
while (for non-local URLs) copying it to a temporary file that is removed afterwards. Decoding uses
PyAV, which reads everything ffmpeg reads.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import os
import shutil
import tempfile
import threading
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

CHUNK = 8 << 20
"""Bytes per read when hashing / copying inputs."""


@dataclass
class Fetched:
    """A local path to read an input from, its content hash and its size."""

    path: str
    sha256: str
    nbytes: int


def _is_local(fs) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocols or "local" in protocols


@contextlib.contextmanager
def fetch_local(uri: str, *, copy: bool = True) -> Iterator[Fetched]:
    """Hash `uri` in chunks and yield a local path to decode it from.

    A local file is read in place. Any other fsspec URL (s3://, gs://, memory://, ...) is copied to a
    temporary file in the same pass as the hash (`copy=False` only hashes, the path is then "") and
    the copy is deleted when the block exits, whatever happens inside it.
    """
    from fsspec.core import url_to_fs

    fs, path = url_to_fs(uri)
    digest = hashlib.sha256()
    nbytes = 0
    if _is_local(fs):
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
                nbytes += len(chunk)
        yield Fetched(path=path, sha256=digest.hexdigest(), nbytes=nbytes)
        return
    suffix = os.path.splitext(path)[1][:16]
    fd, tmp_name = tempfile.mkstemp(prefix="videopoet-", suffix=suffix) if copy else (-1, "")
    try:
        with os.fdopen(fd, "wb") if copy else contextlib.nullcontext() as dst, fs.open(path, "rb") as src:
            while chunk := src.read(CHUNK):
                digest.update(chunk)
                nbytes += len(chunk)
                if dst is not None:
                    dst.write(chunk)
        yield Fetched(path=tmp_name, sha256=digest.hexdigest(), nbytes=nbytes)
    finally:
        if tmp_name:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)


@contextlib.contextmanager
def local_path(uri: str) -> Iterator[str]:
    """A local path for `uri` (a temporary copy for non-local URLs, removed on exit)."""
    from fsspec.core import url_to_fs

    fs, path = url_to_fs(uri)
    if _is_local(fs):
        yield path
        return
    suffix = os.path.splitext(path)[1][:16]
    with tempfile.NamedTemporaryFile(prefix="videopoet-", suffix=suffix) as tmp:
        with fs.open(path, "rb") as src:
            shutil.copyfileobj(src, tmp, CHUNK)
        tmp.flush()
        yield tmp.name


def num(row: dict, key: str) -> float | None:
    """A numeric row field, or None when missing/NaN (pandas turns a missing int into NaN in flight)."""
    v = row.get(key)
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if f != f else f


def flag(row: dict, key: str) -> bool:
    """A boolean row field; missing/None/NaN is False (numpy bools compare as bools)."""
    v = row.get(key)
    return v is not None and v == v and bool(v)


# ----------------------------------------------------------------------------------------------- video


def video_stream(container) -> Any | None:
    """The first real video stream (cover art, i.e. an `attached_pic`, is not video)."""
    import av

    for s in container.streams.video:
        if not (int(s.disposition) & int(av.stream.Disposition.attached_pic)):
            return s
    return None


def stream_fps(stream) -> float | None:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate and float(rate) > 0:
            return float(rate)
    return None


def stream_start_s(stream) -> float:
    """Presentation time of the stream's first frame (the origin of every span's seconds)."""
    if stream.start_time is None or stream.time_base is None:
        return 0.0
    return float(stream.start_time * stream.time_base)


def analysis_size(width: int, height: int, target_width: int) -> tuple[int, int]:
    """(w, h) at most `target_width` wide, aspect kept, both even (swscale and YUV-friendly)."""
    w = min(target_width, width)
    h = max(2, round(height * w / max(width, 1) / 2) * 2)
    return max(2, w - (w % 2)), h


def short_side_size(width: int, height: int, short: int) -> tuple[int, int]:
    """(w, h) with the short side = `short`, aspect kept (the long side rounded)."""
    if width <= height:
        return short, max(short, round(height * short / width))
    return max(short, round(width * short / height)), short


@dataclass
class VideoFrameOut:
    index: int
    """Decoded frame ordinal (presentation order), 0-based: what spans' frame numbers count."""
    time_s: float
    """Presentation time relative to the stream start."""
    image: np.ndarray


_THREAD = threading.local()


def to_array(
    frame, *, width=None, height=None, fmt: str = "rgb24", interpolation: str = "AREA"
) -> np.ndarray:
    """`frame` scaled to `width` x `height` (None: coded size) and converted to `fmt`, as an array.

    swscale runs on the calling thread only: PyAV >= 17 otherwise slices each conversion over every core,
    which on a 16-CPU machine running a decode task per core is 16x oversubscription (and a fresh thread
    pool per clip). Each thread keeps one reformatter, so the scaling filters are built once per source
    size, not once per clip.
    """
    reformatter = getattr(_THREAD, "reformatter", None)
    if reformatter is None:
        from av.video.reformatter import VideoReformatter

        reformatter = _THREAD.reformatter = VideoReformatter()
    out = reformatter.reformat(
        frame, width=width, height=height, format=fmt, interpolation=interpolation, threads=1
    )
    return out.to_ndarray()


def iter_video_frames(
    path: str,
    *,
    width: int | None = None,
    height: int | None = None,
    fmt: str = "bgr24",
    threads: int = 0,
    interpolation: str = "AREA",
    max_errors: int = 100,
    errors: list[str] | None = None,
) -> Iterator[VideoFrameOut]:
    """Decode the video stream of `path`, one reduced frame at a time (nothing is buffered here).

    `width`/`height` None keep the coded size. `threads` = 0 lets ffmpeg pick (one per core);
    frame+slice threading (`thread_type="AUTO"`) overlaps decode with the caller's per-frame work since
    PyAV releases the GIL while decoding and scaling. Packets that fail to decode are skipped (up to
    `max_errors`, each appended to `errors` when given); a truncated file yields the frames before the
    damage.
    """
    import av

    with av.open(path, metadata_errors="ignore") as container:
        stream = video_stream(container)
        if stream is None:
            return
        stream.thread_type = "AUTO"
        stream.thread_count = threads
        fps = stream_fps(stream) or 25.0
        tb = stream.time_base
        start = stream.start_time
        for index, frame in enumerate(decode_resilient(container, stream, max_errors, errors)):
            if frame.pts is not None and tb is not None:
                t = float((frame.pts - (start or 0)) * tb)
            else:
                t = index / fps
            img = to_array(frame, width=width, height=height, fmt=fmt, interpolation=interpolation)
            yield VideoFrameOut(index=index, time_s=t, image=img)


def decode_resilient(container, stream, max_errors: int, errors: list[str] | None = None) -> Iterator:
    """Decoded frames of `stream`, skipping packets that fail to decode (as the ffmpeg CLI does).

    A damaged stretch in the middle costs its frames, not the rest of the video; the stream ends at
    the end of the file, at a demuxer error (truncation), or after `max_errors` bad packets.
    """
    import av

    failed = 0
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except av.error.FFmpegError:
            return  # the container itself is damaged from here on
        try:
            frames = packet.decode()  # an empty (flush) packet at the end drains the decoder
        except av.error.FFmpegError as e:
            failed += 1
            if errors is not None:
                errors.append(f"packet at {packet.pts}: {e.strerror}")
            if failed > max_errors:
                return
            continue
        yield from frames


def seek_video_frames(
    path: str,
    times_s: list[float],
    *,
    width: int | None = None,
    height: int | None = None,
    fmt: str = "rgb24",
    threads: int = 0,
) -> list[np.ndarray]:
    """The frames shown at each of `times_s` (ascending, relative to the stream start).

    Seeks once to the keyframe before the first time, then decodes forward, converting only the
    frames that are returned. A time past the last frame gets the last frame.
    """
    import av

    if not times_s:
        return []
    times = sorted(times_s)
    with av.open(path, metadata_errors="ignore") as container:
        stream = video_stream(container)
        if stream is None:
            raise ValueError("no video stream")
        stream.thread_type = "AUTO"
        stream.thread_count = threads
        out = None
        if times[0] > 1.0 and stream.time_base is not None:
            # seek 1 s early: some demuxers land a little after the requested time
            origin = stream.start_time or 0
            container.seek(int(origin + (times[0] - 1.0) / stream.time_base), stream=stream, backward=True)
            out = _scan_frames(container, stream, times, width, height, fmt, strict_start=True)
            if out is None:  # the seek overshot: decode from the start instead
                container.seek(origin, stream=stream, backward=True)
        if out is None:
            out = _scan_frames(container, stream, times, width, height, fmt, strict_start=False)
    if out is None or len(out) != len(times):
        raise ValueError(
            f"could only decode {0 if out is None else len(out)} of {len(times)} frames at {times}"
        )
    order = sorted(range(len(times_s)), key=lambda i: times_s[i])
    result: list[np.ndarray] = [None] * len(times_s)  # type: ignore[list-item]
    for pos, i in enumerate(order):
        result[i] = out[pos]
    return result


def _scan_frames(container, stream, times, width, height, fmt, *, strict_start: bool) -> list | None:
    """Decode forward from the current position, picking the frame shown at each of `times`.

    Returns None if `strict_start` and the first frame is already past the first time (a seek overshoot).
    """
    fps = stream_fps(stream) or 25.0
    tb = stream.time_base
    origin = stream.start_time or 0
    half = 0.5 / fps
    out: list[np.ndarray] = []
    prev = None
    k = 0
    for index, frame in enumerate(decode_resilient(container, stream, max_errors=100)):
        t = float((frame.pts - origin) * tb) if frame.pts is not None and tb else index / fps
        if index == 0 and strict_start and t > times[0] + half:
            return None
        # the frame shown at time T is the last one that starts at or before T (+ half a frame)
        while k < len(times) and times[k] < t - half:
            out.append(to_array(prev if prev is not None else frame, width=width, height=height, fmt=fmt))
            k += 1
        while k < len(times) and times[k] <= t + half:
            out.append(to_array(frame, width=width, height=height, fmt=fmt))
            k += 1
        if k == len(times):
            break
        prev = frame
    # times past the last decodable frame get that frame
    while k < len(times) and prev is not None:
        out.append(to_array(prev, width=width, height=height, fmt=fmt))
        k += 1
    return out


def center_crop(img: np.ndarray, size: int) -> np.ndarray:
    """Center `size` x `size` crop of an (H, W, C) image whose short side is at least `size`."""
    h, w = img.shape[:2]
    y = max(0, (h - size) // 2)
    x = max(0, (w - size) // 2)
    return np.ascontiguousarray(img[y : y + size, x : x + size])


# ----------------------------------------------------------------------------------------------- audio


def decode_audio(
    path: str,
    *,
    rate: int = 16000,
    start_s: float | None = None,
    end_s: float | None = None,
    origin_s: float | None = None,
) -> np.ndarray:
    """Mono float32 samples at `rate` of the first audio stream of `path`.

    With `start_s`/`end_s` only that span is decoded, and the result has exactly
    round((end_s - start_s) * rate) samples: each resampled chunk is placed by its timestamp, so gaps
    and a stream that starts late or ends early become silence. Times are relative to `origin_s`
    (absolute seconds; default: the audio stream's own start) - pass the video stream's start to cut
    the audio of a video clip in sync with its frames. Without a span the whole stream is returned
    (its length is whatever the stream holds).
    """
    import av

    with av.open(path, metadata_errors="ignore") as container:
        if not container.streams.audio:
            raise ValueError("no audio stream")
        stream = container.streams.audio[0]
        stream.thread_type = "AUTO"
        origin = stream_start_s(stream) if origin_s is None else origin_s
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        if start_s is None and end_s is None:
            chunks = []
            try:
                for frame in container.decode(stream):
                    chunks += [o.to_ndarray().reshape(-1) for o in resampler.resample(frame)]
            except av.error.FFmpegError:
                pass  # a damaged tail: keep what decoded
            chunks += [o.to_ndarray().reshape(-1) for o in resampler.resample(None)]
            return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)

        start = float(start_s or 0.0)
        end = float(end_s) if end_s is not None else math.inf
        if not math.isfinite(end):
            raise ValueError("decode_audio needs end_s with start_s")
        n = max(0, round((end - start) * rate))
        abs_start = origin + start
        abs_end = origin + end
        seeked = abs_start > 1.0 and stream.time_base is not None
        if seeked:  # 1 s early: some demuxers land a little after the requested time
            container.seek(int((abs_start - 1.0) / stream.time_base), stream=stream, backward=True)
        out = _place_audio(container, stream, resampler, abs_start, abs_end, n, rate, strict_start=seeked)
        if out is None:  # the seek overshot: decode from the start instead
            container.seek(0, stream=stream, backward=True)
            resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
            out = _place_audio(container, stream, resampler, abs_start, abs_end, n, rate, strict_start=False)
        return out


def _place_audio(
    container, stream, resampler, abs_start, abs_end, n, rate, *, strict_start
) -> np.ndarray | None:
    """Decode forward, writing each resampled chunk at its timestamp into an n-sample buffer."""
    import av

    out = np.zeros(n, np.float32)
    cursor = 0  # next sample position, for a chunk without a timestamp

    def place(o) -> None:
        nonlocal cursor
        data = o.to_ndarray().reshape(-1)
        pos = round((o.time - abs_start) * rate) if o.time is not None else cursor
        cursor = pos + len(data)
        lo, hi = max(pos, 0), min(pos + len(data), n)
        if hi > lo:
            out[lo:hi] = data[lo - pos : hi - pos]

    first = True
    try:
        for frame in container.decode(stream):
            if first and strict_start and frame.time is not None and frame.time > abs_start + 0.01:
                return None
            first = False
            for o in resampler.resample(frame):
                place(o)
            if frame.time is not None and frame.time > abs_end:
                break
    except av.error.FFmpegError:
        pass  # a damaged tail: what is missing stays silent
    for o in resampler.resample(None):
        place(o)
    return out


def audio_level_dbfs(path: str, *, rate: int = 16000) -> tuple[float, float]:
    """(RMS level in dBFS, seconds decoded) of the whole first audio stream, mono at `rate`, streamed."""
    import av

    total = 0.0
    count = 0
    with av.open(path, metadata_errors="ignore") as container:
        if not container.streams.audio:
            raise ValueError("no audio stream")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)

        def add(frames) -> None:
            nonlocal total, count
            for o in frames:
                data = o.to_ndarray().reshape(-1).astype(np.float64)
                total += float(np.dot(data, data))
                count += data.size

        try:
            for frame in container.decode(stream):
                add(resampler.resample(frame))
        except av.error.FFmpegError:
            pass  # a damaged tail: measure what decoded
        add(resampler.resample(None))
    if count == 0 or total == 0:
        return -math.inf, count / rate
    return 10.0 * math.log10(total / count), count / rate


def rms_dbfs(samples: np.ndarray) -> float:
    """Root-mean-square level in dB relative to full scale (1.0); -inf for digital silence."""
    if samples.size == 0:
        return -math.inf
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    return 20.0 * math.log10(rms) if rms > 0 else -math.inf


def wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    """16-bit PCM mono WAV of float samples in [-1, 1]."""
    pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()
