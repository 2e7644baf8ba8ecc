"""Audio for SoundStream training: a compact cache of 16 kHz mono int16 shards, and segment sampling from it.

    cache = prepare_cache(PrepareConfig(inputs=[AudioInput(uri="data/speech", category="speech")]), "out/cache")
    cache = AudioCache("out/cache")                      # reads index.json + shards; needs numpy only
    sampler = SegmentSampler(cache, segment_samples=24000, seed=0)
    batch = sampler.batch(16)                            # (16, 24000) float32 in [-1, 1]

`prepare_cache` decodes real audio files (anything PyAV reads: WAV, FLAC, Ogg/Opus/Vorbis, G.722, MP3,
the audio track of a video ...) to mono at the cache's rate and writes

    CACHE/index.json              format, rate, shard list, one entry per source file (id, uri, licence,
                                  category, split, shard, offset, samples) and totals per split/category
    CACHE/train-00000.npy ...     int16 1-D arrays: the train split's files back to back
    CACHE/heldout-00000.npy ...   the same for the held-out split

The split is decided per SOURCE FILE, never per segment: a file's id (its Debian package + path, its
manifest-relative uri, or its path under the input folder) is hashed with `seed`, and the file goes to
`heldout` when the hash falls under `heldout_fraction` (or wherever its input's `split` forces it). Clips of
one curated input share that input's id, so they land together. The trainer reads only the cache, so a GPU
machine needs no PyAV and no network.

Input kinds (`AudioInput.uri`): a file, a folder (searched recursively), a glob, a manifest (.jsonl/.csv/
.parquet with a `uri` column, as `videopoet sample-data` writes; `license`, `package`, `package_path` columns
are used when present), a curation output folder (its `clips/` Parquet rows with an `audio_uri`), or
`SCHEME:...` handled by a resolver the caller passes (the train-tokenizer job resolves `debian:PKG/GLOB`).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from videopoet.core.config import check, to_dict
from videopoet.core.errors import UserError
from videopoet.core.io import atomic_write_bytes, atomic_write_text, exists, join, read_text
from videopoet.core.log import get_logger

log = get_logger("videopoet.soundstream.data")

CACHE_FORMAT = "videopoet.audio_cache"
CACHE_VERSION = 1
INDEX_NAME = "index.json"
SPLITS = ("train", "heldout")
AUDIO_SUFFIXES = (
    ".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac", ".g722", ".wma", ".aif", ".aiff",
    ".au", ".mp4", ".mkv", ".webm", ".mov", ".avi", ".mpg",
)  # fmt: skip
"""Files a folder or glob input picks up (case-insensitive); other files (transcripts, docs) are skipped."""


@dataclass(kw_only=True)
class AudioInput:
    """One source of audio files for the cache."""

    uri: str
    """A file, folder, glob, manifest (.jsonl/.csv/.parquet with a `uri` column), curation output folder, or `debian:PACKAGE/GLOB` (resolved by the train-tokenizer job: files of that Debian package)."""
    category: str = "audio"
    """Label of these files (e.g. speech, music); held-out metrics are reported per category."""
    split: Literal["auto", "train", "heldout"] = "auto"
    """auto: each source file goes to heldout when the hash of its id falls under heldout_fraction; train / heldout: all of this input's files go there."""
    license: str | None = None
    """Licence of these files; null = what the source records (a manifest's `license` column, the Debian package's copyright file). Set it where that record is missing or wrong (a free-form copyright file's guess can name the packaging licence)."""
    max_files: int | None = None
    """Take at most this many files of this input (in a fixed pseudo-random order of their ids); null = all."""
    max_seconds: float | None = None
    """Stop taking files from this input once this much audio was taken; null = no limit."""
    max_seconds_per_file: float | None = None
    """Keep only the first this-many seconds of each file (the rest is dropped, never put in another split)."""

    def __post_init__(self) -> None:
        check(bool(self.uri), "uri", self.uri, "a non-empty file, folder, glob, manifest or debian:PKG/GLOB")
        check(bool(self.category), "category", self.category, "a non-empty label such as speech or music")
        check(self.max_files is None or self.max_files > 0, "max_files", self.max_files, "> 0 or null")
        for key in ("max_seconds", "max_seconds_per_file"):
            v = getattr(self, key)
            check(v is None or v > 0, key, v, "> 0 or null")


@dataclass(kw_only=True)
class PrepareConfig:
    """How `prepare_cache` builds the audio cache from real files."""

    inputs: list[AudioInput] = field(default_factory=list)
    """Audio sources (see AudioInput); each entry: {uri, category, split, license, max_files, max_seconds, max_seconds_per_file}."""
    sample_rate: int = 16000
    """Rate (Hz) every file is resampled to; must equal the model's sample_rate."""
    heldout_fraction: float = 0.1
    """Share of the source files of `split: auto` inputs that go to the held-out split."""
    seed: int = 0
    """Salt of the split hash: the same seed and ids always give the same split."""
    min_seconds: float = 1.0
    """Files shorter than this (after trimming) are skipped; STOI needs about 1 s."""
    silence_dbfs: float = -55.0
    """Files whose RMS level is below this are skipped as silent."""
    shard_mb: float = 16.0
    """Largest shard file in MB (int16 samples); a split's files are packed into as few shards as fit."""
    deb_cache: str | None = None
    """Where `debian:` inputs keep downloaded packages; null = $XDG_CACHE_HOME/videopoet/debs."""

    def __post_init__(self) -> None:
        check(8000 <= self.sample_rate <= 48000, "sample_rate", self.sample_rate, "in [8000, 48000]")
        check(0 <= self.heldout_fraction < 1, "heldout_fraction", self.heldout_fraction, "in [0, 1)")
        check(self.min_seconds > 0, "min_seconds", self.min_seconds, "> 0")
        check(self.silence_dbfs < 0, "silence_dbfs", self.silence_dbfs, "< 0 (dB relative to full scale)")
        check(self.shard_mb > 0, "shard_mb", self.shard_mb, "> 0")


@dataclass
class SourceFile:
    """One audio file to cache: where to read it and what to record about it."""

    uri: str
    """Readable location (local path or fsspec URL)."""
    id: str
    """Stable identity used for the split hash (independent of where the files sit on this machine)."""
    license: str | None = None
    meta: dict = field(default_factory=dict)
    """Extra provenance (package, version, path in package, manifest fields)."""
    start_s: float | None = None
    end_s: float | None = None
    """Span of the file to take (curation clips); None = from the start / to the end."""


Resolver = Callable[[AudioInput], list[SourceFile]]


# ---- split ------------------------------------------------------------------------------------------------
def split_hash(source_id: str, seed: int) -> float:
    """A number in [0, 1) fixed by (seed, source id): the split and the take order of files are based on it."""
    h = hashlib.sha256(f"{seed}:{source_id}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def assign_split(source_id: str, *, forced: str, heldout_fraction: float, seed: int) -> str:
    if forced != "auto":
        return forced
    return "heldout" if split_hash(source_id, seed) < heldout_fraction else "train"


# ---- listing inputs ---------------------------------------------------------------------------------------
def _is_audio(path: str) -> bool:
    return path.lower().endswith(AUDIO_SUFFIXES)


def _read_table(url: str) -> list[dict]:
    import fsspec

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
    import pyarrow as pa

    if url.endswith(".csv"):
        import pyarrow.csv as pacsv

        return pacsv.read_csv(pa.BufferReader(data)).to_pylist()
    import pyarrow.parquet as pq

    return pq.read_table(pa.BufferReader(data)).to_pylist()


def _from_manifest(url: str) -> list[SourceFile]:
    rows = _read_table(url)
    if rows and "uri" not in rows[0]:
        raise UserError(f"manifest {url} has no 'uri' column (columns: {sorted(rows[0])}); add one per file")
    base = posixpath.dirname(url)
    out = []
    for row in rows:
        uri = str(row["uri"])
        if row.get("modality") not in (None, "audio") and not _is_audio(uri):
            continue  # sample-data manifests also list images and broken files
        if row.get("expected"):
            continue  # a deliberately broken file
        full = uri if "://" in uri or uri.startswith("/") else posixpath.join(base, uri)
        if row.get("package") and row.get("package_path"):
            sid = f"debian:{row['package']}/{row['package_path']}"
        else:
            sid = uri
        meta = {k: row[k] for k in ("package", "version", "package_path", "derivation") if row.get(k)}
        out.append(SourceFile(uri=full, id=sid, license=row.get("license"), meta=meta))
    return out


def _from_curation(root: str) -> list[SourceFile]:
    """Clips of a curation output with audio; every clip of one input carries that input's uri as its id."""
    from videopoet.pipelines.commit import read_parquet_dir

    rows = read_parquet_dir(join(root, "clips")).to_pylist()
    out = []
    for row in rows:
        if not row.get("audio_uri"):
            continue
        meta = json.loads(row["meta_json"]) if row.get("meta_json") else {}
        lic = meta.get("license") if isinstance(meta, dict) else None
        out.append(
            SourceFile(
                uri=row["audio_uri"],
                id=str(row["uri"]),
                license=lic,
                meta={
                    "clip_id": row.get("clip_id"),
                    "start_s": row.get("start_s"),
                    "end_s": row.get("end_s"),
                },
            )
        )
    return out


def list_sources(spec: AudioInput, resolvers: dict[str, Resolver] | None = None) -> list[SourceFile]:
    """The audio files one input names (unordered; `prepare_cache` orders and budgets them)."""
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
        return resolvers[scheme](spec)
    if uri.endswith((".jsonl", ".csv", ".parquet")) and not any(c in uri for c in "*?["):
        return _from_manifest(uri)
    fs, path = url_to_fs(uri)
    if any(c in path for c in "*?["):
        paths = [p for p in fs.glob(path) if fs.isfile(p)]
        root = path.split("*", 1)[0].rsplit("/", 1)[0]
    elif fs.isdir(path):
        if fs.isdir(path.rstrip("/") + "/clips"):
            return _from_curation(uri)
        paths = fs.find(path)
        root = path.rstrip("/")
    elif fs.exists(path):
        paths, root = [path], posixpath.dirname(path)
    else:
        raise UserError(f"audio input {uri} does not exist; pass a file, folder, glob or manifest")
    full = (
        (lambda p: p)
        if "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))
        else fs.unstrip_protocol
    )
    base = posixpath.basename(root.rstrip("/"))
    return [
        SourceFile(uri=full(p), id=posixpath.join(base, posixpath.relpath(p, root)), license=spec.license)
        for p in sorted(paths)
        if _is_audio(p)
    ]


# ---- decoding ---------------------------------------------------------------------------------------------
def decode_mono(src: SourceFile, rate: int, max_seconds: float | None) -> np.ndarray:
    """Float32 mono samples of `src` at `rate` (PyAV); only `max_seconds` from the start of its span."""
    from videopoet.pipelines.media import decode_audio, local_path

    with local_path(src.uri) as path:
        if src.start_s is None and src.end_s is None:
            x = decode_audio(path, rate=rate)
        else:
            x = decode_audio(path, rate=rate, start_s=src.start_s or 0.0, end_s=src.end_s)
    if max_seconds is not None:
        x = x[: int(round(max_seconds * rate))]
    return x


def to_int16(x: np.ndarray) -> np.ndarray:
    """Float samples -> int16 at the scale decoders use (x * 32768), so 16-bit PCM inputs are cached bit-exactly."""
    return np.clip(np.round(x * 32768.0), -32768, 32767).astype(np.int16)


def rms_dbfs(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    r = math.sqrt(float(np.mean(x * x))) if x.size else 0.0
    return 20 * math.log10(r) if r > 0 else -math.inf


# ---- building the cache -----------------------------------------------------------------------------------
class _ShardWriter:
    def __init__(self, out: str, split: str, max_samples: int):
        self.out, self.split, self.max = out, split, max_samples
        self.names: list[str] = []
        self.parts: list[np.ndarray] = []
        self.n = 0

    def add(self, x: np.ndarray) -> tuple[str, int]:
        """Append int16 samples; returns (shard name, offset) of where they start."""
        if self.n and self.n + len(x) > self.max:
            self.flush()
        if not self.parts:
            self.names.append(f"{self.split}-{len(self.names):05d}.npy")
        offset = self.n
        self.parts.append(x)
        self.n += len(x)
        return self.names[-1], offset

    def flush(self) -> None:
        if not self.parts:
            return
        buf = io.BytesIO()
        np.save(buf, np.concatenate(self.parts), allow_pickle=False)
        atomic_write_bytes(join(self.out, self.names[-1]), buf.getvalue())
        self.parts, self.n = [], 0


def prepare_cache(cfg: PrepareConfig, out: str, *, resolvers: dict[str, Resolver] | None = None) -> dict:
    """Decode `cfg.inputs` into the cache folder `out` (see the module docstring). Returns the index.

    Per input, files are taken in the order of their split hash until `max_files` / `max_seconds`; a
    source id seen in an earlier input is skipped (the same file is never cached twice, so never in both
    splits). Files that do not decode, are too short or are silent are skipped and listed in the index.
    """
    if not cfg.inputs:
        raise UserError(
            "no audio inputs to prepare: set soundstream.data.prepare.inputs (files, folders, manifests or "
            "debian:PKG/GLOB entries), or point soundstream.data.cache at an existing cache"
        )
    rate = cfg.sample_rate
    writers = {s: _ShardWriter(out, s, int(cfg.shard_mb * 1e6 // 2)) for s in SPLITS}
    files: list[dict] = []
    skipped: list[dict] = []
    seen: set[str] = set()
    split_of: dict[str, str] = {}  # source id -> split; the first decision wins (clips of one input share it)
    for k, spec in enumerate(cfg.inputs):
        sources = list_sources(spec, resolvers)
        if not sources:
            raise UserError(
                f"inputs[{k}] ({spec.uri}) holds no audio files ({', '.join(AUDIO_SUFFIXES[:6])} ...)"
            )
        # take order: pseudo-random but fixed, and independent of the split hash (else a budget would
        # take the held-out files first)
        sources.sort(key=lambda s: (split_hash(f"order:{s.id}", cfg.seed), s.id))
        taken_s, taken_n = 0.0, 0
        for src in sources:
            if spec.max_files is not None and taken_n >= spec.max_files:
                break
            if spec.max_seconds is not None and taken_s >= spec.max_seconds:
                break
            key = f"{src.id}#{src.meta.get('clip_id') or ''}"
            if key in seen:
                log.info("skipping %s: already taken from an earlier input", src.id)
                continue
            seen.add(key)
            try:
                x = decode_mono(src, rate, spec.max_seconds_per_file)
            except Exception as e:  # PyAV raises many types for damaged / non-audio files
                skipped.append(
                    {"id": src.id, "uri": src.uri, "reason": f"undecodable: {type(e).__name__}: {e}"}
                )
                log.warning("skipping %s: cannot decode (%s)", src.uri, e)
                continue
            if spec.max_seconds is not None:
                x = x[: max(0, int(round((spec.max_seconds - taken_s) * rate)))]
            seconds = len(x) / rate
            if seconds < cfg.min_seconds:
                skipped.append({"id": src.id, "uri": src.uri, "reason": f"too short ({seconds:.2f} s)"})
                continue
            level = rms_dbfs(x)
            if level < cfg.silence_dbfs:
                skipped.append({"id": src.id, "uri": src.uri, "reason": f"silent ({level:.1f} dBFS)"})
                continue
            split = split_of.setdefault(
                src.id,
                assign_split(src.id, forced=spec.split, heldout_fraction=cfg.heldout_fraction, seed=cfg.seed),
            )
            pcm = to_int16(x)
            shard, offset = writers[split].add(pcm)
            files.append(
                {
                    "id": src.id if not src.meta.get("clip_id") else f"{src.id}#{src.meta['clip_id']}",
                    "source": src.id,
                    "uri": src.uri,
                    "license": spec.license or src.license or "UNKNOWN",
                    "category": spec.category,
                    "split": split,
                    "shard": shard,
                    "offset": offset,
                    "samples": len(pcm),
                    "seconds": round(seconds, 4),
                    "rms_dbfs": round(level, 2),
                    "pcm_sha256": hashlib.sha256(pcm.tobytes()).hexdigest(),
                    "input": k,
                    **({"meta": src.meta} if src.meta else {}),
                }
            )
            taken_s += seconds
            taken_n += 1
        log.info("inputs[%d] %s: %d files, %.1f s", k, spec.uri, taken_n, taken_s)
    for w in writers.values():
        w.flush()
    index = {
        "format": CACHE_FORMAT,
        "version": CACHE_VERSION,
        "sample_rate": rate,
        "dtype": "int16",
        "shards": {s: writers[s].names for s in SPLITS},
        "files": files,
        "skipped": skipped,
        "totals": _totals(files),
        "prepare": to_dict(cfg),
    }
    atomic_write_text(join(out, INDEX_NAME), json.dumps(index, indent=1) + "\n")
    return index


def _totals(files: list[dict]) -> dict:
    out: dict = {}
    for f in files:
        for key in (f["split"], f"{f['split']}/{f['category']}"):
            t = out.setdefault(key, {"files": 0, "seconds": 0.0})
            t["files"] += 1
            t["seconds"] = round(t["seconds"] + f["seconds"], 3)
    return dict(sorted(out.items()))


# ---- reading the cache ------------------------------------------------------------------------------------
class AudioCache:
    """A prepared cache: the index and its shards (loaded whole: a cache is meant to be small)."""

    def __init__(self, url: str):
        self.url = url
        index_url = join(url, INDEX_NAME)
        if not exists(index_url):
            raise UserError(
                f"no audio cache at {url} ({INDEX_NAME} missing); build it with `videopoet train-tokenizer "
                "... soundstream.stage=prepare` (needs PyAV) or point soundstream.data.cache elsewhere"
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
        self.sample_rate = int(self.index["sample_rate"])
        self._shards: dict[str, np.ndarray] = {}

    def files(self, split: str | None = None) -> list[dict]:
        return [f for f in self.index["files"] if split is None or f["split"] == split]

    def _shard(self, name: str) -> np.ndarray:
        if name not in self._shards:
            import fsspec

            url = join(self.url, name)
            try:
                with fsspec.open(url, "rb") as f:
                    arr = np.load(io.BytesIO(f.read()), allow_pickle=False)
            except (FileNotFoundError, ValueError) as e:
                raise UserError(
                    f"cache shard {url} is missing or damaged ({e}); prepare the cache again"
                ) from None
            if arr.dtype != np.int16 or arr.ndim != 1:
                raise UserError(f"cache shard {url} holds {arr.dtype} {arr.shape}, expected 1-D int16")
            self._shards[name] = arr
        return self._shards[name]

    def audio(self, entry: dict) -> np.ndarray:
        """A file's int16 samples (a view into its shard)."""
        shard = self._shard(entry["shard"])
        a, n = int(entry["offset"]), int(entry["samples"])
        if a + n > len(shard):
            raise UserError(
                f"{self.url}: entry {entry['id']} runs past the end of {entry['shard']}; re-prepare"
            )
        return shard[a : a + n]

    def seconds(self, split: str) -> float:
        return sum(f["samples"] for f in self.files(split)) / self.sample_rate


class SegmentSampler:
    """Random fixed-length segments of one split: a file chosen with probability proportional to its length,
    a uniformly random start inside it (short files are zero-padded at the end). Segments quieter than
    `min_rms_dbfs` are redrawn up to `tries` times so steps are not spent on silence.

    Its RNG state is part of the trainer's checkpoint (`state_dict`), so a resumed run draws the same batches.
    """

    def __init__(
        self,
        cache: AudioCache,
        *,
        segment_samples: int,
        seed: int,
        split: str = "train",
        min_rms_dbfs: float = -50.0,
        tries: int = 8,
    ):
        self.entries = cache.files(split)
        if not self.entries:
            raise UserError(
                f"audio cache {cache.url} has no {split} files; check the prepare inputs and splits"
            )
        self.audio = [cache.audio(e) for e in self.entries]
        lengths = np.array([len(a) for a in self.audio], dtype=np.float64)
        self.p = lengths / lengths.sum()
        self.n = segment_samples
        self.min_rms = 32768.0 * 10 ** (min_rms_dbfs / 20)
        self.tries = tries
        self.rng = np.random.default_rng(seed)

    def segment(self) -> np.ndarray:
        best, best_rms = None, -1.0
        for _ in range(self.tries):
            i = int(self.rng.choice(len(self.audio), p=self.p))
            a = self.audio[i]
            start = int(self.rng.integers(0, max(1, len(a) - self.n + 1)))
            seg = a[start : start + self.n]
            rms = float(np.sqrt(np.mean(seg.astype(np.float64) ** 2)))
            if rms > best_rms:
                best, best_rms = seg, rms
            if rms >= self.min_rms:
                break
        out = np.zeros(self.n, dtype=np.float32)
        out[: len(best)] = best.astype(np.float32) / 32768.0
        return out

    def batch(self, n: int) -> np.ndarray:
        """`(n, segment_samples)` float32."""
        return np.stack([self.segment() for _ in range(n)])

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
