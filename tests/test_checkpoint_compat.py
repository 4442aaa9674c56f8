"""Checkpoints written before a refactor still load, by name and shape, and give the same outputs.

The fixture (tests/data/compat/, written by make_compat_checkpoint.py on the commit in its file name) is a
tiny CoupAlign with every optional part on; renaming a parameter, changing a default a module reads, or
changing what a forward computes fails here."""
import os

import numpy as np
import pytest

import mindspore as ms
from mindspore import Tensor

from src.config import config_from_dict
from src.models.weights import load_into
from src.models.coupalign import CoupAlign, CoupAlignWithLoss
from src.models.criterion import CoupAlignCriterion

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "compat")
COMMIT = "2865b6e"


def _fixture():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_compat_checkpoint", os.path.join(HERE, "make_compat_checkpoint.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("variant", ["msdeform", "fpn"])
def test_old_checkpoint_loads_strictly_and_reproduces_outputs(variant, pynative):
    # PyNative: one forward and one loss per variant, where two graph compilations took 70-100 s.
    fixture = _fixture()
    stem = os.path.join(HERE, f"tiny_{variant}_{COMMIT}")
    saved = np.load(stem + "_outputs.npz")
    cfg = config_from_dict(fixture.TINY, fixture.VARIANTS[variant])
    model = CoupAlign(cfg)
    missing, unused = load_into(model, ms.load_checkpoint(stem + ".ckpt"), stem + ".ckpt", strict=True)
    assert not missing and not unused
    model.set_train(False)
    logits = model(*[Tensor(saved[k]) for k in ("image", "input_ids", "attention_mask")]).asnumpy()
    np.testing.assert_allclose(logits, saved["logits"], rtol=1e-4, atol=1e-5)

    criterion = CoupAlignCriterion.from_config(cfg)
    names = [str(n) for n in saved["loss_names"]]
    net = CoupAlignWithLoss(model, criterion)
    losses = net(*[Tensor(saved[k]) for k in ("image", "input_ids", "attention_mask", "target", "others",
                                              "categories")])
    got = {n: float(v.asnumpy()) for n, v in zip(criterion.loss_names, losses)}
    want = dict(zip(names, saved["losses"].tolist()))
    assert set(want) == {"loss", "seg_loss", "aux_loss", "proposal_loss", "class_loss"}  # the fixture's names
    # The auxiliary loss draws random pixels (and the total contains it): compare the deterministic parts, each
    # under today's name (the criterion of named terms split the proposal loss into its mask and selection terms).
    today = {"seg_loss": got["referring"], "proposal_loss": got["proposal_masks"] + got["proposal_selection"],
             "class_loss": got["proposal_class"]}
    for name, value in today.items():
        assert value == pytest.approx(want[name], rel=1e-4), name
