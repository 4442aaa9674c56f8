#!/usr/bin/env bash
# Sourced by the launchers (run_*_train*.sh, run_eval.sh): the repository root, the interpreter, and
# paths made absolute before the launcher changes directory.
#   abs_path P       P relative to the directory the user ran the launcher from -> absolute
#   config_value KEY CONFIG [--key=value ...]   one resolved config value (python -m src.config)
# Command-line path options (--data_root=..., --output_dir=..., --checkpoint_path=...) are resolved by
# src/config/ against COUPALIGN_ARGS_CWD, the caller's directory exported here; paths inside config
# files stay relative to the repository root, where the launchers run Python.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON_BIN="${PYTHON_BIN:-$REPO_ROOT/.venv/bin/python}"
[ -x "$PYTHON_BIN" ] || PYTHON_BIN="$(command -v python3)"
export COUPALIGN_ARGS_CWD="${COUPALIGN_ARGS_CWD:-$PWD}"
# Seconds HCCL waits at start-up for every rank to join (its default, 120, is short when the servers of a job
# start seconds to minutes apart, or one compiles longer). Ascend only; an exported value wins.
export HCCL_CONNECT_TIMEOUT="${HCCL_CONNECT_TIMEOUT:-600}"

abs_path() {  # normalised (no "..": messages and logs name the real place), the path need not exist yet
  case "$1" in
    /*) realpath -m -- "$1" ;;
    *) realpath -m -- "$COUPALIGN_ARGS_CWD/$1" ;;
  esac
}

config_value() {
  local key="$1"; shift
  (cd "$REPO_ROOT" && "$PYTHON_BIN" -m src.config "$key" --config_path "$@")
}

require_file() {  # require_file WHAT PATH
  [ -f "$2" ] || { echo "$1 not found: $2" >&2; exit 2; }
}

# msrun_launch ENTRY DEVICE_NUM CONFIG_PATH [--key=value ...]: ENTRY (train.py, eval.py) on DEVICE_NUM
# workers of this machine with --distribute=true; several machines with NODE_NUM, NODE_RANK and
# MASTER_ADDR (same command on every node). LOG_DIR defaults to a new <output_dir>/msrun_logs/<date-time>
# per launch, so the failure summary below never reads an older run's logs.
msrun_launch() {
  local entry="$1" device_num="$2" config_path="$3"; shift 3
  local node_num="${NODE_NUM:-1}" node_rank="${NODE_RANK:-0}" pair
  for pair in "DEVICE_NUM:$device_num" "NODE_NUM:$node_num" "NODE_RANK:$node_rank"; do
    case "${pair#*:}" in ''|*[!0-9]*) echo "${pair%%:*} must be a non-negative integer, got '${pair#*:}'" >&2; exit 2;; esac
  done
  [ "$device_num" -ge 1 ] && [ "$node_num" -ge 1 ] || { echo "DEVICE_NUM and NODE_NUM must be >= 1" >&2; exit 2; }
  [ "$node_rank" -lt "$node_num" ] || { echo "NODE_RANK=$node_rank must be below NODE_NUM=$node_num" >&2; exit 2; }
  if [ "$node_num" -gt 1 ] && [ -z "${MASTER_ADDR:-}" ]; then
    echo "NODE_NUM=$node_num: set MASTER_ADDR to the address of node 0 (the same on every node)" >&2; exit 2
  fi
  require_file "config file" "$config_path"
  local output_dir log_dir msrun status log rank
  output_dir="$(config_value output_dir "$config_path" "$@")"
  case "$output_dir" in /*) ;; *) output_dir="$REPO_ROOT/$output_dir" ;; esac
  log_dir="$(abs_path "${LOG_DIR:-$output_dir/msrun_logs/$(date +%Y%m%d-%H%M%S)-${entry%.py}-node$node_rank}")"
  mkdir -p "$log_dir"
  msrun="${MSRUN:-$(dirname "$PYTHON_BIN")/msrun}"; [ -x "$msrun" ] || msrun=msrun
  # msrun starts each worker with the `python` found on PATH: make it the project's interpreter.
  export PATH="$(dirname "$PYTHON_BIN"):$PATH"
  cd "$REPO_ROOT"
  echo "msrun $entry: $((device_num * node_num)) workers ($device_num on node $node_rank of $node_num); logs in $log_dir"
  set +e
  # --bind_core: msrun gives each worker its own share of this machine's cores (BIND_CORE=False: no binding; a
  # JSON dict: msrun's explicit per-device core lists).
  "$msrun" --worker_num="$((device_num * node_num))" --local_worker_num="$device_num" \
    --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="${MASTER_PORT:-8118}" --node_rank="$node_rank" \
    --log_dir="$log_dir" --join=True --bind_core="${BIND_CORE:-True}" \
    "$entry" --config_path "$config_path" --distribute=true "$@"
  status=$?
  set -e
  if [ "$status" -ne 0 ]; then
    echo "distributed $entry failed (msrun exit $status); per-rank status:" >&2
    for log in "$log_dir"/worker_*.log; do
      [ -f "$log" ] || continue
      rank="${log##*worker_}"; rank="${rank%.log}"
      if grep -qE "Traceback|^error:|Error:" "$log"; then
        echo "  rank $rank FAILED: $(grep -E "^error:|Error" "$log" | tail -n 1)" >&2
      else
        echo "  rank $rank: no error in its log (stopped because another rank failed)" >&2
      fi
    done
    echo "full logs: $log_dir/worker_<rank>.log" >&2
  fi
  return "$status"
}
