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


@pytest.fixture
def pynative():
    """The test runs in PyNative mode: for a tiny model run once or twice, compiling the graph (30-60 s on 2
    cores) costs more than it saves. Graph mode stays the default; the trained fixture and the graph tests
    cover the compiled paths."""
    previous = ms.get_context("mode")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    yield
    ms.set_context(mode=previous)


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A tiny model with the quickstart's coupled SMA head, trained once by train.py (6 steps on 16 synthetic
    images) for every test that needs a real checkpoint: tests/test_entry_scripts.py, tests/test_self_contained.py
    and others.

    Trained once per suite run, not once per pytest-xdist worker (each worker is a session of its own; the
    second training cost ~2 CPU-minutes): the first worker trains under a file lock in the directory the
    workers share, and every worker then works on its own copy of the run (tests write eval outputs into
    the config's output_dir, which must not be shared between processes)."""
    import fcntl
    import shutil

    import yaml

    from src.data.synthetic import generate_synthetic_refer
    from test_entry_scripts import run, tiny_config

    def config(data_root, out):  # the quickstart's SMA head: the end-to-end tests train, export and score it
        cfg = tiny_config(data_root, out)
        cfg["model"]["sma"] = {"head": "coupled", "pixel_agreement": True, "proposal_grad_scale": 0.25}
        return cfg

    own = tmp_path_factory.mktemp("e2e")
    shared_root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared_root = shared_root.parent  # the workers' basetemps are siblings under one root
    shared = shared_root / "trained_once"
    with open(shared_root / "trained_once.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (shared / "done").exists():
            shutil.rmtree(shared, ignore_errors=True)
            shared.mkdir()
            generate_synthetic_refer(str(shared / "data"), num_images=16, seed=3)
            with open(shared / "tiny.yaml", "w") as f:
                yaml.safe_dump(config(str(shared / "data"), str(shared / "run")), f)
            run("train.py", "--config_path", str(shared / "tiny.yaml"))
            (shared / "done").write_text("ok\n")
    data_root, out = str(shared / "data"), str(own / "run")
    shutil.copytree(shared / "run", out)
    config_path = str(own / "tiny.yaml")
    with open(config_path, "w") as f:
        yaml.safe_dump(config(data_root, out), f)
    return {"config": config_path, "data": data_root, "out": out}
