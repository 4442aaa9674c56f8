#!/usr/bin/env bash
# Training on one device.  bash scripts/run_standalone_train.sh CONFIG_PATH [--key=value ...]
# Paths may be relative to the directory you run this from (cd scripts && bash run_standalone_train.sh
# ../configs/quickstart_cpu.yaml --data_root=../data/synthetic works).
set -euo pipefail
[ "$#" -ge 1 ] || { echo "usage: bash $0 CONFIG_PATH [--key=value ...]" >&2; exit 2; }
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
CONFIG_PATH="$(abs_path "$1")"; shift
require_file "config file" "$CONFIG_PATH"
cd "$REPO_ROOT"
exec "$PYTHON_BIN" train.py --config_path "$CONFIG_PATH" "$@"
