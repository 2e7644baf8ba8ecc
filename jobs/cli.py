"""The `videopoet` command: one subcommand per job in `jobs/`, each a thin wrapper over that job's `main(config)`.

    videopoet --help
    videopoet sample-data OUT                      # positional args fill the job's POSITIONAL keys
    videopoet <job> --config configs/<job>.yaml key.sub=value ...
    videopoet <job> --help                         # every config key with its type, default and doc

A job module defines `Config` (a dataclass), `main(cfg)`, `DEFAULT_CONFIG` (a file under `configs/`,
or None) and `POSITIONAL` (config keys filled by positional arguments). `python jobs/<job>.py ...`
takes the same arguments.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import sys
import textwrap
from types import ModuleType

from videopoet.core.config import ConfigError, describe, load_config
from videopoet.core.errors import UserError

# Subcommand -> module under videopoet.jobs. A job is listed here when it works, never before.
JOBS: dict[str, str] = {
    "demo": "demo",
    "sample-data": "sample_data",
    "curate": "curate",
    "train-tokenizer": "train_tokenizer",
    "train-lm": "train_lm",
    "train-sr": "train_sr",
    "generate": "generate",
    "tokenize": "tokenize_shards",
    "inspect": "inspect_shards",
}

OVERRIDE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*=")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _job_module(name: str) -> ModuleType:
    return importlib.import_module(f"videopoet.jobs.{JOBS[name]}")


def _summary(mod: ModuleType) -> str:
    return (mod.__doc__ or "").strip().splitlines()[0] if mod.__doc__ else ""


def default_config_path(mod: ModuleType) -> str | None:
    rel = getattr(mod, "DEFAULT_CONFIG", None)
    return os.path.join(REPO_ROOT, rel) if rel else None


def _config_help(mod: ModuleType) -> str:
    rows = describe(mod.Config)
    lines = [
        "config keys (set with key=value; defaults from "
        + (getattr(mod, "DEFAULT_CONFIG", None) or "the code")
        + "):"
    ]
    for key, tp, default, doc in rows:
        lines.append(f"  {key} ({tp}, default {default!r})")
        if doc:
            lines += textwrap.wrap(doc, width=96, initial_indent="      ", subsequent_indent="      ")
    return "\n".join(lines)


def build_parser(name: str, mod: ModuleType) -> argparse.ArgumentParser:
    positional = tuple(getattr(mod, "POSITIONAL", ()))
    p = argparse.ArgumentParser(
        prog=f"videopoet {name}",
        description=(mod.__doc__ or "").strip(),
        epilog=_config_help(mod),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    types = {row[0]: row[1] for row in describe(mod.Config)}
    required = {row[0] for row in describe(mod.Config) if row[2] == "<required>"}
    for key in positional:
        many = types.get(key, "").startswith("list")
        optional = key not in required  # a positional whose key has a default may be left out
        p.add_argument(
            key.replace(".", "_"),
            metavar=key.upper().replace(".", "_"),
            nargs=("*" if optional else "+") if many else ("?" if optional else None),
            help=f"sets config key '{key}'"
            + (" (one or more)" if many else "")
            + (" (optional)" if optional else ""),
        )
    p.add_argument(
        "--config",
        default=None,
        help="YAML config file (local path or fsspec URL); default: the job's file under configs/",
    )
    if any(row[0] == "ray.address" for row in describe(mod.Config)):
        p.add_argument(
            "--address",
            default=None,
            help="Ray cluster to join (default: $RAY_ADDRESS, else an embedded local Ray)",
        )
    p.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides, e.g. filter.min_duration_s=2"
    )
    return p


def parse_job_args(name: str, argv: list[str]):
    """Parse a job's command line into its resolved Config."""
    mod = _job_module(name)
    # key=value tokens are overrides wherever they stand; the rest are positionals and flags.
    overrides = [a for a in argv if OVERRIDE_RE.match(a)]
    args = build_parser(name, mod).parse_args([a for a in argv if not OVERRIDE_RE.match(a)])
    overrides = list(args.overrides) + overrides
    for key in getattr(mod, "POSITIONAL", ()):
        value = getattr(args, key.replace(".", "_"))
        if value is None or value == []:  # an optional positional left out keeps its default
            continue
        overrides.insert(0, f"{key}={json.dumps(value)}")  # JSON is YAML: no re-typing of "true"/"1"
    if getattr(args, "address", None):
        overrides.append(f"ray.address={args.address}")
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"unexpected argument {bad[0]!r}: overrides are key=value (see --help)")
    return mod, load_config(mod.Config, args.config or default_config_path(mod), overrides)


def run(name: str, argv: list[str]) -> int:
    try:
        mod, cfg = parse_job_args(name, argv)
        mod.main(cfg)
    except (ConfigError, UserError) as e:
        print(f"videopoet {name}: error: {e}", file=sys.stderr)
        return 2 if isinstance(e, ConfigError) else 1
    except KeyboardInterrupt:
        print(f"videopoet {name}: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: videopoet <job> [args] [key=value ...]   (videopoet <job> --help for its keys)\n")
        print("jobs:")
        for name in JOBS:
            print(f"  {name:<16} {_summary(_job_module(name))}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in JOBS:
        print(f"videopoet: unknown job {name!r}; choose one of: {', '.join(JOBS)}", file=sys.stderr)
        return 2
    return run(name, rest)


def job_entry(module_file: str) -> None:
    """`if __name__ == "__main__": job_entry(__file__)` in each job: `python jobs/x.py` == `videopoet x`."""
    stem = os.path.splitext(os.path.basename(module_file))[0]
    name = next(k for k, v in JOBS.items() if v == stem)
    sys.exit(run(name, sys.argv[1:]))


if __name__ == "__main__":
    sys.exit(main())
