"""Start or join Ray for a job: an embedded local Ray sized to this machine, or an existing cluster.

Every job that uses Ray calls `init_ray(cfg.ray)` (or `with ray_session(cfg.ray):`) once, early in `main`.
Which Ray it gets, in order:

1. Ray is already initialized in this process (a notebook, a test, a caller): reuse it untouched.
2. `ray.address` is set, or `$RAY_ADDRESS` is: join that cluster. Inside `ray job submit` the driver
   already has `$RAY_ADDRESS`, so `python jobs/x.py` joins the cluster it was submitted to with no flag.
   `address: auto` joins a cluster started on this machine with `ray start --head`.
3. Otherwise start an embedded Ray in this process, sized to the machine (CPUs this process may run
   on, a quarter of the memory for the object store, no dashboard). `address: local` forces this even
   when `$RAY_ADDRESS` is set.

    python jobs/x.py ...                                    # embedded local Ray
    RAY_ADDRESS=10.0.0.5:6379 python jobs/x.py ...          # join a running cluster
    ray job submit --working-dir . -- python jobs/x.py ...  # run on the cluster (joins via $RAY_ADDRESS)

Imports in Ray workers: a local Ray starts its workers with this interpreter, so `videopoet` resolves
there exactly as in the driver (the editable install's `.pth`, or the installed wheel) and no
`PYTHONPATH` is injected; putting the repository root first on the path would let our top-level
folders shadow installed modules of the same name. Under `ray job submit --working-dir .`, Ray puts the
uploaded copy of the repository on the workers' path, and `videopoet` resolves to that copy.
`tests/test_layout.py` checks both. Ray's own `uv run` propagation, which would re-create the
environment per worker, is turned off (see `_keep_workers_on_this_interpreter`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from videopoet.core.config import check
from videopoet.core.errors import UserError
from videopoet.core.log import get_logger

log = get_logger(__name__)

# Ray refuses an object store smaller than 75 MiB; below ~128 MiB even a small batch of frames spills.
_MIN_OBJECT_STORE_MB = 128
_LOCAL_START_ATTEMPTS = 3


@dataclass(kw_only=True)
class RayConfig:
    """Where Ray runs. The sizing keys apply only to an embedded local Ray (a cluster sizes itself)."""

    address: str | None = None
    """Cluster to join: `host:6379`, `ray://host:10001`, or `auto` (a `ray start` cluster on this machine).
    null: $RAY_ADDRESS if set (it is inside `ray job submit`), else an embedded local Ray.
    `local`: always an embedded local Ray."""
    num_cpus: int | None = None
    """Local Ray only: CPUs Ray may schedule on. null: the cores this process may run on."""
    num_gpus: int | None = None
    """Local Ray only: GPUs Ray may schedule on. null: the GPUs Ray detects."""
    object_store_memory_mb: int | None = None
    """Local Ray only: shared-memory object store size in MiB. null: a quarter of this machine's (or
    container's) memory, capped by the free space in /dev/shm, so the rest stays for the workers."""
    include_dashboard: bool = False
    """Local Ray only: start the Ray dashboard (http://127.0.0.1:8265 unless taken). Costs seconds and ~200 MB."""
    log_to_driver: bool = True
    """Print the stdout/stderr of Ray workers in this process's terminal."""

    def __post_init__(self) -> None:
        check(
            self.address is None or self.address.strip() != "",
            "address",
            self.address,
            "null or a cluster address",
        )
        check(self.num_cpus is None or self.num_cpus >= 1, "num_cpus", self.num_cpus, "null or >= 1")
        check(self.num_gpus is None or self.num_gpus >= 0, "num_gpus", self.num_gpus, "null or >= 0")
        check(
            self.object_store_memory_mb is None or self.object_store_memory_mb >= _MIN_OBJECT_STORE_MB,
            "object_store_memory_mb",
            self.object_store_memory_mb,
            f"null or >= {_MIN_OBJECT_STORE_MB} (MiB)",
        )


@dataclass(frozen=True, kw_only=True)
class RaySession:
    """What `init_ray` connected to."""

    mode: Literal["local", "cluster", "existing"]
    """`local`: an embedded Ray started here; `cluster`: joined a running cluster; `existing`: Ray was
    already initialized in this process and was reused."""
    address: str
    """GCS address of the Ray this process is connected to."""
    num_cpus: float
    """CPUs in the whole Ray cluster."""
    num_gpus: float
    """GPUs in the whole Ray cluster."""


def local_cpu_count() -> int:
    """CPUs this process may run on: its affinity mask, further limited by a cgroup v2 CPU quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        n = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def local_memory_bytes() -> int:
    """Memory of this machine, or of the container when a cgroup limit is lower."""
    import psutil

    total = psutil.virtual_memory().total
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
        break
    return total


def default_object_store_mb() -> int:
    """A quarter of the memory, capped by free /dev/shm (beyond it Ray falls back to slow disk)."""
    mb = local_memory_bytes() // 4 // 2**20
    if sys.platform.startswith("linux") and os.path.isdir("/dev/shm"):
        st = os.statvfs("/dev/shm")
        shm_mb = st.f_bavail * st.f_frsize // 2**20
        mb = min(mb, int(shm_mb * 0.95))
    return max(_MIN_OBJECT_STORE_MB, mb)


def _session(mode: Literal["local", "cluster", "existing"]) -> RaySession:
    import ray

    res = ray.cluster_resources()
    return RaySession(
        mode=mode,
        address=ray.get_runtime_context().gcs_address,
        num_cpus=float(res.get("CPU", 0)),
        num_gpus=float(res.get("GPU", 0)),
    )


def _check_reachable(address: str, source: str) -> None:
    """Fail in seconds on an unreachable `host:port`; ray.init would retry it for minutes."""
    host, sep, port = address.rpartition(":")
    if "://" in address or not sep or not port.isdigit():
        return  # `auto`, or a Ray Client / HTTP address: Ray reports those itself
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
    except OSError as e:
        raise UserError(
            f"cannot reach the Ray cluster at {address!r} (from {source}): {e}. Check that the cluster is up "
            "(`ray status --address ...`) and the address, or unset RAY_ADDRESS / set ray.address=local to "
            "run on an embedded local Ray."
        ) from None


def _keep_workers_on_this_interpreter() -> None:
    """Turn off Ray's `uv run` propagation (on by default) unless RAY_ENABLE_UV_RUN_RUNTIME_ENV is set.

    When any ancestor process is `uv run` (`./run.sh`, `uv run python jobs/x.py`, `uv run pytest`),
    `ray.init` would start every worker as `uv run ... python` inside an uploaded copy of the current
    directory: a fresh `.venv` synced per copy (or, with `--no-sync`, an empty one where `import ray`
    fails). Our workers need no such thing: a local Ray runs them with this interpreter, and every
    cluster node has the same locked environment (ray_cluster.yaml).
    """
    if "RAY_ENABLE_UV_RUN_RUNTIME_ENV" in os.environ:
        return  # the user's explicit choice
    os.environ["RAY_ENABLE_UV_RUN_RUNTIME_ENV"] = "0"  # for processes Ray starts from here
    from ray._private import ray_constants  # read at import time, so also flip the loaded value

    if hasattr(ray_constants, "RAY_ENABLE_UV_RUN_RUNTIME_ENV"):
        ray_constants.RAY_ENABLE_UV_RUN_RUNTIME_ENV = False


class _DropNotices(logging.Filter):
    """Drops Ray log records that tell a user of this project nothing they can act on."""

    def __init__(self, *fragments: str):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not any(f in msg for f in self.fragments)


_NOTICES = {
    # every new local Ray turns token authentication on (kept: it is the safe default) and warns that it did
    "ray._private.authentication.authentication_token_setup": "Token authentication is enabled for this Ray",
    # every plan here has long fused stage names, which Ray Data shortens for its progress lines
    "ray.data._internal.progress.utils": "Truncating long operator name",
}


def _quiet_ray_notices() -> None:
    """Drop Ray's start-up notices that every job would print and nobody can act on (idempotent)."""
    for name, fragment in _NOTICES.items():
        lg = logging.getLogger(name)
        if not any(isinstance(f, _DropNotices) for f in lg.filters):
            lg.addFilter(_DropNotices(fragment))


def init_ray(cfg: RayConfig | None = None) -> RaySession:
    """Connect this process to Ray as described in the module docstring. Safe to call more than once."""
    import ray

    cfg = cfg or RayConfig()
    if ray.is_initialized():
        session = _session("existing")
        log.info("Ray: reusing the Ray already initialized in this process at %s", session.address)
        return session

    _keep_workers_on_this_interpreter()
    _quiet_ray_notices()
    env_address = os.environ.get("RAY_ADDRESS", "").strip()
    address = cfg.address if cfg.address is not None else (env_address or "local")
    if address != "local":
        source = "ray.address" if cfg.address is not None else "$RAY_ADDRESS"
        ignored = [
            k for k in ("num_cpus", "num_gpus", "object_store_memory_mb") if getattr(cfg, k) is not None
        ]
        if ignored:
            log.warning(
                "Ray: %s apply to a local Ray only; ignored when joining %s", ", ".join(ignored), address
            )
        _check_reachable(address, source)
        try:
            # An explicit address must win over $RAY_ADDRESS, which ray.init only consults for None/"auto".
            ray.init(address=address, log_to_driver=cfg.log_to_driver)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise UserError(
                f"could not join the Ray cluster at {address!r} (from {source}): {e}. "
                "Check that the cluster is up (`ray status --address ...`), fix the address, or unset "
                "RAY_ADDRESS / set ray.address=local to run on an embedded local Ray."
            ) from None
        session = _session("cluster")
        log.info(
            "Ray: joined the cluster at %s (%s): %g CPUs, %g GPUs",
            session.address,
            source,
            session.num_cpus,
            session.num_gpus,
        )
        return session

    num_cpus = cfg.num_cpus or local_cpu_count()
    store_mb = cfg.object_store_memory_mb or default_object_store_mb()
    for attempt in range(1, _LOCAL_START_ATTEMPTS + 1):
        try:
            ctx = ray.init(
                address="local",  # never silently attach to a `ray start` cluster found in /tmp/ray
                num_cpus=num_cpus,
                num_gpus=cfg.num_gpus,
                object_store_memory=store_mb * 2**20,
                include_dashboard=cfg.include_dashboard,
                log_to_driver=cfg.log_to_driver,
            )
            break
        except Exception as e:  # Ray waits a fixed 30 s for its raylet; an overloaded machine can miss it
            if "timed out during startup" not in str(e) or attempt == _LOCAL_START_ATTEMPTS:
                raise
            log.warning(
                "Ray: local start timed out (machine busy?); retrying (%d/%d)", attempt, _LOCAL_START_ATTEMPTS
            )
            ray.shutdown()
    session = _session("local")
    log.info(
        "Ray: started a local Ray with %g CPUs, %g GPUs, a %d MiB object store%s",
        session.num_cpus,
        session.num_gpus,
        store_mb,
        f", dashboard at http://{ctx.dashboard_url}" if cfg.include_dashboard and ctx.dashboard_url else "",
    )
    return session


def shutdown_ray() -> None:
    """Disconnect from Ray; stops an embedded local Ray (a joined cluster keeps running)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


@contextlib.contextmanager
def ray_session(cfg: RayConfig | None = None) -> Iterator[RaySession]:
    """`with ray_session(cfg.ray) as s:` init on entry; on exit shut down what this call started or joined."""
    session = init_ray(cfg)
    try:
        yield session
    finally:
        if session.mode != "existing":
            shutdown_ray()
