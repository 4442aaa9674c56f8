"""pytest set-up for research/tests (not part of the default suite): `bash scripts/run_tests.sh research/tests`.

The repository root and tests/ go on the import path (these tests use tests/test_entry_scripts.py's helpers),
and tests/conftest.py is loaded under another name so that its CPU context, its `slow` marker and its
session fixture `trained` (a tiny model trained once by train.py) are the same here.
"""
import importlib.util
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
for path in (ROOT, os.path.join(ROOT, "tests")):
    if path not in sys.path:
        sys.path.insert(0, path)

_spec = importlib.util.spec_from_file_location("_tests_conftest", os.path.join(ROOT, "tests", "conftest.py"))
_main = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_main)

pytest_configure = _main.pytest_configure
trained = _main.trained
