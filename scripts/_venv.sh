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
  echo "[setup] installing $* into $VENV (a few minutes the first time)"
  args=()
  for req in "$@"; do args+=(-r "$REPO_ROOT/$req"); done
  "$VENV/bin/python" -m pip install -q "${args[@]}"
  touch "$stamp"
fi
export PATH="$VENV/bin:$PATH"
PYTHON_BIN="$VENV/bin/python"
