#!/usr/bin/env bash
# Data-parallel training on an Ascend cluster node described by an HCCL rank table (hccl_tools.py).
#   bash scripts/run_distribute_train_ranktable.sh RANK_TABLE_FILE CONFIG_PATH [--key=value ...]
# The device count is read from the rank table; one process per device with DEVICE_ID / RANK_ID set.
# Logs: <LOG_DIR>/rank_<r>.log (LOG_DIR default outputs/ranktable_logs).
set -euo pipefail
if [ "$#" -lt 2 ]; then
  echo "usage: bash $0 RANK_TABLE_FILE CONFIG_PATH [--key=value ...]" >&2
  exit 2
fi
RANK_TABLE_FILE="$(realpath "$1")"; CONFIG_PATH="$2"; shift 2
[ -f "$RANK_TABLE_FILE" ] || { echo "rank table not found: $RANK_TABLE_FILE" >&2; exit 2; }
[ -f "$CONFIG_PATH" ] || { echo "config file not found: $CONFIG_PATH" >&2; exit 2; }
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON_BIN="${PYTHON_BIN:-$REPO_ROOT/.venv/bin/python}"
[ -x "$PYTHON_BIN" ] || PYTHON_BIN=python3
# Devices of this server, in rank order: "device_id rank_id" lines.
mapfile -t DEVICES < <("$PYTHON_BIN" - "$RANK_TABLE_FILE" <<'PY'
import json, sys
path = sys.argv[1]
try:
    table = json.load(open(path))
    devices = [d for server in table["server_list"] for d in server["device"]]
except (ValueError, KeyError, TypeError) as e:
    sys.exit(f"{path}: not an HCCL rank table (expected server_list[].device[]): {e}")
for d in devices:
    print(d["device_id"], d["rank_id"])
PY
)
RANK_SIZE=${#DEVICES[@]}
[ "$RANK_SIZE" -gt 0 ] || { echo "$RANK_TABLE_FILE lists no devices" >&2; exit 2; }
LOG_DIR="${LOG_DIR:-outputs/ranktable_logs}"
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
echo "started $RANK_SIZE ranks; logs in $LOG_DIR/rank_<r>.log"
failed=0
for entry in "${pids[@]}"; do
  pid="${entry%%:*}"; rank="${entry##*:}"
  if ! wait "$pid"; then
    echo "rank $rank FAILED: $(tail -n 1 "$LOG_DIR/rank_${rank}.log")" >&2
    failed=1
  fi
done
exit "$failed"
