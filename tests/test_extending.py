"""docs/developer.md "Extending", checked as written: the fusion module of its worked example, one file that registers
itself, is chosen by one config line (`model.fusion`), built by CoupAlign through its `from_config`, and trains; the
loss term of its second example is summed, logged by name and trained by one line in `loss.terms`."""
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


def readme_example(tmp_dir, index=0, name="readme_sentence_gate"):
    """The `index`-th Python block of docs/developer.md "Extending", saved as its own module and imported (so it
    registers itself). A file, not exec(): graph mode reads a Cell's source to compile it, like any module in
    src/models/."""
    with open(os.path.join(ROOT, "docs", "developer.md"), encoding="utf-8") as f:
        guide = f.read()
    start = guide.index("## Extending")
    section = guide[start:guide.index("\n## ", start + 1)]
    code = re.findall(r"```python\n(.*?)```", section, re.S)[index]
    path = os.path.join(tmp_dir, name + ".py")
    with open(path, "w", encoding="utf-8") as f:
        f.write(code)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # graph mode resolves the Cell's globals through its module's name
    spec.loader.exec_module(module)
    return module.SentenceGateFusion if index == 0 else module


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


def test_the_guide_s_loss_term_is_summed_logged_by_name_and_trains(tmp_path, pynative):
    """One file (the guide's `final_dice`) and one config line: the criterion sums it at its default weight, the
    train step returns it by name, and its value is the Dice of the upsampled final-stage logits (NumPy)."""
    import torch
    import torch.nn.functional as F

    from src.models.criterion import CoupAlignCriterion
    from src.models.registry import LOSS_TERMS

    module = readme_example(str(tmp_path), index=1, name="readme_final_dice")
    assert LOSS_TERMS.get("final_dice") is module.FinalDiceLoss
    cfg = config_from_dict(TINY, {"loss.terms": ["referring", "final_dice"], "train.weight_decay": 0.0,
                                  "data.max_other_objects": 3})
    criterion = CoupAlignCriterion.from_config(cfg)
    assert criterion.loss_names == ("loss", "referring", "final_dice") and criterion.loss_weights == (1.0, 0.5)
    ms.set_seed(0)
    model = CoupAlign(cfg)
    batch = [Tensor(a) for a in make_train_batch()]
    model.set_train(False)
    final = model.forward_train(*batch[:3])["stage_logits"][-1].asnumpy()  # (B, 1, h, w)
    up = F.interpolate(torch.from_numpy(final).double(), size=batch[3].shape[1:], mode="bilinear",
                       align_corners=False)[:, 0]
    prob, target = torch.sigmoid(up).numpy(), batch[3].asnumpy()
    dice = 1 - (2 * (prob * target).sum((1, 2)) + 1) / (prob.sum((1, 2)) + target.sum((1, 2)) + 1)
    model.set_train(True)
    step = build_train_step(cfg, model, PolyLR(1e-3, 10, 0.9, 0))
    assert step.net_with_loss.loss_names == criterion.loss_names
    model.set_train(False)  # no dropout: the step's value is the forward above
    losses = step(*batch)
    got = dict(zip(step.net_with_loss.loss_names, (float(v.asnumpy()) for v in losses[:-1])))
    assert got["final_dice"] == pytest.approx(float(dice.mean()), rel=1e-4)
    assert got["loss"] == pytest.approx(got["referring"] + 0.5 * got["final_dice"], rel=1e-5)
