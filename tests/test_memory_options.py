"""The memory fallbacks of issue 22 (finding 9): `model.swin.recompute_stages` recomputes the chosen Swin stages'
blocks in the backward without changing the loss or the gradients (drop path on), and tools/memory_probe.py
measures one real step."""
import os
import subprocess
import sys

import numpy as np
import pytest

import mindspore as ms
from mindspore import Tensor, nn

from src.config import ConfigError, config_from_dict
from src.models.swin import SwinTransformer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), window_size=4, drop_path_rate=0.3)


def test_recompute_stages_key_is_validated_and_reaches_the_blocks():
    with pytest.raises(ConfigError, match="recompute_stages"):
        config_from_dict({"model": {"swin": {"recompute_stages": [4]}}})
    cfg = config_from_dict({"model": {"image_size": 64, "swin": {"preset": "", **{k: list(v) if isinstance(v, tuple)
                                                                                 else v for k, v in TINY.items()},
                                                                 "recompute_stages": [2]}}})
    net = SwinTransformer.from_config(cfg)
    # Cell.recompute() marks the cell (MindSpore 2.10 keeps the mark in _has_config_recompute).
    assert [[block._has_config_recompute for block in layer.blocks] for layer in net.layers] == \
        [[False], [False], [True], [False]]


class _StageLoss(nn.Cell):
    """mean square of stage 2's output: the recomputed block, drop path (0.2) active."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def construct(self, tokens):
        out = self.net.run_stage(2, tokens, 4, 4)  # (B, 16, C)
        return (out * out).mean()


def _loss_and_grads(recompute_stages):
    ms.set_seed(0)  # the same weights and the same drop-path seeds in both builds
    net = SwinTransformer(**TINY, recompute_stages=recompute_stages)
    net.set_train(True)
    tokens = Tensor(np.random.default_rng(0).standard_normal((4, 16, 32)).astype(np.float32))  # (B, 4*4, C2)
    weights = net.layers[2].trainable_params()
    loss, grads = ms.value_and_grad(_StageLoss(net), None, weights)(tokens)
    return float(loss.asnumpy()), [g.asnumpy() for g in grads]


def test_recompute_gives_the_same_loss_and_gradients():
    loss, grads = _loss_and_grads(())
    loss_rc, grads_rc = _loss_and_grads((2,))
    assert loss_rc == loss
    for g, g_rc in zip(grads, grads_rc):
        np.testing.assert_allclose(g_rc, g, rtol=1e-6, atol=1e-7)
    ms.set_seed(0)


@pytest.mark.slow
def test_memory_probe_runs_one_step(tmp_path):
    from test_entry_scripts import tiny_config
    import yaml

    cfg = tiny_config(str(tmp_path / "unused"), str(tmp_path / "run"))
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([sys.executable, "tools/memory_probe.py", "--config_path", str(path),
                           "--model.swin.recompute_stages=[2]", "--json", str(tmp_path / "probe.json")], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env=dict(os.environ, GLOG_v="3"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "host peak RSS" in proc.stdout and "analytic lower bound" in proc.stdout, proc.stdout
