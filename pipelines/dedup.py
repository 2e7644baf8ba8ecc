"""Global deduplication of kept clips, run by the driver after all partitions are committed.

Two passes, both deterministic (the result does not depend on the order rows arrive in):

- exact: clips cut from files with the same `content_sha256` (the same bytes listed under two URIs). Per
  (content_sha256, clip_id) the copy with the smallest `uri` is kept; the others become `duplicate_exact`.
- near: clips whose embeddings have cosine >= `threshold`, compared within one modality and one embedding
  kind (`clip_embedding` when the row has one, else `thumb_embedding`; rows with neither are kept).
  Clips are visited in priority order (largest width*height, then longest duration_s, then smallest
  clip_id) and a clip is dropped when it is near ANY clip already kept. This is greedy, not clustering:
  in a chain A~B, B~C with A !~ C (A first) B is dropped as A's duplicate and C is kept, because the only
  kept clip it is compared with is A. Every dropped clip names the kept clip it duplicates and the cosine.

Cost is O(N^2 * D) multiply-adds but memory is O(block_size^2 + N * D): candidates are taken block_size
at a time and compared with the kept set in block_size chunks, never as a full N x N matrix. Roughly a
million 512-d CLIP embeddings per modality is where an approximate index (faiss) would be the better tool.

    kept, rejected = dedup_rows(rows, DedupConfig(threshold=0.95))
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from videopoet.core.config import check
from videopoet.pipelines.base import Row, reject

STAGE = "dedup"


@dataclass(kw_only=True)
class DedupConfig:
    exact: bool = True
    """Drop clips of files whose bytes (content_sha256) equal another file's; the smallest uri is kept."""
    near: bool = True
    """Drop clips whose embedding cosine with an already kept clip of the same modality is >= threshold."""
    threshold: float = 0.95
    """Cosine similarity at or above which two clips are near-duplicates."""
    block_size: int = 4096
    """Rows per block of the blocked similarity search; memory is about 8 * block_size^2 bytes."""

    def __post_init__(self):
        check(-1.0 <= self.threshold <= 1.0, "threshold", self.threshold, "a cosine in [-1, 1]")
        check(self.block_size >= 1, "block_size", self.block_size, ">= 1")


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _num(v: Any) -> float:
    return 0.0 if _missing(v) else float(v)


def _str(v: Any) -> str:
    return "" if _missing(v) else str(v)


def _to_rows(data: Any) -> tuple[list[Row], str]:
    """Rows as dicts plus the kind of container they came in ('list', 'pandas' or 'arrow')."""
    if isinstance(data, list):
        return data, "list"
    try:
        import pandas as pd

        if isinstance(data, pd.DataFrame):
            return data.to_dict("records"), "pandas"
    except ImportError:
        pass
    try:
        import pyarrow as pa

        if isinstance(data, pa.Table):
            return data.to_pylist(), "arrow"
    except ImportError:
        pass
    raise TypeError(
        f"dedup takes a list of row dicts, a pandas DataFrame or a pyarrow Table, not {type(data)}"
    )


def _from_rows(rows: list[Row], kind: str) -> Any:
    if kind == "pandas":
        import pandas as pd

        return pd.DataFrame.from_records(rows) if rows else pd.DataFrame()
    if kind == "arrow":
        import pyarrow as pa

        return pa.Table.from_pylist(rows)
    return rows


def priority_order(rows: list[Row]) -> list[int]:
    """Indices of `rows`, best first: largest width*height, longest duration_s, smallest clip_id (then uri)."""
    return sorted(
        range(len(rows)),
        key=lambda i: (
            -_num(rows[i].get("width")) * _num(rows[i].get("height")),
            -_num(rows[i].get("duration_s")),
            _str(rows[i].get("clip_id")),
            _str(rows[i].get("uri")),
        ),
    )


def exact_duplicates(rows: list[Row]) -> dict[int, tuple[int, str]]:
    """{dropped index: (kept index, detail)} for clips of byte-identical files; the smallest uri wins."""
    groups: dict[tuple[str, str], list[int]] = {}
    for i, r in enumerate(rows):
        sha = r.get("content_sha256")
        if _missing(sha) or not sha:
            continue
        groups.setdefault((sha, _str(r.get("clip_id"))), []).append(i)
    dropped = {}
    for (sha, _), idx in groups.items():
        if len(idx) < 2:
            continue
        idx.sort(key=lambda i: (_str(rows[i].get("uri")), _str(rows[i].get("input_id"))))
        keep = idx[0]
        for i in idx[1:]:
            dropped[i] = (
                keep,
                f"same file content (content_sha256 {sha[:16]}) as {_str(rows[keep].get('uri'))}; "
                f"kept clip {_str(rows[keep].get('clip_id'))}",
            )
    return dropped


def _unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def greedy_near_duplicates(
    emb: np.ndarray, threshold: float, block_size: int = 4096
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy near-duplicate removal over `emb` (N, D), rows already in priority order.

    Returns (keep (N,) bool, match (N,) int: index of the kept row a dropped row duplicates or -1,
    cosine (N,) float32: that similarity). Row i is dropped iff cosine(i, j) >= threshold for some kept j < i.
    """
    n = len(emb)
    emb = _unit(np.ascontiguousarray(emb, dtype=np.float32))
    keep = np.zeros(n, dtype=bool)
    match = np.full(n, -1, dtype=np.int64)
    best = np.full(n, -np.inf, dtype=np.float32)
    kept_idx: list[np.ndarray] = []  # kept row indices, one array per processed block
    for start in range(0, n, block_size):
        stop = min(start + block_size, n)
        blk = emb[start:stop]
        # 1) against everything kept in earlier blocks, in chunks: (B, C) at a time
        prev = np.concatenate(kept_idx) if kept_idx else np.empty(0, dtype=np.int64)
        for c in range(0, len(prev), block_size):
            cols = prev[c : c + block_size]
            sims = blk @ emb[cols].T
            arg = sims.argmax(axis=1)
            top = sims[np.arange(len(blk)), arg]
            better = top > best[start:stop]
            best[start:stop][better] = top[better]
            match[start:stop][better] = cols[arg[better]]
        alive = best[start:stop] < threshold
        # 2) within the block, sequentially in priority order, against rows of this block kept so far
        sims = blk @ blk.T
        kept_here = np.zeros(stop - start, dtype=bool)
        for i in np.flatnonzero(alive):
            row = sims[i, :i][kept_here[:i]]
            if len(row) and row.max() >= threshold:
                j = np.flatnonzero(kept_here[:i])[row.argmax()]
                best[start + i], match[start + i] = row.max(), start + j
            else:
                kept_here[i] = True
        keep[start:stop] = kept_here
        kept_idx.append(start + np.flatnonzero(kept_here))
    match[keep] = -1
    return keep, match, np.where(keep, np.nan, best).astype(np.float32)


def _embedding(row: Row) -> tuple[str, np.ndarray] | None:
    for key in ("clip_embedding", "thumb_embedding"):
        v = row.get(key)
        if v is not None and not (isinstance(v, float) and math.isnan(v)) and len(v):
            return key, np.asarray(v, dtype=np.float32)
    return None


def near_duplicates(rows: list[Row], threshold: float, block_size: int = 4096) -> dict[int, tuple[int, str]]:
    """{dropped index: (kept index, detail)} for near-duplicate clips, per (modality, embedding kind, dim)."""
    order = priority_order(rows)
    groups: dict[tuple[str, str, int], list[tuple[int, np.ndarray]]] = {}
    for i in order:
        e = _embedding(rows[i])
        if e is not None:
            key, vec = e
            groups.setdefault((_str(rows[i].get("modality")), key, len(vec)), []).append((i, vec))
    dropped = {}
    for (modality, key, _), members in groups.items():
        idx = np.array([i for i, _ in members])
        keep, match, cos = greedy_near_duplicates(np.stack([v for _, v in members]), threshold, block_size)
        for k in np.flatnonzero(~keep):
            kept = int(idx[match[k]])
            dropped[int(idx[k])] = (
                kept,
                f"near-duplicate of clip {_str(rows[kept].get('clip_id'))} ({modality or 'unknown'} "
                f"{key} cosine {float(cos[k]):.4f} >= {threshold})",
            )
    return dropped


def dedup_rows(data: Any, cfg: DedupConfig | None = None) -> tuple[Any, Any]:
    """(kept, rejected) from kept clip rows: a list of dicts, a pandas DataFrame or a pyarrow Table; both
    results come back in the same kind of container. Rejected rows carry status/reject_* columns with
    reason `duplicate_exact` or `duplicate_near`. Kept rows keep their input order."""
    cfg = cfg or DedupConfig()
    rows, kind = _to_rows(data)
    rejected: dict[int, Row] = {}
    if cfg.exact:
        for i, (_, detail) in exact_duplicates(rows).items():
            rejected[i] = reject(rows[i], STAGE, "duplicate_exact", detail)
    if cfg.near:
        alive = [i for i in range(len(rows)) if i not in rejected]
        sub = [rows[i] for i in alive]
        for k, (_, detail) in near_duplicates(sub, cfg.threshold, cfg.block_size).items():
            rejected[alive[k]] = reject(rows[alive[k]], STAGE, "duplicate_near", detail)
    kept = [r for i, r in enumerate(rows) if i not in rejected]
    dropped = [rejected[i] for i in sorted(rejected)]
    return _from_rows(kept, kind), _from_rows(dropped, kind)
