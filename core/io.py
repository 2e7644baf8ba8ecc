"""fsspec helpers: URL joining and atomic writes that work on local disks and object stores.

Atomic means a reader never sees a half-written file: locally we write a temporary sibling and
`os.replace` it; on object stores a single PUT is already atomic, so we write the object directly.
The temporary sibling is a dot-file (`.NAME.tmp-XXXXXXXX`): a process killed before the rename leaves it
behind, and readers of the directory (pyarrow/pandas datasets, Spark, DuckDB `*.parquet` globs) skip
hidden files, so a left-over temporary is never read as data. `remove_stale_temporaries` deletes them
when a killed job resumes.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable
from typing import IO

import fsspec
from fsspec.core import url_to_fs


def join(base: str, *parts: str) -> str:
    """Join URL/path parts with '/', keeping the scheme of `base` (`s3://b/x` + `y` -> `s3://b/x/y`)."""
    out = base.rstrip("/")
    for p in parts:
        out = f"{out}/{p.strip('/')}"
    return out


def is_local(url: str) -> bool:
    fs, _ = url_to_fs(url)
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def exists(url: str) -> bool:
    fs, path = url_to_fs(url)
    return fs.exists(path)


def makedirs(url: str) -> None:
    fs, path = url_to_fs(url)
    fs.makedirs(path, exist_ok=True)


_TEMPORARY = re.compile(r".+\.tmp-[0-9a-f]{8}$")  # atomic_write's; older versions wrote them unhidden


def remove_stale_temporaries(url: str) -> list[str]:
    """Delete the temporaries that killed `atomic_write`s left under the local directory `url`; return them.

    Only for a directory that one job owns (its output), when that job starts: a temporary there cannot
    belong to a live writer. Object stores have no temporaries, so non-local URLs return [] untouched."""
    if not is_local(url):
        return []
    _, root = url_to_fs(url)
    removed = []
    for dirpath, _, files in os.walk(root):
        for f in files:
            if _TEMPORARY.match(f):
                removed.append(os.path.join(dirpath, f))
                os.unlink(removed[-1])
    return sorted(removed)


def atomic_write(url: str, writer: Callable[[IO[bytes]], None]) -> None:
    """Call `writer(fileobj)` and publish the result at `url` all at once."""
    fs, path = url_to_fs(url)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    if is_local(url):
        tmp = os.path.join(parent, f".{path.rsplit('/', 1)[-1]}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            with open(tmp, "wb") as f:
                writer(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    else:
        with fsspec.open(url, "wb") as f:
            writer(f)


def atomic_write_bytes(url: str, data: bytes) -> None:
    atomic_write(url, lambda f: f.write(data))


def atomic_write_text(url: str, text: str) -> None:
    atomic_write_bytes(url, text.encode("utf-8"))


def read_text(url: str) -> str:
    with fsspec.open(url, "r", encoding="utf-8") as f:
        return f.read()
