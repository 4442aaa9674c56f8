#!/usr/bin/env bash
# Sourced by the other scripts: creates .venv at the repository root when missing and installs the
# given requirement files into it (a stamp file skips the install when nothing changed).
# Usage: source scripts/_venv.sh requirements.txt [requirements-dev.txt]
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${COUPALIGN_VENV:-$REPO_ROOT/.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi
stamp_src=""
for req in "$@"; do stamp_src+="$(cat "$REPO_ROOT/$req")"; done
stamp="$VENV/.installed-$(printf '%s' "$stamp_src" | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  # Installed sizes measured on 2026-12-02 (x86_64, Python 3.11): the runtime 3.0 GB (MindSpore 2.5 GB), with the
  # test oracles 8.7 GB (PyPI's x86_64 torch is a CUDA build: torch, nvidia-* and triton 5.3 GB). Checked up
  # front so that a small disk fails in one line, not minutes into pip with half a venv.
  need_gb=3; case " $* " in *requirements-dev.txt*) need_gb=9 ;; esac
  free_gb=$(df -Pk "$VENV" | awk 'NR == 2 { print int($4 / 1048576) }')
  if [ -n "$free_gb" ] && [ "$free_gb" -lt "$need_gb" ]; then
    echo "[setup] error: installing $* needs about $need_gb GB free under $VENV; the disk has $free_gb GB." >&2
    echo "[setup] free some space, or put the environment elsewhere: COUPALIGN_VENV=/path/on/a/larger/disk" >&2
    exit 1
  fi
  echo "[setup] installing $* into $VENV (a few minutes the first time)"
  args=()
  for req in "$@"; do args+=(-r "$REPO_ROOT/$req"); done
  "$VENV/bin/python" -m pip install -q "${args[@]}"
  touch "$stamp"
fi
export PATH="$VENV/bin:$PATH"
PYTHON_BIN="$VENV/bin/python"
