#!/usr/bin/env bash
# Data-parallel training on DEVICE_NUM devices of this machine with msrun (Ascend, GPU or CPU).
#   bash scripts/run_distribute_train.sh DEVICE_NUM CONFIG_PATH [--key=value ...]
# Environment: MASTER_PORT (default 8118), LOG_DIR (default <output_dir>/msrun_logs or outputs/msrun_logs).
# The global batch is train.batch_size (per device) x DEVICE_NUM x train.accumulate_steps; the LAVT
# recipe is 4 x 8 = 32. Checkpoints and the main log come from rank 0; every rank also writes
# <output_dir>/logs/rank_<r>.log, and msrun keeps each worker's console in LOG_DIR/worker_<r>.log.
set -euo pipefail
if [ "$#" -lt 2 ]; then
  echo "usage: bash $0 DEVICE_NUM CONFIG_PATH [--key=value ...]" >&2
  exit 2
fi
DEVICE_NUM="$1"; CONFIG_PATH="$2"; shift 2
case "$DEVICE_NUM" in ''|*[!0-9]*) echo "DEVICE_NUM must be a positive integer, got '$DEVICE_NUM'" >&2; exit 2;; esac
[ -f "$CONFIG_PATH" ] || { echo "config file not found: $CONFIG_PATH" >&2; exit 2; }
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON_BIN="${PYTHON_BIN:-$REPO_ROOT/.venv/bin/python}"
[ -x "$PYTHON_BIN" ] || PYTHON_BIN=python3
MSRUN="$(dirname "$PYTHON_BIN")/msrun"; [ -x "$MSRUN" ] || MSRUN=msrun
# msrun starts each worker with the `python` found on PATH: make it the project's interpreter.
export PATH="$(dirname "$PYTHON_BIN"):$PATH"
LOG_DIR="${LOG_DIR:-outputs/msrun_logs}"
mkdir -p "$LOG_DIR"
cd "$REPO_ROOT"
set +e
"$MSRUN" --worker_num="$DEVICE_NUM" --local_worker_num="$DEVICE_NUM" --master_port="${MASTER_PORT:-8118}" \
  --log_dir="$LOG_DIR" --join=True \
  train.py --config_path "$CONFIG_PATH" --distribute=true "$@"
status=$?
set -e
if [ "$status" -ne 0 ]; then
  echo "distributed training failed (msrun exit $status); per-rank status:" >&2
  for log in "$LOG_DIR"/worker_*.log; do
    [ -f "$log" ] || continue
    rank="${log##*worker_}"; rank="${rank%.log}"
    if grep -qE "Traceback|^error:|Error:" "$log"; then
      echo "  rank $rank FAILED: $(grep -E "^error:|Error" "$log" | tail -n 1)" >&2
    else
      echo "  rank $rank: no error in its log (stopped because another rank failed)" >&2
    fi
  done
  echo "full logs: $LOG_DIR/worker_<rank>.log" >&2
fi
exit "$status"
