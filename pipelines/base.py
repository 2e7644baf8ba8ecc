"""Stage: the unit of a curation / pre-tokenization pipeline, independent of Ray.

A stage is a small class. `__init__` takes its config and does nothing heavy; `setup()` loads models once
per worker (the adapter calls it in the actor constructor); `process_row(row)` or `process_rows(rows)`
does the work. Rows are plain dicts. A stage never calls Ray: `pipelines.adapter` turns a list of stages
into a Ray Data plan, and `run_local` runs the same list in-process (debugging, tests of a single stage).

Accounting is built in: every row has a `status` ("ok" or "rejected"). A stage only sees "ok" rows;
rejected rows pass through untouched so they reach the ledger. A row whose processing raises becomes a
rejection with `reject_reason="error"` and the exception as detail: one bad file never fails the job.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pyarrow as pa

Row = dict[str, Any]

OK = "ok"
REJECTED = "rejected"


@dataclass(frozen=True, kw_only=True)
class Resources:
    """What one worker of a stage needs. GPU stages run as actor pools; others as tasks unless stateful."""

    cpus: float = 1.0
    gpus: float = 0.0
    memory_mb: int | None = None


def reject(row: Row, stage: str, reason: str, detail: str = "") -> Row:
    """Mark `row` rejected by `stage` for `reason` (a short machine-readable word) with a human `detail`."""
    out = dict(row)
    out.update(status=REJECTED, reject_stage=stage, reject_reason=reason, reject_detail=detail)
    return out


class Stage:
    """Base class. Subclasses set `name`, `resources`, and override `process_row` or `process_rows`."""

    name: ClassVar[str] = "stage"
    resources: Resources = Resources()
    batch_size: int | None = None
    """Rows per call; None lets Ray Data choose (one block). Model stages set their inference batch."""
    stateful: ClassVar[bool] = False
    """True when `setup()` loads something worth keeping: the adapter then uses an actor pool."""
    concurrency: int | tuple[int, int] | None = None
    """Actor-pool size for stateful stages (an int or (min, max)); None = sized from resources."""
    batch_format: ClassVar[str] = "pandas"
    """What Ray Data hands `__call__`: "pandas", or "pyarrow" (a read-only table whose binary columns reach
    the stage as zero-copy views of the object store: no copy of decoded pixels into Python bytes)."""
    calls_in_flight: int = 1
    """Calls an actor of a stateful stage takes at once: Ray Data batches the next call's inputs and the last
    call's outputs while this one runs (the stage itself still runs one call at a time)."""
    concurrent_calls: int = 1
    """Calls an actor of a stateful stage runs at once, each on its own thread (the stage must be thread-safe):
    one call's host work then overlaps another's device work."""

    def setup(self) -> None:
        """Load models / open resources. Called once per worker before the first batch."""

    def process_row(self, row: Row) -> Row | list[Row]:
        """Transform one ok row into zero or more rows (return [] only via `reject`, never silently)."""
        raise NotImplementedError

    def process_rows(self, rows: list[Row]) -> list[Row]:
        """Transform a batch of ok rows. Default: `process_row` each, turning exceptions into rejections."""
        out: list[Row] = []
        for row in rows:
            out.extend(self.safe_call(row, self.process_row))
        return out

    def safe_call(self, row: Row, fn) -> list[Row]:
        try:
            res = fn(row)
        except Exception as e:  # noqa: BLE001 - a bad input must become a ledger row, not a crash
            detail = f"{type(e).__name__}: {e}"
            tb = traceback.format_exc(limit=3)
            return [reject(row, self.name, "error", f"{detail}\n{tb}")]
        return res if isinstance(res, list) else [res]

    def __call__(self, batch: pd.DataFrame | pa.Table) -> pd.DataFrame | pa.Table:
        """Process one Ray Data batch. A stage on pyarrow batches returns an Arrow table too (see
        `rows_to_table`), others a pandas frame."""
        rows = batch_rows(batch)
        ok = [r for r in rows if r.get("status", OK) == OK]
        passed = [r for r in rows if r.get("status", OK) != OK]
        rows = (self.process_rows(ok) if ok else []) + passed
        table = rows_to_table(rows) if self.batch_format == "pyarrow" else None
        return table if table is not None else rows_to_frame(rows)


def batch_rows(batch: pd.DataFrame | pa.Table) -> list[Row]:
    """A Ray Data batch (pandas or pyarrow) as rows; see `arrow_rows` for pyarrow."""
    return arrow_rows(batch) if isinstance(batch, pa.Table) else batch.to_dict("records")


def arrow_rows(table: pa.Table) -> list[Row]:
    """Rows of an Arrow table, binary columns as zero-copy `memoryview`s of the table's buffers (None where
    null): `np.frombuffer` reads them in place; the views keep the buffers alive."""
    binary = [f.name for f in table.schema if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)]
    rows = table.drop_columns(binary).to_pylist()
    for name in binary:
        i = 0
        for chunk in table.column(name).chunks:
            _, offsets, data = chunk.buffers()
            width = np.int64 if pa.types.is_large_binary(chunk.type) else np.int32
            off = np.frombuffer(offsets, dtype=width)[chunk.offset : chunk.offset + len(chunk) + 1]
            valid = chunk.is_valid().to_numpy(zero_copy_only=False)
            view = memoryview(data) if data is not None else memoryview(b"")
            for k in range(len(chunk)):
                rows[i][name] = view[off[k] : off[k + 1]] if valid[k] else None
                i += 1
    return rows


def rows_to_frame(rows: list[Row]) -> pd.DataFrame:
    if not rows:
        return pd.DataFrame({"status": pd.Series([], dtype=object)})
    if any(isinstance(v, memoryview) for r in rows for v in r.values()):  # views of an input table
        rows = [{k: bytes(v) if isinstance(v, memoryview) else v for k, v in r.items()} for r in rows]
    frame = pd.DataFrame.from_records(rows)
    # pandas fills a key some rows lack with NaN; in a column of bytes (decoded pixels, waves) that float
    # stops Arrow from storing the block as a binary column (Ray Data then pickles it, and says so): None.
    for col in frame.columns:
        values = frame[col]
        if values.dtype != object:
            continue
        present = values.notna()
        if not present.all() and present.any() and all(isinstance(v, bytes) for v in values[present]):
            frame[col] = values.where(present, None)
    return frame


def rows_to_table(rows: list[Row]) -> pa.Table | None:
    """Rows as an Arrow table, column by column: every key any row has (in first-seen order), None where a
    row lacks it; bytes and memoryviews become binary columns, shape lists list columns.

    What a stage on pyarrow batches returns: Ray Data stores an Arrow table as the block as is, where a
    pandas frame of bytes and shape lists costs it a conversion per call (`PandasBlockAccessor.to_arrow`,
    a sixth of the GPU tokenizer worker's host time on the H100), and consumers reading pyarrow batches
    then skip pandas altogether. None when Arrow cannot type a column (mixed kinds of values): the caller
    returns the pandas frame instead, which Ray Data stores its own way (pickling such a column)."""
    if not rows:
        return pa.table({"status": pa.array([], pa.string())})
    keys = dict.fromkeys(k for r in rows for k in r)
    try:  # from_pandas: pandas' NaN placeholder of a missing value becomes a null
        return pa.table({k: pa.array([r.get(k) for r in rows], from_pandas=True) for k in keys})
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None


def run_local(stages: Iterable[Stage], rows: list[Row]) -> list[Row]:
    """Run stages in this process, in order. Same semantics as the Ray plan; for tests and debugging."""
    batch: pd.DataFrame | pa.Table = rows_to_frame([{**r, "status": r.get("status", OK)} for r in rows])
    for stage in stages:
        stage.setup()
        batch = stage(batch)
    rows = batch.to_pylist() if isinstance(batch, pa.Table) else batch.to_dict("records")
    return [_clean(r) for r in rows]


def _clean(row: Row) -> Row:
    """Drop NaN placeholders pandas adds for columns a row never had."""
    return {k: v for k, v in row.items() if not (isinstance(v, float) and v != v)}
