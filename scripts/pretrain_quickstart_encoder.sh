#!/usr/bin/env bash
# Regenerates the quickstart's pretrained image encoder, weights/quickstart_convnet.ckpt (weights/README.md):
#   bash scripts/pretrain_quickstart_encoder.sh [OUT]      (default OUT=weights/quickstart_convnet.ckpt)
# 1. a synthetic corpus disjoint from the quickstart's (generator seed 1001, 2,400 images; the quickstart uses
#    seed 0, 600 images) in data/synthetic_pretrain;
# 2. the quickstart config's image encoder learns to segment that corpus' train split by object category and
#    colour (tools/pretrain_visual.py, 2,000 steps), then its weights are written to OUT; prints their sha256.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh" requirements.txt
cd "$REPO_ROOT"
OUT="${1:-weights/quickstart_convnet.ckpt}"
DATA="${PRETRAIN_DATA:-data/synthetic_pretrain}"
export GLOG_v="${GLOG_v:-3}"
if [ ! -f "$DATA/refcoco/refs(unc).p" ]; then
  "$PYTHON_BIN" tools/make_synthetic_refer.py --out "$DATA" --images 2400 --seed 1001
fi
"$PYTHON_BIN" tools/pretrain_visual.py --config_path configs/quickstart_cpu.yaml --data_root "$DATA" --out "$OUT" \
  --steps 2000 --eval_every 250 --fields category_id,color --model.convnet.pretrained=
sha256sum "$OUT"
