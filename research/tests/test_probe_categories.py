"""research/tools/probe_categories.py: the linear probe that says whether the visual features carry the object
categories. Its regression must find a label that is in the features and must not find one that is not;
the mask pooling must weigh each cell by the share of it the object covers; and the tool must run on a real
checkpoint written by train.py."""
import json
import os

import numpy as np
import pytest

from research.tools.probe_categories import accuracy, fit_softmax_regression, mask_pooled, probe


def _standardised(x):
    return (x - x.mean(0)) / (x.std(0) + 1e-6)


def test_regression_finds_a_label_that_is_in_the_features_and_not_one_that_is_not():
    rng = np.random.default_rng(0)
    classes, n, dims = 6, 600, 64
    y = rng.integers(0, classes, n)
    centres = rng.standard_normal((classes, dims))
    informative = _standardised(centres[y] + 0.8 * rng.standard_normal((n, dims)))
    w = fit_softmax_regression(informative[:400], y[:400], classes)
    assert accuracy(w, informative[400:], y[400:]) > 0.95
    noise = _standardised(rng.standard_normal((n, dims)))
    w = fit_softmax_regression(noise[:400], y[:400], classes)
    assert accuracy(w, noise[400:], y[400:]) < 1.0 / classes + 0.1  # chance, however well it fits train


def test_probe_reports_each_slice_and_the_majority_rate():
    rng = np.random.default_rng(1)
    y = np.array(["star", "ring", "cross"] * 100)
    signal = np.eye(3)[np.searchsorted(["cross", "ring", "star"], y)] * 3.0
    x = np.concatenate([signal + 0.3 * rng.standard_normal((300, 3)), rng.standard_normal((300, 5))], 1)
    result = probe(x[:200], y[:200], x[200:], y[200:], {"signal": slice(0, 3), "noise": slice(3, 8)})
    assert result["classes"] == 3 and result["train_objects"] == 200 and result["val_objects"] == 100
    assert abs(result["val_majority_rate"] - 34 / 100) < 1e-9
    assert result["probes"]["signal"]["val_accuracy"] > 0.95
    assert result["probes"]["noise"]["val_accuracy"] < 0.5


def test_mask_pooling_weighs_cells_by_the_share_the_object_covers():
    feature = np.arange(2 * 2 * 2, dtype=np.float64).reshape(2, 2, 2)  # (C=2, h=2, w=2)
    mask = np.zeros((4, 4), bool)
    mask[0:2, 0:2] = True  # all of cell (0, 0)
    mask[2, 2] = True      # a quarter of cell (1, 1)
    expected = (feature[:, 0, 0] * 1.0 + feature[:, 1, 1] * 0.25) / 1.25
    np.testing.assert_allclose(mask_pooled(feature, mask), expected)


@pytest.mark.slow  # the tool end to end
def test_tool_runs_on_a_trained_checkpoint(trained, tmp_path):
    from test_entry_scripts import run

    out = str(tmp_path / "probe.json")
    ckpt = os.path.join(trained["out"], "checkpoints", "best.ckpt")
    proc = run("research/tools/probe_categories.py", "--checkpoint_path", ckpt, "--data_root", trained["data"],
               "--label", "color", "--output", out)
    assert "color probe of" in proc.stdout
    result = json.load(open(out))
    assert set(result["probes"]) == {"stage0", "stage1", "stage2", "stage3", "all stages"}
    with open(os.path.join(trained["data"], "refcoco", "instances.json")) as f:
        instances = json.load(f)
    assert result["train_objects"] + result["val_objects"] <= len(instances["annotations"])
    assert result["val_objects"] > 0 and result["label"] == "color"
    # neither a checkpoint nor --random_init
    run("research/tools/probe_categories.py", "--data_root", trained["data"], expect=1)
