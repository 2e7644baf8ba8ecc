"""Typed run configs: dataclasses filled from a YAML file plus `key.sub=value` overrides.

Every job has a dataclass config whose fields carry attribute docstrings; `configs/<job>.yaml` documents
every key. Loading is strict: an unknown key, a value of the wrong type, or a value that fails the
dataclass's `__post_init__` checks raises `ConfigError` naming the dotted key and the bad value.
The resolved config is written next to each job's output with `save_config`.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import types
import typing
from functools import cache
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config key has a bad value. The message names the key, the value and what is allowed."""


def check(ok: bool, key: str, value: Any, expected: str) -> None:
    """Raise `ConfigError` for `key` unless `ok`. Use in `__post_init__`: `check(self.fps > 0, "fps", self.fps, "> 0")`."""
    if not ok:
        raise ConfigError(f"config key '{key}' has bad value {value!r}: expected {expected}")


def _parse_scalar(text: str) -> Any:
    """Override values are YAML scalars/flow collections: `3`, `0.5`, `true`, `null`, `[1, 2]`, `foo`."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` strings to a nested dict (a copy). Values are parsed as YAML scalars."""
    out = _deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.sub=value")
        key, _, text = item.partition("=")
        key = key.strip()
        if not key:
            raise ConfigError(f"override {item!r} has an empty key")
        node = out
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(
                    f"override {item!r}: '{'.'.join(parts[: i + 1])}' is a value, not a section"
                )
            node = nxt
        node[parts[-1]] = _parse_scalar(text)
    return out


def _deepcopy(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _deepcopy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deepcopy(v) for v in d]
    return d


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML value to the annotated type, or raise ConfigError naming the key."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"config key '{key}' has bad value {value!r}: expected {_type_name(tp)}")
    if origin is Literal:
        if value not in get_args(tp):
            allowed = ", ".join(repr(a) for a in get_args(tp))
            raise ConfigError(f"config key '{key}' has bad value {value!r}: expected one of {allowed}")
        return value
    if origin in (list, tuple):
        if isinstance(value, str | bytes) or not isinstance(value, list | tuple):
            raise ConfigError(f"config key '{key}' has bad value {value!r}: expected a list")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"config key '{key}' has bad value {value!r}: expected {len(args)} items")
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' has bad value {value!r}: expected a mapping")
        kt, vt = get_args(tp) or (Any, Any)
        return {_coerce(k, kt, key): _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if value is None and not dataclasses.is_dataclass(tp):
        raise ConfigError(
            f"config key '{key}' is required but is null: set it, e.g. `{key}=...` on the command line"
        )
    if dataclasses.is_dataclass(tp):
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' has bad value {value!r}: expected a section (mapping)")
        return from_dict(tp, value, prefix=f"{key}.")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}' has bad value {value!r}: expected true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}' has bad value {value!r}: expected an integer")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"config key '{key}' has bad value {value!r}: expected a number")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)  # `name=1` on the command line is still a string key
        raise ConfigError(f"config key '{key}' has bad value {value!r}: expected a string")
    if isinstance(value, tp):
        return value
    raise ConfigError(f"config key '{key}' has bad value {value!r}: expected {_type_name(tp)}")


def from_dict(cls: type[T], raw: dict, prefix: str = "") -> T:
    """Build dataclass `cls` from a nested dict, strictly. Missing keys take the dataclass defaults."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        known = ", ".join(sorted(fields))
        raise ConfigError(f"unknown config key '{prefix}{unknown[0]}'; known keys here: {known}")
    kwargs = {name: _coerce(raw[name], hints[name], f"{prefix}{name}") for name in fields if name in raw}
    try:
        return cls(**kwargs)
    except ConfigError as e:
        if prefix and "config key '" in str(e):  # re-anchor a nested section's key at its full path
            raise ConfigError(str(e).replace("config key '", f"config key '{prefix}", 1)) from None
        raise
    except TypeError as e:  # a required field without default
        raise ConfigError(f"config section '{prefix.rstrip('.') or '<root>'}': {e}") from None


def to_dict(cfg: Any) -> dict:
    """Dataclass -> plain nested dict (tuples become lists) for YAML/JSON."""

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, list | tuple):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    return conv(cfg)


def load_config(cls: type[T], path: str | None = None, overrides: list[str] | None = None) -> T:
    """Defaults <- YAML file at `path` (local or fsspec URL) <- `key.sub=value` overrides."""
    raw: dict = {}
    if path:
        import fsspec

        try:
            with fsspec.open(path, "r") as f:
                raw = yaml.safe_load(f) or {}
        except FileNotFoundError:
            raise ConfigError(
                f"config file {path} does not exist; pass an existing YAML file to --config"
            ) from None
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {path} must hold a mapping of keys, got {type(raw).__name__}")
    return from_dict(cls, apply_overrides(raw, overrides or []))


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def save_config(cfg: Any, out_dir: str, name: str = "config.yaml") -> str:
    """Write the resolved config beside a job's output (atomically). Returns its URL."""
    from videopoet.core.io import atomic_write_text, join

    url = join(out_dir, name)
    atomic_write_text(url, dump_yaml(cfg))
    return url


@cache
def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass (the string literal right after each field), by field name."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, nxt in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """Flatten a config dataclass into (dotted key, type, default, doc) rows for `--help` and doc checks."""
    rows = []
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows += describe(tp, f"{prefix}{f.name}.")
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = "<required>"
        rows.append((f"{prefix}{f.name}", _type_name(tp), default, docs.get(f.name, "")))
    return rows


def documented_yaml(cfg: Any, skip: tuple[str, ...] = ()) -> str:
    """Render a config instance as YAML with each key's attribute docstring as a comment above it.

    Used to write `configs/<job>.yaml` (`python -m videopoet.core.config JOB`): the files then document
    every key by construction, and `tests/jobs/test_cli.py` checks they stay in sync with the code.
    """
    lines: list[str] = []

    def emit(obj: Any, indent: int, prefix: str) -> None:
        docs = field_docs(type(obj))
        for f in dataclasses.fields(obj):
            key = f"{prefix}{f.name}"
            if key in skip:
                continue
            value = getattr(obj, f.name)
            pad = " " * indent
            for line in textwrap.wrap(docs.get(f.name, ""), width=100 - indent - 2):
                lines.append(f"{pad}# {line}")
            if dataclasses.is_dataclass(value):
                lines.append(f"{pad}{f.name}:")
                emit(value, indent + 2, f"{key}.")
            else:
                dumped = yaml.safe_dump({f.name: to_dict(value)}, default_flow_style=True, width=1000).strip()
                lines.append(f"{pad}{dumped[1:-1] if dumped.startswith('{') else dumped}")

    emit(cfg, 0, "")
    return "\n".join(lines) + "\n"


if (
    __name__ == "__main__"
):  # regenerate a job's documented default config: python -m videopoet.core.config curate
    import importlib
    import sys

    from videopoet.jobs.cli import JOBS

    job = importlib.import_module(f"videopoet.jobs.{JOBS[sys.argv[1]]}")
    positional = tuple(getattr(job, "POSITIONAL", ()))
    required = {
        f.name: None
        for f in dataclasses.fields(job.Config)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    cfg = object.__new__(job.Config)  # skip __post_init__: required keys are null in the template
    for f in dataclasses.fields(job.Config):
        default = required.get(f.name, f.default if f.default is not dataclasses.MISSING else None)
        setattr(cfg, f.name, f.default_factory() if f.default_factory is not dataclasses.MISSING else default)
    header = f"# Default config of `videopoet {sys.argv[1]}`. Every key is documented; override any with key.sub=value.\n"
    sys.stdout.write(header + documented_yaml(cfg, skip=positional))
