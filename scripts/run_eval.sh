#!/usr/bin/env bash
# Evaluation.  bash scripts/run_eval.sh CONFIG_PATH CHECKPOINT_PATH [--key=value ...]
set -euo pipefail
[ "$#" -ge 2 ] || { echo "usage: bash $0 CONFIG_PATH CHECKPOINT_PATH [--split=val --output_dir=OUT ...]" >&2; exit 2; }
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON_BIN="${PYTHON_BIN:-$REPO_ROOT/.venv/bin/python}"
[ -x "$PYTHON_BIN" ] || PYTHON_BIN=python3
cd "$REPO_ROOT"
CONFIG_PATH="$1"; CHECKPOINT_PATH="$2"; shift 2
exec "$PYTHON_BIN" eval.py --config_path "$CONFIG_PATH" --checkpoint_path "$CHECKPOINT_PATH" "$@"
