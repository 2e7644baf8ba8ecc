"""Token shards: the Parquet format `videopoet tokenize` writes and the LM / SR trainers read.

    info = write_shard("out/tokens/shards/part-00000.parquet", rows, meta)   # one atomic file
    write_manifest("out/tokens", [info, ...], meta)                          # manifest.json
    reader = ShardReader("out/tokens", rank=r, world_size=w, seed=0)         # row groups split across ranks
    reader.check_compatible({"vocab": vocab, "video_tokenizer_sha256": sha})  # UserError on a mismatch
    for row in reader: row["video_tokens"]   # (T', H', W') int32; row["audio_tokens"] (levels, frames) ...
    state = reader.state_dict(); reader.load_state_dict(state)                # resume exactly there
    issues = validate_dataset("out/tokens")                                   # corruption, named by row

A dataset is a folder (local path or fsspec URL) holding `manifest.json` and `shards/part-NNNNN.parquet`.
One row is one sample window (docs/SHARDS.md lists the columns). Token columns are flattened `list<int32>`
beside their shape, so pyarrow, pandas and DuckDB read the files as they are; `ShardReader` reshapes them.
Every shard carries the dataset metadata (schema version, tokenizer ids + checkpoint sha256 + vocabulary
sizes, text-encoder id, window geometry) as Parquet key-value metadata under `videopoet.meta`, so a shard
copied on its own still says what made it. Row groups (256 rows by default) are the unit of reading.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from videopoet.core.errors import UserError
from videopoet.core.io import atomic_write, atomic_write_text, exists, join, read_text

SCHEMA_VERSION = 1
FORMAT = "videopoet.token_shards"
META_KEY = b"videopoet.meta"
VERSION_KEY = b"videopoet.shard_schema"
MANIFEST = "manifest.json"
SHARD_DIR = "shards"
DEFAULT_ROW_GROUP_SIZE = 256

_i32_list = pa.list_(pa.int32())

SHARD_FIELDS: list[pa.Field] = [
    pa.field("sample_id", pa.string(), nullable=False),  # "<clip_id>-w<window>": unique, deterministic
    pa.field("clip_id", pa.string(), nullable=False),
    pa.field("window_index", pa.int32(), nullable=False),
    pa.field("input_id", pa.string()),
    pa.field("uri", pa.string(), nullable=False),  # the source media file
    pa.field("modality", pa.string(), nullable=False),  # video | image | audio
    pa.field("caption", pa.string()),
    pa.field("start_s", pa.float64()),  # window span in the source's seconds (null for images)
    pa.field("end_s", pa.float64()),
    pa.field("fps", pa.float32()),  # frame rate of the tokenized frames (null for images and audio)
    pa.field("num_frames", pa.int32()),  # pixel frames tokenized (17 / 41 video, 1 image, 0 audio)
    pa.field("width", pa.int32()),  # tokenized pixel size (null for audio)
    pa.field("height", pa.int32()),
    pa.field("source_width", pa.int32()),
    pa.field("source_height", pa.int32()),
    pa.field("video_tokens", _i32_list),  # MAGVIT-v2 indices in [0, 2^K), C order of video_shape
    pa.field("video_shape", _i32_list),  # (T', H', W')
    pa.field("audio_tokens", _i32_list),  # SoundStream codes, level-major, each in [0, codebook_size)
    pa.field("audio_shape", _i32_list),  # (levels, frames)
    pa.field("text_embedding", pa.list_(pa.float16())),  # (text_length, text_dim), real tokens only
    pa.field("text_length", pa.int32()),
    pa.field("text_dim", pa.int32()),
    pa.field("sr_video_tokens", _i32_list),  # the same window at sr scale (super-resolution target)
    pa.field("sr_video_shape", _i32_list),
    pa.field("sr_width", pa.int32()),
    pa.field("sr_height", pa.int32()),
    pa.field("num_tokens", pa.int32()),  # video + audio tokens (what an LM sequence spends on this row)
]
SHARD_SCHEMA = pa.schema(SHARD_FIELDS)

TOKEN_FIELDS: dict[str, tuple[str, str | None]] = {
    # flattened column -> (its shape column, or None = derived) ; numpy dtype comes from the Arrow type
    "video_tokens": ("video_shape", None),
    "audio_tokens": ("audio_shape", None),
    "sr_video_tokens": ("sr_video_shape", None),
    "text_embedding": ("text_length", "text_dim"),
}
_STRING_COLUMNS = ["sample_id", "clip_id", "input_id", "uri", "modality", "caption"]
_SCALAR_STATS = [f.name for f in SHARD_FIELDS if not pa.types.is_list(f.type)]


def sample_id(clip_id: str, window: int) -> str:
    """Deterministic id of a clip's window: the same clip and window always get the same id."""
    return f"{clip_id}-w{window:04d}"


# ------------------------------------------------------------------------------------------------ writing


def _list_column(values: list[np.ndarray | None], typ: pa.DataType) -> pa.Array:
    """Flattened numpy arrays (None = null) -> a list array without a Python loop over elements."""
    value_type = typ.value_type
    np_type = value_type.to_pandas_dtype()
    lens = np.array([0 if v is None else np.asarray(v).size for v in values], dtype=np.int64)
    offsets = np.zeros(len(values) + 1, dtype=np.int32)
    np.cumsum(lens, out=offsets[1:])
    parts = [np.asarray(v, dtype=np_type).reshape(-1) for v in values if v is not None]
    flat = np.concatenate(parts) if parts else np.zeros(0, dtype=np_type)
    mask = pa.array([v is None for v in values], type=pa.bool_())
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, type=value_type), mask=mask)


def _with_shapes(row: dict) -> dict:
    out = dict(row)
    for name, (shape_col, second) in TOKEN_FIELDS.items():
        arr = out.get(name)
        if arr is None:
            continue
        arr = np.asarray(arr)
        if second is None:
            if out.get(shape_col) is None:
                out[shape_col] = list(arr.shape)
        elif out.get(shape_col) is None or out.get(second) is None:
            assert arr.ndim == 2, f"{name} must be (length, dim), got shape {arr.shape}"
            out[shape_col], out[second] = int(arr.shape[0]), int(arr.shape[1])
    return out


def rows_to_table(rows: list[dict], meta: dict | None = None) -> pa.Table:
    """Sample rows -> a SHARD_SCHEMA table. Token fields are numpy arrays in their natural shapes
    (`video_tokens` (T', H', W'), `audio_tokens` (levels, frames), `text_embedding` (length, dim)); shape
    columns left out are taken from them."""
    rows = [_with_shapes(r) for r in rows]
    cols = {}
    for f in SHARD_FIELDS:
        vals = [r.get(f.name) for r in rows]
        if pa.types.is_list(f.type):
            cols[f.name] = _list_column([None if v is None else np.asarray(v) for v in vals], f.type)
        else:
            cols[f.name] = pa.array(vals, type=f.type)
    schema = SHARD_SCHEMA
    if meta is not None:
        schema = schema.with_metadata(
            {VERSION_KEY: str(SCHEMA_VERSION).encode(), META_KEY: json.dumps(meta, sort_keys=True).encode()}
        )
    return pa.Table.from_pydict(cols, schema=schema)


def token_counts(table: pa.Table) -> dict[str, int]:
    """Tokens of each kind in a shard table (text counts embedding vectors)."""

    def n(col: str) -> int:
        return int(pc.sum(pc.list_value_length(table[col])).as_py() or 0)

    return {
        "video": n("video_tokens"),
        "audio": n("audio_tokens"),
        "sr": n("sr_video_tokens"),
        "text": int(pc.sum(table["text_length"]).as_py() or 0),
    }


def write_shard(url: str, rows: list[dict], meta: dict, row_group_size: int = DEFAULT_ROW_GROUP_SIZE) -> dict:
    """Write one shard atomically (zstd, `row_group_size` rows per group) and describe it for the manifest.

    Rows are written in the order given; the caller sorts them (the tokenize job sorts by sample_id).
    Returns {rows, row_groups, tokens, rows_by_modality, bytes, sha256}.
    """
    table = rows_to_table(rows, meta)
    buf = io.BytesIO()
    pq.write_table(
        table,
        buf,
        compression="zstd",
        row_group_size=row_group_size,
        use_dictionary=_STRING_COLUMNS,
        write_statistics=_SCALAR_STATS,
    )
    data = buf.getvalue()
    atomic_write(url, lambda f: f.write(data))
    footer = pq.ParquetFile(io.BytesIO(data)).metadata
    groups = [footer.row_group(i).num_rows for i in range(footer.num_row_groups)]
    modalities: dict[str, int] = {}
    for r in rows:
        modalities[r["modality"]] = modalities.get(r["modality"], 0) + 1
    return {
        "rows": len(rows),
        "row_groups": groups,
        "tokens": token_counts(table),
        "rows_by_modality": dict(sorted(modalities.items())),
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def write_manifest(dataset_url: str, shards: list[dict], meta: dict, extra: dict | None = None) -> dict:
    """Write `manifest.json`: the dataset metadata and every shard ({name, rows, row_groups, tokens, sha256})."""
    shards = sorted((s for s in shards if s.get("rows")), key=lambda s: s["name"])
    totals: dict[str, Any] = {
        "shards": len(shards),
        "rows": 0,
        "bytes": 0,
        "tokens": {},
        "rows_by_modality": {},
    }
    for s in shards:
        totals["rows"] += s["rows"]
        totals["bytes"] += s["bytes"]
        for k, v in s["tokens"].items():
            totals["tokens"][k] = totals["tokens"].get(k, 0) + v
        for k, v in s["rows_by_modality"].items():
            totals["rows_by_modality"][k] = totals["rows_by_modality"].get(k, 0) + v
    manifest = {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "meta": meta,
        "totals": totals,
        "shards": shards,
        **(extra or {}),
    }
    atomic_write_text(join(dataset_url, MANIFEST), json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def load_manifest(dataset_url: str) -> dict:
    url = join(dataset_url, MANIFEST)
    if not exists(url):
        hint = (
            "the tokenize job has not finished there yet (re-run it to finish)"
            if exists(join(dataset_url, "_state"))
            else "point at the output folder of `videopoet tokenize`"
        )
        raise UserError(f"no {MANIFEST} in {dataset_url}: {hint}")
    try:
        manifest = json.loads(read_text(url))
    except json.JSONDecodeError as e:
        raise UserError(f"{url} is not valid JSON ({e}); re-run `videopoet tokenize` to rewrite it") from None
    if manifest.get("format") != FORMAT:
        raise UserError(f"{url} is not a token-shard manifest (format {manifest.get('format')!r})")
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise UserError(
            f"{url} has shard schema version {manifest.get('schema_version')}; this code reads version "
            f"{SCHEMA_VERSION}. Re-tokenize, or use the code version that wrote it."
        )
    return manifest


def shard_meta(pf: pq.ParquetFile) -> dict | None:
    kv = pf.schema_arrow.metadata or {}
    return json.loads(kv[META_KEY]) if META_KEY in kv else None


def _open_parquet(url: str) -> pq.ParquetFile:
    fs, path = url_to_fs(url)
    if "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
        return pq.ParquetFile(path)
    return pq.ParquetFile(fs.open(path, "rb"))


def file_sha256(url: str) -> str:
    fs, path = url_to_fs(url)
    h = hashlib.sha256()
    with fs.open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------ reading


def _rows_from_table(table: pa.Table, order: np.ndarray | None = None, *, reshape: bool = True) -> list[dict]:
    """A row-group table -> row dicts; token columns become numpy arrays reshaped to their shapes
    (flat with `reshape=False`), shape columns tuples."""
    names = table.column_names
    plain = {}
    flat = {}
    for name in names:
        col = table.column(name).combine_chunks()
        if pa.types.is_list(col.type):
            offsets = col.offsets.to_numpy()
            values = col.values.to_numpy(zero_copy_only=False)
            valid = np.asarray(col.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
            flat[name] = (offsets, values, valid)
        else:
            plain[name] = col.to_pylist()
    n = table.num_rows
    out = []
    for i in range(n) if order is None else order:
        row = {k: v[i] for k, v in plain.items()}
        for name, (offsets, values, valid) in flat.items():
            row[name] = values[offsets[i] : offsets[i + 1]] if valid[i] else None
        for name, (shape_col, second) in TOKEN_FIELDS.items():
            arr = row.get(name)
            if arr is None or not reshape:
                continue
            if second is None:
                shape = row.get(shape_col)
                if shape is not None:
                    row[name] = arr.reshape(tuple(int(s) for s in shape))
            elif row.get(shape_col) is not None and row.get(second) is not None:
                row[name] = arr.reshape(int(row[shape_col]), int(row[second]))
        for shape_col in ("video_shape", "audio_shape", "sr_video_shape"):
            if row.get(shape_col) is not None:
                row[shape_col] = tuple(int(s) for s in row[shape_col])
        out.append(row)
    return out


@dataclass(frozen=True)
class _Unit:
    shard: int
    group: int
    rows: int


class ShardReader:
    """Iterate a token dataset row by row, Parquet row group by row group, split across ranks, resumable.

    Each epoch the dataset's row groups are put in a seeded order (manifest order when `shuffle=False`) and
    rank r takes every `world_size`-th one starting at r: the ranks' row groups are disjoint and together
    cover the dataset. Rows inside a group are shuffled with a seed derived from (seed, epoch, group), so
    the order depends only on (seed, epoch, rank, world_size). `state_dict()` holds (epoch, position,
    row); a reader given it by `load_state_dict` continues with exactly the row that would have come
    next. `loop=True` runs epoch after epoch; `loop=False` ends the iteration at the end of an epoch (the
    next `iter()` starts the following epoch). Ranks can get different numbers of rows per epoch when the
    row groups do not divide evenly: distributed trainers should loop and count steps.

    Rows are dicts of the shard columns (or of `columns`): token columns are numpy arrays reshaped to
    their shapes (`video_tokens` (T', H', W') int32, `audio_tokens` (levels, frames) int32,
    `sr_video_tokens`, `text_embedding` (text_length, text_dim) float16); absent ones are None.
    """

    def __init__(
        self,
        dataset_url: str,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        columns: list[str] | None = None,
        loop: bool = True,
    ):
        if world_size < 1 or not 0 <= rank < world_size:
            raise UserError(
                f"ShardReader: rank {rank} is outside 0..{world_size - 1} (world_size {world_size})"
            )
        self.dataset_url = dataset_url.rstrip("/")
        self.manifest = load_manifest(self.dataset_url)
        self.meta: dict = self.manifest["meta"]
        """Dataset metadata: tokenizers (id, checkpoint, sha256, vocabulary sizes), text encoder, vocab, window."""
        self.rank, self.world_size, self.seed, self.shuffle, self.loop = rank, world_size, seed, shuffle, loop
        self.shards = [s["name"] for s in self.manifest["shards"]]
        known = {f.name for f in SHARD_FIELDS}
        if columns is not None:
            unknown = sorted(set(columns) - known)
            if unknown:
                raise UserError(
                    f"ShardReader: unknown column(s) {unknown}; shard columns are {sorted(known)}"
                )
        self.columns = list(columns) if columns is not None else None
        self._read_columns = self._with_shape_columns(self.columns)
        self.units = [
            _Unit(si, gi, n)
            for si, s in enumerate(self.manifest["shards"])
            for gi, n in enumerate(s["row_groups"])
            if n > 0
        ]
        if len(self.units) < world_size:
            raise UserError(
                f"{self.dataset_url} has {len(self.units)} row groups, fewer than world_size {world_size}: some "
                "ranks would get no data. Re-tokenize with a smaller row_group_size, or use fewer ranks."
            )
        self.num_rows = sum(u.rows for u in self.units)
        self.fingerprint = hashlib.sha256(
            "".join(s["sha256"] for s in self.manifest["shards"]).encode()
        ).hexdigest()[:16]
        self._epoch, self._position, self._row = 0, 0, 0
        self._files: dict[int, pq.ParquetFile] = {}
        self._shard_meta: dict[int, dict | None] = {}

    @staticmethod
    def _with_shape_columns(columns: list[str] | None) -> list[str] | None:
        if columns is None:
            return None
        out = list(columns)
        for name, (shape_col, second) in TOKEN_FIELDS.items():
            if name in columns:
                out += [c for c in (shape_col, second) if c and c not in out]
        return out

    # -- order ---------------------------------------------------------------------------------------------
    def epoch_units(self, epoch: int) -> list[_Unit]:
        """This rank's row groups in epoch `epoch`, in reading order."""
        order = np.arange(len(self.units))
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self.units))
        return [self.units[i] for i in order[self.rank :: self.world_size]]

    def _row_order(self, epoch: int, unit: _Unit) -> np.ndarray:
        if not self.shuffle:
            return np.arange(unit.rows)
        return np.random.default_rng([self.seed, epoch, unit.shard, unit.group]).permutation(unit.rows)

    def _file(self, shard: int) -> pq.ParquetFile:
        pf = self._files.get(shard)
        if pf is None:
            if len(self._files) >= 8:
                self._files.pop(next(iter(self._files)))
            pf = self._files[shard] = _open_parquet(join(self.dataset_url, self.shards[shard]))
        return pf

    def read_group(self, unit: _Unit) -> pa.Table:
        pf = self._file(unit.shard)
        return pf.read_row_group(unit.group, columns=self._read_columns)

    # -- iteration -----------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict]:
        while True:
            units = self.epoch_units(self._epoch)
            while self._position < len(units):
                unit = units[self._position]
                order = self._row_order(self._epoch, unit)[self._row :]
                rows = _rows_from_table(self.read_group(unit), order)
                for row in rows:
                    if self.columns is not None:
                        row = {k: row[k] for k in self.columns}
                    self._row += 1
                    yield row
                self._position, self._row = self._position + 1, 0
            self._epoch, self._position, self._row = self._epoch + 1, 0, 0
            if not self.loop:
                return

    def __len__(self) -> int:
        """Rows this rank reads in the current epoch."""
        return sum(u.rows for u in self.epoch_units(self._epoch))

    @property
    def epoch(self) -> int:
        return self._epoch

    def state_dict(self) -> dict:
        """A small JSON-able state: where this rank is (epoch, row group position, rows read in it)."""
        return {
            "epoch": self._epoch,
            "position": self._position,
            "row": self._row,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "rank": self.rank,
            "world_size": self.world_size,
            "dataset": self.fingerprint,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue where the reader that made `state` stopped (same dataset, seed, shuffle, rank split)."""
        for key in ("seed", "shuffle", "rank", "world_size", "dataset"):
            mine = self.state_dict()[key]
            if key in state and state[key] != mine:
                raise UserError(
                    f"reader state was saved with {key}={state[key]!r} but this reader has {key}={mine!r}; "
                    "resume with the same dataset, seed, shuffle, rank and world size (or start a fresh reader)"
                )
        self._epoch, self._position, self._row = (
            int(state["epoch"]),
            int(state["position"]),
            int(state["row"]),
        )

    # -- compatibility -------------------------------------------------------------------------------------
    def shard_meta(self, shard: int) -> dict:
        if shard not in self._shard_meta:
            self._shard_meta[shard] = shard_meta(self._file(shard))
        meta = self._shard_meta[shard]
        if meta is None:
            raise UserError(
                f"{self.shards[shard]} has no videopoet.meta key-value metadata; it is not a token shard"
            )
        return meta

    def check_compatible(self, expected: dict) -> None:
        """Raise UserError naming the shard and the mismatch unless every shard fits what a model expects.

        `expected` keys (all optional, None = no check):
        - `video_tokenizer`, `audio_tokenizer`: the tokenizer's id (`magvit2:cfg-...:sha256-...`), the sha256 of
          its checkpoint's model.safetensors, or a prefix of that sha256 of at least 12 hex digits
          (aliases `video_tokenizer_sha256`, `audio_tokenizer_sha256`);
        - `text_encoder` (alias `text_encoder_id`): the text encoder id; `text_dim`: the embedding width;
        - `vocab`: a `model.vocab.Vocab` or a dict with any of `visual_bits`, `audio_levels`,
          `audio_codebook_size`, `size`: the data's ids must fit it (no more visual codes or codes per audio
          level, the same number of audio levels, no larger total);
        - `vocab_size`: the model's number of embedding rows (the data's vocabulary must not be larger).
        Every shard must also agree with the dataset's manifest on tokenizers and text encoder.
        """
        expected = {_ALIASES.get(k, k): v for k, v in expected.items() if v is not None}
        known = {"video_tokenizer", "audio_tokenizer", "text_encoder", "text_dim", "vocab", "vocab_size"}
        unknown = sorted(set(expected) - known)
        if unknown:
            raise UserError(
                f"check_compatible: unknown key(s) {unknown}; known: {sorted(known | set(_ALIASES))}"
            )
        for si in range(len(self.shards)):
            meta = self.shard_meta(si)
            problems = compatibility_problems(meta, expected)
            for key in ("video_tokenizer", "audio_tokenizer", "text_encoder", "vocab"):
                if meta.get(key) != self.meta.get(key):
                    problems.append(f"its {key} differs from the rest of the dataset ({MANIFEST})")
            if problems:
                raise UserError(
                    f"token shard {join(self.dataset_url, self.shards[si])} does not fit: "
                    + "; ".join(problems)
                    + ". Train on tokens made by the model's tokenizers, build the model from the data's "
                    "vocabulary (reader.meta['vocab']), or re-tokenize."
                )


_ALIASES = {
    "video_tokenizer_sha256": "video_tokenizer",
    "audio_tokenizer_sha256": "audio_tokenizer",
    "text_encoder_id": "text_encoder",
}


def _tokenizer_matches(tok: dict | None, want: str) -> bool:
    if not tok:
        return False
    sha = tok.get("sha256") or ""
    return want == tok.get("id") or (len(want) >= 12 and sha.startswith(want))


def compatibility_problems(meta: dict, expected: dict) -> list[str]:
    """Human-readable mismatches between one shard's metadata and `expected` (see `check_compatible`)."""
    expected = {_ALIASES.get(k, k): v for k, v in expected.items() if v is not None}
    problems = []
    for kind in ("video", "audio"):
        want = expected.get(f"{kind}_tokenizer")
        if want is None:
            continue
        tok = meta.get(f"{kind}_tokenizer")
        if not _tokenizer_matches(tok, str(want)):
            have = f"{tok['id']} (checkpoint {tok.get('checkpoint')})" if tok else "none"
            problems.append(f"{kind} tokenizer {have} is not the expected {want}")
    text = meta.get("text_encoder") or {}
    if "text_encoder" in expected and text.get("id") != expected["text_encoder"]:
        problems.append(f"text encoder {text.get('id')!r} is not the expected {expected['text_encoder']!r}")
    if "text_dim" in expected and text and text.get("dim") != expected["text_dim"]:
        problems.append(
            f"caption embeddings are {text.get('dim')}-d, the model takes {expected['text_dim']}-d"
        )
    vocab = dict(meta.get("vocab") or {})
    has_audio = bool(meta.get("audio_tokenizer"))
    if not has_audio and "visual_bits" in vocab:  # no audio ids in the data: they cannot overflow
        vocab.update(
            audio_codebook_size=0, size=int(vocab.get("visual_offset", 256)) + 2 ** int(vocab["visual_bits"])
        )
    want = expected.get("vocab")
    if want is not None:
        want = want.metadata() if hasattr(want, "metadata") else dict(want)
        for key in ("visual_bits", "audio_codebook_size", "size"):
            if key in want and vocab.get(key, 0) > want[key]:
                problems.append(
                    f"vocabulary larger than the model's: {key} = {vocab.get(key)} in the data, {want[key]} in the model"
                )
        if "audio_levels" in want and has_audio and vocab.get("audio_levels") != want["audio_levels"]:
            problems.append(
                f"{vocab.get('audio_levels')} audio RVQ levels in the data, {want['audio_levels']} in the model's vocabulary"
            )
    if "vocab_size" in expected and vocab.get("size", 0) > expected["vocab_size"]:
        problems.append(
            f"vocabulary larger than the model's: the data needs {vocab.get('size')} ids, the model has "
            f"{expected['vocab_size']}"
        )
    return problems


# --------------------------------------------------------------------------------------------- validation


@dataclass(frozen=True)
class Issue:
    """One problem found by `validate_dataset`: where (shard, row group, row, sample) and what."""

    shard: str
    what: str
    row_group: int | None = None
    row: int | None = None
    sample_id: str | None = None

    def __str__(self) -> str:
        where = self.shard
        if self.row_group is not None:
            where += f", row group {self.row_group}"
        if self.row is not None:
            where += f", row {self.row}"
        if self.sample_id:
            where += f" (sample {self.sample_id})"
        return f"{where}: {self.what}"


def _check_row(row: dict, meta: dict) -> list[str]:
    """Shape, range and consistency problems of one row (as `_rows_from_table` gives it, unreshaped)."""
    out = []
    vocab = meta.get("vocab") or {}
    visual = 2 ** int(vocab.get("visual_bits", 30))
    levels = vocab.get("audio_levels")
    codebook = vocab.get("audio_codebook_size")
    text = meta.get("text_encoder") or {}
    window = meta.get("window") or {}
    modality = row.get("modality")
    if modality not in ("video", "image", "audio"):
        out.append(f"modality {modality!r} is not video, image or audio")
    for col, shape_col, hi, what in (
        ("video_tokens", "video_shape", visual, "visual"),
        ("sr_video_tokens", "sr_video_shape", visual, "visual"),
        ("audio_tokens", "audio_shape", codebook, "audio"),
    ):
        arr, shape = row.get(col), row.get(shape_col)
        if arr is None and shape is None:
            continue
        if arr is None or shape is None:
            out.append(f"{col} and {shape_col} must both be present or both null")
            continue
        shape = tuple(int(s) for s in shape)
        if int(np.prod(shape)) != arr.size:
            out.append(f"{col} holds {arr.size} tokens but {shape_col} {shape} needs {int(np.prod(shape))}")
            continue
        if arr.size and hi is not None:
            bad = np.flatnonzero((arr < 0) | (arr >= hi))
            if bad.size:
                i = int(bad[0])
                out.append(
                    f"{col}[{i}] = {int(arr[i])} is outside the {what} vocabulary [0, {hi}) "
                    f"({bad.size} such tokens)"
                )
        if col == "audio_tokens" and levels is not None and shape[0] != levels:
            out.append(f"audio_shape {shape} has {shape[0]} levels, the audio tokenizer has {levels}")
        if col in ("video_tokens", "sr_video_tokens") and len(shape) != 3:
            out.append(f"{shape_col} {shape} is not (T', H', W')")
    if modality in ("video", "image") and row.get("video_tokens") is None:
        out.append(f"a {modality} row without video_tokens")
    if modality == "audio" and row.get("audio_tokens") is None:
        out.append("an audio row without audio_tokens")
    if modality == "image" and row.get("video_shape") is not None and int(row["video_shape"][0]) != 1:
        out.append(f"an image row with {int(row['video_shape'][0])} latent frames")
    frames = window.get("latent_frames")
    vshape = row.get("video_shape")
    if modality == "video" and frames and vshape is not None and int(vshape[0]) != frames:
        out.append(f"a video row with {int(vshape[0])} latent frames, the window has {frames}")
    afr = window.get("audio_frames")
    if afr and row.get("audio_shape") is not None and int(row["audio_shape"][1]) != afr:
        out.append(
            f"audio_shape {tuple(row['audio_shape'])} has {int(row['audio_shape'][1])} frames, the window has {afr}"
        )
    emb = row.get("text_embedding")
    if emb is not None:
        n, d = row.get("text_length"), row.get("text_dim")
        if n is None or d is None or emb.size != int(n) * int(d):
            out.append(f"text_embedding holds {emb.size} values, text_length x text_dim = {n} x {d}")
        elif text.get("dim") is not None and int(d) != int(text["dim"]):
            out.append(f"text_dim {d} != the text encoder's dim {text['dim']}")
        elif not np.isfinite(emb.astype(np.float32)).all():
            out.append("text_embedding holds NaN or infinite values")
    expected_tokens = sum(0 if row.get(c) is None else row[c].size for c in ("video_tokens", "audio_tokens"))
    if row.get("num_tokens") is not None and int(row["num_tokens"]) != expected_tokens:
        out.append(f"num_tokens {row['num_tokens']} != video + audio tokens {expected_tokens}")
    return out


def validate_dataset(dataset_url: str, *, max_issues: int = 100, check_rows: bool = True) -> list[Issue]:
    """Check a dataset against its manifest and its own metadata; [] when it is sound.

    Manifest: every listed shard exists, its sha256 and row / row-group counts match, no unlisted shards.
    Each shard: readable Parquet, the exact shard schema, schema version, key-value metadata equal to
    the manifest's. Each row (`check_rows`): token counts match shapes, tokens inside the vocabulary
    sizes of the metadata, audio levels and window lengths, text embeddings of the text encoder's
    dimension and finite, sample ids unique across the dataset.
    """
    issues: list[Issue] = []
    manifest = load_manifest(dataset_url)
    meta = manifest["meta"]
    fs, root = url_to_fs(dataset_url)
    listed = {s["name"] for s in manifest["shards"]}
    on_disk = {p[len(root.rstrip("/")) + 1 :] for p in fs.glob(f"{root.rstrip('/')}/{SHARD_DIR}/*.parquet")}
    for name in sorted(on_disk - listed):
        issues.append(Issue(name, f"shard file is not listed in {MANIFEST}"))
    seen_ids: dict[str, str] = {}
    for s in manifest["shards"]:
        if len(issues) >= max_issues:
            break
        name, url = s["name"], join(dataset_url, s["name"])
        if not exists(url):
            issues.append(Issue(name, f"listed in {MANIFEST} but missing"))
            continue
        digest = file_sha256(url)
        if digest != s["sha256"]:
            issues.append(
                Issue(
                    name,
                    f"sha256 {digest[:16]}... != {MANIFEST}'s {s['sha256'][:16]}... (file changed or corrupt)",
                )
            )
        try:
            pf = _open_parquet(url)
        except Exception as e:  # noqa: BLE001 - any reader failure is the finding
            issues.append(Issue(name, f"not readable as Parquet: {type(e).__name__}: {e}"))
            continue
        schema = pf.schema_arrow.remove_metadata()
        if not schema.equals(SHARD_SCHEMA):
            diff = [
                f"{f.name}: {f.type}"
                for f in schema
                if f.name not in SHARD_SCHEMA.names or SHARD_SCHEMA.field(f.name).type != f.type
            ]
            missing = [n for n in SHARD_SCHEMA.names if n not in schema.names]
            issues.append(
                Issue(name, f"schema differs from the shard schema: unexpected {diff}, missing {missing}")
            )
            continue
        kv = pf.schema_arrow.metadata or {}
        if kv.get(VERSION_KEY) != str(SCHEMA_VERSION).encode():
            issues.append(Issue(name, f"shard schema version {kv.get(VERSION_KEY)!r} != {SCHEMA_VERSION}"))
        smeta = shard_meta(pf)
        if smeta != meta:
            keys = sorted(k for k in set(meta) | set(smeta or {}) if (smeta or {}).get(k) != meta.get(k))
            issues.append(Issue(name, f"key-value metadata differs from {MANIFEST}'s in {keys}"))
        groups = [pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)]
        if groups != list(s["row_groups"]):
            issues.append(Issue(name, f"row groups {groups} != {MANIFEST}'s {s['row_groups']}"))
        if not check_rows:
            continue
        for g in range(pf.num_row_groups):
            try:
                table = pf.read_row_group(g)
            except Exception as e:  # noqa: BLE001
                issues.append(Issue(name, f"cannot read: {type(e).__name__}: {e}", row_group=g))
                continue
            for r, row in enumerate(_rows_from_table(table, reshape=False)):
                for what in _check_row(row, meta):
                    issues.append(Issue(name, what, row_group=g, row=r, sample_id=row.get("sample_id")))
                sid = row.get("sample_id")
                if sid in seen_ids:
                    issues.append(
                        Issue(
                            name,
                            f"sample_id also appears in {seen_ids[sid]}",
                            row_group=g,
                            row=r,
                            sample_id=sid,
                        )
                    )
                seen_ids[sid] = name
                if len(issues) >= max_issues:
                    return issues
    return issues
