#!/usr/bin/env bash
# Evaluation of every split of the configured dataset, and one combined table:
#   bash scripts/run_eval_all.sh CONFIG_PATH CHECKPOINT_PATH OUT_DIR [--key=value ...]
# Splits from data.dataset / data.split_by: refcoco, refcoco+ (unc): val testA testB; refcocog (umd): val test;
# refcocog, refcoco (google): val. A split the refs file does not hold is reported and skipped.
# Writes OUT_DIR/<split>/{metrics.json,per_sample.csv,eval.log} (one eval.py run per split) and
# OUT_DIR/results.md + results.json: rows = splits, P@0.5..0.9 oIoU mIoU at input and original resolution,
# the paper's oIoU beside ours for RefCOCO / RefCOCO+ / G-Ref umd (comparable on the real data only).
# The --key=value options go to every eval.py run (e.g. --data_root=/data/refer --eval.batch_size=4).
# Paths (the arguments and path options) may be relative to the directory you run this from.
set -euo pipefail
if [ "$#" -lt 3 ]; then
  echo "usage: bash $0 CONFIG_PATH CHECKPOINT_PATH OUT_DIR [--key=value ...]" >&2
  exit 2
fi
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
CONFIG_PATH="$(abs_path "$1")"; CHECKPOINT_PATH="$(abs_path "$2")"; OUT_DIR="$(abs_path "$3")"; shift 3
require_file "config file" "$CONFIG_PATH"
require_file "checkpoint" "$CHECKPOINT_PATH"
cd "$REPO_ROOT"
exec "$PYTHON_BIN" tools/eval_all.py --config_path "$CONFIG_PATH" --checkpoint_path "$CHECKPOINT_PATH" \
  --results_dir "$OUT_DIR" "$@"
