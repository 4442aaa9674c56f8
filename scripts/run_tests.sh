#!/usr/bin/env bash
# Creates .venv if missing, installs runtime + test requirements, runs the test suite.
# Extra arguments go to pytest, e.g. `bash scripts/run_tests.sh tests/test_config.py -x`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh" requirements.txt requirements-dev.txt
cd "$REPO_ROOT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 GLOG_v=3
if [ "$#" -eq 0 ]; then set -- tests; fi
"$PYTHON_BIN" -m pytest -q -ra --durations=15 "$@"
