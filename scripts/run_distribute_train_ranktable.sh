#!/usr/bin/env bash
# Data-parallel training on Ascend servers described by an HCCL rank table (hccl_tools.py).
#   bash scripts/run_distribute_train_ranktable.sh RANK_TABLE_FILE CONFIG_PATH [--key=value ...]
# Run it on every server of the table: each starts only its own devices' ranks (one process per device,
# DEVICE_ID / RANK_ID / RANK_SIZE / RANK_TABLE_FILE set). The server is found by SERVER_ID (its
# server_id in the table, or its position), else by this host's addresses (src/utils/rank_table.py).
# Paths may be relative to the directory you run this from. Logs: LOG_DIR/rank_<r>.log, LOG_DIR
# defaulting to <output_dir>/ranktable_logs/<date-time> (a new directory per launch).
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
pids=()
for entry in "${DEVICES[@]}"; do
  read -r device_id rank_id <<<"$entry"
  DEVICE_ID=$device_id RANK_ID=$rank_id "$PYTHON_BIN" train.py --config_path "$CONFIG_PATH" --distribute=true \
    --device_id="$device_id" "$@" > "$LOG_DIR/rank_${rank_id}.log" 2>&1 &
  pids+=("$!:$rank_id")
done
echo "started ${#DEVICES[@]} of $RANK_SIZE ranks on this server; logs in $LOG_DIR/rank_<r>.log"
failed=0
for entry in "${pids[@]}"; do
  pid="${entry%%:*}"; rank="${entry##*:}"
  if ! wait "$pid"; then
    echo "rank $rank FAILED: $(tail -n 1 "$LOG_DIR/rank_${rank}.log")" >&2
    failed=1
  fi
done
exit "$failed"
