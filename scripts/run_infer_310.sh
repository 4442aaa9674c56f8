#!/usr/bin/env bash
# Ascend 310 (or Lite GPU/CPU) inference over one split, end to end:
#   bash scripts/run_infer_310.sh MINDIR DATA_ROOT DATASET SPLIT_BY SPLIT [DEVICE_TYPE] [DEVICE_ID]
# builds ascend310_infer/ (needs MS_LITE_HOME), writes the .bin inputs (preprocess.py), runs the C++
# program, and computes eval.py's metrics from its logits (postprocess.py).
# CONFIG_PATH (default default_config.yaml) must be the config the MINDIR was exported with (image size,
# tokens, vocabulary). Outputs go to OUT_DIR (default outputs/infer_310).
set -euo pipefail
if [ "$#" -lt 5 ]; then
  echo "usage: bash $0 MINDIR DATA_ROOT DATASET SPLIT_BY SPLIT [DEVICE_TYPE=Ascend] [DEVICE_ID=0]" >&2
  exit 2
fi
MINDIR="$(realpath "$1")"; DATA_ROOT="$2"; DATASET="$3"; SPLIT_BY="$4"; SPLIT="$5"
DEVICE_TYPE="${6:-Ascend}"; DEVICE_ID="${7:-0}"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON_BIN="${PYTHON_BIN:-$REPO_ROOT/.venv/bin/python}"
[ -x "$PYTHON_BIN" ] || PYTHON_BIN=python3
CONFIG_PATH="${CONFIG_PATH:-default_config.yaml}"
OUT_DIR="${OUT_DIR:-outputs/infer_310}"
cd "$REPO_ROOT"
[ -f "$MINDIR" ] || { echo "MINDIR not found: $MINDIR" >&2; exit 2; }

bash ascend310_infer/build.sh
"$PYTHON_BIN" preprocess.py --config_path "$CONFIG_PATH" --data_root="$DATA_ROOT" --dataset="$DATASET" \
  --split_by="$SPLIT_BY" --split="$SPLIT" --output_path "$OUT_DIR/preprocess"
ascend310_infer/out/main --mindir_path "$MINDIR" --input_dir "$OUT_DIR/preprocess" \
  --output_dir "$OUT_DIR/result" --device_type "$DEVICE_TYPE" --device_id "$DEVICE_ID"
"$PYTHON_BIN" postprocess.py --config_path "$CONFIG_PATH" --preprocess_path "$OUT_DIR/preprocess" \
  --result_path "$OUT_DIR/result" --output_dir "$OUT_DIR/metrics"
