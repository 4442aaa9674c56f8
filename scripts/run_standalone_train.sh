#!/usr/bin/env bash
# Training on one device.  bash scripts/run_standalone_train.sh CONFIG_PATH [--key=value ...]
set -euo pipefail
[ "$#" -ge 1 ] || { echo "usage: bash $0 CONFIG_PATH [--key=value ...]" >&2; exit 2; }
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON_BIN="${PYTHON_BIN:-$REPO_ROOT/.venv/bin/python}"
[ -x "$PYTHON_BIN" ] || PYTHON_BIN=python3
cd "$REPO_ROOT"
CONFIG_PATH="$1"; shift
exec "$PYTHON_BIN" train.py --config_path "$CONFIG_PATH" "$@"
