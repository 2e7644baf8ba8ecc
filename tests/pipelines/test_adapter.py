"""The Ray Data plan built from stages: real local Ray, accounting, and retries of killed workers."""

from __future__ import annotations

import os
import sys

import pytest

from videopoet.pipelines.base import Resources, Stage, reject, run_local


class Square(Stage):
    name = "square"

    def process_row(self, row):
        if row["x"] % 5 == 0:
            return reject(row, self.name, "multiple_of_five", f"x={row['x']}")
        if row["x"] == 7:
            raise ValueError("seven is broken")
        return {**row, "y": row["x"] ** 2}


class Split(Stage):
    """Fans a row out into x % 3 + 1 rows, like scene splitting does."""

    name = "split"

    def process_row(self, row):
        n = row["x"] % 3 + 1
        return [{**row, "part": i, "parts": n} for i in range(n)]


class DieOnce(Stage):
    """Kills its own worker process the first time it runs (a crash, not an exception)."""

    name = "die_once"
    stateful = False
    resources = Resources(cpus=1)

    def __init__(self, marker: str):
        self.marker = marker

    def process_rows(self, rows):
        if not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os._exit(1)
        return [{**r, "survived": True} for r in rows]


class Model(Stage):
    """A stateful stage: setup() runs once per actor."""

    name = "model"
    stateful = True
    concurrency = 1

    def setup(self):
        self.pid = os.getpid()

    def process_rows(self, rows):
        return [{**r, "actor_pid": self.pid} for r in rows]


@pytest.fixture(scope="module")
def ray_local():
    import ray

    from videopoet.core.ray_runtime import RayConfig, init_ray

    # Test modules are not importable in Ray workers; ship this module's stage classes by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    init_ray(RayConfig(num_cpus=2, object_store_memory_mb=256))
    yield
    ray.shutdown()


def _run(stages, n):
    import ray.data

    from videopoet.pipelines.adapter import apply_stages

    ds = ray.data.from_items([{"x": i, "status": "ok"} for i in range(n)], override_num_blocks=8)
    rows = []
    for batch in apply_stages(ds, stages).iter_batches(batch_format="pandas", batch_size=None):
        rows += batch.to_dict("records")
    return rows


def test_every_row_is_accounted_for_on_ray_and_matches_local(ray_local):
    stages = [Square(), Split(), Model()]
    rows = _run(stages, 40)
    ok = [r for r in rows if r["status"] == "ok"]
    bad = [r for r in rows if r["status"] != "ok"]
    assert sorted(r["x"] for r in bad) == [0, 5, 7, 10, 15, 20, 25, 30, 35]
    assert {r["reject_reason"] for r in bad if r["x"] == 7} == {"error"}
    assert "seven is broken" in next(r["reject_detail"] for r in bad if r["x"] == 7)
    # every surviving input fans out into exactly x % 3 + 1 rows, each with the model's stamp
    for x in {r["x"] for r in ok}:
        parts = sorted(int(r["part"]) for r in ok if r["x"] == x)
        assert parts == list(range(x % 3 + 1))
    assert len({r["actor_pid"] for r in ok}) == 1
    local = run_local([Square(), Split()], [{"x": i} for i in range(40)])

    def key(r):
        part = r.get("part")
        return r["x"], -1 if part is None or part != part else int(part)  # None / NaN: rejected, no part

    assert sorted(map(key, local)) == sorted(map(key, rows))


def test_a_killed_worker_is_retried_and_no_row_is_lost_or_doubled(ray_local, tmp_path):
    marker = str(tmp_path / "died")
    rows = _run([DieOnce(marker)], 16)
    assert os.path.exists(marker), "the worker never crashed: the test did not test anything"
    assert sorted(r["x"] for r in rows) == list(range(16))
    assert all(r["survived"] for r in rows)


def test_rows_to_frame_keeps_a_bytes_column_arrow_storable_when_some_rows_lack_it():
    import pyarrow as pa

    from videopoet.pipelines.base import rows_to_frame

    rows = [
        {"clip_id": "a", "pixels": b"\x00\x01", "window": 0},
        {"clip_id": "b", "window": 1},  # an audio window: no pixels
        {"clip_id": "c", "pixels": b"\x02", "score": 0.5},
    ]
    frame = rows_to_frame(rows)
    assert frame["pixels"].tolist() == [b"\x00\x01", None, b"\x02"]
    table = pa.Table.from_pandas(frame)
    assert pa.types.is_binary(table.schema.field("pixels").type)
    assert frame["score"].isna().tolist() == [True, True, False]  # numeric columns keep NaN


def test_rows_to_table_types_each_column_or_gives_up_on_mixed_values():
    import numpy as np
    import pyarrow as pa

    from videopoet.pipelines.base import rows_to_table

    tokens = np.arange(6, dtype=np.int32).reshape(2, 3)
    rows = [
        {"clip_id": "a", "tokens": tokens.tobytes(), "tokens_shape": [2, 3], "status": "ok"},
        {"clip_id": "b", "status": "rejected", "reject_detail": "corrupt", "score": float("nan")},
        {"clip_id": "c", "tokens": memoryview(b"\x01\x00\x00\x00"), "tokens_shape": (1,), "score": 0.5},
    ]
    table = rows_to_table(rows)
    assert table.column_names == ["clip_id", "tokens", "tokens_shape", "status", "reject_detail", "score"]
    assert pa.types.is_binary(table.schema.field("tokens").type)
    assert pa.types.is_list(table.schema.field("tokens_shape").type)
    got = table.to_pylist()
    assert np.array_equal(np.frombuffer(got[0]["tokens"], np.int32).reshape(got[0]["tokens_shape"]), tokens)
    assert got[1]["tokens"] is None and got[1]["reject_detail"] == "corrupt"
    assert got[1]["score"] is None and got[2]["score"] == 0.5  # pandas' NaN placeholder is a null
    assert got[2]["tokens"] == b"\x01\x00\x00\x00" and got[2]["tokens_shape"] == [1]
    assert rows_to_table([]).column_names == ["status"]
    assert rows_to_table([{"v": "text"}, {"v": 3}]) is None  # Arrow cannot type it: the stage returns pandas


class Sizes(Stage):
    """Reads a binary column in place, as the tokenizer worker does with decoded pixels."""

    name = "sizes"
    batch_format = "pyarrow"

    def process_row(self, row):
        import numpy as np

        data = row["blob"]
        return {**row, "total": None if data is None else int(np.frombuffer(data, np.uint8).sum())}


def test_arrow_rows_are_zero_copy_views_with_nulls_offsets_and_chunks():
    import numpy as np
    import pyarrow as pa

    from videopoet.pipelines.base import arrow_rows, rows_to_frame

    blobs = [bytes([i]) * (i + 1) for i in range(6)]
    blobs[2] = None
    for ty in (pa.binary(), pa.large_binary()):
        whole = pa.table(
            {"id": list(range(6)), "blob": pa.array(blobs, ty), "shape": [[i, 1] for i in range(6)]}
        )
        # two chunks, the second a slice (non-zero array offset), as Ray Data's concatenated blocks can be
        table = pa.concat_tables([whole.slice(0, 2), whole.slice(2)])
        assert table.column("blob").num_chunks == 2
        rows = arrow_rows(table)
        assert [r["id"] for r in rows] == list(range(6))
        assert [None if r["blob"] is None else bytes(r["blob"]) for r in rows] == blobs
        assert rows[4]["shape"] == [4, 1]
        view = np.frombuffer(rows[5]["blob"], np.uint8)
        chunk = table.column("blob").chunk(1)
        start = chunk.buffers()[2].address
        assert start <= view.ctypes.data < start + chunk.buffers()[2].size, "read in place, not copied"
        frame = rows_to_frame(rows)  # leftover views go back out as bytes
        assert frame["blob"].tolist() == blobs


def test_a_pyarrow_stage_gets_the_same_rows_locally_and_on_ray(ray_local):
    import pyarrow as pa
    import ray.data

    from videopoet.pipelines.adapter import apply_stages

    rows = [{"x": i, "blob": bytes([i]) * i if i % 3 else None, "status": "ok"} for i in range(1, 25)]
    local = sorted(run_local([Sizes()], rows), key=lambda r: r["x"])
    ds = apply_stages(ray.data.from_items(rows, override_num_blocks=4), [Sizes()])
    batches = list(ds.iter_batches(batch_format="pyarrow", batch_size=None))
    remote = sorted((r for b in batches for r in b.to_pylist()), key=lambda r: r["x"])
    assert all(isinstance(b, pa.Table) for b in batches)
    assert sorted(Sizes()(pa.Table.from_pylist(rows[:2])).column_names) == ["blob", "status", "total", "x"]
    assert (
        [r.get("total") for r in remote]
        == [r.get("total") for r in local]
        == [None if i % 3 == 0 else i * i for i in range(1, 25)]
    )


class Sleepy(Stage):
    """A stateful stage whose calls take 0.4 s and record when and on which thread they ran."""

    name = "sleepy"
    stateful = True
    concurrency = 1

    def __init__(self, concurrent_calls: int):
        self.concurrent_calls = concurrent_calls

    def process_rows(self, rows):
        import threading
        import time

        t0 = time.monotonic()
        time.sleep(0.4)
        span = dict(t0=t0, t1=time.monotonic(), thread=threading.get_ident())
        return [{**r, **span} for r in rows]


@pytest.mark.parametrize("concurrent", [1, 2])
def test_concurrent_calls_run_an_actors_calls_on_parallel_threads(ray_local, concurrent):
    """`Stage.concurrent_calls` > 1 runs that many calls of one actor at once (GPU workers overlap one call's
    host work with another's kernels); 1 keeps them one at a time. Every row still comes back once."""
    import ray.data

    from videopoet.pipelines.adapter import apply_stages

    ds = ray.data.from_items([{"x": i, "status": "ok"} for i in range(8)], override_num_blocks=8)
    rows = apply_stages(ds, [Sleepy(concurrent)]).take_all()
    assert sorted(r["x"] for r in rows) == list(range(8))
    spans = sorted({(r["t0"], r["t1"], r["thread"]) for r in rows})
    overlaps = sum(b[0] < a[1] for a, b in zip(spans, spans[1:]))
    if concurrent == 1:
        assert overlaps == 0
    else:
        assert overlaps >= 1 and len({s[2] for s in spans}) >= 2
