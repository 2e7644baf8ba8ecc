"""Parquet schemas of the curation outputs: `clips/` (kept clips) and `rejects/` (the ledger).

Columns are fixed so downstream readers (pyarrow, pandas, DuckDB, the tokenize job) can rely on them;
rows are cast to these schemas at commit time, whatever types pandas gave them in flight.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

CURATION_SCHEMA_VERSION = 1

_f32_list = pa.list_(pa.float32())

CLIP_FIELDS: list[pa.Field] = [
    pa.field("clip_id", pa.string(), nullable=False),
    pa.field("input_id", pa.string(), nullable=False),
    pa.field("uri", pa.string(), nullable=False),
    pa.field("modality", pa.string(), nullable=False),
    pa.field("content_sha256", pa.string()),
    pa.field("bytes", pa.int64()),
    pa.field("container", pa.string()),
    pa.field("clip_index", pa.int32()),
    pa.field("clip_count", pa.int32()),
    pa.field("start_frame", pa.int64()),
    pa.field("end_frame", pa.int64()),
    pa.field("start_s", pa.float64()),
    pa.field("end_s", pa.float64()),
    pa.field("duration_s", pa.float64()),
    pa.field("fps", pa.float64()),
    pa.field("num_frames", pa.int64()),
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("video_codec", pa.string()),
    pa.field("has_audio", pa.bool_()),
    pa.field("audio_codec", pa.string()),
    pa.field("sample_rate", pa.int32()),
    pa.field("audio_channels", pa.int32()),
    pa.field("motion_score", pa.float32()),
    pa.field("brightness", pa.float32()),
    pa.field("clip_text_score", pa.float32()),
    pa.field("clip_model", pa.string()),
    pa.field("clip_embedding", _f32_list),
    pa.field("thumb_embedding", _f32_list),
    pa.field("audio_uri", pa.string()),
    pa.field("audio_duration_s", pa.float64()),
    pa.field("caption", pa.string()),
    pa.field("meta_json", pa.string()),
    pa.field("partition", pa.int32()),
]
CLIP_SCHEMA = pa.schema(CLIP_FIELDS, metadata={"videopoet.curation_schema": str(CURATION_SCHEMA_VERSION)})

REJECT_SCHEMA = pa.schema(
    [
        pa.field("input_id", pa.string(), nullable=False),
        pa.field("uri", pa.string(), nullable=False),
        pa.field("clip_id", pa.string()),
        pa.field("start_s", pa.float64()),
        pa.field("end_s", pa.float64()),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string()),
        pa.field("partition", pa.int32()),
    ],
    metadata={"videopoet.curation_schema": str(CURATION_SCHEMA_VERSION)},
)


def _value(v: Any, typ: pa.DataType) -> Any:
    if v is None or (isinstance(v, float) and v != v):
        return None
    if pa.types.is_list(typ):
        return [float(x) for x in v]
    if pa.types.is_integer(typ):
        return int(v)
    if pa.types.is_floating(typ):
        return float(v)
    if pa.types.is_boolean(typ):
        return bool(v)
    if pa.types.is_string(typ) and not isinstance(v, str):
        return json.dumps(v) if isinstance(v, dict | list) else str(v)
    return v


def to_table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """Rows (dicts with any extra keys) -> a table of exactly `schema`, values cast per column."""
    cols = {f.name: [_value(r.get(f.name), f.type) for r in rows] for f in schema}
    return pa.Table.from_pydict(cols, schema=schema)


def reject_record(row: dict) -> dict:
    """A rejected in-flight row -> a ledger record (REJECT_SCHEMA columns)."""
    return {
        "input_id": row["input_id"],
        "uri": row["uri"],
        "clip_id": row.get("clip_id"),
        "start_s": row.get("start_s") if row.get("clip_id") else None,
        "end_s": row.get("end_s") if row.get("clip_id") else None,
        "stage": row.get("reject_stage") or "unknown",
        "reason": row.get("reject_reason") or "unknown",
        "detail": row.get("reject_detail") or "",
        "partition": row.get("partition"),
    }
