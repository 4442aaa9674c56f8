#!/usr/bin/env bash
# Data-parallel training on Ascend servers described by an HCCL rank table (hccl_tools.py).
#   bash scripts/run_distribute_train_ranktable.sh RANK_TABLE_FILE CONFIG_PATH [--key=value ...]
# Run it on every server of the table: each starts only its own devices' ranks (one process per device,
# DEVICE_ID / RANK_ID / RANK_SIZE / RANK_TABLE_FILE set). The server is found by SERVER_ID (its
# server_id in the table, or its position), else by this host's addresses (src/utils/rank_table.py).
# Paths may be relative to the directory you run this from. Logs: LOG_DIR/rank_<r>.log, LOG_DIR
# defaulting to <output_dir>/ranktable_logs/<date-time> (a new directory per launch).
# Each process is bound (taskset) to its own equal share of the cores this script may use, in device order:
# the data pipeline's workers of one rank then do not compete with another's. BIND_CORE=False: no binding.
# HCCL_CONNECT_TIMEOUT (seconds, default 600 here) is exported by _launch.sh.
set -euo pipefail
if [ "$#" -lt 2 ]; then
  echo "usage: bash $0 RANK_TABLE_FILE CONFIG_PATH [--key=value ...]   (SERVER_ID=<id> on multi-server tables)" >&2
  exit 2
fi
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
RANK_TABLE_FILE="$(abs_path "$1")"; CONFIG_PATH="$(abs_path "$2")"; shift 2
require_file "rank table" "$RANK_TABLE_FILE"
require_file "config file" "$CONFIG_PATH"
# First line: RANK_SIZE of the job; then "device_id rank_id" for each device of this server.
mapfile -t TABLE < <(cd "$REPO_ROOT" && "$PYTHON_BIN" -m src.utils.rank_table "$RANK_TABLE_FILE")
[ "${#TABLE[@]}" -ge 2 ] || exit 2  # the error was printed by the reader
RANK_SIZE="${TABLE[0]}"; DEVICES=("${TABLE[@]:1}")
OUTPUT_DIR="$(config_value output_dir "$CONFIG_PATH" "$@")"
case "$OUTPUT_DIR" in /*) ;; *) OUTPUT_DIR="$REPO_ROOT/$OUTPUT_DIR" ;; esac
LOG_DIR="$(abs_path "${LOG_DIR:-$OUTPUT_DIR/ranktable_logs/$(date +%Y%m%d-%H%M%S)}")"
mkdir -p "$LOG_DIR"
cd "$REPO_ROOT"
export RANK_TABLE_FILE RANK_SIZE
# The cores this script may run on (its affinity), split into one contiguous share per local device.
read -r -a CORES <<<"$("$PYTHON_BIN" -c 'import os; print(*sorted(os.sched_getaffinity(0)))')"
PER_RANK=$(( ${#CORES[@]} / ${#DEVICES[@]} ))
BIND=()
if [ "${BIND_CORE:-True}" != False ] && [ "${BIND_CORE:-True}" != false ]; then
  if ! command -v taskset >/dev/null; then
    echo "BIND_CORE: taskset not found, the ranks are not bound to cores" >&2
  elif [ "$PER_RANK" -lt 1 ]; then
    echo "BIND_CORE: ${#CORES[@]} cores for ${#DEVICES[@]} ranks, the ranks are not bound to cores" >&2
  else
    BIND=(taskset -c)
  fi
fi
pids=()
local_index=0
for entry in "${DEVICES[@]}"; do
  read -r device_id rank_id <<<"$entry"
  prefix=()
  if [ "${#BIND[@]}" -gt 0 ]; then
    share=("${CORES[@]:$((local_index * PER_RANK)):$PER_RANK}")
    prefix=("${BIND[@]}" "$(IFS=,; echo "${share[*]}")")
  fi
  DEVICE_ID=$device_id RANK_ID=$rank_id ${prefix[@]+"${prefix[@]}"} "$PYTHON_BIN" train.py --config_path "$CONFIG_PATH" \
    --distribute=true --device_id="$device_id" "$@" > "$LOG_DIR/rank_${rank_id}.log" 2>&1 &
  pids+=("$!:$rank_id")
  local_index=$((local_index + 1))
done
echo "started ${#DEVICES[@]} of $RANK_SIZE ranks on this server; logs in $LOG_DIR/rank_<r>.log" \
  "(cores per rank: $([ "${#BIND[@]}" -gt 0 ] && echo "$PER_RANK" || echo "not bound"), HCCL_CONNECT_TIMEOUT=$HCCL_CONNECT_TIMEOUT)"
failed=0
for entry in "${pids[@]}"; do
  pid="${entry%%:*}"; rank="${entry##*:}"
  if ! wait "$pid"; then
    echo "rank $rank FAILED: $(tail -n 1 "$LOG_DIR/rank_${rank}.log")" >&2
    failed=1
  fi
done
exit "$failed"
