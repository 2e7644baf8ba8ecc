from __future__ import annotations

import json

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from videopoet.core.errors import UserError
from videopoet.pipelines.inputs import input_id, list_inputs


def _touch(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_directory_listing_attaches_sidecar_captions_and_keeps_orphans(tmp_path):
    _touch(tmp_path / "a.mp4")
    (tmp_path / "a.txt").write_text("a red kite\nsecond line ignored\n")
    _touch(tmp_path / "sub dir" / "b ünï $(x).png")
    (tmp_path / "sub dir" / "b ünï $(x).json").write_text(json.dumps({"caption": "a cat"}))
    (tmp_path / "notes.txt").write_text("not a sidecar: no media with this stem")
    _touch(tmp_path / ".hidden.mp4")
    items = list_inputs([str(tmp_path)], exclude=[".*"])
    by_name = {i.uri.rsplit("/", 1)[1]: i for i in items}
    assert set(by_name) == {"a.mp4", "b ünï $(x).png", "notes.txt"}  # sidecars are captions, not inputs
    assert by_name["a.mp4"].caption == "a red kite"
    assert by_name["b ünï $(x).png"].caption == "a cat"
    assert by_name["notes.txt"].caption is None
    assert [i.uri for i in items] == sorted(i.uri for i in items)


def test_glob_and_memory_filesystem():
    fs = fsspec.filesystem("memory")
    for name in ("x/1.mp4", "x/2.mp4", "x/3.wav"):
        fs.pipe(f"/corpus/{name}", b"data")
    items = list_inputs(["memory://corpus/x/*.mp4"])
    assert [i.uri for i in items] == ["memory:///corpus/x/1.mp4", "memory:///corpus/x/2.mp4"]


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_manifest_with_relative_uris_captions_and_metadata(tmp_path, fmt):
    rows = [
        {"uri": "v/a.mp4", "caption": "dog", "license": "CC0"},
        {"uri": "/abs/b.mp4", "caption": None, "license": "x"},
    ]
    path = tmp_path / f"m.{fmt}"
    if fmt == "jsonl":
        path.write_text("\n".join(json.dumps(r) for r in rows))
    elif fmt == "csv":
        path.write_text("uri,caption,license\nv/a.mp4,dog,CC0\n/abs/b.mp4,,x\n")
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    items = {i.uri: i for i in list_inputs([str(path)])}
    assert set(items) == {f"{tmp_path}/v/a.mp4", "/abs/b.mp4"}
    a = items[f"{tmp_path}/v/a.mp4"]
    assert a.caption == "dog" and json.loads(a.meta_json) == {"license": "CC0"}
    assert items["/abs/b.mp4"].caption is None


def test_manifest_without_uri_column_is_a_user_error(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"path": "a.mp4"}))
    with pytest.raises(UserError, match="no 'uri' column"):
        list_inputs([str(path)])


def test_missing_input_names_it(tmp_path):
    with pytest.raises(UserError, match="nope"):
        list_inputs([str(tmp_path / "nope")])


def test_input_ids_are_stable():
    assert input_id("s3://b/a.mp4") == input_id("s3://b/a.mp4") != input_id("s3://b/b.mp4")
