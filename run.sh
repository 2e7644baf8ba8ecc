#!/usr/bin/env bash
# Run a command inside the project's locked environment, setting it up first on a fresh machine:
#   ./run.sh videopoet demo        ./run.sh pytest        ./run.sh python jobs/curate.py --help
# Bootstraps `uv` when missing (pip --user, else a private venv), then `uv run --frozen` syncs .venv
# from uv.lock (torch + torchvision from the registry; they run on CPU) and runs the command.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

find_uv() {
  command -v uv 2>/dev/null && return 0
  for c in "$HOME/.local/bin/uv" ".cache/uv-bootstrap/bin/uv"; do [ -x "$c" ] && { echo "$c"; return 0; }; done
  return 1
}

UV=$(find_uv) || {
  PY=$(command -v python3 || true)
  [ -n "$PY" ] || { echo "run.sh: python3 is required (Debian/Ubuntu: apt-get install python3)" >&2; exit 1; }
  echo "run.sh: uv not found; installing it (one time)" >&2
  if "$PY" -m pip --version >/dev/null 2>&1 && "$PY" -m pip install --user --quiet uv 2>/dev/null; then :
  elif "$PY" -m venv .cache/uv-bootstrap >/dev/null 2>&1 && .cache/uv-bootstrap/bin/pip install --quiet uv; then :
  else
    echo "run.sh: could not install uv: need pip or venv (Debian/Ubuntu: apt-get install python3-pip python3-venv)," >&2
    echo "        or install uv yourself: https://docs.astral.sh/uv/getting-started/installation/" >&2
    exit 1
  fi
  UV=$(find_uv) || { echo "run.sh: uv installed but not found on PATH or ~/.local/bin" >&2; exit 1; }
}

# uv on PATH for what runs below too (jobs and tests that start `uv run`), wherever it was found or installed
PATH="$(cd "$(dirname "$UV")" && pwd):$PATH"
export PATH

# Sync .venv from uv.lock when the lock, pyproject.toml or the venv changed since the last sync, then run
# without re-checking (a re-check reinstalls decord on every call: its wheel's tags do not match its name).
# --extra dev: tests and lint live in the same environment; harmless for the main job.
STAMP=.venv/.run-sh-synced
KEY=$(cat uv.lock pyproject.toml | { sha256sum 2>/dev/null || shasum -a 256; } | cut -c1-64)
if [ ! -x .venv/bin/python ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$KEY" ]; then
  [ -x .venv/bin/python ] || echo "run.sh: creating .venv from uv.lock (one time; the first run downloads" \
    "about 3 GB: torch and its CUDA libraries, which also run on CPU-only machines)" >&2
  "$UV" sync --frozen --extra dev
  echo "$KEY" >"$STAMP"
fi
exec "$UV" run --frozen --extra dev --no-sync "$@"
