"""FrameSampleStage: a few RGB frames per clip at CLIP's input size, and a tiny thumbnail embedding.

For each kept video clip, `num_frames` frames are taken at the centres of equal parts of the clip's time
span (deterministic: the same span always gives the same frames), scaled so the short side is `size` and
centre-cropped to `size` x `size`. Decoding uses PyAV (seek to the keyframe before the first sample,
decode forward, convert only the sampled frames) on the same frame timeline as the scene split, or
decord (`backend: decord`: `VideoReader(width=, height=)` + `get_batch`) for codecs it reads.

`frames`: uint8 array (N, size, size, 3), RGB; only when CLIP scoring will consume it.
`thumb_embedding`: the middle sampled frame as 16x16 grayscale (area-averaged from the uncropped
frame), mean-centred and L2-normalised, as a list of 256 floats: cosine similarity between two of them
is the near-duplicate fallback when CLIP is off. A uniform frame gives all zeros.
Images: the image itself is the one frame. Audio rows pass through unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np

from videopoet.core.config import check
from videopoet.pipelines.base import Resources, Row, Stage
from videopoet.pipelines.media import center_crop, local_path, num, seek_video_frames, short_side_size


@dataclass(kw_only=True)
class FrameSampleConfig:
    num_frames: int = 3
    """Frames sampled per clip, at the centres of equal parts of its span."""
    size: int = 224
    """Output frames are size x size: short side scaled to `size`, then centre-cropped."""
    thumb_size: int = 16
    """Side of the grayscale thumbnail behind `thumb_embedding` (thumb_size^2 floats)."""
    backend: Literal["pyav", "decord"] = "pyav"
    """Video decoder: `pyav` (everything ffmpeg reads) or `decord`. decord is used only for MP4/MOV and
    Matroska/WebM files (on MPEG program streams its frame numbers were measured 12 frames off PyAV's)
    and falls back to pyav for anything it cannot open."""
    decode_threads: int = 1
    """Decoder threads per task."""
    cpus: float = 1.0
    """CPUs Ray reserves per task."""

    def __post_init__(self):
        check(self.num_frames >= 1, "num_frames", self.num_frames, ">= 1")
        check(self.size >= 8, "size", self.size, ">= 8")
        check(self.thumb_size >= 2, "thumb_size", self.thumb_size, ">= 2")
        check(self.decode_threads >= 0, "decode_threads", self.decode_threads, ">= 0")


def sample_positions(start_frame: int, end_frame: int, n: int) -> list[int]:
    """Frame numbers at the centres of `n` equal parts of [start_frame, end_frame) (repeats if short)."""
    length = max(1, end_frame - start_frame)
    return [start_frame + min(length - 1, int(length * (2 * j + 1) / (2 * n))) for j in range(n)]


def thumb_embedding(rgb: np.ndarray, size: int = 16) -> list[float]:
    """size x size area-averaged grayscale of `rgb`, mean-centred, L2-normalised (zeros if uniform)."""
    import cv2

    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    small = cv2.resize(gray, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32).reshape(-1)
    small -= small.mean()
    norm = float(np.linalg.norm(small))
    if norm < 1e-6:
        return [0.0] * small.size
    return (small / norm).tolist()


class FrameSampleStage(Stage):
    """Adds `frames` (when `with_clip_frames`) and `thumb_embedding` to video and image clips."""

    name: ClassVar[str] = "frames"

    def __init__(self, *, cfg: FrameSampleConfig | None = None, with_clip_frames: bool = True):
        self.cfg = cfg or FrameSampleConfig()
        self.with_clip_frames = with_clip_frames
        """False when nothing downstream consumes `frames`: only the middle frame is decoded."""
        self.resources = Resources(cpus=self.cfg.cpus)

    def process_row(self, row: Row) -> Row:
        modality = row.get("modality")
        if modality == "image":
            full = [self._read_image(row["uri"])]
        elif modality == "video":
            full = self._read_video(row)
        else:
            return row
        out = dict(row)
        middle = full[len(full) // 2]
        out["thumb_embedding"] = thumb_embedding(middle, self.cfg.thumb_size)
        if self.with_clip_frames:
            out["frames"] = np.stack([self._fit(f) for f in full])
        return out

    def _fit(self, img: np.ndarray) -> np.ndarray:
        """Short side -> size (area resampling), centre crop size x size."""
        import cv2

        h, w = img.shape[:2]
        if min(h, w) != self.cfg.size:
            tw, th = short_side_size(w, h, self.cfg.size)
            img = cv2.resize(
                img, (tw, th), interpolation=cv2.INTER_AREA if min(h, w) > self.cfg.size else cv2.INTER_LINEAR
            )
        return center_crop(img, self.cfg.size)

    def _read_image(self, uri: str) -> np.ndarray:
        from PIL import Image, ImageOps, UnidentifiedImageError

        with local_path(uri) as path:
            try:
                with Image.open(path) as img:
                    img.draft("RGB", (self.cfg.size * 2, self.cfg.size * 2))  # JPEG: decode at reduced scale
                    return np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
            except UnidentifiedImageError:  # a still that only ffmpeg reads (a one-frame video, ...)
                return seek_video_frames(path, [0.0], fmt="rgb24", threads=1)[0]

    def _read_video(self, row: Row) -> list[np.ndarray]:
        s = int(num(row, "start_frame") or 0)
        e = int(num(row, "end_frame") or s + 1)
        n = self.cfg.num_frames
        pick = range(n) if self.with_clip_frames else [n // 2]
        w, h = int(num(row, "width") or 0), int(num(row, "height") or 0)
        tw, th = short_side_size(w, h, self.cfg.size) if w and h else (None, None)
        with local_path(row["uri"]) as path:
            container = str(row.get("container") or "")
            if self.cfg.backend == "decord" and ("mov" in container or "matroska" in container):
                positions = sample_positions(s, e, n)
                frames = _decord_frames(path, [positions[j] for j in pick], tw, th, self.cfg.decode_threads)
                if frames is not None:
                    return frames
            # by time, not frame number: the scene split's timeline, right for variable frame rates too
            start_s = num(row, "start_s") or 0.0
            end_s = num(row, "end_s") or start_s
            times = [start_s + (end_s - start_s) * (2 * j + 1) / (2 * n) for j in pick]
            return seek_video_frames(
                path, times, width=tw, height=th, fmt="rgb24", threads=self.cfg.decode_threads
            )


def _decord_frames(path: str, positions: list[int], width, height, threads: int) -> list[np.ndarray] | None:
    """decord's `get_batch` at reduced size; None when decord cannot read the file (caller falls back)."""
    try:
        from decord import DECORDError, VideoReader, cpu
    except ImportError:
        return None
    try:
        vr = VideoReader(path, ctx=cpu(0), width=width or -1, height=height or -1, num_threads=threads)
        last = len(vr) - 1
        batch = vr.get_batch([min(p, last) for p in positions]).asnumpy()
    except (DECORDError, RuntimeError):
        return None
    return list(batch)
