#!/usr/bin/env bash
# Data-parallel training with msrun (Ascend, GPU or CPU), on one machine or several.
#   bash scripts/run_distribute_train.sh DEVICE_NUM CONFIG_PATH [--key=value ...]
# DEVICE_NUM is the number of devices (workers) on THIS machine. Several machines: run the same command
# on each with
#   NODE_NUM=2 NODE_RANK=0|1 MASTER_ADDR=<address of node 0> [MASTER_PORT=8118]
# (every node uses the same DEVICE_NUM; node 0 hosts the msrun scheduler). msrun gives each worker a free
# device of its machine (device_id stays null in the config).
# Paths (CONFIG_PATH, --data_root=..., --output_dir=...) may be relative to the directory you run this
# from. Logs: msrun's per-worker console in LOG_DIR/worker_<r>.log, LOG_DIR defaulting to
# <output_dir>/msrun_logs/<date-time> (a new directory per launch, so a failure summary never reads an
# older run's logs); every rank also writes <output_dir>/logs/train_rank_<r>.log, rank 0 <output_dir>/train.log.
# The global batch is train.batch_size (per device) x DEVICE_NUM x NODE_NUM x train.accumulate_steps; the
# LAVT recipe is 4 x 8 = 32.
set -euo pipefail
if [ "$#" -lt 2 ]; then
  echo "usage: bash $0 DEVICE_NUM CONFIG_PATH [--key=value ...]   (multi-node: NODE_NUM, NODE_RANK, MASTER_ADDR)" >&2
  exit 2
fi
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
DEVICE_NUM="$1"; CONFIG_PATH="$(abs_path "$2")"; shift 2
msrun_launch train.py "$DEVICE_NUM" "$CONFIG_PATH" "$@"
