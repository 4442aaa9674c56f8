"""The error decomposition (src/engine/decomposition.py, tools/decompose.py): per-sample numbers against a hand-built
case, each check shown to fail on a deliberately broken input; the summary; the comparison's sample matching;
the model's maps; and one run of the tool on a tiny checkpoint."""
import csv
import json
import math
import os
import sys
from types import SimpleNamespace

import numpy as np
import pytest

import mindspore as ms
from mindspore import Tensor, ops

from src.engine import decomposition as dec
from src.errors import DataError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))

# ---------------------------------------------------------------------------------------------------------
# A hand-built 8 x 8 sample. Referent: rows 0-3, cols 0-3 (16 px). Other objects: A = rows 0-3, cols 4-7;
# B = rows 2-5, cols 0-1, which overlaps the referent on rows 2-3 (4 px).
S = 8


def _box(r0, r1, c0, c1):
    mask = np.zeros((S, S), bool)
    mask[r0:r1, c0:c1] = True
    return mask


def _logits(mask):
    return np.where(mask, 2.0, -2.0).astype(np.float32)


TARGET = _box(0, 4, 0, 4)
OBJECT_A, OBJECT_B = _box(0, 4, 4, 8), _box(2, 6, 0, 2)
OTHERS = OBJECT_A | OBJECT_B
# Proposals: 0 = the referent (IoU 1, the best); 1 = its first 3 columns (12/16 = 0.75); 2 = object A (0);
# 3 = rows 0-3, cols 0-4 (16/20 = 0.8).
PROPOSALS = np.stack([_logits(m) for m in (TARGET, _box(0, 4, 0, 3), OBJECT_A, _box(0, 4, 0, 5))])
WEIGHTS = np.array([0.1, 0.2, 0.6, 0.1], np.float32)  # SMA weights object A most: a selection error
# Output: rows 0-3, cols 0-5 (24 px): IoU 16/24; 8 px on object A -> leakage 8/24. Its 4 px on B lie on the
# referent: not leakage (counting them would give 12/24).
OUTPUT = _logits(_box(0, 4, 0, 6))


def _check_output(row):
    assert row["iou_output"] == pytest.approx(16 / 24)
    assert (row["intersection_output"], row["union_output"]) == (16, 24)


def _check_leakage(row):
    assert row["leakage"] == pytest.approx(8 / 24)


def _check_selection(row):
    assert (row["top"], row["best"]) == (2, 0)
    assert row["iou_top"] == 0.0 and row["iou_best"] == 1.0
    assert row["selection_correct"] == 0.0
    assert row["weight_on_best"] == pytest.approx(0.1)


def test_hand_built_sample():
    row = dec.decompose_sample(OUTPUT, TARGET, OTHERS, PROPOSALS, WEIGHTS)
    _check_output(row)
    _check_leakage(row)
    _check_selection(row)
    assert dec.proposal_ious(PROPOSALS > 0, TARGET) == pytest.approx([1.0, 0.75, 0.0, 0.8])
    assert math.isnan(row["iou_pixel_path"]) and math.isnan(row["iou_sma_map"])  # not the coupled head


def test_each_check_fails_on_a_broken_input():
    # top and best swapped: SMA now weights the referent's proposal most
    swapped = dec.decompose_sample(OUTPUT, TARGET, OTHERS, PROPOSALS, WEIGHTS[[2, 1, 0, 3]])
    with pytest.raises(AssertionError):
        _check_selection(swapped)
    assert swapped["selection_correct"] == 1.0 and swapped["weight_on_best"] == pytest.approx(0.6)
    # the output shifted one column right: fewer referent pixels, more on object A
    shifted = dec.decompose_sample(np.roll(OUTPUT, 1, axis=1), TARGET, OTHERS, PROPOSALS, WEIGHTS)
    with pytest.raises(AssertionError):
        _check_output(shifted)
    with pytest.raises(AssertionError):
        _check_leakage(shifted)
    # the referent counted as "other": the expected leakage is not what counting it gives
    referent_counted = np.count_nonzero((OUTPUT > 0) & (OTHERS | TARGET)) / np.count_nonzero(OUTPUT > 0)
    with pytest.raises(AssertionError):
        _check_leakage({"leakage": referent_counted})
    # ... and the decomposition never counts it, whatever the `others` it is given
    _check_leakage(dec.decompose_sample(OUTPUT, TARGET, OTHERS | TARGET, PROPOSALS, WEIGHTS))


def test_selection_within_tolerance_counts_as_correct():
    near = np.stack([PROPOSALS[0], PROPOSALS[3]])  # IoU 1.0 and 0.8
    assert dec.decompose_sample(OUTPUT, TARGET, OTHERS, near, np.array([0.4, 0.6]))["selection_correct"] == 0.0
    big = _box(0, 8, 0, 8)
    close = _logits(big & ~_box(0, 1, 0, 1))  # IoU 63/64: within 0.05 of the best
    row = dec.decompose_sample(OUTPUT, big, OTHERS, np.stack([_logits(big), close]), np.array([0.4, 0.6]))
    assert (row["top"], row["best"], row["selection_correct"]) == (1, 0, 1.0)


def test_coupled_maps_and_no_proposals():
    row = dec.decompose_sample(OUTPUT, TARGET, OTHERS, PROPOSALS, WEIGHTS, pixel=PROPOSALS[1], sma=PROPOSALS[2])
    assert row["iou_pixel_path"] == pytest.approx(0.75) and row["iou_sma_map"] == 0.0
    assert (row["intersection_pixel_path"], row["union_pixel_path"]) == (12, 16)
    other = dict(row, intersection_pixel_path=2, union_pixel_path=24, iou_pixel_path=2 / 24)
    # the oIoU with the gate forced to 0 sums intersections and unions (14 / 40), not the mean of the IoUs
    assert dec.group_summary([row, other])["oiou_pixel_path"] == pytest.approx(100 * 14 / 40)
    lavt = dec.decompose_sample(OUTPUT, TARGET, OTHERS)
    _check_output(lavt)
    _check_leakage(lavt)
    assert all(math.isnan(lavt[c]) for c in dec.PROPOSAL_COLUMNS + dec.COUPLED_COLUMNS)
    assert dec.decompose_sample(np.full((S, S), -1.0), TARGET, OTHERS)["leakage"] == 0.0  # nothing predicted


class _FakeRefer:
    """Three annotations of one image at 16 x 16: the referent (1) and two others (2, 3); 4 is unreadable."""

    def __init__(self):
        self.masks = {1: np.kron(TARGET, np.ones((2, 2))).astype(np.uint8),
                      2: np.kron(OBJECT_A, np.ones((2, 2))).astype(np.uint8),
                      3: np.kron(OBJECT_B, np.ones((2, 2))).astype(np.uint8)}

    def image_annotations(self, image_id):
        return [1, 2, 3, 4]

    def load_mask(self, ann_id):
        if ann_id == 4:
            raise DataError("annotation 4: empty")
        return self.masks[ann_id]


def test_other_objects_leave_the_referent_out():
    others = dec.OtherObjects(_FakeRefer(), S)
    assert np.array_equal(others(SimpleNamespace(image_id=7, ann_id=1)), OTHERS)
    broken = others(SimpleNamespace(image_id=7, ann_id=99))  # a referent id that is not the referent's
    with pytest.raises(AssertionError):
        assert np.array_equal(broken, OTHERS)


# ---------------------------------------------------------------------------------------------------------
# Summary and comparison


def _rows():
    def row(ref_id, sent_id, inter, union, top, best, correct, leak, weight):
        return {"ref_id": ref_id, "sent_id": sent_id, "sentence": "s", "iou_output": inter / union,
                "intersection_output": inter, "union_output": union, "iou_top": top, "iou_best": best,
                "selection_correct": correct, "leakage": leak, "weight_on_best": weight,
                "iou_pixel_path": math.nan, "iou_sma_map": math.nan}

    return [row(1, 10, 5, 10, 0.5, 0.9, 0.0, 0.2, 0.1), row(1, 11, 9, 10, 0.9, 0.9, 1.0, 0.0, 0.8),
            row(2, 20, 1, 20, 0.0, 0.1, 0.0, 0.5, 0.3)]


def test_summary_means_and_groups():
    summary = dec.summarise(_rows(), {"pair": {(1, 10), (1, 11)}, "empty": {(9, 9)}})
    assert list(summary) == ["overall", "pair"]  # a group without a decomposed sample is left out
    overall = summary["overall"]
    assert overall["n"] == 3
    assert overall["oiou_output"] == pytest.approx(100 * 15 / 40)
    assert overall["iou_output"] == pytest.approx(100 * (0.5 + 0.9 + 0.05) / 3)
    assert overall["selection_accuracy"] == pytest.approx(100 / 3)
    assert overall["iou_best"] == pytest.approx(100 * 1.9 / 3)
    assert overall["iou_pixel_path"] is None and overall["oiou_pixel_path"] is None and overall["compare_iou"] is None
    assert summary["pair"]["oiou_output"] == pytest.approx(70.0) and summary["pair"]["selection_accuracy"] == 50.0
    assert "| pair | 2 |" in dec.format_table(summary, "mixture")


def test_same_category_subset_against_brute_force(tmp_path):
    """same_category_indices: the samples whose image holds another annotated object of the referent's category."""
    from src.data.refer import ReferDataset
    from src.data.synthetic import generate_synthetic_refer

    root = str(tmp_path / "data")
    generate_synthetic_refer(root, num_images=24, seed=5)
    refer = ReferDataset(root, "refcoco", "unc", "train")
    keys = dec.same_category_indices(refer)
    by_image = {}
    for ann in refer.annotations.values():
        by_image.setdefault(ann["image_id"], []).append(ann["category_id"])
    for ref in refer.refs:
        category = refer.annotations[ref.ann_id]["category_id"]
        expected = by_image[ref.image_id].count(category) >= 2
        assert all(((ref.ref_id, s.sent_id) in keys) == expected for s in ref.sentences)
    assert 0 < len(keys) < len(refer.samples())  # both kinds occur, so the subset is a real subset


def test_comparison_is_matched_by_sample(tmp_path):
    path = str(tmp_path / "per_sample.csv")
    with open(path, "w", newline="") as f:  # eval.py's layout, rows in another order
        writer = csv.writer(f)
        writer.writerow(["ref_id", "sent_id", "sentence", "iou_input", "iou_original"])
        writer.writerows([[2, 20, "s", 0.25, 0], [1, 11, "s", 0.5, 0], [1, 10, "s", 0.5, 0]])
    ious = dec.read_per_sample_ious(path)
    rows = _rows()
    dec.check_comparison_split(ious, {(1, 10), (1, 11), (2, 20), (3, 30)}, path, "val")
    dec.attach_comparison(rows, ious, path)
    assert [r["compare_iou"] for r in rows] == [0.5, 0.5, 0.25]
    summary = dec.summarise(rows, {})
    assert summary["overall"]["diff_vs_compare"] == pytest.approx(100 * (0.0 + 0.4 - 0.2) / 3)
    assert "mIoU - other" in dec.format_table(summary, "none")
    with pytest.raises(DataError, match="1 of the 3 samples decomposed are missing"):
        dec.attach_comparison(_rows(), {k: v for k, v in ious.items() if k != (1, 11)}, path)
    with pytest.raises(DataError, match="not in val"):
        dec.check_comparison_split(ious, {(1, 10), (1, 11)}, path, "val")
    with open(path, "a") as f:
        f.write("1,10,s,0.7,0\n")
    with pytest.raises(DataError, match="appears twice"):
        dec.read_per_sample_ious(path)


# ---------------------------------------------------------------------------------------------------------
# The model's maps and the tool end to end


def _tiny_cfg(data_root, out, **overrides):
    from src.config import config_from_dict
    from test_entry_scripts import tiny_config

    return config_from_dict(tiny_config(data_root, out), overrides)


def _save_tiny_checkpoint(cfg, path, gate=None):
    """A checkpoint as train.py writes it (weights, config, text-encoder architecture and vocabulary),
    of an untrained model: the decomposition reads the maps, not their quality."""
    from src.models.factory import create_model

    ms.set_seed(0)
    model = create_model(cfg)
    if gate is not None:
        model.head.gate.set_data(Tensor(gate, ms.float32))
    with open(cfg.model.bert.vocab_path, encoding="utf-8") as f:
        vocab = f.read()
    ms.save_checkpoint(model, path, append_dict={"config_yaml": cfg.to_yaml(), "vocab_txt": vocab,
                                                  "bert_config_json": model.bert.config.to_json_string()})
    return model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from src.data.synthetic import generate_synthetic_refer

    base = tmp_path_factory.mktemp("decompose")
    data = str(base / "data")
    generate_synthetic_refer(data, num_images=8, seed=7)  # val: 9 sentences, 6 of them same-category
    cfg = _tiny_cfg(data, str(base / "run"), **{"model.sma.head": "coupled", "model.sma.pixel_agreement": True})
    ckpt = str(base / "coupled.ckpt")
    model = _save_tiny_checkpoint(cfg, ckpt, gate=0.5)
    return {"base": base, "data": data, "cfg": cfg, "ckpt": ckpt, "model": model}


def _inputs():
    rng = np.random.default_rng(0)
    image = Tensor(rng.standard_normal((2, 3, 64, 64)).astype(np.float32))
    ids = Tensor(rng.integers(1, 1000, (2, 12)).astype(np.int32))
    return image, ids, Tensor(np.ones((2, 12), np.int32))


def test_final_stage_maps_of_the_coupled_head(tiny, pynative):
    """The maps are the model's: the output is M_pix + alpha M_sma at S x S (that it is predict's is checked
    without proposals below and, per sample, against eval.py's scoring in the end-to-end run)."""
    model = tiny["model"]
    model.set_train(False)
    image, ids, mask = _inputs()
    net = dec.FinalStageMaps(model)
    output, proposals, weights, pixel, sma = [m.asnumpy() for m in net(image, ids, mask)]
    _, pixel_embed, mask_embeds, _ = model.forward_features(image, ids, mask)
    stride4 = dec.proposal_logits(mask_embeds[-1], pixel_embed)  # (2, N, 16, 16)
    upsampled = ops.interpolate(stride4, size=(64, 64), mode="bilinear", align_corners=False).asnumpy()
    assert net.kind == "coupled"
    assert output.shape == (2, 1, 64, 64) and proposals.shape == (2, 4, 64, 64) and weights.shape == (2, 4)
    np.testing.assert_allclose(output, pixel + 0.5 * sma, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(proposals, upsampled, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-5)


def test_final_stage_maps_without_proposals_and_of_the_top_proposal(tiny, pynative):
    """No SMA: the output alone. The mixture head: the output is the weighted sum of the proposals' logits (the
    mix a = sum_n w_n Q_n is linear, and so is the upsampling)."""
    from src.models.factory import create_model

    image, ids, mask = _inputs()
    lavt = create_model(_tiny_cfg(tiny["data"], "", **{"model.sma.enabled": False}))
    lavt.set_train(False)
    maps = dec.FinalStageMaps(lavt)(image, ids, mask)
    assert dec.head_kind(lavt) == "none" and len(maps) == 1
    np.testing.assert_allclose(maps[0].asnumpy(), lavt(image, ids, mask).asnumpy(), rtol=1e-5, atol=1e-5)
    mixture = create_model(_tiny_cfg(tiny["data"], "", **{"model.sma.head": "mixture", "model.sma.pixel_agreement": False,
                                                         "loss.terms": ["referring"]}))
    mixture.set_train(False)
    output, proposals, weights = [m.asnumpy() for m in dec.FinalStageMaps(mixture)(image, ids, mask)]
    np.testing.assert_allclose(output[:, 0], np.einsum("bn,bnhw->bhw", weights, proposals), rtol=1e-4, atol=1e-4)
    assert dec.head_kind(mixture) == "mixture" and (weights.max(axis=1) < 0.99).all()


def test_decompose_tool_end_to_end(tiny):
    """Compared with itself through --compare_checkpoint (eval.py's scoring), every sample's output IoU
    is eval.py's iou_input: the difference column is 0. PyNative and one batch: two graph compilations
    took 50 s on the 2-core machine."""
    from test_entry_scripts import run

    out = str(tiny["base"] / "out")
    proc = run(os.path.join("tools", "decompose.py"), f"--checkpoint_path={tiny['ckpt']}",
               f"--data_root={tiny['data']}", "--split", "val", "--compare_checkpoint", tiny["ckpt"], "--out", out,
               "--mode=pynative", "--eval.batch_size=16")
    rows = list(csv.DictReader(open(os.path.join(out, "per_sample.csv"))))
    assert len(rows) == 9 and list(rows[0]) == list(dec.CSV_COLUMNS)
    for row in rows:
        assert float(row["compare_iou"]) == pytest.approx(float(row["iou_output"]), abs=1e-6)
        assert 0 <= float(row["iou_top"]) <= float(row["iou_best"]) <= 1 and row["iou_sma_map"] != ""
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["head"] == "coupled" and summary["gate"] == pytest.approx(0.5) and summary["num_samples"] == 9
    assert summary["groups"]["overall"]["diff_vs_compare"] == pytest.approx(0.0, abs=1e-4)
    assert summary["groups"]["same category"]["n"] == 6 and any(k.startswith("kind: ") for k in summary["groups"])
    assert "| overall | 9 |" in proc.stdout and "pixel path mIoU" in proc.stdout


def test_decompose_tool_errors_are_one_line(tiny, tmp_path, capsys):
    import decompose

    from src.utils.cli import run_main

    bad_csv = tmp_path / "other.csv"
    bad_csv.write_text("ref_id,sent_id,iou_input\n999,999,0.5\n")
    cases = [([f"--checkpoint_path={tmp_path / 'missing.ckpt'}"], "checkpoint not found"),
             ([f"--checkpoint_path={tiny['ckpt']}", f"--data_root={tiny['data']}", "--compare_per_sample",
               str(bad_csv)], "not in ReferDataset"),
             ([f"--checkpoint_path={tiny['ckpt']}", "--compare_per_sample", "a.csv", "--compare_checkpoint", "b"],
              "not both")]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            run_main(lambda: decompose.main(argv))
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in err and len(err.strip().splitlines()) == 1, err
