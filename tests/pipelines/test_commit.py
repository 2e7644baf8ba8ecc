from __future__ import annotations

import pyarrow as pa
import pytest

from videopoet.core.errors import UserError
from videopoet.pipelines.commit import RunState, read_parquet_dir
from videopoet.pipelines.inputs import InputItem
from videopoet.pipelines.schema import CLIP_SCHEMA, REJECT_SCHEMA, to_table


def test_plan_is_persisted_and_a_different_listing_is_refused(tmp_path):
    items = [InputItem(uri=f"/c/{i}.mp4") for i in range(5)]
    state = RunState(str(tmp_path))
    plan = state.load_or_create_plan(items, partition_size=2)
    assert [r["partition"] for r in plan] == [0, 0, 1, 1, 2]
    assert state.load_or_create_plan(items, partition_size=2) == plan  # resume reads the same plan
    with pytest.raises(UserError, match="different input list"):
        state.load_or_create_plan(items[:4], partition_size=2)


@pytest.mark.parametrize("root", ["local", "memory"])
def test_commit_marks_partitions_and_tables_read_back(tmp_path, root):
    out = str(tmp_path / "run") if root == "local" else "memory://runs/commit-test"
    state = RunState(out)
    assert state.committed() == set()
    clips = to_table(
        [
            {
                "clip_id": "c1",
                "input_id": "i1",
                "uri": "/a b.mp4",
                "modality": "video",
                "width": 64.0,
                "thumb_embedding": [0.5, 0.5],
            }
        ],
        CLIP_SCHEMA,
    )
    rej = to_table(
        [{"input_id": "i2", "uri": "/z.mp4", "stage": "probe", "reason": "empty_file"}], REJECT_SCHEMA
    )
    state.commit(3, {"staging": clips, "rejects": rej}, {"clips": 1, "rejects": 1})
    assert state.committed() == {3}
    back = read_parquet_dir(f"{out}/staging", CLIP_SCHEMA)
    assert back.schema.equals(CLIP_SCHEMA, check_metadata=False)
    row = back.to_pylist()[0]
    assert row["width"] == 64 and row["uri"] == "/a b.mp4" and row["thumb_embedding"] == [0.5, 0.5]
    assert read_parquet_dir(f"{out}/rejects", REJECT_SCHEMA).column("reason").to_pylist() == ["empty_file"]
    assert state.done() is None
    state.mark_done({"inputs": 2})
    assert state.done() == {"inputs": 2}


def test_to_table_casts_pandas_floats_and_fills_missing_columns():
    t = to_table(
        [
            {
                "clip_id": "c",
                "input_id": "i",
                "uri": "u",
                "modality": "image",
                "clip_index": 0.0,
                "start_frame": float("nan"),
                "extra": 1,
            }
        ],
        CLIP_SCHEMA,
    )
    assert t.schema.equals(CLIP_SCHEMA, check_metadata=False)
    assert t.column("clip_index").to_pylist() == [0] and t.column("start_frame").to_pylist() == [None]
    assert isinstance(t, pa.Table)
