"""Shared pytest set-up: import path, CPU context, and the oneDNN ISA choice made before MindSpore loads."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# Must precede the first `import mindspore`; see src/utils/runtime.py for why.
os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")
os.environ.setdefault("GLOG_v", "3")

import mindspore as ms  # noqa: E402

ms.set_device("CPU")
ms.set_context(mode=ms.GRAPH_MODE)


import pytest  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: tool smoke tests left out of the default run (scripts/run_tests.sh); "
                                       "run them with `bash scripts/run_tests.sh tests -m slow`")


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A tiny model trained once by train.py (6 steps on 16 synthetic images) for every test that needs a
    real checkpoint: tests/test_entry_scripts.py and tests/test_self_contained.py."""
    import yaml

    from src.data.synthetic import generate_synthetic_refer
    from test_entry_scripts import run, tiny_config

    base = tmp_path_factory.mktemp("e2e")
    data_root = str(base / "data")
    generate_synthetic_refer(data_root, num_images=16, seed=3)
    out = str(base / "run")
    config_path = str(base / "tiny.yaml")
    with open(config_path, "w") as f:
        yaml.safe_dump(tiny_config(data_root, out), f)
    run("train.py", "--config_path", config_path)
    return {"config": config_path, "data": data_root, "out": out}

