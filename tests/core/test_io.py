"""Atomic writes: a write killed before its rename leaves nothing a dataset reader sees, and resume cleans it."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from videopoet.core.io import atomic_write, remove_stale_temporaries
from videopoet.pipelines.commit import write_parquet


def test_a_write_killed_before_its_rename_is_invisible_to_readers_and_removed_on_resume(tmp_path):
    out = tmp_path / "rejects"
    write_parquet(str(out / "part-00000.parquet"), pa.table({"x": [1, 2]}))
    # a second process writes a complete Parquet file, flushes it, and is SIGKILLed before the rename
    killed = textwrap.dedent(
        f"""
        import io, os, signal
        import pyarrow as pa, pyarrow.parquet as pq
        from videopoet.core.io import atomic_write
        def writer(f):
            buf = io.BytesIO()
            pq.write_table(pa.table({{"x": [3]}}), buf)
            f.write(buf.getvalue())
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        atomic_write({str(out / "dedup.parquet")!r}, writer)
        """
    )
    res = subprocess.run([sys.executable, "-c", killed], capture_output=True, text=True)
    assert res.returncode == -9, res.stderr
    left = [p.name for p in out.iterdir() if p.name != "part-00000.parquet"]
    assert len(left) == 1 and left[0].startswith(".dedup.parquet.tmp-"), left
    assert pq.read_table(out / left[0]).column("x").to_pylist() == [3]  # a whole, valid file ...
    assert pq.read_table(out).column("x").to_pylist() == [1, 2]  # ... that a directory read skips
    # an older version's unhidden temporary is removed too; published files and look-alikes stay
    (out / "part-00001.parquet.tmp-0badcafe").write_bytes(b"PAR1 half")
    (out / "notes.tmp-later.txt").write_text("not ours")
    removed = remove_stale_temporaries(str(tmp_path))
    assert sorted(p.rsplit("/", 1)[1] for p in removed) == sorted(
        [left[0], "part-00001.parquet.tmp-0badcafe"]
    )
    assert sorted(p.name for p in out.iterdir()) == ["notes.tmp-later.txt", "part-00000.parquet"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "stats.json"
    atomic_write(str(target), lambda f: f.write(b"old"))

    def broken(f):
        f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(str(target), broken)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["stats.json"]


def test_object_store_outputs_are_not_swept():
    assert remove_stale_temporaries("memory://runs/sweep") == []
