"""Small real-derived media for the curation stage tests, made at test time from tests/assets with PyAV.

Everything starts from the real clips, photos and recordings in tests/assets: pieces are re-encoded,
concatenated, repeated, darkened or muxed together, never synthesised from nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import av
import numpy as np
from PIL import Image

ASSETS = Path(__file__).resolve().parents[1] / "assets"
VIDEO_AUDIO = ASSETS / "video_cockatoo_3s.mp4"  # 256x144, 20 fps, 60 frames, AAC track (digital silence)
VIDEO_CITY = ASSETS / "video_city_2s.mp4"  # 256x144, 25 fps, 50 frames, no audio
KNOWN_CUT = ASSETS / "known_cut.mp4"
SPEECH = ASSETS / "speech_librivox.wav"  # 16 kHz mono, 2.99 s
MUSIC = ASSETS / "music_loop_amen.flac"  # 44.1 kHz stereo, 1.75 s
IMAGE = ASSETS / "image_chelsea.jpg"  # 384x256


def known_cut_truth() -> dict:
    return json.loads((ASSETS / "known_cut.json").read_text())


def read_frames(path: str | Path, start: int = 0, count: int | None = None, size=None) -> list[np.ndarray]:
    """RGB frames [start, start + count) of a video, optionally resized to size=(w, h)."""
    out = []
    with av.open(str(path)) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i < start:
                continue
            if count is not None and len(out) >= count:
                break
            w, h = size or (f.width, f.height)
            out.append(f.to_ndarray(width=w, height=h, format="rgb24"))
    return out


def write_video(
    path: str | Path,
    frames: Iterable[np.ndarray],
    fps: int,
    *,
    audio: tuple[np.ndarray, int] | None = None,
    crf: int = 23,
    faststart: bool = False,
) -> Path:
    """H.264 yuv420p (+ AAC mono from float samples `audio=(pcm, rate)`) in MP4."""
    path = Path(path)
    frames = list(frames)
    opts = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), "w", options=opts) as out:
        vs = out.add_stream("libx264", rate=fps)  # every stream exists before the first packet is muxed
        vs.height, vs.width = frames[0].shape[:2]
        vs.pix_fmt = "yuv420p"
        vs.options = {"crf": str(crf), "preset": "veryfast"}
        vs.thread_count = 1
        astream = None
        if audio is not None:
            astream = out.add_stream("aac", rate=audio[1])
            astream.layout = "mono"
        for frame in frames:
            for p in vs.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                out.mux(p)
        for p in vs.encode():
            out.mux(p)
        if astream is not None:
            pcm, rate = audio
            for i in range(0, len(pcm), 1024):
                chunk = np.ascontiguousarray(pcm[None, i : i + 1024].astype(np.float32))
                af = av.AudioFrame.from_ndarray(chunk, format="flt", layout="mono")
                af.sample_rate = rate
                af.pts = i
                for p in astream.encode(af):
                    out.mux(p)
            for p in astream.encode():
                out.mux(p)
    return path


def read_audio(path: str | Path, rate: int = 16000) -> np.ndarray:
    """Mono float32 samples of a real recording at `rate`."""
    with av.open(str(path)) as c:
        r = av.AudioResampler(format="flt", layout="mono", rate=rate)
        chunks = [o.to_ndarray().reshape(-1) for f in c.decode(audio=0) for o in r.resample(f)]
        chunks += [o.to_ndarray().reshape(-1) for o in r.resample(None)]
    return np.concatenate(chunks)


def concat_cut_video(
    path: str | Path, pieces: list[tuple[Path, int, int]], fps: int = 25, size=(256, 144)
) -> list[int]:
    """Concatenate real pieces (source, first frame, frame count); returns the cut frames."""
    frames: list[np.ndarray] = []
    cuts = []
    for src, start, count in pieces:
        if frames:
            cuts.append(len(frames))
        got = read_frames(src, start, count, size)
        assert len(got) == count, (src, start, count, len(got))
        frames += got
    write_video(path, frames, fps)
    return cuts


def repeat_remux(src: str | Path, dst: str | Path, times: int) -> int:
    """Stream-copy the video packets of `src` `times` times back to back (no re-encoding); returns frames."""
    with av.open(str(src)) as inp:
        vin = inp.streams.video[0]
        packets = [p for p in inp.demux(vin) if p.size]
        period = max(int(p.pts) + int(p.duration or 0) for p in packets) - min(int(p.pts) for p in packets)
        with av.open(str(dst), "w") as out:
            vs = out.add_stream_from_template(vin)
            for k in range(times):
                for p in packets:
                    p.stream = vs
                    if k:
                        p.pts += period
                        p.dts += period
                    out.mux(p)
    return len(packets) * times


def still_video(path: str | Path, frames: int = 40, fps: int = 25, gain: float = 1.0) -> Path:
    """A real photo held still for `frames` frames (x264 adds its own small noise), brightness scaled by gain."""
    img = np.asarray(Image.open(IMAGE).convert("RGB").resize((256, 170)))[:170]
    img = np.clip(img.astype(np.float32) * gain, 0, 255).astype(np.uint8)
    return write_video(path, [img] * frames, fps)


def scaled_video(src: str | Path, dst: str | Path, gain: float, fps: int) -> Path:
    """A real clip with its brightness scaled by `gain` (a dark exposure of the same footage)."""
    frames = [np.clip(f.astype(np.float32) * gain, 0, 255).astype(np.uint8) for f in read_frames(src)]
    return write_video(dst, frames, fps)
