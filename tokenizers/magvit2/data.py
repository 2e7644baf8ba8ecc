"""Video and image data for MAGVIT-v2 training: a compact cache of JPEG frames in Parquet, and batches from it.

    index = prepare_cache(PrepareConfig(inputs=[MediaInput(uri="data/videos")]), "out/video_cache")  # PyAV
    cache = VideoCache("out/video_cache")              # index.json + Parquet; needs pyarrow only
    loader = ClipLoader(cache, frames=17, crop=(128, 128), seed=0)
    x = loader.video_batch(8, device)                  # (8, 3, 17, 128, 128) float32 in [-1, 1]
    y = loader.image_batch(32, device)                 # (32, 3, 1, 128, 128)

`prepare_cache` decodes real media with PyAV (videos) and Pillow (images) at a reduced size (short side
`short_side`, e.g. 144, so random 128 crops keep most of the scene) and cuts each video into windows of
`window_frames` frames: at each rate of `fps` (frames picked by presentation time, e.g. 8 fps as the
VideoPoet tokenizer sees them) and, with `native_fps`, also as consecutive frames at the file's own rate
(faster motion per frame, for variety). An image becomes a 1-frame row. Frames are stored as JPEG bytes,
so a GPU machine decodes them with `torchvision.io.decode_jpeg` (batched, on the CPU or the GPU) and
needs no PyAV:

    CACHE/index.json               format, totals per split, one entry per source file (id, uri, licence,
                                   split, size, fps, windows), skipped files and why, the prepare config
    CACHE/train-00000.parquet ...  one row per window: clip_id, source, uri, split, kind (video | image),
    CACHE/heldout-00000.parquet    license, fps, source_fps, start_s, num_frames, height, width,
                                   frames (list<binary>: JPEG bytes, one per frame)

The split is decided per SOURCE FILE, never per window: the file's id (its Debian package + path, its
manifest uri, its path under the input folder, or for a curation output the clip's input uri) is hashed
with `seed` and the file goes to `heldout` when the hash falls under `heldout_fraction`, unless its input
forces a split. All windows of one file (and all clips of one curated input) land on the same side.

Input kinds (`MediaInput.uri`): a file, a folder (searched recursively), a glob, a manifest (.jsonl/.csv/
.parquet with a `uri` column, e.g. `videopoet sample-data`'s; `modality`, `license`, `package`,
`package_path` columns are used when present), a curation output folder (its `clips/` rows: video clips are
cut inside their [start_s, end_s) span, so windows do not straddle a detected cut), or `SCHEME:...` handled
by a resolver the caller passes (the train-tokenizer job resolves `debian:PACKAGE/GLOB`).
"""

from __future__ import annotations

import bisect
import hashlib
import io
import json
import math
import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from videopoet.core.config import check, to_dict
from videopoet.core.errors import UserError
from videopoet.core.io import atomic_write, atomic_write_text, exists, join, read_text
from videopoet.core.log import get_logger

log = get_logger("videopoet.magvit2.data")

CACHE_FORMAT = "videopoet.video_cache"
CACHE_VERSION = 1
INDEX_NAME = "index.json"
SPLITS = ("train", "heldout")
VIDEO_SUFFIXES = (
    ".mp4",
    ".mkv",
    ".webm",
    ".mov",
    ".avi",
    ".mpg",
    ".mpeg",
    ".m4v",
    ".ogv",
    ".flv",
    ".wmv",
    ".ts",
)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")


@dataclass(kw_only=True)
class MediaInput:
    """One source of videos and/or images for the cache."""

    uri: str
    """A file, folder, glob, manifest (.jsonl/.csv/.parquet with a `uri` column), curation output folder, or `debian:PACKAGE/GLOB` (resolved by the train-tokenizer job)."""
    split: Literal["auto", "train", "heldout"] = "auto"
    """auto: each source file goes to heldout when the hash of its id falls under heldout_fraction; train / heldout: all of this input's files go there."""
    license: str | None = None
    """Licence recorded for these files when the source names none (manifest `license` columns and Debian copyright files win)."""
    max_files: int | None = None
    """Take at most this many files of this input (in a fixed pseudo-random order of their ids); null = all."""

    def __post_init__(self) -> None:
        check(bool(self.uri), "uri", self.uri, "a non-empty file, folder, glob, manifest or debian:PKG/GLOB")
        check(self.max_files is None or self.max_files > 0, "max_files", self.max_files, "> 0 or null")


@dataclass(kw_only=True)
class PrepareConfig:
    """How `prepare_cache` builds the frame cache from real videos and images."""

    inputs: list[MediaInput] = field(default_factory=list)
    """Media sources (see MediaInput); each entry: {uri, split, license, max_files}."""
    short_side: int = 144
    """Frames and images are resized (area filter, aspect kept) so their short side is this many pixels; smaller sources are kept at their size."""
    image_short_side: int | None = None
    """Short side of cached images (null = short_side): larger keeps room for camera moves over stills (VideoDataConfig.still_motion)."""
    min_short_side: int = 128
    """Sources whose short side is below this are skipped (upscaled frames would teach blur)."""
    window_frames: int = 17
    """Frames per cached video window (17 = 1 + 4 * 4, the tokenizer's 5 latent frames)."""
    fps: list[float] = field(default_factory=lambda: [8.0])
    """Rates at which windows are sampled by presentation time (a rate above the file's own is skipped for that file)."""
    native_fps: bool = True
    """Also cut windows of consecutive frames at each file's own rate (more motion per frame, for variety)."""
    window_stride_s: float | None = None
    """Seconds between the starts of consecutive windows of one rate; null = back to back (window_frames / fps)."""
    max_windows_per_file: int | None = 32
    """Per file and per rate keep at most this many windows, evenly spaced over the file; null = all."""
    max_seconds_per_file: float | None = 120.0
    """Decode only the first this-many seconds of each video (or of each curated clip); null = all."""
    jpeg_quality: int = 90
    """JPEG quality of the stored frames (Pillow, 4:2:0)."""
    heldout_fraction: float = 0.1
    """Share of the source files of `split: auto` inputs that go to the held-out split."""
    seed: int = 0
    """Salt of the split hash: the same seed and ids always give the same split."""
    rows_per_file: int = 256
    """Rows per Parquet file (a split's rows are written to as many files as needed)."""
    deb_cache: str | None = None
    """Where `debian:` inputs keep downloaded packages; null = $XDG_CACHE_HOME/videopoet/debs."""

    def __post_init__(self) -> None:
        check(self.short_side >= 16, "short_side", self.short_side, ">= 16")
        check(
            self.image_short_side is None or self.image_short_side >= 16,
            "image_short_side",
            self.image_short_side,
            ">= 16 or null",
        )
        check(self.min_short_side >= 1, "min_short_side", self.min_short_side, ">= 1")
        check(self.window_frames >= 2, "window_frames", self.window_frames, ">= 2")
        check(all(f > 0 for f in self.fps), "fps", self.fps, "a list of positive frame rates")
        check(
            bool(self.fps) or self.native_fps,
            "fps",
            self.fps,
            "at least one rate unless native_fps is true",
        )
        check(
            self.window_stride_s is None or self.window_stride_s > 0,
            "window_stride_s",
            self.window_stride_s,
            "> 0 or null",
        )
        check(
            self.max_windows_per_file is None or self.max_windows_per_file >= 1,
            "max_windows_per_file",
            self.max_windows_per_file,
            ">= 1 or null",
        )
        check(
            self.max_seconds_per_file is None or self.max_seconds_per_file > 0,
            "max_seconds_per_file",
            self.max_seconds_per_file,
            "> 0 or null",
        )
        check(1 <= self.jpeg_quality <= 100, "jpeg_quality", self.jpeg_quality, "in [1, 100]")
        check(0 <= self.heldout_fraction < 1, "heldout_fraction", self.heldout_fraction, "in [0, 1)")
        check(self.rows_per_file >= 1, "rows_per_file", self.rows_per_file, ">= 1")


@dataclass
class MediaSource:
    """One file to cache: where to read it, what it is, and what to record about it."""

    uri: str
    """Readable location (local path or fsspec URL)."""
    id: str
    """Stable identity used for the split hash (independent of where the files sit on this machine)."""
    kind: Literal["video", "image"]
    license: str | None = None
    meta: dict = field(default_factory=dict)
    start_s: float | None = None
    end_s: float | None = None
    """Span of a video to take (curation clips); None = from the start / to the end."""


Resolver = Callable[[MediaInput], list[Any]]
"""`SCHEME:...` input -> files: objects with `uri`, `id`, `license`, `meta` (e.g. the job's Debian resolver)."""


# ---- split ------------------------------------------------------------------------------------------------
def split_hash(source_id: str, seed: int) -> float:
    """A number in [0, 1) fixed by (seed, source id)."""
    h = hashlib.sha256(f"{seed}:{source_id}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def assign_split(source_id: str, *, forced: str, heldout_fraction: float, seed: int) -> str:
    if forced != "auto":
        return forced
    return "heldout" if split_hash(source_id, seed) < heldout_fraction else "train"


# ---- listing inputs ---------------------------------------------------------------------------------------
def media_kind(path: str) -> str | None:
    p = path.lower()
    if p.endswith(VIDEO_SUFFIXES):
        return "video"
    if p.endswith(IMAGE_SUFFIXES):
        return "image"
    return None


def _read_table(url: str) -> list[dict]:
    import fsspec
    import pyarrow as pa

    with fsspec.open(url, "rb") as f:
        data = f.read()
    if url.endswith(".jsonl"):
        rows = []
        for i, line in enumerate(data.decode("utf-8").splitlines()):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise UserError(
                        f"manifest {url} line {i + 1} is not JSON ({e}); fix or remove it"
                    ) from None
        return rows
    if url.endswith(".csv"):
        import pyarrow.csv as pacsv

        return pacsv.read_csv(pa.BufferReader(data)).to_pylist()
    import pyarrow.parquet as pq

    return pq.read_table(pa.BufferReader(data)).to_pylist()


def _from_manifest(url: str, spec: MediaInput) -> list[MediaSource]:
    rows = _read_table(url)
    if rows and "uri" not in rows[0]:
        raise UserError(f"manifest {url} has no 'uri' column (columns: {sorted(rows[0])}); add one per file")
    base = posixpath.dirname(url)
    out = []
    for row in rows:
        uri = str(row["uri"])
        if row.get("expected"):
            continue  # a deliberately broken file (sample-data manifests)
        kind = row.get("modality") if row.get("modality") in ("video", "image") else media_kind(uri)
        if kind is None:
            continue
        full = uri if "://" in uri or uri.startswith("/") else posixpath.join(base, uri)
        sid = f"debian:{row['package']}/{row['package_path']}" if row.get("package_path") else uri
        meta = {k: row[k] for k in ("package", "version", "package_path", "derivation") if row.get(k)}
        out.append(
            MediaSource(uri=full, id=sid, kind=kind, license=row.get("license") or spec.license, meta=meta)
        )
    return out


def _from_curation(root: str, spec: MediaInput) -> list[MediaSource]:
    """Kept clips of a curation output: every clip of one input carries that input's uri as its id."""
    from videopoet.pipelines.commit import read_parquet_dir

    out = []
    for row in read_parquet_dir(join(root, "clips")).to_pylist():
        if row.get("modality") not in ("video", "image"):
            continue
        meta = json.loads(row["meta_json"]) if row.get("meta_json") else {}
        lic = meta.get("license") if isinstance(meta, dict) else None
        video = row["modality"] == "video"
        out.append(
            MediaSource(
                uri=str(row["uri"]),
                id=str(row["uri"]),
                kind=row["modality"],
                license=lic or spec.license,
                meta={"clip_id": row.get("clip_id")},
                start_s=row.get("start_s") if video else None,
                end_s=row.get("end_s") if video else None,
            )
        )
    return out


def list_sources(spec: MediaInput, resolvers: dict[str, Resolver] | None = None) -> list[MediaSource]:
    """The video and image files one input names (unordered; `prepare_cache` orders and budgets them)."""
    from fsspec.core import url_to_fs

    uri = spec.uri
    scheme = uri.split(":", 1)[0] if ":" in uri and "://" not in uri else None
    if scheme and len(scheme) > 1:  # `debian:pkg/glob` (a Windows drive letter has length 1)
        if not resolvers or scheme not in resolvers:
            known = ", ".join(sorted(resolvers or {})) or "none"
            raise UserError(
                f"input {uri!r} uses scheme '{scheme}:', which this caller cannot resolve (known: {known}); "
                "the train-tokenizer job resolves debian:PKG/GLOB, else pass files, folders or manifests"
            )
        out = []
        for s in resolvers[scheme](spec):
            kind = media_kind(s.uri)
            if kind is not None:
                lic = getattr(s, "license", None) or spec.license
                out.append(MediaSource(uri=s.uri, id=s.id, kind=kind, license=lic, meta=dict(s.meta or {})))
        return out
    if uri.endswith((".jsonl", ".csv", ".parquet")) and not any(c in uri for c in "*?["):
        return _from_manifest(uri, spec)
    fs, path = url_to_fs(uri)
    if any(c in path for c in "*?["):
        paths = [p for p in fs.glob(path) if fs.isfile(p)]
        root = path.split("*", 1)[0].rsplit("/", 1)[0]
    elif fs.isdir(path):
        if fs.isdir(path.rstrip("/") + "/clips"):
            return _from_curation(uri, spec)
        paths = fs.find(path)
        root = path.rstrip("/")
    elif fs.exists(path):
        paths, root = [path], posixpath.dirname(path)
    else:
        raise UserError(f"media input {uri} does not exist; pass a file, folder, glob or manifest")
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    full = (lambda p: p) if "file" in protocols else fs.unstrip_protocol
    base = posixpath.basename(root.rstrip("/"))
    return [
        MediaSource(
            uri=full(p),
            id=posixpath.join(base, posixpath.relpath(p, root)),
            kind=media_kind(p),
            license=spec.license,
        )
        for p in sorted(paths)
        if media_kind(p) is not None
    ]


# ---- decoding and cutting ---------------------------------------------------------------------------------
def reduced_size(width: int, height: int, short: int) -> tuple[int, int]:
    """(w, h) with the short side `min(short, current short side)`, aspect kept (never upscales)."""
    s = min(short, width, height)
    if width <= height:
        return s, max(s, round(height * s / width))
    return max(s, round(width * s / height)), s


def jpeg_bytes(rgb: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def window_starts(n: int, stride: int, cap: int | None) -> list[int]:
    """Start indices 0, stride, ... of windows that fit in `n` positions; at most `cap`, evenly spaced."""
    starts = list(range(0, n, stride)) if n > 0 else []
    if cap is not None and len(starts) > cap:
        picks = np.linspace(0, len(starts) - 1, cap).round().astype(int)
        starts = [starts[i] for i in sorted(set(picks.tolist()))]
    return starts


def cut_windows(times: list[float], source_fps: float, cfg: PrepareConfig) -> list[dict]:
    """Windows of one decoded video: {fps, tag, start_s, indices} with `window_frames` frame indices each.

    `times` are the frames' presentation times (seconds, ascending). At a rate f the k-th frame of a window
    starting at s is the frame shown at s + k / f (the last one starting at or before it, with half a
    frame of slack); at the native rate a window is `window_frames` consecutive frames.
    """
    n, wf = len(times), cfg.window_frames
    out: list[dict] = []
    if n == 0:
        return out
    duration = times[-1] - times[0] + 1.0 / source_fps
    half = 0.5 / source_fps
    for f in cfg.fps:
        if f > source_fps * 1.01:
            continue  # frames would repeat
        span = (wf - 1) / f
        stride = cfg.window_stride_s or wf / f
        count = int(math.floor((duration - 1e-6 - span) / stride)) + 1 if duration - 1e-6 >= span else 0
        for k in window_starts(count, 1, cfg.max_windows_per_file):
            s = times[0] + k * stride
            idx = [max(0, bisect.bisect_right(times, s + j / f + half) - 1) for j in range(wf)]
            out.append({"fps": float(f), "tag": f"{f:g}fps", "start_s": s, "indices": idx})
    if cfg.native_fps:
        stride = max(1, round(cfg.window_stride_s * source_fps)) if cfg.window_stride_s else wf
        for a in window_starts(max(0, n - wf + 1), stride, cfg.max_windows_per_file):
            out.append(
                {
                    "fps": float(source_fps),
                    "tag": "native",
                    "start_s": times[a],
                    "indices": list(range(a, a + wf)),
                }
            )
    return out


def decode_video(src: MediaSource, cfg: PrepareConfig) -> dict:
    """Decode a video's span at reduced size into JPEG frames; returns frames, times, size and fps."""
    import av

    from videopoet.pipelines.media import iter_video_frames, local_path, stream_fps, video_stream

    with local_path(src.uri) as path:
        with av.open(path, metadata_errors="ignore") as container:
            stream = video_stream(container)
            if stream is None:
                raise ValueError("no video stream")
            width, height = stream.codec_context.width, stream.codec_context.height
            fps = stream_fps(stream) or 25.0
        if min(width, height) < cfg.min_short_side:
            return {"skip": f"short side {min(width, height)} px < min_short_side {cfg.min_short_side}"}
        w, h = reduced_size(width, height, cfg.short_side)
        start = src.start_s or 0.0
        end = src.end_s if src.end_s is not None else math.inf
        if cfg.max_seconds_per_file is not None:
            end = min(end, start + cfg.max_seconds_per_file)
        frames, times = [], []
        for fr in iter_video_frames(path, width=w, height=h, fmt="rgb24", threads=0):
            if fr.time_s < start - 1e-6:
                continue
            if fr.time_s >= end - 1e-6:
                break
            frames.append(jpeg_bytes(fr.image, cfg.jpeg_quality))
            times.append(fr.time_s - start)
    return {
        "frames": frames,
        "times": times,
        "width": w,
        "height": h,
        "fps": fps,
        "src_size": [width, height],
    }


def decode_image(src: MediaSource, cfg: PrepareConfig) -> dict:
    """An image resized to the cache's short side, as JPEG (first frame of an animated file)."""
    import fsspec
    from PIL import Image, ImageOps

    with fsspec.open(src.uri, "rb") as f:
        img = Image.open(io.BytesIO(f.read()))
        img = ImageOps.exif_transpose(img).convert("RGB")
    width, height = img.size
    if min(width, height) < cfg.min_short_side:
        return {"skip": f"short side {min(width, height)} px < min_short_side {cfg.min_short_side}"}
    w, h = reduced_size(width, height, cfg.image_short_side or cfg.short_side)
    if (w, h) != (width, height):
        img = img.resize(
            (w, h), Image.Resampling.BOX if min(width, height) >= 2 * h else Image.Resampling.LANCZOS
        )
    return {
        "frames": [jpeg_bytes(np.asarray(img), cfg.jpeg_quality)],
        "width": w,
        "height": h,
        "src_size": [width, height],
    }


# ---- building the cache -----------------------------------------------------------------------------------
ROW_FIELDS = (
    ("clip_id", "string"), ("source", "string"), ("uri", "string"), ("split", "string"), ("kind", "string"),
    ("license", "string"), ("fps", "float64"), ("source_fps", "float64"), ("start_s", "float64"),
    ("num_frames", "int32"), ("height", "int32"), ("width", "int32"),
)  # fmt: skip


def row_schema():
    import pyarrow as pa

    fields = [pa.field(name, getattr(pa, typ)()) for name, typ in ROW_FIELDS]
    fields.append(pa.field("frames", pa.list_(pa.binary())))
    return pa.schema(fields, metadata={"videopoet.video_cache": str(CACHE_VERSION)})


class _ParquetWriter:
    def __init__(self, out: str, split: str, rows_per_file: int):
        self.out, self.split, self.max = out, split, rows_per_file
        self.names: list[str] = []
        self.rows: list[dict] = []

    def add(self, row: dict) -> None:
        self.rows.append(row)
        if len(self.rows) >= self.max:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = row_schema()
        table = pa.Table.from_pylist(self.rows, schema=schema)
        name = f"{self.split}-{len(self.names):05d}.parquet"
        atomic_write(join(self.out, name), lambda f: pq.write_table(table, f, row_group_size=64))
        self.names.append(name)
        self.rows = []


def prepare_cache(cfg: PrepareConfig, out: str, *, resolvers: dict[str, Resolver] | None = None) -> dict:
    """Decode `cfg.inputs` into the cache folder `out` (see the module docstring). Returns the index.

    Per input, files are taken in a fixed pseudo-random order of their ids until `max_files`; a file (or
    curated clip) seen in an earlier input is skipped, so nothing is cached twice. Files that do not
    decode or are too small or too short for one window are skipped and listed in the index.
    """
    if not cfg.inputs:
        raise UserError(
            "no media inputs to prepare: set magvit2.data.prepare.inputs (files, folders, manifests, curation "
            "outputs or debian:PKG/GLOB entries), or point magvit2.data.cache at an existing cache"
        )
    writers = {s: _ParquetWriter(out, s, cfg.rows_per_file) for s in SPLITS}
    sources: list[dict] = []
    skipped: list[dict] = []
    seen: set[str] = set()
    split_of: dict[str, str] = {}  # source id -> split; the first decision wins (clips of one input share it)
    for k, spec in enumerate(cfg.inputs):
        found = list_sources(spec, resolvers)
        if not found:
            raise UserError(
                f"inputs[{k}] ({spec.uri}) holds no videos or images ({', '.join(VIDEO_SUFFIXES[:5])}, "
                f"{', '.join(IMAGE_SUFFIXES[:3])} ...)"
            )
        found.sort(key=lambda s: (split_hash(f"order:{s.id}#{s.meta.get('clip_id') or ''}", cfg.seed), s.id))
        taken = 0
        for src in found:
            if spec.max_files is not None and taken >= spec.max_files:
                break
            key = f"{src.id}#{src.meta.get('clip_id') or ''}"
            if key in seen:
                log.info("skipping %s: already taken from an earlier input", key)
                continue
            seen.add(key)
            try:
                dec = decode_video(src, cfg) if src.kind == "video" else decode_image(src, cfg)
            except Exception as e:  # PyAV / Pillow raise many types for damaged files
                skipped.append(
                    {"id": src.id, "uri": src.uri, "reason": f"undecodable: {type(e).__name__}: {e}"}
                )
                log.warning("skipping %s: cannot decode (%s)", src.uri, e)
                continue
            if "skip" in dec:
                skipped.append({"id": src.id, "uri": src.uri, "reason": dec["skip"]})
                continue
            split = split_of.setdefault(
                src.id,
                assign_split(src.id, forced=spec.split, heldout_fraction=cfg.heldout_fraction, seed=cfg.seed),
            )
            lic = src.license or spec.license or "UNKNOWN"
            clip = src.meta.get("clip_id")
            base = f"{src.id}#{clip}" if clip else src.id
            common = {"source": src.id, "uri": src.uri, "split": split, "license": lic}
            size = {"height": dec["height"], "width": dec["width"]}
            if src.kind == "image":
                rows = [{"clip_id": base, "kind": "image", "fps": None, "source_fps": None, "start_s": None,
                         "num_frames": 1, **size, "frames": dec["frames"], **common}]  # fmt: skip
            else:
                windows = cut_windows(dec["times"], dec["fps"], cfg)
                if not windows:
                    seconds = dec["times"][-1] + 1 / dec["fps"] if dec["times"] else 0.0
                    skipped.append(
                        {
                            "id": src.id,
                            "uri": src.uri,
                            "reason": f"too short for one window ({seconds:.2f} s)",
                        }
                    )
                    continue
                offset = src.start_s or 0.0
                rows = [
                    {"clip_id": f"{base}@{w['tag']}+{offset + w['start_s']:.3f}", "kind": "video", "fps": w["fps"],
                     "source_fps": dec["fps"], "start_s": offset + w["start_s"], "num_frames": len(w["indices"]),
                     **size, "frames": [dec["frames"][i] for i in w["indices"]], **common}
                    for w in windows
                ]  # fmt: skip
            for row in rows:
                writers[split].add(row)
            entry = {
                "id": base,
                "source": src.id,
                "uri": src.uri,
                "kind": src.kind,
                "split": split,
                "license": lic,
                "input": k,
                "size": [dec["width"], dec["height"]],
                "source_size": dec["src_size"],
                "rows": len(rows),
                "bytes": sum(len(b) for r in rows for b in r["frames"]),
            }
            if src.kind == "video":
                tags = [w["tag"] for w in windows]
                entry |= {
                    "fps": round(dec["fps"], 4),
                    "seconds": round(dec["times"][-1] - dec["times"][0] + 1 / dec["fps"], 3),
                    "windows": {t: tags.count(t) for t in sorted(set(tags))},
                }
            if src.meta:
                entry["meta"] = src.meta
            sources.append(entry)
            taken += 1
        log.info("inputs[%d] %s: %d files", k, spec.uri, taken)
    for w in writers.values():
        w.flush()
    index = {
        "format": CACHE_FORMAT,
        "version": CACHE_VERSION,
        "files": {s: writers[s].names for s in SPLITS},
        "sources": sources,
        "skipped": skipped,
        "totals": _totals(sources),
        "prepare": to_dict(cfg),
    }
    atomic_write_text(join(out, INDEX_NAME), json.dumps(index, indent=1) + "\n")
    return index


def _totals(sources: list[dict]) -> dict:
    out: dict = {}
    for s in sources:
        for key in (s["split"], f"{s['split']}/{s['kind']}"):
            t = out.setdefault(key, {"sources": 0, "rows": 0, "bytes": 0, "seconds": 0.0})
            t["sources"] += 1
            t["rows"] += s["rows"]
            t["bytes"] += s["bytes"]
            t["seconds"] = round(t["seconds"] + s.get("seconds", 0.0), 3)
    return dict(sorted(out.items()))


# ---- reading the cache ------------------------------------------------------------------------------------
class VideoCache:
    """A prepared cache: its index and its rows, loaded into memory split by split (a cache is meant to be
    small: a few thousand windows of JPEG frames)."""

    def __init__(self, url: str):
        self.url = url
        index_url = join(url, INDEX_NAME)
        if not exists(index_url):
            raise UserError(
                f"no video cache at {url} ({INDEX_NAME} missing); build it with `videopoet train-tokenizer "
                "--config configs/tokenizer/magvit2_small.yaml stage=prepare` (needs PyAV) or point "
                "magvit2.data.cache at a prepared cache"
            )
        try:
            self.index = json.loads(read_text(index_url))
        except json.JSONDecodeError as e:
            raise UserError(
                f"{index_url} is not valid JSON ({e}); delete the cache and prepare it again"
            ) from None
        if self.index.get("format") != CACHE_FORMAT or self.index.get("version") != CACHE_VERSION:
            raise UserError(
                f"{index_url} is not a v{CACHE_VERSION} {CACHE_FORMAT} index (format={self.index.get('format')!r}, "
                f"version={self.index.get('version')!r}); prepare the cache again with this code"
            )
        self._rows: dict[str, list[dict]] = {}

    def rows(self, split: str) -> list[dict]:
        """Every row of a split (dicts with the Parquet columns; `frames` is a list of JPEG bytes)."""
        if split not in self._rows:
            import fsspec
            import pyarrow as pa
            import pyarrow.parquet as pq

            rows: list[dict] = []
            for name in self.index["files"].get(split, []):
                url = join(self.url, name)
                try:
                    with fsspec.open(url, "rb") as f:
                        table = pq.read_table(pa.BufferReader(f.read()))
                except (FileNotFoundError, OSError, pa.ArrowInvalid) as e:
                    raise UserError(
                        f"cache file {url} is missing or damaged ({e}); prepare the cache again"
                    ) from None
                rows += table.to_pylist()
            self._rows[split] = rows
        return self._rows[split]

    def totals(self) -> dict:
        return self.index.get("totals", {})


# ---- batches ----------------------------------------------------------------------------------------------
def decode_frames(blobs: list[bytes], device: Any = "cpu"):
    """JPEG bytes -> list of (3, H, W) uint8 tensors, decoded in one batched call on `device`."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    data = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
    dev = torch.device(device)
    if dev.type == "cuda":
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=dev)
    return decode_jpeg(data, mode=ImageReadMode.RGB)


def _move_over(image, boxes: list[tuple[float, float, float, float]], crop: tuple[int, int], flip: bool):
    """(T, 3, crop_h, crop_w): each (top, left, height, width) box of a (3, H, W) float image resampled
    bilinearly to the crop (a box of exactly the crop's size on whole pixels reproduces the plain crop)."""
    import torch
    import torch.nn.functional as F

    _, h, w = image.shape
    b = torch.tensor(boxes, dtype=torch.float32, device=image.device)  # (T, 4)
    theta = torch.zeros(len(boxes), 2, 3, device=image.device)
    theta[:, 0, 0] = b[:, 3] / w  # output [-1, 1] spans the box's edges (align_corners=False)
    theta[:, 0, 2] = (2 * b[:, 1] + b[:, 3]) / w - 1
    theta[:, 1, 1] = b[:, 2] / h
    theta[:, 1, 2] = (2 * b[:, 0] + b[:, 2]) / h - 1
    grid = F.affine_grid(theta, [len(boxes), 3, *crop], align_corners=False)
    x = F.grid_sample(
        image.expand(len(boxes), -1, -1, -1),
        grid,
        mode="bilinear",
        padding_mode="border",
        align_corners=False,
    )
    return x.flip(-1) if flip else x


@dataclass
class ClipSpec:
    """Which frames of which row, and how to resize, crop and flip them (all decided by the sampler's RNG)."""

    row: int
    frames: list[int]
    size: tuple[int, int]
    """(H, W) the frames are resized to before cropping (the stored size when no resize is needed)."""
    top: int
    left: int
    flip: bool
    boxes: list[tuple[float, float, float, float]] | None = None
    """A camera move over a still (`frames` then repeats its one frame): per output frame the (top, left,
    height, width) in stored pixels that is resampled to the crop size; None = the plain crop above."""


def resized_size(h: int, w: int, short_side: int | None, crop: tuple[int, int]) -> tuple[int, int]:
    """(H, W) after scaling so the short side is `short_side` (None: keep) and the crop fits inside."""
    s = short_side / min(h, w) if short_side else 1.0
    s = max(s, crop[0] / h, crop[1] / w)
    if s == 1.0:
        return h, w
    return max(crop[0], round(h * s)), max(crop[1], round(w * s))


class ClipLoader:
    """Random training batches (and fixed evaluation batches) from one split of a `VideoCache`.

    Video batches: a random window with at least `frames` frames, a random run of `frames` consecutive
    frames in it, an optional resize (`short_side`), a random `crop` (H, W) and a horizontal flip with
    probability 0.5. Image batches: 1-frame clips, from image rows and (`image_sources`) single random frames
    of video rows, with the same augmentation. All randomness comes from one numpy generator whose state
    is part of a trainer's checkpoint (`state_dict`), so a resumed run draws the same batches.
    """

    def __init__(
        self,
        cache: VideoCache,
        *,
        frames: int,
        crop: tuple[int, int],
        seed: int,
        split: str = "train",
        short_side: int | None = None,
        hflip: bool = True,
        image_sources: Literal["images", "frames", "both"] = "both",
        still_motion: float = 0.0,
        still_shift: float = 0.3,
        still_zoom: float = 1.25,
    ):
        self.still_motion, self.still_shift, self.still_zoom = still_motion, still_shift, still_zoom
        self.rows = cache.rows(split)
        self.frames, self.crop, self.short_side, self.hflip = frames, tuple(crop), short_side, hflip
        self.video_rows = [
            i for i, r in enumerate(self.rows) if r["kind"] == "video" and r["num_frames"] >= frames
        ]
        image_rows = [i for i, r in enumerate(self.rows) if r["kind"] == "image"]
        frame_rows = [i for i, r in enumerate(self.rows) if r["kind"] == "video"]
        self.image_rows = {"images": image_rows, "frames": frame_rows, "both": image_rows + frame_rows}[
            image_sources
        ]
        self.still_rows = image_rows
        self.rng = np.random.default_rng(seed)
        self.split, self.cache_url = split, cache.url

    # ---- specs
    def _spec(self, row: int, frames: list[int], *, train: bool) -> ClipSpec:
        r = self.rows[row]
        h, w = resized_size(r["height"], r["width"], self.short_side, self.crop)
        ch, cw = self.crop
        if train:
            top = int(self.rng.integers(0, h - ch + 1))
            left = int(self.rng.integers(0, w - cw + 1))
            flip = bool(self.hflip and self.rng.random() < 0.5)
        else:
            top, left, flip = (h - ch) // 2, (w - cw) // 2, False
        return ClipSpec(row=row, frames=frames, size=(h, w), top=top, left=left, flip=flip)

    def _still_spec(self, row: int) -> ClipSpec:
        """A virtual camera moving at constant speed over a still: a random start box (1 to 1.5 times the
        crop, inside the image), a random shift of up to `still_shift` crop sizes and a zoom of up to
        `still_zoom` between the first and the last frame, clamped to the image."""
        r = self.rows[row]
        h, w = r["height"], r["width"]
        ch, cw = self.crop
        fit = min(h / ch, w / cw)  # largest scale at which the box still fits
        zoom = float(np.exp(self.rng.uniform(-1, 1) * np.log(self.still_zoom)))
        s0 = float(self.rng.uniform(1.0, max(1.0, min(1.5, fit))))
        s1 = min(max(s0 * zoom, min(1.0, fit)), fit)
        s0 = min(s0, fit)
        angle = self.rng.uniform(0, 2 * np.pi)
        dist = self.rng.uniform(0, self.still_shift) * min(ch, cw) * (s0 + s1) / 2
        c0 = np.array(
            [self.rng.uniform(ch * s0 / 2, h - ch * s0 / 2), self.rng.uniform(cw * s0 / 2, w - cw * s0 / 2)]
        )
        c1 = c0 + dist * np.array([np.sin(angle), np.cos(angle)])
        c1 = np.clip(c1, [ch * s1 / 2, cw * s1 / 2], [h - ch * s1 / 2, w - cw * s1 / 2])
        boxes = []
        for t in np.linspace(0.0, 1.0, self.frames):
            sc, (cy, cx) = s0 + (s1 - s0) * t, c0 + (c1 - c0) * t
            boxes.append((float(cy - ch * sc / 2), float(cx - cw * sc / 2), float(ch * sc), float(cw * sc)))
        flip = bool(self.hflip and self.rng.random() < 0.5)
        return ClipSpec(row=row, frames=[0] * self.frames, size=(h, w), top=0, left=0, flip=flip, boxes=boxes)

    def sample_video(self, n: int) -> list[ClipSpec]:
        if self.still_motion > 0 and self.still_rows:
            out = []
            for _ in range(n):
                if self.rng.random() < self.still_motion or not self.video_rows:
                    out.append(
                        self._still_spec(self.still_rows[int(self.rng.integers(len(self.still_rows)))])
                    )
                else:
                    out += self._sample_windows(1)
            return out
        return self._sample_windows(n)

    def _sample_windows(self, n: int) -> list[ClipSpec]:
        if not self.video_rows:
            raise UserError(
                f"video cache {self.cache_url} has no {self.split} windows of >= {self.frames} frames; add videos "
                "to the prepare inputs or lower the clip length (frames)"
            )
        out = []
        for _ in range(n):
            row = self.video_rows[int(self.rng.integers(len(self.video_rows)))]
            a = int(self.rng.integers(0, self.rows[row]["num_frames"] - self.frames + 1))
            out.append(self._spec(row, list(range(a, a + self.frames)), train=True))
        return out

    def sample_images(self, n: int) -> list[ClipSpec]:
        if not self.image_rows:
            raise UserError(
                f"video cache {self.cache_url} has no {self.split} images or frames for image batches; add inputs "
                "or set image_sources to one the cache has"
            )
        out = []
        for _ in range(n):
            row = self.image_rows[int(self.rng.integers(len(self.image_rows)))]
            f = int(self.rng.integers(self.rows[row]["num_frames"]))
            out.append(self._spec(row, [f], train=True))
        return out

    def eval_specs(self, kind: Literal["video", "image"], limit: int | None) -> list[ClipSpec]:
        """Fixed centre-cropped clips: the first `frames` frames of video windows, or image rows (1 frame)."""
        if kind == "video":
            rows = self.video_rows
        else:
            rows = [i for i, r in enumerate(self.rows) if r["kind"] == "image"]
        if limit is not None and len(rows) > limit:
            rows = [rows[int(i)] for i in np.linspace(0, len(rows) - 1, limit).round()]
        t = self.frames if kind == "video" else 1
        return [self._spec(r, list(range(t)), train=False) for r in rows]

    # ---- tensors
    def load(self, specs: list[ClipSpec], device: Any = "cpu"):
        """`(B, 3, T, crop_h, crop_w)` float32 in [-1, 1] on `device` (JPEG decoding runs there too)."""
        import torch
        import torch.nn.functional as F

        blobs = [self.rows[s.row]["frames"][f] for s in specs for f in s.frames]
        images = decode_frames(blobs, device)
        ch, cw = self.crop
        clips, k = [], 0
        for s in specs:
            x = torch.stack(images[k : k + len(s.frames)])  # (T, 3, h, w) uint8
            k += len(s.frames)
            x = x.float()
            if s.boxes is not None:
                clips.append(_move_over(x[0], s.boxes, (ch, cw), s.flip))
                continue
            if tuple(x.shape[-2:]) != s.size:
                x = F.interpolate(x, size=s.size, mode="bilinear", antialias=True, align_corners=False)
            x = x[:, :, s.top : s.top + ch, s.left : s.left + cw]
            if s.flip:
                x = x.flip(-1)
            clips.append(x)
        out = torch.stack(clips).permute(0, 2, 1, 3, 4)  # (B, 3, T, H, W)
        return (out / 127.5 - 1).clamp(-1, 1).contiguous()

    def video_batch(self, n: int, device: Any = "cpu"):
        return self.load(self.sample_video(n), device)

    def image_batch(self, n: int, device: Any = "cpu"):
        return self.load(self.sample_images(n), device)

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
