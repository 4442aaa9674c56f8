#!/usr/bin/env bash
# Data-parallel training with msrun (Ascend, GPU or CPU), on one machine or several.
#   bash scripts/run_distribute_train.sh DEVICE_NUM CONFIG_PATH [--key=value ...]
# DEVICE_NUM is the number of devices (workers) on THIS machine. Several machines: run the same command
# on each with
#   NODE_NUM=2 NODE_RANK=0|1 MASTER_ADDR=<address of node 0> [MASTER_PORT=8118]
# (every node uses the same DEVICE_NUM; node 0 hosts the msrun scheduler). msrun gives each worker a free
# device of its machine (device_id stays null in the config).
# Paths (CONFIG_PATH, --data_root=..., --output_dir=...) may be relative to the directory you run this
# from. Logs: msrun's per-worker console in LOG_DIR/worker_<r>.log, LOG_DIR defaulting to
# <output_dir>/msrun_logs/<date-time> (a new directory per launch, so a failure summary never reads an
# older run's logs); every rank also writes <output_dir>/logs/rank_<r>.log, rank 0 <output_dir>/train.log.
# The global batch is train.batch_size (per device) x DEVICE_NUM x NODE_NUM x train.accumulate_steps; the
# LAVT recipe is 4 x 8 = 32.
set -euo pipefail
if [ "$#" -lt 2 ]; then
  echo "usage: bash $0 DEVICE_NUM CONFIG_PATH [--key=value ...]   (multi-node: NODE_NUM, NODE_RANK, MASTER_ADDR)" >&2
  exit 2
fi
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
DEVICE_NUM="$1"; CONFIG_PATH="$(abs_path "$2")"; shift 2
NODE_NUM="${NODE_NUM:-1}"; NODE_RANK="${NODE_RANK:-0}"
for pair in "DEVICE_NUM:$DEVICE_NUM" "NODE_NUM:$NODE_NUM" "NODE_RANK:$NODE_RANK"; do
  case "${pair#*:}" in ''|*[!0-9]*) echo "${pair%%:*} must be a non-negative integer, got '${pair#*:}'" >&2; exit 2;; esac
done
[ "$DEVICE_NUM" -ge 1 ] && [ "$NODE_NUM" -ge 1 ] || { echo "DEVICE_NUM and NODE_NUM must be >= 1" >&2; exit 2; }
[ "$NODE_RANK" -lt "$NODE_NUM" ] || { echo "NODE_RANK=$NODE_RANK must be below NODE_NUM=$NODE_NUM" >&2; exit 2; }
if [ "$NODE_NUM" -gt 1 ] && [ -z "${MASTER_ADDR:-}" ]; then
  echo "NODE_NUM=$NODE_NUM: set MASTER_ADDR to the address of node 0 (the same on every node)" >&2; exit 2
fi
require_file "config file" "$CONFIG_PATH"
OUTPUT_DIR="$(config_value output_dir "$CONFIG_PATH" "$@")"
case "$OUTPUT_DIR" in /*) ;; *) OUTPUT_DIR="$REPO_ROOT/$OUTPUT_DIR" ;; esac
LOG_DIR="$(abs_path "${LOG_DIR:-$OUTPUT_DIR/msrun_logs/$(date +%Y%m%d-%H%M%S)-node$NODE_RANK}")"
mkdir -p "$LOG_DIR"
MSRUN="${MSRUN:-$(dirname "$PYTHON_BIN")/msrun}"; [ -x "$MSRUN" ] || MSRUN=msrun
# msrun starts each worker with the `python` found on PATH: make it the project's interpreter.
export PATH="$(dirname "$PYTHON_BIN"):$PATH"
cd "$REPO_ROOT"
echo "msrun: $((DEVICE_NUM * NODE_NUM)) workers ($DEVICE_NUM on node $NODE_RANK of $NODE_NUM); logs in $LOG_DIR"
set +e
"$MSRUN" --worker_num="$((DEVICE_NUM * NODE_NUM))" --local_worker_num="$DEVICE_NUM" \
  --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="${MASTER_PORT:-8118}" --node_rank="$NODE_RANK" \
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
