from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from videopoet.core.config import describe
from videopoet.jobs import cli


def _flatten(d: dict, prefix: str = "") -> set[str]:
    keys = set()
    for k, v in d.items():
        if isinstance(v, dict) and v:
            keys |= _flatten(v, f"{prefix}{k}.")
        else:
            keys.add(f"{prefix}{k}")
    return keys


def test_every_job_has_help_and_a_summary(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in cli.JOBS:
        assert name in out
        mod = cli._job_module(name)
        assert callable(mod.main) and cli._summary(mod), f"job {name} needs main() and a docstring"


def test_job_help_lists_every_config_key():
    for name in cli.JOBS:
        res = subprocess.run(
            [sys.executable, "-m", "videopoet.jobs.cli", name, "--help"],
            capture_output=True,
            text=True,
            check=True,
        )
        for key, *_ in describe(cli._job_module(name).Config):
            assert key in res.stdout, f"'videopoet {name} --help' does not mention {key}"


def test_job_yaml_documents_exactly_the_config_keys():
    """configs/<job>.yaml holds every key of the job's Config (no stale ones), each with a comment."""
    for name in cli.JOBS:
        mod = cli._job_module(name)
        path = cli.default_config_path(mod)
        if path is None:
            continue
        text = Path(path).read_text()
        keys_in_yaml = _flatten(yaml.safe_load(text) or {})
        keys_in_code = {row[0] for row in describe(mod.Config)}
        positional = set(getattr(mod, "POSITIONAL", ()))
        assert keys_in_yaml - keys_in_code == set(), f"{path} has keys the code does not know"
        missing = keys_in_code - keys_in_yaml - positional
        assert not missing, f"{path} does not document {sorted(missing)}"
        lines = text.splitlines()
        for i, line in enumerate(lines):
            stripped = line.strip()
            if stripped and not stripped.startswith("#") and ":" in stripped:
                prev = lines[i - 1].strip() if i else ""
                assert "#" in line or prev.startswith("#"), f"{path}:{i + 1} key without a comment: {line!r}"


def test_bad_override_exits_2_naming_the_key(tmp_path):
    name = next(iter(cli.JOBS))
    mod = cli._job_module(name)
    args = [str(tmp_path / "o")] * len(getattr(mod, "POSITIONAL", ())) + ["no_such_key=1"]
    res = subprocess.run(
        [sys.executable, "-m", "videopoet.jobs.cli", name, *args], capture_output=True, text=True
    )
    assert res.returncode == 2
    assert "no_such_key" in res.stderr and "Traceback" not in res.stderr


def test_unknown_job():
    assert cli.main(["no-such-job"]) == 2
