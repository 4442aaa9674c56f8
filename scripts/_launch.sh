#!/usr/bin/env bash
# Sourced by the launchers (run_*_train*.sh, run_eval.sh): the repository root, the interpreter, and
# paths made absolute before the launcher changes directory.
#   abs_path P       P relative to the directory the user ran the launcher from -> absolute
#   config_value KEY CONFIG [--key=value ...]   one resolved config value (python -m src.config)
# Command-line path options (--data_root=..., --output_dir=..., --checkpoint_path=...) are resolved by
# src/config.py against COUPALIGN_ARGS_CWD, the caller's directory exported here; paths inside config
# files stay relative to the repository root, where the launchers run Python.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON_BIN="${PYTHON_BIN:-$REPO_ROOT/.venv/bin/python}"
[ -x "$PYTHON_BIN" ] || PYTHON_BIN="$(command -v python3)"
export COUPALIGN_ARGS_CWD="${COUPALIGN_ARGS_CWD:-$PWD}"

abs_path() {
  case "$1" in
    /*) printf '%s\n' "$1" ;;
    *) printf '%s\n' "$COUPALIGN_ARGS_CWD/$1" ;;
  esac
}

config_value() {
  local key="$1"; shift
  (cd "$REPO_ROOT" && "$PYTHON_BIN" -m src.config "$key" --config_path "$@")
}

require_file() {  # require_file WHAT PATH
  [ -f "$2" ] || { echo "$1 not found: $2" >&2; exit 2; }
}
