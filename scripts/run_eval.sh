#!/usr/bin/env bash
# Evaluation of one split.  bash scripts/run_eval.sh CONFIG_PATH CHECKPOINT_PATH [--key=value ...]
# e.g. --split=testA --output_dir=OUT; every split at once: scripts/run_eval_all.sh.
# Paths (the arguments and path options such as --data_root, --output_dir) may be relative to the directory
# you run this from; eval.py itself runs from the repository root, where the config files' paths point.
set -euo pipefail
if [ "$#" -lt 2 ]; then
  echo "usage: bash $0 CONFIG_PATH CHECKPOINT_PATH [--split=val --output_dir=OUT ...]" >&2
  exit 2
fi
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
CONFIG_PATH="$(abs_path "$1")"; CHECKPOINT_PATH="$(abs_path "$2")"; shift 2
require_file "config file" "$CONFIG_PATH"
require_file "checkpoint" "$CHECKPOINT_PATH"
cd "$REPO_ROOT"
exec "$PYTHON_BIN" eval.py --config_path "$CONFIG_PATH" --checkpoint_path "$CHECKPOINT_PATH" "$@"
