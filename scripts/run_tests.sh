#!/usr/bin/env bash
# Creates .venv if missing, installs runtime + test requirements, runs the test suite.
# Extra arguments go to pytest, e.g. `bash scripts/run_tests.sh tests/test_config.py -x`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh" requirements.txt requirements-dev.txt
cd "$REPO_ROOT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 GLOG_v=3
# The whole suite: test files spread over PYTEST_WORKERS processes (pytest-xdist; a file's tests stay in one
# process, in order, so module fixtures are built once). PYTEST_WORKERS=0 runs it in this process.
# The tests marked slow (tool smoke runs, AMP O2/O3 whole-model steps; docs/developer.md, "Tests") run with
# `bash scripts/run_tests.sh tests -m slow`. The research tools' tests live outside the default suite:
# `bash scripts/run_tests.sh research/tests` (research/README.md).
if [ "$#" -eq 0 ]; then set -- tests -n "${PYTEST_WORKERS:-2}" --dist loadfile -m "not slow"; fi
"$PYTHON_BIN" -m pytest -q -ra --durations=15 "$@"
