#!/usr/bin/env bash
# Evaluation of one split on DEVICE_NUM devices with msrun: every device scores its shard of the split,
# rank 0 gathers the per-sample intersections and unions and writes the same metrics.json and
# per_sample.csv a single process would (src/engine/evaluator.py: merge_shards).
#   bash scripts/run_distribute_eval.sh DEVICE_NUM CONFIG_PATH CHECKPOINT_PATH [--split=val --eval.output_dir=OUT ...]
# Paths may be relative to the directory you run this from; several machines as in run_distribute_train.sh.
set -euo pipefail
if [ "$#" -lt 3 ]; then
  echo "usage: bash $0 DEVICE_NUM CONFIG_PATH CHECKPOINT_PATH [--key=value ...]" >&2
  exit 2
fi
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
DEVICE_NUM="$1"; CONFIG_PATH="$(abs_path "$2")"; CHECKPOINT_PATH="$(abs_path "$3")"; shift 3
require_file "checkpoint" "$CHECKPOINT_PATH"
msrun_launch eval.py "$DEVICE_NUM" "$CONFIG_PATH" --checkpoint_path="$CHECKPOINT_PATH" "$@"
