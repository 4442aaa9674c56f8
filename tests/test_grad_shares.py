"""Each loss term's share of the gradient on the shared trunk (src/engine/grad_shares.py): closed-form values on a
toy network, and on a tiny CoupAlign the same numbers as backpropagating every weighted term by hand."""
import math

import numpy as np
import pytest

import mindspore as ms
from mindspore import Parameter, Tensor, nn

from src.config import config_from_dict
from src.engine.grad_shares import combine, format_table, gradient_shares, summary_line
from src.models.coupalign import CoupAlign, CoupAlignWithLoss
from src.models.criterion import CoupAlignCriterion
from test_coupalign import IMAGE, TINY, make_train_batch

TRUNK = ("swin", "bert", "wpa", "pixel_decoder")


# ---------------------------------------------------------------------------------------------- a toy network
class _Vector(nn.Cell):
    def __init__(self, values):
        super().__init__()
        self.w = Parameter(Tensor(np.asarray(values, np.float32)), name="w")


class _ToyModel(nn.Cell):
    def __init__(self):
        super().__init__()
        self.swin = _Vector([1.0, -2.0, 0.5])
        self.bert = _Vector([0.3, 0.7, -1.1])
        self.wpa = _Vector([2.0, 0.0, 1.0])
        self.pixel_decoder = _Vector([-0.4, 0.9, 0.2])
        self.head = _Vector([5.0, -3.0, 4.0])  # not on the trunk


class _ToyCriterion(nn.Cell):
    def __init__(self, weights):
        super().__init__()
        self.loss_weights = tuple(weights)


class _ToyWithLoss(nn.Cell):
    """Parts with known trunk gradients, for inputs a, b (3,):
    seg = a.(swin + wpa) + b.(bert + pixel_decoder + head)  -> trunk gradient (a, b, a, b)
    aux = |swin|^2 / 2                                      -> (swin, 0, 0, 0)
    proposal = a.head                                        -> 0 (only the head)
    class = a.bert                                           -> (0, a, 0, 0)"""

    loss_names = ("loss", "seg_loss", "aux_loss", "proposal_loss", "class_loss")

    def __init__(self, weights=(2.0, 0.5, 1.0, 3.0)):
        super().__init__(auto_prefix=False)
        self.model = _ToyModel()
        self.criterion = _ToyCriterion(weights)

    def construct(self, a, b):
        m = self.model
        seg = (a * (m.swin.w + m.wpa.w)).sum() + (b * (m.bert.w + m.pixel_decoder.w + m.head.w)).sum()
        aux = 0.5 * (m.swin.w * m.swin.w).sum()
        proposal = (a * m.head.w).sum()
        cls = (a * m.bert.w).sum()
        parts = (seg, aux, proposal, cls)
        total = parts[0] * self.criterion.loss_weights[0]
        for i in range(1, len(parts)):
            total = total + parts[i] * self.criterion.loss_weights[i]
        return (total,) + parts


A = np.array([1.0, 2.0, -2.0], np.float32)
B = np.array([0.5, -1.5, 3.0], np.float32)


def _expected_norms(net):
    ws, wa, wp, wc = net.criterion.loss_weights
    swin = net.model.swin.w.asnumpy()
    return {"seg_loss": ws * math.sqrt(2 * (A @ A) + 2 * (B @ B)), "aux_loss": wa * float(np.linalg.norm(swin)),
            "proposal_loss": 0.0, "class_loss": wc * float(np.linalg.norm(A))}


def test_toy_names_are_relative_to_the_model():
    names = {p.name for p in _ToyWithLoss().trainable_params()}
    assert names == {"swin.w", "bert.w", "wpa.w", "pixel_decoder.w", "head.w"}


def test_toy_norms_and_shares_are_the_closed_form():
    """Catches a forgotten weight, a head parameter counted in, and any other norm than the global L2."""
    net = _ToyWithLoss()
    result = gradient_shares(net, (A, B))
    expected = _expected_norms(net)
    assert list(result) == [f"grad_norm/{n}" for n in expected] + [f"grad_share/{n}" for n in expected]
    for name, value in expected.items():
        assert result[f"grad_norm/{name}"] == pytest.approx(value, rel=1e-5), name
    total = sum(expected.values())
    for name, value in expected.items():
        assert result[f"grad_share/{name}"] == pytest.approx(value / total, rel=1e-5), name
    assert sum(result[f"grad_share/{n}"] for n in expected) == pytest.approx(1.0, abs=1e-6)


def test_part_off_the_trunk_gets_zero():
    """proposal_loss reaches only the head: counting non-trunk parameters would give it a norm."""
    result = gradient_shares(_ToyWithLoss(), (A, B))
    assert result["grad_norm/proposal_loss"] == 0.0 and result["grad_share/proposal_loss"] == 0.0


def test_zero_weight_gives_zero_share():
    net = _ToyWithLoss(weights=(2.0, 0.5, 1.0, 0.0))  # class_loss does reach the trunk, but weighs nothing
    result = gradient_shares(net, (A, B))
    assert result["grad_norm/class_loss"] == 0.0 and result["grad_share/class_loss"] == 0.0
    expected = _expected_norms(net)
    assert result["grad_share/seg_loss"] == pytest.approx(
        expected["seg_loss"] / (expected["seg_loss"] + expected["aux_loss"]), rel=1e-5)


def test_only_the_given_prefixes_count():
    net = _ToyWithLoss()
    result = gradient_shares(net, (A, B), trunk_prefixes=("bert.",))
    assert result["grad_norm/seg_loss"] == pytest.approx(2.0 * float(np.linalg.norm(B)), rel=1e-5)
    assert result["grad_norm/aux_loss"] == 0.0
    assert result["grad_share/seg_loss"] + result["grad_share/class_loss"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no trainable parameter"):
        gradient_shares(net, (A, B), trunk_prefixes=("decoder.",))


def test_toy_parameters_training_flag_and_mode_unchanged():
    net = _ToyWithLoss()
    net.set_train(True)
    before = {p.name: p.asnumpy().copy() for p in net.get_parameters()}
    ms.set_context(mode=ms.GRAPH_MODE)  # the tests' mode (conftest.py), whatever a test before left
    gradient_shares(net, (A, B))
    assert ms.get_context("mode") == ms.GRAPH_MODE and net.training and net.model.swin.training
    for p in net.get_parameters():
        np.testing.assert_array_equal(p.asnumpy(), before[p.name], err_msg=p.name)


def test_combine_and_formatting():
    first = {"grad_norm/seg_loss": 1.0, "grad_norm/aux_loss": 3.0, "grad_share/seg_loss": 0.25,
             "grad_share/aux_loss": 0.75}
    second = {"grad_norm/seg_loss": 3.0, "grad_norm/aux_loss": 1.0, "grad_share/seg_loss": 0.75,
              "grad_share/aux_loss": 0.25}
    both = combine([first, second])
    assert both == {"grad_norm/seg_loss": 2.0, "grad_norm/aux_loss": 2.0, "grad_share/seg_loss": 0.5,
                    "grad_share/aux_loss": 0.5}
    assert summary_line(first) == "seg_loss 25.0% (|g| 1) | aux_loss 75.0% (|g| 3)"
    table = format_table(both, {"seg_loss": 1.0, "aux_loss": 0.1}, [first, second]).splitlines()
    assert table[0].split() == ["part", "weight", "grad", "norm", "share", "per", "batch"]
    assert table[2].split() == ["aux_loss", "0.1", "2", "50.0%", "75.0%", "25.0%"]


# ------------------------------------------------------------------------------------------- a tiny CoupAlign
# The light end of the tiny configurations (FPN pixel decoder, one decoder layer) keeps the file under a minute,
# and so does the proposal mask term at weight 0 (a part with weight 0 costs no backward pass; its norm is 0).
TINY_OVERRIDES = {"model.mask_generator.pixel_decoder": "fpn", "model.mask_generator.decoder_layers": 1,
                  "loss.terms": ["referring", "aux_contrast", "proposal_masks"], "loss.weights.proposal_masks": 0.0}


@pytest.fixture(scope="module")
def tiny():
    cfg = config_from_dict(TINY, TINY_OVERRIDES)
    ms.set_seed(0)
    net = CoupAlignWithLoss(CoupAlign(cfg), CoupAlignCriterion.from_config(cfg))
    net.set_train(True)
    assert net.loss_names == ("loss", "referring", "aux_contrast", "proposal_masks")
    assert net.criterion.loss_weights == (1.0, 0.1, 0.0)
    return net, make_train_batch()


def _by_hand(net, batch, seed=0):
    """Every weighted part backpropagated on its own with ms.grad, in PyNative and inference mode, the auxiliary
    keys drawn as the module documents."""
    trunk = [p for p in net.trainable_params() if p.name.split(".")[0] in TRUNK]
    rng = np.random.default_rng(seed)
    hw = (IMAGE // 4) ** 2
    fg = Tensor(rng.random((2, hw), dtype=np.float32))
    bg = Tensor(rng.random((2, hw), dtype=np.float32))
    inputs = [Tensor(x) for x in batch]
    norms = {}
    ms.set_context(mode=ms.PYNATIVE_MODE)
    net.set_train(False)
    net.criterion.term("aux_contrast").use_fixed_keys(fg, bg)
    try:
        for i, (name, weight) in enumerate(zip(net.loss_names[1:], net.criterion.loss_weights), start=1):
            if weight == 0.0:  # the gradient of 0 * part
                norms[name] = 0.0
                continue
            grads = ms.grad(lambda *x: weight * net(*x)[i], grad_position=None, weights=trunk)(*inputs)
            norms[name] = math.sqrt(sum(float((g.asnumpy().astype(np.float64) ** 2).sum()) for g in grads))
    finally:
        net.criterion.term("aux_contrast").use_fixed_keys()
        net.set_train(True)
        ms.set_context(mode=ms.GRAPH_MODE)
    return norms


def test_tiny_coupalign_equals_backpropagating_each_term_by_hand(tiny):
    net, batch = tiny
    before = {p.name: p.asnumpy().copy() for p in net.get_parameters()}
    result = gradient_shares(net, batch)
    assert ms.get_context("mode") == ms.GRAPH_MODE and net.training and net.model.swin.training
    assert net.criterion.term("aux_contrast").fixed_keys is None  # the fixed keys are gone again
    for p in net.get_parameters():
        np.testing.assert_array_equal(p.asnumpy(), before[p.name], err_msg=p.name)

    hand = _by_hand(net, batch)
    assert hand["referring"] > 0 and hand["aux_contrast"] > 0 and hand["proposal_masks"] == 0
    total = sum(hand.values())
    for name, value in hand.items():
        assert result[f"grad_norm/{name}"] == pytest.approx(value, rel=1e-4, abs=1e-7), name
        assert result[f"grad_share/{name}"] == pytest.approx(value / total, rel=1e-4, abs=1e-7), name
    assert sum(result[f"grad_share/{n}"] for n in hand) == pytest.approx(1.0, abs=1e-6)


# ------------------------------------------------------------------------------- the trainer and the tool, slow
def test_training_without_diagnostics_measures_no_shares(trained):
    """conftest's tiny run has no validation image with two referred objects, so its diagnostics are off, and
    the gradient shares (three forward/backward passes per loss term, ~1 min there) go with them."""
    import json
    import os

    records = [json.loads(line) for line in open(os.path.join(trained["out"], "train_log.jsonl"))]
    assert [r for r in records if r["type"] == "grad_shares"] == []
    assert "training-health diagnostics off" in open(os.path.join(trained["out"], "train.log")).read()


@pytest.mark.slow  # its own tiny train.py run with diagnostics on (~3 min on a shared 2-core machine)
def test_training_logs_the_shares_at_the_start_and_the_end(tmp_path):
    import json
    import os

    import yaml

    from src.data.synthetic import generate_synthetic_refer
    from test_entry_scripts import run, tiny_config as script_config

    data_root, out = str(tmp_path / "data"), str(tmp_path / "run")
    generate_synthetic_refer(data_root, num_images=48, seed=3)  # enough validation images with two referents
    cfg = script_config(data_root, out)
    cfg["train"]["diagnostics_pairs"] = 4
    config_path = str(tmp_path / "tiny.yaml")
    with open(config_path, "w") as f:
        yaml.safe_dump(cfg, f)
    run("train.py", "--config_path", config_path)
    records = [json.loads(line) for line in open(os.path.join(out, "train_log.jsonl"))]
    logged = [r for r in records if r["type"] == "grad_shares"]
    # one epoch of 6 steps validates once, at the end: no middle measurement
    assert [(r["when"], r["step"]) for r in logged] == [("start", 0), ("end", 6)]
    for r in logged:
        parts = [k for k in r["grad_shares"] if k.startswith("grad_share/")]
        assert {"grad_share/referring", "grad_share/aux_contrast"} <= set(parts)
        assert sum(r["grad_shares"][k] for k in parts) == pytest.approx(1.0, abs=1e-6)
    log = open(os.path.join(out, "train.log")).read()
    assert "gradient shares on the shared trunk at step 0 (start): referring " in log


@pytest.mark.slow  # a tiny checkpoint, a synthetic split and the tool in-process (~40 s on a shared 2-core machine)
def test_tool_prints_the_shares_of_a_checkpoint(tmp_path, capsys):
    import importlib.util
    import json
    import os

    from src.data.synthetic import generate_synthetic_refer
    from src.engine.checkpoint import CheckpointManager, TrainState
    from src.models.factory import create_model
    from test_entry_scripts import ROOT, _vocab_path, tiny_config as script_config

    data_root, out = str(tmp_path / "data"), str(tmp_path / "run")
    generate_synthetic_refer(data_root, num_images=4, seed=3)
    cfg = config_from_dict(script_config(data_root, out))
    ms.set_seed(0)
    model = create_model(cfg)
    artifacts = {"bert_config_json": model.bert.config.to_json_string(), "vocab_txt": open(_vocab_path()).read()}
    ckpt = CheckpointManager(os.path.join(out, "checkpoints"), artifacts=artifacts).save_model(
        "best.ckpt", model, TrainState(), 0, cfg.to_yaml())
    spec = importlib.util.spec_from_file_location("grad_shares_tool", os.path.join(ROOT, "tools", "grad_shares.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.spread_refs(10, 3) == [0, 4, 9] and tool.spread_refs(2, 5) == [0, 1]
    report = str(tmp_path / "shares.json")
    assert tool.main(["--checkpoint_path", ckpt, "--batches", "1", "--batch_size", "2", "--output", report,
                      "--loss.weights.aux_contrast=0.5"]) == 0
    printed = capsys.readouterr().out
    assert "gradient shares on the shared trunk" in printed and "1 batch(es), 2 samples" in printed
    result = json.load(open(report))
    assert result["loss_weights"]["aux_contrast"] == 0.5  # a config key overrides the checkpoint's config
    shares = result["combined"]
    assert shares["grad_norm/referring"] > 0 and shares["grad_norm/aux_contrast"] > 0
    assert sum(v for k, v in shares.items() if k.startswith("grad_share/")) == pytest.approx(1.0, abs=1e-6)
    assert ms.get_context("mode") == ms.GRAPH_MODE
