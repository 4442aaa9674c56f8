"""RefSegMetrics and the logits helpers on hand-computed cases."""
import numpy as np
import pytest

from src.metrics import RefSegMetrics, intersection_union, logits_to_mask, resize_logits_to


def masks_with(inter: int, pred_only: int, gt_only: int, size: int = 200):
    """1-D masks with exactly `inter` shared, `pred_only` and `gt_only` pixels (I = inter, U = the sum)."""
    pred = np.zeros(size, bool)
    gt = np.zeros(size, bool)
    pred[:inter] = gt[:inter] = True
    pred[inter:inter + pred_only] = True
    gt[inter + pred_only:inter + pred_only + gt_only] = True
    return pred.reshape(10, -1), gt.reshape(10, -1)


def test_all_correct():
    m = RefSegMetrics()
    gt = np.zeros((4, 5), bool)
    gt[1:3, 1:4] = True
    assert m.update(gt.copy(), gt) == 1.0
    r = m.compute()
    assert r["overall_iou"] == 100.0 and r["mean_iou"] == 100.0
    assert all(r[f"precision@{t}"] == 100.0 for t in (0.5, 0.6, 0.7, 0.8, 0.9))
    assert r["num_samples"] == 1


def test_empty_prediction_and_empty_union():
    m = RefSegMetrics()
    gt = np.zeros((3, 3), bool)
    gt[0, :] = True
    assert m.update(np.zeros((3, 3), bool), gt) == 0.0  # I = 0, U = 3
    assert m.update(np.zeros((3, 3), bool), np.zeros((3, 3), bool)) == 0.0  # U = 0 -> IoU 0 (spec, literally)
    r = m.compute()
    assert r["overall_iou"] == 0.0 and r["mean_iou"] == 0.0 and r["precision@0.5"] == 0.0
    assert r["num_samples"] == 2
    assert m.unions == [3, 0]


def test_partial_overlap_by_hand():
    pred = np.zeros((4, 4), bool)
    gt = np.zeros((4, 4), bool)
    pred[0, :] = True  # 4 pixels
    gt[0, 2:] = True
    gt[1, :] = True  # 6 pixels, 2 shared
    assert intersection_union(pred, gt) == (2, 8)
    m = RefSegMetrics()
    assert m.update(pred, gt) == pytest.approx(0.25)
    # numeric masks: non-zero is foreground
    assert m.update(pred.astype(np.uint8) * 255, gt.astype(np.float32)) == pytest.approx(0.25)


def test_several_samples_oiou_differs_from_miou():
    m = RefSegMetrics()
    for inter, pred_only, gt_only in [(2, 2, 4), (90, 5, 5), (0, 0, 3), (1, 1, 0)]:
        m.update(*masks_with(inter, pred_only, gt_only))
    # IoUs: 2/8 = 0.25, 90/100 = 0.9, 0/3 = 0, 1/2 = 0.5
    assert m.ious == pytest.approx([0.25, 0.9, 0.0, 0.5])
    r = m.compute()
    assert r["overall_iou"] == pytest.approx(100 * 93 / 113)  # (2+90+0+1) / (8+100+3+2) = 82.30
    assert r["mean_iou"] == pytest.approx(100 * 1.65 / 4)  # 41.25
    assert r["precision@0.5"] == pytest.approx(50.0)  # 0.9 and exactly 0.5 (>= counts)
    for t in (0.6, 0.7, 0.8, 0.9):
        assert r[f"precision@{t}"] == pytest.approx(25.0)  # only 0.9; 0.9 >= 0.9 counts
    assert r["num_samples"] == 4


def test_add_merge_reset_and_errors():
    a, b = RefSegMetrics(), RefSegMetrics()
    a.add(3, 4)
    b.add(1, 4)
    a.merge(b)
    assert a.compute()["overall_iou"] == pytest.approx(50.0)
    assert a.compute()["mean_iou"] == pytest.approx(50.0)
    a.reset()
    assert a.compute()["num_samples"] == 0 and a.compute()["overall_iou"] == 0.0
    with pytest.raises(ValueError):
        a.add(5, 4)
    with pytest.raises(ValueError, match="shape"):
        a.update(np.zeros((2, 3), bool), np.zeros((3, 2), bool))


def test_logits_to_mask():
    logits = np.array([[-1.0, 0.0], [1e-6, 3.0]], np.float32)
    assert logits_to_mask(logits).tolist() == [[False, False], [True, True]]  # strictly > 0
    assert logits_to_mask(logits, threshold=2.0).tolist() == [[False, False], [False, True]]


def test_resize_logits_by_hand():
    # 1 x 2 -> 1 x 4, half-pixel centres: source x = (i + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25
    out = resize_logits_to(np.array([[1.0, 5.0]], np.float32), (1, 4))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[1.0, 2.0, 4.0, 5.0]], atol=1e-6)  # clamped at both borders
    # 2 x 2 -> 3 x 3: the centre averages all four
    out = resize_logits_to(np.array([[0.0, 4.0], [8.0, 12.0]], np.float32), (3, 3))
    assert out[1, 1] == pytest.approx(6.0)
    assert out[0, 0] == pytest.approx(0.0) and out[2, 2] == pytest.approx(12.0)


def test_resize_logits_matches_torch_bilinear():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    for (h, w), (H, W) in [((30, 40), (97, 61)), ((120, 120), (427, 640)), ((64, 64), (17, 23))]:
        x = rng.normal(0, 3, (h, w)).astype(np.float32)
        ref = torch.nn.functional.interpolate(torch.from_numpy(x)[None, None], (H, W), mode="bilinear",
                                              align_corners=False)[0, 0].numpy()
        # torch computes source positions in float32; ours in float64
        np.testing.assert_allclose(resize_logits_to(x, (H, W)), ref, atol=1e-3)
    with pytest.raises(ValueError):
        resize_logits_to(np.zeros((1, 2, 2)), (4, 4))
