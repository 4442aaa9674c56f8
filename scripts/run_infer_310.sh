#!/usr/bin/env bash
# Ascend 310 (or MindSpore Lite CPU) inference over one split, end to end:
#   bash scripts/run_infer_310.sh MINDIR DATA_ROOT DATASET SPLIT_BY SPLIT [DEVICE_TYPE=Ascend] [DEVICE_ID=0]
# Steps, each logging to OUT_DIR (model-zoo layout):
#   1. build ascend310_infer/ with build.sh (needs MS_LITE_HOME)             -> OUT_DIR/build.log
#      skipped while the binary is newer than ascend310_infer/src, CMakeLists.txt and build.sh;
#      FORCE_BUILD=1 rebuilds anyway (e.g. after switching MS_LITE_HOME to another Lite release)
#   2. preprocess.py: one image .bin per image, sentence inputs per sample    -> OUT_DIR/preprocess.log
#      SKIP_PREPROCESS=auto (default) reuses OUT_DIR/preprocess when its stamp matches these arguments,
#      0 always redoes it, 1 reuses any complete preprocessing there
#   3. the C++ program: logits per sample in OUT_DIR/result, latency.txt      -> OUT_DIR/infer.log
#      with CONVERT=1 (Ascend only) the MINDIR first goes through converter_lite --optimize=ascend_oriented
#      (scripts/convert_mindir_ascend.sh, cached by the MINDIR's sha256 under OUT_DIR/converted)
#   4. postprocess.py: eval.py's metrics in OUT_DIR/metrics/metrics.json      -> OUT_DIR/acc.log
# Environment:
#   CONFIG_PATH  the config the MINDIR was exported with (image size, tokens, vocabulary);
#                default default_config.yaml of the repository
#   OUT_DIR      default outputs/infer_310 of the repository
#   CPU_THREADS  Lite's thread count for DEVICE_TYPE=CPU (default: the runtime's choice)
#   PRECISION_MODE  Lite's Ascend precision mode (default preferred_fp32: element-wise operators stay float32;
#                Lite's own default enforce_fp16 would compute the deformable sampling's locations in float16)
#   CONVERT      1: convert the MINDIR for Ascend ahead of time (needs converter_lite: CONVERTER_LITE or
#                MS_LITE_HOME); 0 (default): Lite compiles it at every start
#   INFER_BUILD_DIR, INFER_BIN_DIR  CMake folder and folder of `main` (default ascend310_infer/build, /out)
# Relative paths (the arguments, CONFIG_PATH, OUT_DIR) are relative to the directory you run this from.
set -euo pipefail
if [ "$#" -lt 5 ]; then
  echo "usage: bash $0 MINDIR DATA_ROOT DATASET SPLIT_BY SPLIT [DEVICE_TYPE=Ascend] [DEVICE_ID=0]" >&2
  exit 2
fi
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
# Every path is made absolute before the cd below.
MINDIR="$(abs_path "$1")"; DATA_ROOT="$(abs_path "$2")"; DATASET="$3"; SPLIT_BY="$4"; SPLIT="$5"
DEVICE_TYPE="${6:-Ascend}"; DEVICE_ID="${7:-0}"
PRECISION_MODE="${PRECISION_MODE:-preferred_fp32}"; CONVERT="${CONVERT:-0}"
case "$DEVICE_TYPE" in
  Ascend|ascend|CPU|cpu) ;;
  GPU|gpu) echo "DEVICE_TYPE GPU: MindSpore Lite 2.10's cloud inference has no NVIDIA GPU backend (Ascend and CPU" \
                "only); on a GPU use tools/run_mindir_bins.py --device_target GPU (README, Ascend 310 inference)" >&2
           exit 2 ;;
  *) echo "DEVICE_TYPE must be Ascend or CPU, got '$DEVICE_TYPE'" >&2; exit 2 ;;
esac
case "$CONVERT" in
  0) ;;
  1) case "$DEVICE_TYPE" in Ascend|ascend) ;; *) echo "CONVERT=1 compiles for Ascend: it needs DEVICE_TYPE=Ascend" >&2; exit 2 ;; esac ;;
  *) echo "CONVERT must be 0 or 1, got '$CONVERT'" >&2; exit 2 ;;
esac
CONFIG_PATH="$(abs_path "${CONFIG_PATH:-$REPO_ROOT/default_config.yaml}")"
OUT_DIR="$(abs_path "${OUT_DIR:-$REPO_ROOT/outputs/infer_310}")"
INFER_BUILD_DIR="$(abs_path "${INFER_BUILD_DIR:-$REPO_ROOT/ascend310_infer/build}")"
INFER_BIN_DIR="$(abs_path "${INFER_BIN_DIR:-$REPO_ROOT/ascend310_infer/out}")"
SKIP_PREPROCESS="${SKIP_PREPROCESS:-auto}"
case "$SKIP_PREPROCESS" in
  auto) REUSE=auto ;; 0) REUSE=never ;; 1) REUSE=always ;;
  *) echo "SKIP_PREPROCESS must be auto, 0 or 1, got '$SKIP_PREPROCESS'" >&2; exit 2 ;;
esac
require_file "MINDIR" "$MINDIR"
require_file "config file (CONFIG_PATH)" "$CONFIG_PATH"
[ -d "$DATA_ROOT" ] || { echo "DATA_ROOT is not a directory: $DATA_ROOT" >&2; exit 2; }
mkdir -p "$OUT_DIR"
cd "$REPO_ROOT"

# Runs "$@" with its output in the log file $1; on failure shows the log's end and where it is.
step() {
  local log="$1" status=0; shift
  "$@" > "$log" 2>&1 || status=$?
  if [ "$status" -ne 0 ]; then
    echo "failed (exit status $status): $*" >&2
    echo "--- the end of $log:" >&2
    tail -n 25 "$log" >&2
    exit 1
  fi
}

BIN="$INFER_BIN_DIR/main"
SOURCES=(ascend310_infer/src ascend310_infer/CMakeLists.txt ascend310_infer/build.sh)
if [ "${FORCE_BUILD:-0}" != 1 ] && [ -x "$BIN" ] && [ -z "$(find "${SOURCES[@]}" -newer "$BIN" -print -quit)" ]; then
  echo "[1/4] $BIN is newer than its sources: not rebuilt (FORCE_BUILD=1 rebuilds)"
else
  echo "[1/4] building $BIN (log: $OUT_DIR/build.log)"
  # build.sh reads BUILD_DIR/OUT_DIR; set them explicitly so this script's OUT_DIR never leaks into them.
  step "$OUT_DIR/build.log" env BUILD_DIR="$INFER_BUILD_DIR" OUT_DIR="$INFER_BIN_DIR" bash ascend310_infer/build.sh
fi

echo "[2/4] preprocessing $DATASET($SPLIT_BY) $SPLIT into $OUT_DIR/preprocess (SKIP_PREPROCESS=$SKIP_PREPROCESS)"
step "$OUT_DIR/preprocess.log" "$PYTHON_BIN" preprocess.py --config_path "$CONFIG_PATH" --data_root="$DATA_ROOT" \
  --dataset="$DATASET" --split_by="$SPLIT_BY" --split="$SPLIT" --output_path "$OUT_DIR/preprocess" --reuse "$REUSE"
tail -n 1 "$OUT_DIR/preprocess.log"

MODEL="$MINDIR"
if [ "$CONVERT" = 1 ]; then
  MODEL="$(CACHE_DIR="$OUT_DIR/converted" bash scripts/convert_mindir_ascend.sh "$MINDIR" "$PRECISION_MODE")"
fi
echo "[3/4] running $MODEL on $DEVICE_TYPE $DEVICE_ID (precision_mode $PRECISION_MODE on Ascend)"
THREADS=()
[ -n "${CPU_THREADS:-}" ] && THREADS=(--cpu_threads "$CPU_THREADS")
step "$OUT_DIR/infer.log" "$BIN" --mindir_path "$MODEL" --input_dir "$OUT_DIR/preprocess" \
  --output_dir "$OUT_DIR/result" --device_type "$DEVICE_TYPE" --device_id "$DEVICE_ID" \
  --precision_mode "$PRECISION_MODE" ${THREADS[@]+"${THREADS[@]}"}
grep -h "Mean latency" "$OUT_DIR/infer.log" || true

echo "[4/4] computing the metrics"
step "$OUT_DIR/acc.log" "$PYTHON_BIN" postprocess.py --config_path "$CONFIG_PATH" \
  --preprocess_path "$OUT_DIR/preprocess" --result_path "$OUT_DIR/result" --output_dir "$OUT_DIR/metrics"
cat "$OUT_DIR/acc.log"
echo "logs: $OUT_DIR/preprocess.log, infer.log, acc.log (and build.log when built)"
echo "metrics: $OUT_DIR/metrics/metrics.json"
