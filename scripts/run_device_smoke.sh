#!/usr/bin/env bash
# Device smoke test (tools/device_smoke.py): the first command to run where an Ascend or GPU device is at hand.
#   bash scripts/run_device_smoke.sh [--device auto|Ascend|GPU|CPU] [--out DIR] [--quick] [--steps K] [--timeout S]
# Compile time, step time and peak memory at O0 and O2 (and the paper configuration at batch 4 on a device),
# the device's logits against the CPU's, the MINDIR (and converter_lite on Ascend), a 2-rank msrun with
# validation; one report, DIR/device_smoke.json (default outputs/device_smoke), and a table. On a machine
# without a device it checks itself on the CPU and skips, with the reason, what needs one.
# Exit status: 0 when no check failed, 1 otherwise.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON_BIN="${PYTHON_BIN:-$REPO_ROOT/.venv/bin/python}"
[ -x "$PYTHON_BIN" ] || PYTHON_BIN="$(command -v python3)"
exec "$PYTHON_BIN" "$REPO_ROOT/tools/device_smoke.py" "$@"
