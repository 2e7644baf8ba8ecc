from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from videopoet.core.config import (
    ConfigError,
    check,
    describe,
    dump_yaml,
    from_dict,
    load_config,
    save_config,
)


@dataclass(kw_only=True)
class Filter:
    min_duration_s: float = 1.0
    """Shortest clip kept, in seconds."""
    codecs: list[str] = field(default_factory=lambda: ["h264", "vp9"])
    """Allowed video codecs."""

    def __post_init__(self):
        check(self.min_duration_s >= 0, "min_duration_s", self.min_duration_s, ">= 0")


@dataclass(kw_only=True)
class Job:
    out: str
    """Output URL."""
    mode: Literal["fast", "exact"] = "fast"
    """How hard to try."""
    workers: int | None = None
    """Worker count; None = one per core."""
    filter: Filter = field(default_factory=Filter)
    """Filter thresholds."""


def test_yaml_then_overrides_win(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("out: /a\nfilter:\n  min_duration_s: 2\n  codecs: [h264]\n")
    cfg = load_config(Job, str(p), ["filter.min_duration_s=3.5", "mode=exact", "workers=4"])
    assert cfg.out == "/a" and cfg.mode == "exact" and cfg.workers == 4
    assert cfg.filter.min_duration_s == 3.5 and cfg.filter.codecs == ["h264"]


def test_unknown_key_is_named_with_its_section():
    with pytest.raises(ConfigError, match=r"unknown config key 'filter.min_duraton_s'.*min_duration_s"):
        from_dict(Job, {"out": "x", "filter": {"min_duraton_s": 1}})


@pytest.mark.parametrize(
    "overrides, key, bad",
    [
        (["workers=many"], "workers", "'many'"),
        (["mode=fastest"], "mode", "'fastest'"),
        (["filter.codecs=h264"], "filter.codecs", "'h264'"),
        (["filter.min_duration_s=-1"], "filter.min_duration_s", "-1"),
    ],
)
def test_bad_values_name_key_and_value(overrides, key, bad):
    with pytest.raises(ConfigError) as e:
        load_config(Job, None, ["out=/x", *overrides])
    assert f"'{key}'" in str(e.value) and bad in str(e.value)


def test_missing_required_key_is_reported():
    with pytest.raises(ConfigError, match="out"):
        load_config(Job, None, [])


def test_missing_or_invalid_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Job, str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n- not a mapping\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(Job, str(bad))


def test_resolved_config_round_trips_through_saved_yaml(tmp_path):
    cfg = load_config(Job, None, ["out=s3://bucket/run", "filter.codecs=[av1]"])
    url = save_config(cfg, str(tmp_path / "run"))
    again = load_config(Job, url)
    assert again == cfg
    assert "av1" in dump_yaml(cfg)


def test_save_config_to_fsspec_memory():
    cfg = load_config(Job, None, ["out=memory://x"])
    url = save_config(cfg, "memory://runs/a")
    assert load_config(Job, url) == cfg


def test_describe_lists_nested_keys_with_docs():
    rows = {key: (tp, default, doc) for key, tp, default, doc in describe(Job)}
    assert rows["filter.min_duration_s"] == ("float", 1.0, "Shortest clip kept, in seconds.")
    assert rows["out"][1] == "<required>"
    assert rows["workers"][2] == "Worker count; None = one per core."
