"""core.ray_runtime (local / joined Ray) and ray_cluster.yaml (checked by Ray's own launcher validation)."""

from __future__ import annotations

import copy
import importlib.metadata
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from videopoet.core.config import ConfigError, from_dict
from videopoet.core.errors import UserError
from videopoet.core.ray_runtime import RayConfig, default_object_store_mb, init_ray, ray_session

REPO_ROOT = Path(__file__).resolve().parents[2]
CLUSTER_YAML = REPO_ROOT / "ray_cluster.yaml"


def _hf_file(dist: str, rel: str) -> Path:
    return Path(importlib.metadata.distribution(dist).locate_file(rel)).resolve()


def _validated(config: dict) -> dict:
    """What `ray up` does before it talks to the cloud: merge the provider's defaults, then validate.

    `ray up` then calls the provider's `fillout_available_node_types_resources` and `bootstrap_config`,
    which need AWS credentials; our node types give `resources` explicitly so neither is needed here.
    """
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


@pytest.fixture(scope="module")
def cluster_config() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_cluster_yaml_passes_rays_validation(cluster_config):
    cfg = _validated(cluster_config)
    types = cfg["available_node_types"]
    assert cfg["provider"]["type"] == "aws"
    assert types[cfg["head_node_type"]]["resources"] == {"CPU": 0}, "the head runs drivers, not tasks"
    gpu_types = [name for name, t in types.items() if t["resources"].get("GPU", 0) > 0]
    cpu_types = [
        name for name, t in types.items() if name != cfg["head_node_type"] and not t["resources"].get("GPU")
    ]
    assert gpu_types and cpu_types, f"need CPU and GPU worker types, got {sorted(types)}"
    for name, t in types.items():
        assert t["min_workers"] <= t["max_workers"], (name, t["min_workers"], t["max_workers"])
    assert cfg["idle_timeout_minutes"] > 0


def test_cluster_yaml_installs_the_repo_it_uploads(cluster_config):
    """The setup runs `uv sync` in the folder file_mounts uploads the repo to, and Ray starts from that venv."""
    ((remote, local),) = cluster_config["file_mounts"].items()
    assert local == "."
    setup = " && ".join(cluster_config["setup_commands"])
    assert f"cd {remote} && " in setup and "uv sync --frozen --extra cloud" in setup, setup
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in cluster_config[key] if "ray start" in c]
        assert starts and all(f"{remote}/.venv/bin/ray start" in c for c in starts), (key, starts)
    assert ".gitignore" in cluster_config["rsync_filter"], "uploading .venv/ would copy a laptop's env"


@pytest.mark.parametrize(
    ("corrupt", "error", "match"),
    [
        (lambda c: c.update(max_worker=4), jsonschema.ValidationError, "max_worker"),  # typo'd key
        (lambda c: c.update(idle_timeout_minutes="ten"), jsonschema.ValidationError, "ten"),
        (
            lambda c: c["available_node_types"]["gpu_a10g"]["resources"].update(GPU="4"),
            jsonschema.ValidationError,
            "'4'",
        ),
        (
            lambda c: c["available_node_types"]["cpu_decode"].pop("resources"),
            jsonschema.ValidationError,
            "resources",
        ),
        (lambda c: c.update(head_node_type="nope"), ValueError, "head_node_type"),
        (
            lambda c: c["available_node_types"]["cpu_decode"].update(min_workers=100),
            ValueError,
            "min_workers",
        ),
    ],
    ids=[
        "unknown-key",
        "wrong-type",
        "resource-not-int",
        "missing-resources",
        "bad-head-type",
        "min-over-max",
    ],
)
def test_corrupted_cluster_yaml_fails_validation(cluster_config, corrupt, error, match):
    bad = copy.deepcopy(cluster_config)
    corrupt(bad)
    with pytest.raises(error, match=match):
        _validated(bad)


def test_ray_config_rejects_bad_values_naming_the_key():
    with pytest.raises(ConfigError, match="num_cpus.*0"):
        from_dict(RayConfig, {"num_cpus": 0})
    with pytest.raises(ConfigError, match="object_store_memory_mb"):
        from_dict(RayConfig, {"object_store_memory_mb": 10})
    assert default_object_store_mb() >= 128


def test_unreachable_address_fails_fast_with_a_user_error(monkeypatch):
    import ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(UserError, match=rf"127\.0\.0\.1:{port}.*ray\.address=local"):
        init_ray(RayConfig(address=f"127.0.0.1:{port}"))
    assert not ray.is_initialized()


def test_local_ray_workers_import_the_project_and_hf_tokenizers(monkeypatch, tmp_path):
    """An embedded Ray with the requested CPUs, whose workers import `videopoet` from this repository and
    `tokenizers` from site-packages, even when started outside the repository (no cwd help)."""
    import ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.chdir(tmp_path)  # Ray adds the driver's cwd to the workers' path; make that useless

    @ray.remote
    def where() -> dict:
        import os

        import tokenizers
        import transformers

        import videopoet
        import videopoet.core.config  # noqa: F401

        return {
            "videopoet": videopoet.__path__[0],
            "tokenizers": tokenizers.__file__,
            "transformers": transformers.__file__,
            "pid": os.getpid(),
        }

    with ray_session(RayConfig(num_cpus=1, object_store_memory_mb=256)) as session:
        assert session.mode == "local"
        assert session.num_cpus == 1
        assert ray.cluster_resources()["object_store_memory"] == pytest.approx(256 * 2**20, rel=0.01)
        got = ray.get(where.remote())
        assert got["pid"] != __import__("os").getpid(), "ran in this process, not a Ray worker"
        assert Path(got["videopoet"]).resolve() == REPO_ROOT
        assert Path(got["tokenizers"]).resolve() == _hf_file("tokenizers", "tokenizers/__init__.py")
        assert Path(got["transformers"]).resolve() == _hf_file("transformers", "transformers/__init__.py")

        again = init_ray(RayConfig(num_cpus=2))  # idempotent: reuses, does not restart or resize
        assert (again.mode, again.address, again.num_cpus) == ("existing", session.address, 1)
    assert not ray.is_initialized()


_UNDER_UV_RUN = """
import json, ray
from videopoet.core.ray_runtime import RayConfig, init_ray

init_ray(RayConfig(num_cpus=1, object_store_memory_mb=256))

@ray.remote
def where():
    import sys, videopoet
    return {"python": sys.executable, "videopoet": videopoet.__path__[0]}

print("RESULT " + json.dumps(ray.get(where.remote(), timeout=240)))
"""


@pytest.mark.skipif(shutil.which("uv") is None, reason="needs the uv command")
def test_local_ray_under_uv_run_keeps_workers_on_this_venv():
    """`uv run python jobs/x.py` (and ./run.sh) from the repository root: Ray's own `uv run` propagation
    would start each worker as `uv run --no-sync ... python` in an uploaded copy of the repository, an
    empty venv where `import ray` fails. init_ray turns that off; workers use this interpreter."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_ENABLE_UV_RUN_RUNTIME_ENV")}
    r = subprocess.run(
        [shutil.which("uv"), "run", "--no-sync", "python", "-c", _UNDER_UV_RUN],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    assert r.returncode == 0 and lines, f"rc={r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    got = json.loads(lines[0].removeprefix("RESULT "))
    assert Path(got["python"]).parent == Path(sys.executable).parent, got
    assert Path(got["videopoet"]).resolve() == REPO_ROOT, got


def test_rays_non_actionable_start_notices_are_dropped_and_others_kept(caplog):
    import logging

    from videopoet.core import ray_runtime

    ray_runtime._quiet_ray_notices()
    ray_runtime._quiet_ray_notices()  # idempotent: one filter per logger
    auth = logging.getLogger("ray._private.authentication.authentication_token_setup")
    assert sum(isinstance(f, ray_runtime._DropNotices) for f in auth.filters) == 1
    with caplog.at_level(logging.WARNING):
        auth.warning("Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled ...")
        auth.warning("Token authentication is disabled for this Ray cluster. Anyone with network access ...")
        logging.getLogger("ray.data._internal.progress.utils").warning("Truncating long operator name to 100")
    assert [r.getMessage()[:40] for r in caplog.records] == ["Token authentication is disabled for thi"]
