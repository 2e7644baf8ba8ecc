"""Exactly-once outputs for partitioned jobs: a persisted plan, atomic per-partition commits, resume.

Layout under the output URL:
    _state/plan.parquet              the input listing and each input's partition (written once)
    _state/committed/part-NNNNN.json a partition's commit marker (written last, atomically)
    _state/done.json                 the whole run finished (after the global steps)
A partition counts as done only when its marker exists. Its data files are written (atomically) before
the marker, with deterministic names, so a run killed between the two rewrites identical files on resume.
A kill inside a write leaves a hidden temporary (`.NAME.tmp-XXXXXXXX`) that no dataset reader picks up;
`RunState.remove_interrupted_writes` deletes those when the job starts again.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict

import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from videopoet.core.errors import UserError
from videopoet.core.io import (
    atomic_write,
    atomic_write_text,
    exists,
    join,
    read_text,
    remove_stale_temporaries,
)
from videopoet.pipelines.inputs import InputItem, input_id


def write_parquet(url: str, table: pa.Table, row_group_size: int | None = None) -> None:
    def writer(f):
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd", row_group_size=row_group_size)
        f.write(buf.getvalue())

    atomic_write(url, writer)


def read_parquet_dir(url: str, schema: pa.Schema | None = None) -> pa.Table:
    fs, path = url_to_fs(url)
    files = sorted(p for p in fs.glob(f"{path}/*.parquet")) if fs.exists(path) else []
    tables = [pq.read_table(p, filesystem=fs, schema=schema) for p in files]
    if not tables:
        return schema.empty_table() if schema is not None else pa.table({})
    return pa.concat_tables(tables)


class RunState:
    def __init__(self, output: str):
        self.output = output.rstrip("/")
        self.state = join(self.output, "_state")

    def part_name(self, p: int) -> str:
        return f"part-{p:05d}"

    def load_or_create_plan(self, items: list[InputItem], partition_size: int) -> list[dict]:
        """Rows {input_id, uri, caption, meta_json, partition}. Re-runs must list the same inputs."""
        url = join(self.state, "plan.parquet")
        rows = [
            {**asdict(it), "input_id": input_id(it.uri), "partition": i // partition_size}
            for i, it in enumerate(items)
        ]
        if exists(url):
            with url_to_fs(url)[0].open(url_to_fs(url)[1], "rb") as f:
                old = pq.read_table(f).to_pylist()
            if [r["uri"] for r in old] != [r["uri"] for r in rows]:
                added = len({r["uri"] for r in rows} - {r["uri"] for r in old})
                removed = len({r["uri"] for r in old} - {r["uri"] for r in rows})
                raise UserError(
                    f"{self.output} already holds a run over a different input list ({added} inputs new, "
                    f"{removed} gone). Re-run with the original inputs to resume it, or use a new output URL."
                )
            return old
        write_parquet(url, pa.Table.from_pylist(rows))
        return rows

    def remove_interrupted_writes(self) -> list[str]:
        """Delete the temporaries a killed run left anywhere under the output (local outputs only)."""
        return remove_stale_temporaries(self.output)

    def committed(self) -> set[int]:
        fs, path = url_to_fs(join(self.state, "committed"))
        if not fs.exists(path):
            return set()
        return {int(p.rsplit("part-", 1)[1].split(".")[0]) for p in fs.glob(f"{path}/part-*.json")}

    def commit(self, partition: int, tables: dict[str, pa.Table], counts: dict) -> None:
        """Write each `tables[subdir]` as `<output>/<subdir>/part-NNNNN.parquet`, then the marker."""
        name = self.part_name(partition)
        for subdir, table in tables.items():
            write_parquet(join(self.output, subdir, f"{name}.parquet"), table)
        atomic_write_text(join(self.state, "committed", f"{name}.json"), json.dumps(counts, sort_keys=True))

    def done(self) -> dict | None:
        url = join(self.state, "done.json")
        return json.loads(read_text(url)) if exists(url) else None

    def mark_done(self, summary: dict) -> None:
        atomic_write_text(join(self.state, "done.json"), json.dumps(summary, sort_keys=True, indent=1))
