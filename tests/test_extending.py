"""docs/developer.md "Extending", checked as written: the fusion module of its worked example, one file that registers
itself, is chosen by one config line (`model.fusion`), built by CoupAlign through its `from_config`, and trains."""
import importlib.util
import os
import re
import sys

import numpy as np
import pytest

import mindspore as ms
from mindspore import Tensor

from src.config import ConfigError, config_from_dict
from src.engine.optimizer import PolyLR
from src.engine.train_step import build_train_step
from src.models.coupalign import CoupAlign
from src.models.registry import FUSIONS, PIXEL_DECODERS, TRANSFORMER_DECODERS
from test_coupalign import TINY, make_train_batch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_example(tmp_dir):
    """The Python block of docs/developer.md "Extending", saved as its own module and imported (so it registers itself).
    A file, not exec(): graph mode reads a Cell's source to compile it, like any module in src/models/."""
    with open(os.path.join(ROOT, "docs", "developer.md"), encoding="utf-8") as f:
        guide = f.read()
    start = guide.index("## Extending")
    section = guide[start:guide.index("\n## ", start + 1)]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    path = os.path.join(tmp_dir, "readme_sentence_gate.py")
    with open(path, "w", encoding="utf-8") as f:
        f.write(code)
    spec = importlib.util.spec_from_file_location("readme_sentence_gate", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # graph mode resolves the Cell's globals through its module's name
    spec.loader.exec_module(module)
    return module.SentenceGateFusion


@pytest.fixture(scope="module")
def fusion_class(tmp_path_factory):
    return readme_example(str(tmp_path_factory.mktemp("extending")))


def test_registered_fusion_is_chosen_by_config_and_trains(fusion_class):
    cfg = config_from_dict(TINY, {"model.fusion": "sentence_gate", "model.wpa.bidirectional": False,
                                  "train.weight_decay": 0.0, "data.max_other_objects": 3})
    ms.set_seed(0)
    model = CoupAlign(cfg)
    assert all(isinstance(cell, fusion_class) for cell in model.wpa)
    step = build_train_step(cfg, model, PolyLR(1e-3, 10, 0.9, 0))
    gates = [p for p in step.net_with_loss.trainable_params() if ".gate." in p.name]
    assert len(gates) == 8  # weight and bias at each of the 4 stages
    before = [p.asnumpy().copy() for p in gates]
    losses = step(*[Tensor(a) for a in make_train_batch()])
    assert np.isfinite(float(losses[0].asnumpy())) and bool(losses[-1].asnumpy())
    assert all(not np.array_equal(b, p.asnumpy()) for b, p in zip(before, gates)), "the new module did not train"


def test_unknown_part_names_the_key_and_the_nearest_registered_name():
    cfg = config_from_dict(TINY, {"model.fusion": "wap"})
    with pytest.raises(ConfigError, match=r"unknown fusion module 'wap' \(config key 'model.fusion'\).*did you mean 'wpa'"):
        CoupAlign(cfg)
    cfg = config_from_dict(TINY, {"model.mask_generator.pixel_decoder": "fpm"})
    with pytest.raises(ConfigError, match=r"'fpm' \(config key 'model.mask_generator.pixel_decoder'\).*did you mean 'fpn'"):
        CoupAlign(cfg)


def test_registries_hold_the_built_in_parts(fusion_class):
    assert {"wpa", "sentence_gate"} <= set(FUSIONS.keys())
    assert PIXEL_DECODERS.keys() == ["fpn", "msdeform"]
    assert TRANSFORMER_DECODERS.keys() == ["masked_attention"]


def test_the_benchmark_reads_each_part_s_own_cost_and_names_a_part_without_one(fusion_class):
    from src.models.bert import BertConfig
    from tools.benchmark import part_costs

    bert = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                      intermediate_size=64, max_position_embeddings=32)
    wpa = config_from_dict(TINY).model
    costs = part_costs(wpa, bert, 64, 64)
    assert list(costs) == ["wpa", "pixel_decoder", "transformer_decoder"]
    assert all(cost.flops > 0 and cost.params > 0 for cost in costs.values())
    gate = config_from_dict(TINY, {"model.fusion": "sentence_gate"}).model
    with pytest.raises(NotImplementedError, match="fusion module 'sentence_gate'.*analytic_cost"):
        part_costs(gate, bert, 64, 64)
