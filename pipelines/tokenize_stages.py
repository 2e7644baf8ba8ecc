"""Pre-tokenization stages: cut curated clips into model windows (CPU) and tokenize them (actor pools).

`WindowDecodeStage` (a CPU task, PyAV) turns one curated clip row into its windows: `window.frames` frames
at `window.fps` (17 at 8 fps = 2.125 s by default), resized to cover and centre-cropped to the configured
size whose aspect is closest to the clip's (128 x 128, or 128 wide x 224 tall for portrait); an image is
one 1-frame window; the aligned audio (`frames / fps` seconds of the clip's 16 kHz WAV, i.e. 34,000
samples -> 106 SoundStream frames) rides along when the clip has audio; audio inputs become audio-only
windows. When the source covers `sr.scale` times the window size (upscaling at most `sr.max_upscale`),
the same frames are also cropped at that size: the super-resolution target, aligned pixel for pixel
(the low-resolution frames are its area-downsampled copy).

`VideoTokenizeStage` (MAGVIT-v2), `AudioTokenizeStage` (SoundStream) and `TextEmbedStage` (caption
embeddings) load their model once per worker; `ChainStage` runs them in one actor so a worker holds all
three models (one GPU, or a few CPUs) and the pixels never cross the object store twice. In-flight
arrays travel as raw bytes plus shape (`pixels`, `pixels_shape`, ...), which Ray Data moves without
conversion; the job turns the final rows into shard rows (`pipelines/shards.py`).
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import math
import threading
import wave
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import numpy as np

from videopoet.core.config import ConfigError, check, from_dict, to_dict
from videopoet.core.errors import UserError
from videopoet.core.io import exists, join
from videopoet.core.log import get_logger
from videopoet.pipelines.base import OK, Resources, Row, Stage, reject
from videopoet.pipelines.media import decode_audio, local_path, num, seek_video_frames
from videopoet.pipelines.shards import sample_id

log = get_logger(__name__)

AUDIO_RATE = 16000
"""SoundStream's input rate; curation writes 16 kHz mono WAVs."""


# ----------------------------------------------------------------------------------------------- configs


@dataclass(kw_only=True)
class WindowConfig:
    """How clips are cut into model windows."""

    frames: int = 17
    """Frames per video window: 17 (2.125 s at 8 fps, 5 latent frames) or 41 (5.125 s, 11 latent frames);
    must be 1 + (tokenizer time factor) x n."""
    fps: float = 8.0
    """Frame rate the windows are sampled at (VideoPoet: 8)."""
    sizes: list[list[int]] = field(default_factory=lambda: [[128, 128], [128, 224]])
    """Candidate [width, height] window sizes; each clip gets the one whose aspect ratio is closest to its
    own (log scale): 128x128 for landscape and square, 128 wide x 224 tall for portrait."""
    stride_s: float | None = None
    """Seconds between window starts inside a clip; null = the window length (no overlap)."""
    max_windows_per_clip: int | None = None
    """At most this many windows per clip (the first ones); null = as many as fit."""
    audio_windows: bool = True
    """Cut audio inputs (speech, music) into audio-only windows of the same length."""
    decode_threads: int = 1
    """PyAV decoder threads per decode task."""
    cpus: float = 1.0
    """CPUs Ray reserves per decode task."""
    clips_per_task: int = 32
    """Clips one decode task decodes (Ray schedules fewer, longer tasks; 1 clip per task spends much of
    each task on scheduling; on the 16-CPU H100 machine 16 clips per task fed the GPU 1.2x as fast as 4;
    with `batch_windows=64`, 32 gave 583-710 windows/s in four calls against 628 for 16 in one, within
    the spread between calls). The job's input blocks hold this many clips each. Output memory per task:
    clips x windows x ~0.9 MB."""

    def __post_init__(self) -> None:
        check(self.frames >= 1, "window.frames", self.frames, ">= 1")
        check(0 < self.fps <= 120, "window.fps", self.fps, "in (0, 120]")
        check(
            len(self.sizes) > 0 and all(len(s) == 2 and min(s) >= 8 for s in self.sizes),
            "window.sizes",
            self.sizes,
            "a non-empty list of [width, height] pairs, each >= 8",
        )
        check(self.stride_s is None or self.stride_s > 0, "window.stride_s", self.stride_s, "null or > 0")
        check(
            self.max_windows_per_clip is None or self.max_windows_per_clip >= 1,
            "window.max_windows_per_clip",
            self.max_windows_per_clip,
            "null or >= 1",
        )
        check(self.decode_threads >= 0, "window.decode_threads", self.decode_threads, ">= 0")
        check(self.cpus > 0, "window.cpus", self.cpus, "> 0")
        check(self.clips_per_task >= 1, "window.clips_per_task", self.clips_per_task, ">= 1")

    @property
    def seconds(self) -> float:
        """Length of a window: frames / fps (2.125 s by default)."""
        return self.frames / self.fps

    @property
    def stride(self) -> float:
        return self.stride_s or self.seconds

    @property
    def audio_samples(self) -> int:
        return round(self.seconds * AUDIO_RATE)


@dataclass(kw_only=True)
class SRConfig:
    """Super-resolution pairs: the same window tokenized at a higher resolution."""

    enabled: bool = True
    """Also tokenize windows of clips with enough resolution at `scale` x the window size."""
    scale: int = 2
    """Size factor of the super-resolution target (2: 128x128 -> 256x256, 128x224 -> 256x448)."""
    max_upscale: float = 1.0
    """A clip gets a super-resolution target only when covering that size upscales it at most this much
    (1.0: never upscale; the source must be at least as large)."""

    def __post_init__(self) -> None:
        check(self.scale >= 2, "sr.scale", self.scale, ">= 2")
        check(self.max_upscale >= 1.0, "sr.max_upscale", self.max_upscale, ">= 1.0")


@dataclass(kw_only=True)
class VideoTokenizerConfig:
    """The MAGVIT-v2 checkpoint that tokenizes video windows, images and super-resolution targets."""

    checkpoint: str | None = None
    """Folder (local path or fsspec URL) with config.json + model.safetensors written by
    `MagvitV2.save_pretrained`. Required: the job never tokenizes with random weights."""
    batch_size: int = 8
    """Windows per MAGVIT-v2 forward pass (super-resolution windows: a quarter as many)."""
    compile: bool = True
    """torch.compile the encoder on GPU workers (channels_last_3d weights too): its per-frame group norms,
    SiLUs and causal pads fuse, about 1.9x the eager bf16 encode on an H100. Each input shape compiles once
    per worker, at its first batch of that shape (tens of seconds). CPU workers always run eager."""

    def __post_init__(self) -> None:
        check(self.batch_size >= 1, "video.batch_size", self.batch_size, ">= 1")


@dataclass(kw_only=True)
class AudioTokenizerConfig:
    """The SoundStream checkpoint that tokenizes audio windows."""

    enabled: bool = True
    """Tokenize the audio of clips that have it (and audio inputs). false: no audio tokens at all."""
    checkpoint: str | None = None
    """Folder (local path or fsspec URL) written by `SoundStream.save_pretrained`. Required when enabled."""
    batch_size: int = 32
    """Audio windows per SoundStream forward pass (a worker call holds at most `batch_windows`)."""

    def __post_init__(self) -> None:
        check(self.batch_size >= 1, "audio.batch_size", self.batch_size, ">= 1")


@dataclass(kw_only=True)
class TextConfig:
    """Caption embeddings (tokenizers/text): token-level, real tokens only, stored as float16."""

    enabled: bool = True
    """Embed captions. false: no text embeddings (captions are still stored as text)."""
    kind: Literal["minilm", "t5"] = "minilm"
    """Encoder family: minilm (bundled all-MiniLM-L6-v2, 384-d, offline) or t5 (VideoPoet: T5-XL, needs `path`)."""
    path: str | None = None
    """Model directory, fsspec URL or Hub name; null with minilm = the bundled model."""
    max_tokens: int = 64
    """Captions are truncated to this many tokens (VideoPoet: 64)."""
    batch_size: int = 32
    """Captions per forward pass."""
    cache_dir: str | None = None
    """Local folder for models copied from fsspec URLs; null = ~/.cache/videopoet/text_encoders."""

    def __post_init__(self) -> None:
        check(self.kind != "t5" or bool(self.path), "text.path", self.path, "a model path for kind t5")
        check(self.max_tokens >= 2, "text.max_tokens", self.max_tokens, ">= 2")
        check(self.batch_size >= 1, "text.batch_size", self.batch_size, ">= 1")


@dataclass(kw_only=True)
class PoolConfig:
    """The actor pool that holds the tokenizers (all three models in each worker)."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto: one GPU per worker when the Ray cluster has GPUs, else CPU workers."""
    dtype: Literal["float32", "bfloat16"] = "bfloat16"
    """Weights' dtype on GPUs (CPU workers always use float32)."""
    cpus: float = 1.0
    """CPUs one CPU worker reserves (torch uses that many threads); GPU workers reserve gpu_worker_cpus."""
    gpu_worker_cpus: float = 2.0
    """CPUs one GPU worker reserves for its host work (unpacking, staging copies, results of its concurrent
    calls), capped so a decode task still fits beside it. On the 16-CPU H100 machine 4 or 6 tokenized no
    faster than 2 (alternating runs); the README's GPU figures use 2."""
    workers: int | None = None
    """Workers in the pool; null = workers_per_gpu per GPU, or on CPUs as many as fit beside one decode task."""
    workers_per_gpu: int = 1
    """GPU workers sharing one GPU (each reserves 1/workers_per_gpu of it): with 2, one worker's host work
    (unpacking windows, copies, results) runs while the other's models use the GPU."""
    pad_batches: bool = True
    """Run every forward pass at its full batch size, filling a short batch with blank inputs (and embed
    captions one at a time): a window's tokens then never depend on which other windows shared its batch.
    Without it, floating-point differences between batch shapes flip near-tie codes, so a resumed run
    could differ from an uninterrupted one in a few tokens. false: less compute on small runs."""
    calls_in_flight: int = 3
    """Calls a worker takes at once when it runs one call at a time (concurrent_calls = 1): Ray Data batches
    the next call's windows (and the last call's results) while the models run. Not used when
    concurrent_calls > 1: Ray Data then keeps 2 x concurrent_calls calls queued at each worker."""
    concurrent_calls: int = 4
    """Calls a GPU worker runs at once, each on its own thread and CUDA stream (ranked by priority, see
    `thread_stream`): one call's host work (unpacking windows, staging copies, results) overlaps the others'
    forward passes on the GPU. Each call's forward passes are the same as when run alone, so results do not
    depend on it. CPU workers run one call at a time (torch already uses their threads). H100, small MAGVIT-v2,
    tokenize job steady state: 4 gave 757 and 793 windows/s, 3 gave 690-752 (four runs; bare 883-885)."""
    memory_mb: int | None = 3072
    """Memory Ray reserves per worker for its models and batches (MiB). Declaring it also keeps Ray Data
    from fusing the decode tasks into these workers (it fuses stages with equal resources), so decoding
    overlaps tokenizing on CPU-only machines too. null: reserve nothing."""

    def __post_init__(self) -> None:
        check(self.cpus > 0, "pool.cpus", self.cpus, "> 0")
        check(self.calls_in_flight >= 1, "pool.calls_in_flight", self.calls_in_flight, ">= 1")
        check(self.concurrent_calls >= 1, "pool.concurrent_calls", self.concurrent_calls, ">= 1")
        check(self.gpu_worker_cpus > 0, "pool.gpu_worker_cpus", self.gpu_worker_cpus, "> 0")
        check(self.workers_per_gpu >= 1, "pool.workers_per_gpu", self.workers_per_gpu, ">= 1")
        check(self.memory_mb is None or self.memory_mb >= 1, "pool.memory_mb", self.memory_mb, "null or >= 1")
        check(self.workers is None or self.workers >= 1, "pool.workers", self.workers, "null or >= 1")


# ------------------------------------------------------------------------------------- checkpoints + meta


def checkpoint_info(url: str | None, kind: Literal["magvit2", "soundstream"], key: str) -> dict:
    """Describe a tokenizer checkpoint without loading it: config, sha256 of model.safetensors, sizes.

    Raises UserError (naming config key `key`) when it is missing or not a checkpoint of that kind.
    """
    from videopoet.tokenizers.magvit2 import MagvitConfig
    from videopoet.tokenizers.soundstream import SoundStreamConfig

    what = "MAGVIT-v2" if kind == "magvit2" else "SoundStream"
    if not url:
        raise UserError(
            f"{key} is not set: pass the {what} checkpoint folder (config.json + model.safetensors from "
            f"save_pretrained), e.g. {key}=s3://bucket/tokenizers/{kind}. The job never tokenizes with "
            "random weights."
        )
    cfg_url, weights_url = join(url, "config.json"), join(url, "model.safetensors")
    for u in (cfg_url, weights_url):
        if not exists(u):
            raise UserError(f"{key}={url} is not a {what} checkpoint: {u} does not exist")
    from videopoet.core.io import read_text

    try:
        raw = json.loads(read_text(cfg_url))
    except json.JSONDecodeError as e:
        raise UserError(f"{cfg_url} is not valid JSON ({e})") from None
    try:
        if kind == "magvit2":
            cfg = from_dict(MagvitConfig, raw)
        else:
            if raw.get("kind") != "soundstream":
                raise UserError(
                    f"{key}={url}: {cfg_url} describes a {raw.get('kind')!r} model, not soundstream"
                )
            cfg = from_dict(SoundStreamConfig, raw.get("config", {}))
    except ConfigError as e:
        raise UserError(f"{key}={url}: {cfg_url} is not a {what} config: {e}") from None
    from videopoet.pipelines.shards import file_sha256

    sha = file_sha256(weights_url)
    cfg_hash = hashlib.sha256(json.dumps(to_dict(cfg), sort_keys=True).encode()).hexdigest()[:12]
    info = {"kind": kind, "checkpoint": url, "sha256": sha, "id": f"{kind}:cfg-{cfg_hash}:sha256-{sha[:16]}"}
    if kind == "magvit2":
        info.update(
            codebook_bits=cfg.codebook_bits,
            vocab_size=cfg.vocab_size,
            spatial_factor=cfg.spatial_factor,
            time_factor=cfg.time_factor,
        )
    else:
        info.update(
            num_levels=cfg.num_levels,
            codebook_size=cfg.codebook_size,
            vocab_size=cfg.num_levels * cfg.codebook_size,
            sample_rate=cfg.sample_rate,
            hop_length=cfg.hop_length,
        )
    return info


def choose_size(width: int, height: int, sizes: list[list[int]]) -> tuple[int, int]:
    """The [w, h] of `sizes` whose aspect ratio is closest to width / height (in log scale)."""
    aspect = math.log(max(width, 1) / max(height, 1))
    w, h = min(sizes, key=lambda s: (abs(math.log(s[0] / s[1]) - aspect), s[0] * s[1]))
    return int(w), int(h)


def cover_scale(width: int, height: int, tw: int, th: int) -> float:
    """Scale factor that makes a width x height frame cover tw x th."""
    return max(tw / max(width, 1), th / max(height, 1))


def cover_size(width: int, height: int, tw: int, th: int) -> tuple[int, int]:
    """(w, h) of the frame scaled to cover tw x th with its aspect kept, both at least the target."""
    s = cover_scale(width, height, tw, th)
    return max(tw, round(width * s)), max(th, round(height * s))


def crop_center(img: np.ndarray, tw: int, th: int) -> np.ndarray:
    """Centre th x tw crop of an (H, W, C) image at least that large."""
    h, w = img.shape[:2]
    y, x = (h - th) // 2, (w - tw) // 2
    return np.ascontiguousarray(img[y : y + th, x : x + tw])


def window_starts(duration: float, cfg: WindowConfig, tolerance: float = 1e-3) -> list[float]:
    """Offsets (s, from the clip start) of the windows that fit inside `duration` seconds."""
    if duration + tolerance < cfg.seconds:
        return []
    n = int(math.floor((duration - cfg.seconds + tolerance) / cfg.stride)) + 1
    if cfg.max_windows_per_clip:
        n = min(n, cfg.max_windows_per_clip)
    return [k * cfg.stride for k in range(n)]


def read_wav(uri: str) -> np.ndarray:
    """Mono float32 samples of a 16-bit PCM WAV (what curation writes), checking its rate."""
    import fsspec

    with fsspec.open(uri, "rb") as f:
        data = f.read()
    with wave.open(io.BytesIO(data)) as w:
        if w.getframerate() != AUDIO_RATE or w.getnchannels() != 1 or w.getsampwidth() != 2:
            raise ValueError(
                f"{uri}: expected 16-bit mono {AUDIO_RATE} Hz, got {w.getsampwidth() * 8}-bit "
                f"{w.getnchannels()} ch {w.getframerate()} Hz"
            )
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return pcm.astype(np.float32) / 32768.0


def _bytes(arr: np.ndarray) -> tuple[bytes, list[int]]:
    return np.ascontiguousarray(arr).tobytes(), list(arr.shape)


def unpack(row: Row, key: str, dtype) -> np.ndarray | None:
    """An in-flight array `row[key]` (bytes) with shape `row[key + '_shape']`, or None."""
    data = row.get(key)
    if data is None or (isinstance(data, float) and data != data):
        return None
    shape = tuple(int(s) for s in row[f"{key}_shape"])
    return np.frombuffer(data, dtype=dtype).reshape(shape)


# ----------------------------------------------------------------------------------------------- decoding


class WindowDecodeStage(Stage):
    """One curated clip row -> its window rows (`pixels`, `sr_pixels`, `wave` as bytes + `*_shape`)."""

    name: ClassVar[str] = "decode"

    def __init__(
        self,
        *,
        window: WindowConfig,
        sr: SRConfig,
        audio: bool = True,
        modalities: tuple[str, ...] = ("video", "image", "audio"),
    ):
        self.window, self.sr, self.audio, self.modalities = window, sr, audio, tuple(modalities)
        self.resources = Resources(cpus=window.cpus)
        self.batch_size = window.clips_per_task

    def process_row(self, row: Row) -> list[Row]:
        modality = row.get("modality")
        if modality not in self.modalities:
            return [reject(row, self.name, "modality_off", f"modality {modality!r} is not tokenized")]
        if modality == "image":
            return self._image(row)
        if modality == "video":
            return self._video(row)
        if modality == "audio":
            return self._audio_only(row)
        return [reject(row, self.name, "unknown_modality", f"modality {modality!r}")]

    # -- geometry ------------------------------------------------------------------------------------------
    def _targets(self, width: int, height: int) -> tuple[tuple[int, int], tuple[int, int] | None]:
        tw, th = choose_size(width, height, self.window.sizes)
        sr = None
        if self.sr.enabled:
            sw, sh = tw * self.sr.scale, th * self.sr.scale
            if cover_scale(width, height, sw, sh) <= self.sr.max_upscale + 1e-6:
                sr = (sw, sh)
        return (tw, th), sr

    def _fit(self, frames: list[np.ndarray], low: tuple[int, int], sr: tuple[int, int] | None):
        """Frames already scaled to cover the largest target -> (low (N,H,W,3), sr (N,H2,W2,3) or None)."""
        import cv2

        if sr is None:
            return np.stack([crop_center(f, *low) for f in frames]), None
        big = np.stack([crop_center(f, *sr) for f in frames])
        small = np.stack([cv2.resize(f, low, interpolation=cv2.INTER_AREA) for f in big])
        return small, big

    def _base(self, row: Row, k: int, count: int) -> Row:
        out = {
            key: row.get(key)
            for key in ("clip_id", "input_id", "uri", "modality", "caption", "partition", "status")
        }
        out.update(
            window_index=k,
            window_count=count,
            sample_id=sample_id(row["clip_id"], k),
            source_width=int(num(row, "width") or 0) or None,
            source_height=int(num(row, "height") or 0) or None,
            start_s=None,
            end_s=None,
            fps=None,
            num_frames=0,
            width=None,
            height=None,
            sr_width=None,
            sr_height=None,
            pixels=None,
            pixels_shape=None,
            sr_pixels=None,
            sr_pixels_shape=None,
            wave=None,
            wave_shape=None,
        )
        return out

    def _set_pixels(self, out: Row, low: np.ndarray, big: np.ndarray | None) -> None:
        out["pixels"], out["pixels_shape"] = _bytes(low)
        out["num_frames"], out["height"], out["width"] = low.shape[0], low.shape[1], low.shape[2]
        if big is not None:
            out["sr_pixels"], out["sr_pixels_shape"] = _bytes(big)
            out["sr_height"], out["sr_width"] = big.shape[1], big.shape[2]

    # -- modalities ----------------------------------------------------------------------------------------
    def _image(self, row: Row) -> list[Row]:
        import cv2
        from PIL import Image, ImageOps, UnidentifiedImageError

        with local_path(row["uri"]) as path:
            try:
                with Image.open(path) as img:
                    rgb = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
            except UnidentifiedImageError:  # a still only ffmpeg reads
                rgb = seek_video_frames(path, [0.0], fmt="rgb24", threads=1)[0]
        h, w = rgb.shape[:2]
        low, sr = self._targets(w, h)
        big = sr or low
        cw, ch = cover_size(w, h, *big)
        interp = cv2.INTER_AREA if cw < w else cv2.INTER_CUBIC
        scaled = cv2.resize(rgb, (cw, ch), interpolation=interp) if (cw, ch) != (w, h) else rgb
        lo, hi = self._fit([scaled], low, sr)
        out = self._base(row, 0, 1)
        out["source_width"], out["source_height"] = w, h
        self._set_pixels(out, lo, hi)
        return [out]

    def _video(self, row: Row) -> list[Row]:
        start, end = num(row, "start_s") or 0.0, num(row, "end_s") or 0.0
        src_fps = num(row, "fps") or 25.0
        starts = window_starts(end - start, self.window, tolerance=0.5 / src_fps)
        if not starts:
            return [
                reject(
                    row,
                    self.name,
                    "too_short",
                    f"clip of {end - start:.3f}s is shorter than one {self.window.seconds:.3f}s window",
                )
            ]
        w, h = int(num(row, "width") or 0), int(num(row, "height") or 0)
        if not w or not h:
            return [reject(row, self.name, "no_size", "the clip row has no width/height")]
        low, sr = self._targets(w, h)
        cw, ch = cover_size(w, h, *(sr or low))
        n = self.window.frames
        times = [start + s + j / self.window.fps for s in starts for j in range(n)]
        samples = self._clip_audio(row)
        with local_path(row["uri"]) as path:
            frames = seek_video_frames(
                path, times, width=cw, height=ch, fmt="rgb24", threads=self.window.decode_threads
            )
        out = []
        for k, s in enumerate(starts):
            lo, hi = self._fit(frames[k * n : (k + 1) * n], low, sr)
            r = self._base(row, k, len(starts))
            r.update(start_s=start + s, end_s=start + s + self.window.seconds, fps=float(self.window.fps))
            self._set_pixels(r, lo, hi)
            if samples is not None:
                self._set_audio(r, samples, s)
            out.append(r)
        return out

    def _clip_audio(self, row: Row) -> np.ndarray | None:
        """The clip's 16 kHz WAV (sample 0 = the clip start), or None without audio."""
        uri = row.get("audio_uri")
        if not self.audio or not uri or (isinstance(uri, float) and uri != uri):
            return None
        return read_wav(uri)

    def _set_audio(self, out: Row, samples: np.ndarray, offset_s: float) -> None:
        n = self.window.audio_samples
        a = round(offset_s * AUDIO_RATE)
        chunk = samples[a : a + n]
        if chunk.size < n:  # the WAV ends a few samples early: silence, as curation pads
            chunk = np.pad(chunk, (0, n - chunk.size))
        out["wave"], out["wave_shape"] = _bytes(chunk.astype(np.float32))

    def _audio_only(self, row: Row) -> list[Row]:
        if not self.audio or not self.window.audio_windows:
            return [reject(row, self.name, "audio_off", "audio tokenization is disabled")]
        uri = row.get("audio_uri")
        if uri and not (isinstance(uri, float) and uri != uri):
            samples = read_wav(uri)
        else:  # curation ran with audio extraction off: decode the input itself
            with local_path(row["uri"]) as path:
                samples = decode_audio(path, rate=AUDIO_RATE)
        starts = window_starts(samples.size / AUDIO_RATE, self.window, tolerance=1.0 / AUDIO_RATE)
        if not starts:
            return [
                reject(
                    row,
                    self.name,
                    "too_short",
                    f"audio of {samples.size / AUDIO_RATE:.3f}s is shorter than one {self.window.seconds:.3f}s window",
                )
            ]
        out = []
        base_s = num(row, "start_s") or 0.0
        for k, s in enumerate(starts):
            r = self._base(row, k, len(starts))
            r.update(start_s=base_s + s, end_s=base_s + s + self.window.seconds)
            self._set_audio(r, samples, s)
            out.append(r)
        return out


# ------------------------------------------------------------------------------------------- tokenizers


def pick_device(device: str, cluster_has_gpu: bool | None) -> bool:
    if device == "auto":
        if cluster_has_gpu is None:
            import torch

            cluster_has_gpu = torch.cuda.is_available()
        return bool(cluster_has_gpu)
    return device == "cuda"


_PINNED = threading.local()
"""Page-locked staging buffers of the model stages' host-to-device copies, per thread (`_to_device`)."""

_STREAMS = threading.local()
_STREAM_RANKS = itertools.count()
"""Order in which call threads got their streams: the first has the highest priority (`thread_stream`)."""


def thread_stream(device):
    """A context running this thread's CUDA work on its own stream (made once per thread and device), each
    thread's at its own priority: the first thread to ask gets the highest, the next one lower, and so on
    (as many levels as the device has, then round again).

    Own streams: a call's wait for its results waits only for its own kernels. Priorities: with equal ones the
    GPU interleaves the concurrent calls' kernels, so all of them finish at about the same moment and then
    unpack, stage and return at the same moment too, while the GPU idles. Ranked, the GPU runs the first call
    to completion and fills its gaps with the others', so calls finish staggered and one call's host work
    overlaps the others' kernels. Tokenizer worker alone on the H100, 3 calls: 762-791 windows/s against
    710-731 with equal priorities (alternating runs); a call's kernels and so its tokens are the same either
    way. A no-op off CUDA."""
    import contextlib

    import torch

    if device is None or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.cuda.stream(_own_stream("compute", device))


def _copy_stream(device):
    """This thread's side stream for host-to-device copies (`_ModelStage._to_device`)."""
    return _own_stream("copy", device)


def _own_stream(kind: str, device):
    """This thread's CUDA stream of `kind` on `device`, made on first use: "compute" ones ranked by priority
    in the order threads first ask (`thread_stream`), "copy" ones at the default priority."""
    import torch

    streams = _STREAMS.__dict__.setdefault(kind, {})
    if str(device) not in streams:
        priority = 0
        if kind == "compute":
            low, high = torch.cuda.Stream.priority_range()  # numerically lower is higher priority
            priority = high + next(_STREAM_RANKS) % (low - high + 1)
        streams[str(device)] = torch.cuda.Stream(device, priority=priority)
    return streams[str(device)]


class _ModelStage(Stage):
    """Shared device handling: one GPU per worker when `use_gpu`, else `pool.cpus` CPU threads."""

    stateful: ClassVar[bool] = True

    def __init__(self, pool: PoolConfig, *, cluster_has_gpu: bool | None = None):
        self.pool = pool
        self.use_gpu = pick_device(pool.device, cluster_has_gpu)
        self.resources = Resources(
            cpus=pool.gpu_worker_cpus if self.use_gpu else pool.cpus,
            gpus=1.0 / pool.workers_per_gpu if self.use_gpu else 0.0,
        )
        self.device = None

    def _setup_device(self):
        import torch

        if self.device is not None:
            return
        if self.use_gpu and not torch.cuda.is_available():
            if self.pool.device == "cuda":
                raise UserError("pool.device=cuda but this worker sees no CUDA device; use auto or cpu")
            log.warning("%s stage asked for a GPU but this worker has none; running on CPU", self.name)
        self.device = torch.device("cuda" if self.use_gpu and torch.cuda.is_available() else "cpu")
        if self.device.type == "cpu":
            torch.set_num_threads(max(1, int(self.pool.cpus)))
        self.dtype = (
            torch.bfloat16 if self.device.type == "cuda" and self.pool.dtype == "bfloat16" else torch.float32
        )

    def _batched(
        self, rows: list[Row], jobs: list[tuple[int, str, np.ndarray]], batch_size: int, fn
    ) -> set[int]:
        """Run `fn(list of arrays) -> list of results` over `jobs` (row index, key, array) grouped by shape,
        `batch_size` at a time, storing each result with `self._store(row, key, result)`. With
        `pool.pad_batches` every call gets exactly `batch_size` arrays (blank ones fill a short batch), so
        a window's tokens do not depend on which windows shared its batch. A failing batch is retried row
        by row; returns the indices of rows that still failed (they are rejected)."""

        def run(arrays: list[np.ndarray]) -> list[np.ndarray]:
            n = len(arrays)
            if self.pool.pad_batches and n < batch_size:
                arrays = arrays + [np.zeros_like(arrays[0])] * (batch_size - n)
            return fn(arrays)[:n]

        failed: set[int] = set()
        groups: dict[tuple, list] = {}
        for job in jobs:
            groups.setdefault((job[1], job[2].shape), []).append(job)
        for (key, _), group in sorted(groups.items(), key=lambda kv: str(kv[0])):
            for i in range(0, len(group), batch_size):
                part = group[i : i + batch_size]
                try:
                    results = run([a for _, _, a in part])
                except Exception:  # noqa: BLE001 - isolate the bad row below
                    results = None
                if results is None:
                    for idx, _, a in part:
                        try:
                            self._store(rows[idx], key, run([a])[0])
                        except Exception as e:  # noqa: BLE001
                            rows[idx] = reject(rows[idx], self.name, "error", f"{type(e).__name__}: {e}")
                            failed.add(idx)
                    continue
                for (idx, _, _), res in zip(part, results):
                    self._store(rows[idx], key, res)
        return failed

    def _store(self, row: Row, key: str, result) -> None:
        raise NotImplementedError

    def _to_device(self, arrays: list[np.ndarray]):
        """`arrays` stacked on the worker's device. On CUDA they are stacked straight into a page-locked
        buffer (one per thread, shape and dtype: an actor's calls may run on different threads) and copied
        from it asynchronously: one host copy instead of two (stack, then the driver's staging of pageable
        memory). A buffer is refilled only after its previous copy to the device has completed. The copy runs
        on the thread's side stream, which the compute stream waits for: it overlaps the kernels this call
        queued before it (a call's first batch's while its second is copied) instead of queueing behind them.
        With ranked streams (`thread_stream`), the tokenize job's steady state on the H100: 726 and 742
        windows/s with the side stream, 661 and 726 without (alternating runs)."""
        import torch

        if self.device.type != "cuda":
            return torch.from_numpy(np.stack(arrays))
        key = ((len(arrays), *arrays[0].shape), arrays[0].dtype.str, str(self.device))
        bufs = _PINNED.__dict__.setdefault("bufs", {})
        if key in bufs:
            host, copied = bufs[key]
            copied.synchronize()
        else:
            host = torch.from_numpy(np.empty(key[0], arrays[0].dtype)).pin_memory()
        np.stack(arrays, out=host.numpy())
        compute, side = torch.cuda.current_stream(self.device), _copy_stream(self.device)
        with torch.cuda.stream(side):
            x = host.to(self.device, non_blocking=True)
            copied = torch.cuda.Event(blocking=True)
            copied.record()
        compute.wait_event(copied)
        x.record_stream(compute)  # x is used (and freed) on the compute stream
        bufs[key] = (host, copied)
        return x

    def _to_host(self, x) -> np.ndarray:
        """`x` as a host array. On CUDA the wait for the copy sleeps on a blocking event instead of spinning
        (`.cpu()` spins a core per waiting call: with concurrent calls and decode tasks on the same machine,
        that starves the host work the waits are meant to overlap)."""
        import torch

        if x.device.type != "cuda":
            return x.numpy()
        host = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
        host.copy_(x, non_blocking=True)
        done = torch.cuda.Event(blocking=True)
        done.record()
        done.synchronize()
        return host.numpy()


class VideoTokenizeStage(_ModelStage):
    """`pixels` -> `video_tokens`, `sr_pixels` -> `sr_video_tokens` (int32 bytes + shape) with MAGVIT-v2."""

    name: ClassVar[str] = "video_tokens"

    def __init__(self, cfg: VideoTokenizerConfig, pool: PoolConfig, *, sha256: str | None = None, **kw):
        super().__init__(pool, **kw)
        self.cfg, self.sha256 = cfg, sha256
        self.model = None

    def setup(self) -> None:
        if self.model is not None:
            return
        from videopoet.tokenizers.magvit2 import MagvitV2

        self._setup_device()
        self.model = MagvitV2.from_pretrained(self.cfg.checkpoint, device=self.device, dtype=self.dtype)
        if self.device.type == "cuda" and self.cfg.compile:
            # static shapes: one specialized graph per window shape (a dynamic one runs slower kernels)
            self.model.channels_last_()
            self.model.encoder.compile(dynamic=False)

    def _encode(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        import torch

        x = self._to_device(arrays)  # (B, T, H, W, 3) uint8
        x = x.permute(0, 4, 1, 2, 3).to(self.dtype if self.device.type == "cuda" else torch.float32)
        x = x / 127.5 - 1.0
        with torch.inference_mode():
            codes = self.model.encode(x)  # (B, T', H', W')
        return list(self._to_host(codes.to(torch.int32)))

    def _store(self, row: Row, key: str, result: np.ndarray) -> None:
        out = "video_tokens" if key == "pixels" else "sr_video_tokens"
        row[out], row[f"{out}_shape"] = _bytes(result)

    def process_rows(self, rows: list[Row]) -> list[Row]:
        rows = [dict(r) for r in rows]
        jobs = []
        for i, r in enumerate(rows):
            for key in ("pixels", "sr_pixels"):
                arr = unpack(r, key, np.uint8)
                if arr is not None:
                    jobs.append((i, key, arr))
        # super-resolution windows have scale^2 the pixels: fewer per pass
        low = [j for j in jobs if j[1] == "pixels"]
        high = [j for j in jobs if j[1] == "sr_pixels"]
        self._batched(rows, low, self.cfg.batch_size, self._encode)
        self._batched(rows, high, max(1, self.cfg.batch_size // 4), self._encode)
        for r in rows:
            r.pop("pixels", None), r.pop("sr_pixels", None), r.pop("pixels_shape", None)
            r.pop("sr_pixels_shape", None)
        return rows


class AudioTokenizeStage(_ModelStage):
    """`wave` (float32 16 kHz) -> `audio_tokens` (int32 level-major codes, bytes) + shape (levels, frames)."""

    name: ClassVar[str] = "audio_tokens"

    def __init__(self, cfg: AudioTokenizerConfig, pool: PoolConfig, **kw):
        super().__init__(pool, **kw)
        self.cfg = cfg
        self.model = None

    def setup(self) -> None:
        if self.model is not None:
            return
        from videopoet.tokenizers.soundstream import SoundStream

        self._setup_device()
        self.model = SoundStream.from_pretrained(self.cfg.checkpoint, device=self.device).fold_weight_norm_()

    def _encode(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        import torch

        x = self._to_device(arrays)
        with torch.inference_mode():
            codes = self.model.encode(x)  # (B, levels, frames)
        return list(self._to_host(codes.to(torch.int32)))

    def _store(self, row: Row, key: str, result: np.ndarray) -> None:
        # stored (levels, frames) in C order = level-major, as the LM lays audio out
        row["audio_tokens"], row["audio_tokens_shape"] = _bytes(result)

    def process_rows(self, rows: list[Row]) -> list[Row]:
        rows = [dict(r) for r in rows]
        jobs = []
        for i, r in enumerate(rows):
            arr = unpack(r, "wave", np.float32)
            if arr is not None:
                jobs.append((i, "wave", arr))
        self._batched(rows, jobs, self.cfg.batch_size, self._encode)
        for r in rows:
            r.pop("wave", None), r.pop("wave_shape", None)
        return rows


class TextEmbedStage(_ModelStage):
    """`caption` -> `text_embedding` (float16 (length, dim) of the real tokens) and `text_encoder_id`."""

    name: ClassVar[str] = "text"

    def __init__(self, cfg: TextConfig, pool: PoolConfig, **kw):
        super().__init__(pool, **kw)
        self.cfg = cfg
        self.encoder = None

    def setup(self) -> None:
        if self.encoder is not None:
            return
        from videopoet.tokenizers.text import TextEncoderConfig, build_text_encoder

        self._setup_device()
        self.encoder = build_text_encoder(
            TextEncoderConfig(
                kind=self.cfg.kind,
                path=self.cfg.path,
                max_tokens=self.cfg.max_tokens,
                batch_size=self.cfg.batch_size,
                device=str(self.device),
                dtype="bfloat16"
                if self.device.type == "cuda" and self.pool.dtype == "bfloat16"
                else "float32",
                cache_dir=self.cfg.cache_dir,
            )
        )

    def process_rows(self, rows: list[Row]) -> list[Row]:
        rows = [dict(r) for r in rows]
        captions = sorted({c for r in rows if isinstance(c := r.get("caption"), str) and c.strip()})
        table: dict[str, np.ndarray] = {}
        # windows of one clip share a caption: embed each once. One at a time with pad_batches: padded to the
        # longest caption of a batch, a caption's embedding would depend on its batch-mates' lengths.
        chunk = 1 if self.pool.pad_batches else max(1, len(captions))
        for start in range(0, len(captions), chunk):
            part = captions[start : start + chunk]
            out = self.encoder.encode(part)
            for i, c in enumerate(part):
                table[c] = out.embeddings[i][out.mask[i]].numpy().astype(np.float16)  # (length, dim)
        for r in rows:
            r["text_encoder_id"] = self.encoder.id
            r["text_dim"] = int(self.encoder.dim)
            emb = table.get(r.get("caption")) if isinstance(r.get("caption"), str) else None
            if emb is not None:
                r["text_embedding"], r["text_embedding_shape"] = _bytes(emb)
        return rows


class ChainStage(Stage):
    """Several stages run one after another inside one worker (one actor holding every model)."""

    name: ClassVar[str] = "tokenize"
    stateful: ClassVar[bool] = True
    batch_format: ClassVar[str] = "pyarrow"  # decoded pixels are read in place, never copied into bytes

    def __init__(
        self,
        stages: list[Stage],
        *,
        batch_size: int | None = None,
        concurrency=None,
        memory_mb: int | None = None,
    ):
        self.stages = stages
        self.batch_size = batch_size
        self.concurrency = concurrency
        gpus = max((s.resources.gpus for s in stages), default=0.0)
        cpus = max((s.resources.cpus for s in stages), default=1.0)
        self.resources = Resources(cpus=cpus, gpus=gpus, memory_mb=memory_mb)

    def setup(self) -> None:
        for s in self.stages:
            s.setup()

    def process_rows(self, rows: list[Row]) -> list[Row]:
        device = next((d for s in self.stages if (d := getattr(s, "device", None)) is not None), None)
        with thread_stream(device):  # concurrent calls (pool.concurrent_calls) each on their own stream
            return self._run(rows)

    def _run(self, rows: list[Row]) -> list[Row]:
        for s in self.stages:
            ok = [r for r in rows if r.get("status", OK) == OK]
            bad = [r for r in rows if r.get("status", OK) != OK]
            try:
                done = s.process_rows(ok) if ok else []
            except Exception:  # noqa: BLE001 - find the bad row rather than fail the batch
                done = [x for r in ok for x in s.safe_call(r, lambda r, s=s: s.process_rows([r]))]
            rows = done + bad
        return rows
