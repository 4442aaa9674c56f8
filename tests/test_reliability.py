"""Interrupted training loses nothing: a training process killed with SIGKILL at a random step and
resumed with --train.resume=true ends with exactly the parameters of an uninterrupted run; a diverging
run stops with the step and the loss components."""
import glob
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

import mindspore as ms

from test_distributed import _deterministic, _params
from test_entry_scripts import ROOT, tiny_config

STEPS = 8


def _write_config(base, data_root, name, **train):
    cfg = _deterministic(tiny_config(data_root, str(base / name)))
    cfg["train"].update(max_steps=STEPS, save_every_steps=1, keep_last=2, save_all_ranks=False, **train)
    path = str(base / f"{name}.yaml")
    yaml.safe_dump(cfg, open(path, "w"))
    return path, str(base / name)


def _train(config_path, *extra, timeout=600):
    return subprocess.run([sys.executable, "train.py", "--config_path", config_path, *extra], cwd=ROOT,
                          env=dict(os.environ, GLOG_v="3"), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from src.data.synthetic import generate_synthetic_refer

    root = str(tmp_path_factory.mktemp("reliability") / "data")
    generate_synthetic_refer(root, num_images=16, seed=3)
    return root


def test_kill_and_resume_equals_uninterrupted_run(data_root, tmp_path):
    reference_cfg, reference_out = _write_config(tmp_path, data_root, "reference")
    done = _train(reference_cfg)
    assert done.returncode == 0, done.stderr[-3000:]

    killed_cfg, killed_out = _write_config(tmp_path, data_root, "killed")
    kill_after = random.Random().randint(2, STEPS - 2)  # a random step, different each run
    proc = subprocess.Popen([sys.executable, "train.py", "--config_path", killed_cfg], cwd=ROOT,
                            env=dict(os.environ, GLOG_v="3"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    pattern = os.path.join(killed_out, "checkpoints", "step_*.ckpt")
    while time.time() < deadline and proc.poll() is None:
        steps = [int(os.path.basename(p)[5:13]) for p in glob.glob(pattern)]
        if steps and max(steps) >= kill_after:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "training ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = sorted(os.path.basename(p) for p in glob.glob(os.path.join(killed_out, "checkpoints", "*")))
    assert any(name.startswith("step_") and name.endswith(".ckpt") and ".tmp" not in name for name in left)

    resumed = _train(killed_cfg, "--train.resume=true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in open(os.path.join(killed_out, "train.log")).read()
    final = f"step_{STEPS:08d}.ckpt"
    ours = _params(os.path.join(killed_out, "checkpoints", final))
    reference = _params(os.path.join(reference_out, "checkpoints", final))
    assert ours.keys() == reference.keys()
    for key in reference:
        np.testing.assert_array_equal(ours[key], reference[key], err_msg=f"{key} (killed after step {kill_after})")
    # Optimizer state and counters are restored too, not only the weights.
    entries = ms.load_checkpoint(os.path.join(killed_out, "checkpoints", final))
    ref_entries = ms.load_checkpoint(os.path.join(reference_out, "checkpoints", final))
    for key in [k for k in ref_entries if k.startswith("adam_m.")][:20] + ["global_step"]:
        np.testing.assert_array_equal(entries[key].asnumpy(), ref_entries[key].asnumpy(), err_msg=key)


def test_diverging_loss_stops_with_step_and_components(data_root, tmp_path):
    cfg, out = _write_config(tmp_path, data_root, "diverge", lr=1e12)
    proc = _train(cfg, "--train.max_steps=30")
    assert proc.returncode == 1, proc.stderr[-3000:]
    message = proc.stderr.strip().splitlines()[-1]
    assert message.startswith("error: non-finite loss at step") and "seg=" in message and "aux=" in message
    assert "Traceback" not in proc.stderr
