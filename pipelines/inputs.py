"""List a corpus: fsspec URLs, directories, globs or manifests (JSONL / CSV / Parquet) -> input rows.

Every file found is an input (its modality is decided later by probing the content), except caption
sidecars: `clip.txt` / `clip.json` next to `clip.mp4` hold the caption of `clip.mp4`. The listing is sorted
so partitions are deterministic.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import posixpath
from dataclasses import dataclass

import fsspec
from fsspec.core import url_to_fs

from videopoet.core.errors import UserError

MANIFEST_SUFFIXES = (".jsonl", ".csv", ".parquet")
SIDECAR_SUFFIXES = (".txt", ".json")


@dataclass(frozen=True)
class InputItem:
    uri: str
    caption: str | None = None
    meta_json: str | None = None


def input_id(uri: str) -> str:
    return hashlib.sha1(uri.encode("utf-8")).hexdigest()[:16]


def _full(fs, path: str) -> str:
    return fs.unstrip_protocol(path) if "file" not in _protocols(fs) else path


def _protocols(fs) -> tuple[str, ...]:
    return fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)


def _read_sidecar(fs, path: str) -> str | None:
    try:
        with fs.open(path, "rb") as f:
            data = f.read(1 << 20).decode("utf-8", errors="replace")
    except OSError:
        return None
    if path.endswith(".json"):
        try:
            obj = json.loads(data)
        except json.JSONDecodeError:
            return None
        cap = obj.get("caption") if isinstance(obj, dict) else None
        return str(cap).strip() if cap else None
    first = data.strip().splitlines()
    return first[0].strip() if first else None


def _read_manifest(url: str) -> list[InputItem]:
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson
    import pyarrow.parquet as pq

    with fsspec.open(url, "rb") as f:
        if url.endswith(".parquet"):
            table = pq.read_table(f)
        elif url.endswith(".csv"):
            table = pacsv.read_csv(f)
        else:
            table = pajson.read_json(f)
    if "uri" not in table.column_names:
        raise UserError(
            f"manifest {url} has no 'uri' column (columns: {table.column_names}); add one per input"
        )
    base = posixpath.dirname(url)
    items = []
    for row in table.to_pylist():
        uri = str(row.pop("uri"))
        if "://" not in uri and not uri.startswith("/"):
            uri = posixpath.join(base, uri)  # relative to the manifest
        caption = row.pop("caption", None)
        meta = json.dumps(row, sort_keys=True, default=str) if row else None
        items.append(InputItem(uri=uri, caption=str(caption) if caption else None, meta_json=meta))
    return items


def list_inputs(specs: list[str], exclude: list[str] = ()) -> list[InputItem]:
    """Expand input specs into a sorted, de-duplicated list of items with captions attached."""
    items: dict[str, InputItem] = {}
    for spec in specs:
        if spec.endswith(MANIFEST_SUFFIXES) and not any(c in spec for c in "*?["):
            for it in _read_manifest(spec):
                items.setdefault(it.uri, it)
            continue
        fs, path = url_to_fs(spec)
        if any(c in path for c in "*?["):
            paths = [p for p in fs.glob(path) if fs.isfile(p)]
            root = path.split("*", 1)[0].rsplit("/", 1)[0]
        elif fs.isdir(path):
            paths = fs.find(path)
            root = path.rstrip("/")
        elif fs.exists(path):
            paths, root = [path], posixpath.dirname(path)
        else:
            raise UserError(f"input {spec} does not exist; pass a directory, glob, file or manifest URL")
        paths = sorted(p for p in paths if not _excluded(posixpath.relpath(p, root) if root else p, exclude))
        by_stem: dict[str, dict[str, str]] = {}  # stem -> {lowercased extension: path}
        for p in paths:
            stem, ext = posixpath.splitext(p)
            by_stem.setdefault(stem, {})[ext.lower()] = p
        for p in paths:
            stem, ext = posixpath.splitext(p)
            exts = by_stem[stem]
            if ext.lower() in SIDECAR_SUFFIXES and any(e not in SIDECAR_SUFFIXES for e in exts):
                continue  # a caption sidecar of a media file beside it
            caption = None
            for suffix in SIDECAR_SUFFIXES:
                if ext.lower() not in SIDECAR_SUFFIXES and suffix in exts:
                    caption = _read_sidecar(fs, exts[suffix])
                    if caption:
                        break
            uri = _full(fs, p)
            items.setdefault(uri, InputItem(uri=uri, caption=caption))
    return [items[k] for k in sorted(items)]


def _excluded(rel: str, patterns) -> bool:
    parts = rel.split("/")
    for pat in patterns:
        if fnmatch.fnmatch(rel, pat) or any(fnmatch.fnmatch(part, pat) for part in parts):
            return True
    return False
