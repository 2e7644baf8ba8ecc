"""The repository root is the `videopoet` package, and imports resolve the same in every launch context.

`videopoet.<folder>` is ours; a bare `tokenizers` is always Hugging Face's (our `tokenizers/` has no
`__init__.py`), in: (a) `python` started in the repository root, (b) pytest, (c) `python jobs/<job>.py`
(a script in a sub-folder), (d) the driver and Ray workers of `ray job submit --working-dir .`.
Each context runs tests/import_probe.py, which prints where the packages came from.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from videopoet.jobs.cli import JOBS

REPO_ROOT = Path(__file__).resolve().parents[1]
PROBE = REPO_ROOT / "tests" / "import_probe.py"
VENV_BIN = Path(sys.executable).parent


def _env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RAY_ADDRESS", "PYTHONPATH") and not k.startswith("RAY_AUTH")
    }
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"  # `python` in job entrypoints = this venv's
    return {**env, **extra}


def _hf_file(dist: str, rel: str) -> Path:
    return Path(importlib.metadata.distribution(dist).locate_file(rel)).resolve()


def _probe_output(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.startswith("IMPORT_PROBE ")]
    assert len(lines) == 1, f"expected one IMPORT_PROBE line in:\n{stdout[-4000:]}"
    return json.loads(lines[0].removeprefix("IMPORT_PROBE "))


def _assert_resolution(report: dict, root: Path = REPO_ROOT) -> None:
    """`videopoet` (and `videopoet.tokenizers`) from `root`; `tokenizers`, `transformers` installed ones."""
    assert Path(report["videopoet"]).resolve() == root.resolve()
    assert [Path(p).resolve() for p in report["videopoet.tokenizers"]] == [(root / "tokenizers").resolve()]
    hf = _hf_file("tokenizers", "tokenizers/__init__.py")
    assert Path(report["tokenizers"]).resolve() == hf, "bare `import tokenizers` is not Hugging Face's"
    assert Path(report["tokenizers_via_transformers"]).resolve() == hf
    assert report["tokenizers_is_hf"]
    assert Path(report["transformers"]).resolve() == _hf_file("transformers", "transformers/__init__.py")


def _run(args: list[str], cwd: Path = REPO_ROOT, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)


def test_a_python_in_repo_root():
    code = f"import runpy; runpy.run_path({str(PROBE)!r}, run_name='__main__')"
    r = _run([sys.executable, "-c", code])
    assert r.returncode == 0, r.stderr
    _assert_resolution(_probe_output(r.stdout)["driver"])


def test_b_pytest_process():
    spec = importlib.util.spec_from_file_location("import_probe", PROBE)
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    _assert_resolution(probe.where())


def test_c_script_in_a_subfolder():
    r = _run([sys.executable, str(PROBE.relative_to(REPO_ROOT))])
    assert r.returncode == 0, r.stderr
    _assert_resolution(_probe_output(r.stdout)["driver"])


@pytest.mark.parametrize("job", sorted(JOBS))
def test_c_job_scripts_run_as_files(job):
    """`python jobs/<job>.py --help` works from the repository root and from elsewhere."""
    script = REPO_ROOT / "jobs" / f"{JOBS[job]}.py"
    assert script.is_file(), f"jobs/cli.py lists {job!r} but {script} does not exist"
    for cwd in (REPO_ROOT, Path(tempfile.gettempdir())):
        r = _run(
            [sys.executable, str(script.relative_to(REPO_ROOT) if cwd == REPO_ROOT else script), "--help"],
            cwd=cwd,
        )
        assert r.returncode == 0, f"{script} --help (cwd {cwd}) failed:\n{r.stderr[-3000:]}"
        assert "config keys" in r.stdout, r.stdout[-2000:]


@pytest.mark.parametrize("folder", ["pipelines", "core", "model", "jobs"])
def test_bare_folder_import_is_refused_with_a_hint(folder):
    r = _run([sys.executable, "-c", f"import {folder}"])  # cwd = repository root, so it is on sys.path
    assert r.returncode != 0
    assert f"import this package as 'videopoet.{folder}'" in r.stderr, r.stderr[-2000:]


def test_bare_pipelines_import_raises_import_error_in_process(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO_ROOT))
    monkeypatch.delitem(sys.modules, "pipelines", raising=False)
    with pytest.raises(ImportError, match=r"videopoet\.pipelines"):
        import pipelines  # noqa: F401
    assert "pipelines" not in sys.modules


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.fixture
def ray_head():
    """A one-node Ray cluster with the job server (`ray start --head`), torn down by its own process id.

    Isolated from any other Ray on this machine: its own ports, its own temp dir (short, because Ray's
    Unix socket paths under it must stay below 108 bytes) and its own auth token (Ray 2.5x turns token
    auth on whenever ~/.ray/auth_token exists, which any earlier `ray.init()` creates; pinning it keeps
    the test independent of that). Yields the dashboard URL and the environment to reach it with.
    """
    temp_dir = tempfile.mkdtemp(prefix="vpray-", dir="/tmp")
    token = secrets.token_hex(32)
    env = _env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    # Like ray_cluster.yaml's nodes, this Ray is not a child of `uv run` as far as Ray can tell; otherwise
    # (pytest under `uv run`) its job server would start the job through `uv run` in the upload.
    env["RAY_ENABLE_UV_RUN_RUNTIME_ENV"] = "0"
    gcs, dashboard, client, agent = _free_ports(4)
    log_path = Path(temp_dir) / "ray-start.log"
    cmd = [
        str(VENV_BIN / "ray"), "start", "--head", "--block", "--disable-usage-stats",
        f"--port={gcs}", "--num-cpus=1", f"--temp-dir={temp_dir}",
        "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
        f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}",
    ]  # fmt: skip
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 300  # ~45 s on a busy 2-core machine
        ping = urllib.request.Request(f"{url}/api/version", headers={"Authorization": f"Bearer {token}"})
        while True:
            if proc.poll() is not None:
                pytest.fail(f"ray start exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(ping, timeout=5) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"Ray's job server did not come up at {url}:\n{log_path.read_text()[-4000:]}")
            time.sleep(1)
        yield url, env, Path(temp_dir)
    finally:
        proc.send_signal(signal.SIGTERM)  # `ray start --block` stops the processes it started
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=60)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # anything of that session still alive
        subprocess.run(["rm", "-rf", temp_dir], check=False)


_RAY_LOGS = ("raylet.err", "raylet.out", "runtime_env*.log", "worker-*.err", "job-driver-*.log")


def _ray_logs(temp_dir: Path) -> str:
    """Tails of the cluster's own logs, for a failure message."""
    out = []
    for name in _RAY_LOGS:
        for path in sorted((temp_dir / "session_latest" / "logs").glob(name))[-3:]:
            out.append(f"--- {path.name}\n{path.read_text(errors='replace')[-1500:]}")
    return "\n".join(out)


@pytest.mark.slow
def test_d_ray_job_submit_working_dir(ray_head):
    url, env, temp_dir = ray_head
    r = subprocess.run(
        [str(VENV_BIN / "ray"), "job", "submit", "--address", url, "--working-dir", ".", "--",
         "python", str(PROBE.relative_to(REPO_ROOT)), "--ray"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert r.returncode == 0, (
        f"ray job submit failed:\n{r.stdout[-4000:]}\n{r.stderr[-3000:]}\n{_ray_logs(temp_dir)}"
    )
    report = _probe_output(r.stdout)
    assert report["ray_mode"] == "cluster", "the job's driver must join the cluster via $RAY_ADDRESS"
    # Both run the uploaded copy of the repository, not this checkout (which is on the path via the .pth).
    root = Path(report["driver"]["videopoet"])
    assert root != REPO_ROOT and root.parent.name == "working_dir_files", root
    _assert_resolution(report["driver"], root)
    _assert_resolution(report["worker"], root)
    assert (root / "videopoet.py").is_file() and (root / "jobs" / "cli.py").is_file()
    assert not (root / ".venv").exists(), "the upload must honour .gitignore (no .venv)"
