"""Stride-4 labels and the proposals' own loss terms (proposal_masks, proposal_selection, proposal_class): labels
that decode back to the true masks, pairwise CE+Dice against NumPy, greedy matching against a NumPy greedy and
SciPy's Hungarian, and the property the terms exist for: they break the symmetry of identical proposals."""
import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mindspore as ms
from mindspore import Tensor, nn

from src.models.criterion import CoupAlignCriterion
from src.models.losses.functional import nearest_resize, pairwise_mask_losses, stride4_labels
from src.models.losses.matching import ProposalMatcher, greedy_match
from src.models.losses.proposal_class import ProposalClassLoss
from src.models.losses.proposal_masks import ProposalMaskLoss
from src.models.losses.proposal_selection import ProposalSelectionLoss
from src.models.losses.referring import ReferringLoss


class _Labels(nn.Cell):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def construct(self, mask, ref):
        return self.fn(mask, ref.shape[0], ref.shape[1])


def _shapes(count, size, seed):
    """Discs, rotated rectangles and triangles of 6-40 pixels at random sub-pixel-free positions."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((count, size, size), np.uint8)
    for k in range(count):
        kind = k % 3
        cx, cy = rng.integers(12, size - 12, 2)
        r = int(rng.integers(3, 20))
        if kind == 0:
            cv2.circle(masks[k], (int(cx), int(cy)), r, 1, -1)
        elif kind == 1:
            box = cv2.boxPoints(((float(cx), float(cy)), (2.0 * r, float(rng.integers(4, 30))), float(rng.uniform(0, 90))))
            cv2.fillPoly(masks[k], [np.round(box).astype(np.int32)], 1)
        else:
            pts = np.array([[cx, cy - r], [cx - r, cy + r], [cx + r, cy + r]], np.int32)
            cv2.fillPoly(masks[k], [pts], 1)
    return masks


def _decoded_iou(labels, truth):
    """IoU of stride-4 maps decoded the way the model's logits are (bilinear, align_corners=False, > 0.5)."""
    up = F.interpolate(torch.from_numpy(labels[:, None].astype(np.float64)), size=truth.shape[1:], mode="bilinear",
                       align_corners=False)[:, 0].numpy() > 0.5
    inter = (up & (truth > 0)).sum(axis=(1, 2))
    union = (up | (truth > 0)).sum(axis=(1, 2))
    return inter / np.maximum(union, 1)


def test_stride4_labels_decode_back_as_well_as_the_best_binary_stride4_map():
    truth = _shapes(60, 128, seed=0)
    ref = Tensor(np.zeros((32, 32), np.float32))
    labels = _Labels(stride4_labels)(Tensor(truth.astype(np.float32)), ref).asnumpy()
    iou_labels = np.median(_decoded_iou(labels, truth))
    # the other reading of "cell centre": the bilinear sample at 4j + 1.5 (mean of the 4 central pixels)
    centre = truth.reshape(60, 32, 4, 32, 4)[:, :, 1:3, :, 1:3].mean(axis=(2, 4)) > 0.5
    assert iou_labels >= np.median(_decoded_iou(centre, truth)) - 0.01
    # the soft area average is the upper bound of any stride-4 map; binary labels lose sub-cell detail
    # (measured: 0.83 vs 0.95 median IoU), but no more than that
    soft = F.adaptive_avg_pool2d(torch.from_numpy(truth[:, None].astype(np.float64)), (32, 32))[:, 0].numpy()
    assert iou_labels >= np.median(_decoded_iou(soft, truth)) - 0.15
    # the earlier top-left-pixel labels are shifted by 1.5 pixels and fall clearly short (guards the bug:
    # measured 0.75)
    shifted = _Labels(nearest_resize)(Tensor(truth.astype(np.float32)), ref).asnumpy()
    assert np.median(_decoded_iou(shifted, truth)) < iou_labels - 0.05


def _np_pairwise(logits, targets):
    b, n = logits.shape[:2]
    k = targets.shape[1]
    y = logits.reshape(b, n, -1).astype(np.float64)
    t = targets.reshape(b, k, -1).astype(np.float64)
    out = np.zeros((b, n, k))
    for i in range(b):
        for p in range(n):
            for q in range(k):
                bce = np.mean(np.logaddexp(0, y[i, p]) - y[i, p] * t[i, q])
                prob = 1 / (1 + np.exp(-y[i, p]))
                dice = 1 - (2 * (prob * t[i, q]).sum() + 1) / (prob.sum() + t[i, q].sum() + 1)
                out[i, p, q] = bce + dice
    return out


class _Pairwise(nn.Cell):
    def construct(self, logits, targets):
        return pairwise_mask_losses(logits, targets)


def test_pairwise_mask_losses_match_numpy():
    rng = np.random.default_rng(1)
    logits = (3 * rng.standard_normal((2, 5, 6, 7))).astype(np.float32)
    targets = rng.random((2, 3, 6, 7)).astype(np.float32)
    targets[:, 0] = targets[:, 0] > 0.5
    got = _Pairwise()(Tensor(logits), Tensor(targets)).asnumpy()
    np.testing.assert_allclose(got, _np_pairwise(logits, targets), rtol=1e-5, atol=1e-6)


class _Greedy(nn.Cell):
    def construct(self, cost, valid):
        return greedy_match(cost, valid)


def _np_greedy(cost, valid):
    b, n, k = cost.shape
    out = np.zeros_like(cost)
    for i in range(b):
        c = cost[i].astype(np.float64).copy()
        c[:, valid[i] < 0.5] = np.inf
        for _ in range(int(valid[i].sum())):
            p, q = np.unravel_index(np.argmin(c), c.shape)
            out[i, p, q] = 1
            c[p, :] = np.inf
            c[:, q] = np.inf
    return out


def test_greedy_match_is_one_to_one_and_matches_numpy_and_hungarian_for_one_target():
    from scipy.optimize import linear_sum_assignment

    rng = np.random.default_rng(2)
    cost = rng.random((4, 8, 5)).astype(np.float32)
    valid = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 0, 1]], np.float32)
    got = _Greedy()(Tensor(cost), Tensor(valid)).asnumpy()
    np.testing.assert_array_equal(got, _np_greedy(cost, valid))
    assert got.sum(axis=2).max() <= 1 and got.sum(axis=1).max() <= 1
    np.testing.assert_array_equal(got.sum(axis=1), valid)  # every real object matched, no absent one
    one = _Greedy()(Tensor(cost[:, :, :1]), Tensor(np.ones((4, 1), np.float32))).asnumpy()
    for i in range(4):
        rows, _ = linear_sum_assignment(cost[i, :, :1])
        assert one[i, rows[0], 0] == 1


def _two_samples(size):
    """Referents of two samples at (size x size) and two slots of other objects, the first of sample 0 filled."""
    target = np.zeros((2, size, size), np.float32)
    target[0, 4:16, 4:20] = 1
    target[1, 10:30, 12:28] = 1
    others = np.zeros((2, 2, size, size), np.float32)
    others[0, 0, 20:30, 20:30] = 1
    return target, others


def _proposal_criterion(with_proposals=True, num_classes=0, class_weight=2.0):
    """The referring loss, and (``with_proposals``) the matched proposals' mask and selection terms, and (C > 0) the
    class term; the matcher uses the class cost with the class term, as `CoupAlignCriterion.from_config` builds it."""
    terms = [("referring", ReferringLoss(), 1.0)]
    matcher = None
    if with_proposals:
        terms += [("proposal_masks", ProposalMaskLoss(), 1.0), ("proposal_selection", ProposalSelectionLoss(), 1.0)]
        matcher = ProposalMatcher(num_classes, class_weight if num_classes else 0.0)
    if num_classes:
        terms.append(("proposal_class", ProposalClassLoss(num_classes, 0.1), class_weight))
    return CoupAlignCriterion(terms, matcher)


def _outputs(stage_logits, pixel_embed, target_embed, mask_embeds, scores, class_logits=None):
    return {"stage_logits": stage_logits, "pixel_embed": pixel_embed, "target_embed": target_embed,
            "mask_embeds": mask_embeds, "scores": scores, "class_logits": class_logits, "sma_map_logits": None}


def _batch(target, others, categories=None):
    categories = np.zeros((target.shape[0], 0), np.int32) if categories is None else categories
    return {"target": Tensor(target), "others": Tensor(others), "categories": Tensor(categories)}


@pytest.mark.parametrize("with_proposals", [False, True])
def test_proposal_terms_break_the_symmetry_of_identical_proposals(with_proposals):
    """The measured collapse: identical proposals with uniform weights. With only the weighted output supervised
    (the referring loss alone) every proposal gets the same gradient (a fixed point); the one-to-one matching is
    not: the matched proposal alone is pulled toward its object, and SMA's scores toward that proposal."""
    rng = np.random.default_rng(3)
    s, b, n, d, h, w, size = 2, 2, 6, 8, 8, 8, 32
    one = rng.standard_normal((1, b, 1, d)).astype(np.float32)
    mask_embeds = np.repeat(one, n, axis=2).repeat(s, axis=0)  # identical queries
    scores = np.zeros((s, b, n), np.float32)  # uniform weights
    pixel_embed = rng.standard_normal((b, d, h, w)).astype(np.float32)
    target, others = _two_samples(size)
    others[1, 0, 0:8, 0:8] = 1
    crit = _proposal_criterion(with_proposals)
    fields = _batch(target, others)

    def total(q, sc):
        logits = ms.ops.stack([ms.ops.bmm(ms.ops.softmax(sc[i], -1).expand_dims(1), q[i]) for i in range(s)])  # (S,B,1,D)
        stage_logits = ms.ops.stack([ms.ops.bmm(logits[i], Tensor(pixel_embed).reshape(b, d, h * w)).reshape(b, 1, h, w)
                                     for i in range(s)])
        out = _outputs(stage_logits, Tensor(pixel_embed), logits[-1].squeeze(1), q, sc)
        return crit(out, {"target": fields["target"], "others": fields["others"],
                          "categories": fields["categories"]})[0]

    grad_q, grad_s = ms.grad(total, grad_position=(0, 1))(Tensor(mask_embeds), Tensor(scores))
    spread = np.abs(grad_q.asnumpy() - grad_q.asnumpy()[:, :, :1]).max()
    if not with_proposals:
        assert spread < 1e-6 and np.abs(grad_s.asnumpy()).max() < 1e-6  # the fixed point
    else:
        assert spread > 1e-3
        assert np.abs(grad_s.asnumpy()).max() > 1e-3  # the SMA scores are pulled toward one proposal


def test_proposal_terms_of_a_batch_are_the_mean_of_their_halves():
    """Data parallelism averages per-device losses: that is the global batch's loss only if each term is a mean
    over samples. Here the two halves hold different numbers of objects (1 + 2 and 1 + 0): the old normalisation
    by the batch's total of matched objects gave (a + b) / 4 for the whole and a / 3, b / 1 for the halves."""
    rng = np.random.default_rng(5)
    s, b, n, d, h, w, size = 1, 2, 4, 8, 8, 8, 32
    mask_embeds = rng.standard_normal((s, b, n, d)).astype(np.float32)
    scores = rng.standard_normal((s, b, n)).astype(np.float32)
    pixel_embed = rng.standard_normal((b, d, h, w)).astype(np.float32)
    stage_logits = rng.standard_normal((s, b, 1, h, w)).astype(np.float32)
    target, others = _two_samples(size)
    others[0, 1, 0:8, 24:32] = 1  # sample 0: two other objects; sample 1: none
    crit = _proposal_criterion()

    def losses(rows):
        out = _outputs(Tensor(stage_logits[:, rows]), Tensor(pixel_embed[rows]), Tensor(pixel_embed[rows, :, 0, 0]),
                       Tensor(mask_embeds[:, rows]), Tensor(scores[:, rows]))
        values = crit(out, _batch(target[rows], others[rows]))
        return {name: float(v.asnumpy()) for name, v in zip(crit.loss_names, values)}

    whole, first, second = losses([0, 1]), losses([0]), losses([1])
    for name in ("proposal_masks", "proposal_selection"):
        np.testing.assert_allclose(whole[name], (first[name] + second[name]) / 2, rtol=1e-5)
        assert abs(first[name] - second[name]) > 1e-2  # the halves really differ, so the equality says something


def _np_class_loss(class_logits, assign, categories, num_classes, no_object_weight):
    """Mask2Former's weighted cross-entropy by loops: matched proposals toward their object's category,
    the others toward class C, per sample the weighted mean, then the batch mean."""
    b, n, _ = class_logits.shape
    per_sample = []
    for i in range(b):
        num = den = 0.0
        for p in range(n):
            log_p = class_logits[i, p] - np.logaddexp.reduce(class_logits[i, p].astype(np.float64))
            ks = np.nonzero(assign[i, p])[0]
            goal, weight = (categories[i, ks[0]], 1.0) if len(ks) else (num_classes, no_object_weight)
            num += -weight * log_p[goal]
            den += weight
        per_sample.append(num / den)
    return float(np.mean(per_sample))


def test_category_loss_matches_numpy_and_follows_the_matching():
    """The proposal_class term: each matched proposal is classified as its object's category, the rest as "no
    object" (weight 0.1); checked against loops over a real matching. The class cost must move the matching: two
    proposals with equal masks go to the object whose category each predicts."""
    rng = np.random.default_rng(7)
    s, b, n, d, h, w, size, classes = 1, 2, 5, 8, 8, 8, 32, 3
    mask_embeds = rng.standard_normal((s, b, n, d)).astype(np.float32)
    scores = rng.standard_normal((s, b, n)).astype(np.float32)
    pixel_embed = rng.standard_normal((b, d, h, w)).astype(np.float32)
    stage_logits = rng.standard_normal((s, b, 1, h, w)).astype(np.float32)
    class_logits = (3.0 * rng.standard_normal((s, b, n, classes + 1))).astype(np.float32)
    target, others = _two_samples(size)
    others[1, 0, 0:8, 0:8] = 1
    others[1, 1, 0:6, 24:32] = 1
    categories = np.array([[2, 0, classes], [1, 1, 0]], np.int32)
    crit = _proposal_criterion(num_classes=classes, class_weight=2.0)
    assert crit.loss_names[-1] == "proposal_class" and crit.loss_weights[-1] == 2.0

    def class_loss(q, cls, referent, other, labels):
        out = _outputs(Tensor(stage_logits), Tensor(pixel_embed), Tensor(pixel_embed[:, :, 0, 0]), Tensor(q),
                       Tensor(scores), Tensor(cls))
        return float(crit(out, _batch(referent, other, labels))[-1].asnumpy())

    got = class_loss(mask_embeds, class_logits, target, others, categories)
    # the same matching by hand: cost = pairwise CE+Dice - 2 p(category), greedy on it
    soft = F.adaptive_avg_pool2d(torch.from_numpy(np.concatenate([target[:, None], others], 1)), (h, w)).numpy()
    logits = np.einsum("bnd,bdhw->bnhw", mask_embeds[0], pixel_embed)
    prob = np.exp(class_logits[0] - np.logaddexp.reduce(class_logits[0].astype(np.float64), axis=-1, keepdims=True))
    cost = _np_pairwise(logits, soft) - 2.0 * np.take_along_axis(prob, np.repeat(categories[:, None, :], n, 1), 2)
    valid = soft.sum(axis=(2, 3)) > 0
    assign = np.zeros_like(cost)
    for i in range(b):
        c = np.where(valid[i][None, :], cost[i], np.inf)
        for _ in range(int(valid[i].sum())):
            p, k = np.unravel_index(np.argmin(c), c.shape)
            assign[i, p, k] = 1
            c[p, :] = np.inf
            c[:, k] = np.inf
    expected = _np_class_loss(class_logits[0], assign, categories, classes, 0.1)
    np.testing.assert_allclose(got, expected, rtol=1e-4)

    # the class cost decides between two proposals whose masks fit one object equally
    same = np.repeat(mask_embeds[:, :, :1], n, axis=2)  # identical masks for every proposal
    sure = np.full((s, b, n, classes + 1), -8.0, np.float32)
    sure[0, :, 3, 2] = 8.0  # proposal 3 is sure the object is category 2, the referent's category in sample 0
    low = class_loss(same, sure, target, others[:, :0], np.array([[2], [2]], np.int32))
    # matched to proposal 3, the loss is (8-ish nats of the others toward "no object" * 0.1 weight) small;
    # any other proposal would pay ~16 nats for the referent
    assert low < 4.0


def test_proposal_terms_refuse_a_model_without_what_they_read():
    from src.config import ConfigError, config_from_dict

    cfg = config_from_dict({"model": {"mask_generator": {"num_classes": 6}}})
    assert cfg.model.mask_generator.num_classes == 6
    with pytest.raises(ConfigError, match="num_classes"):
        config_from_dict({"model": {"mask_generator": {"num_classes": 6}, "sma": {"enabled": False}}})
    with pytest.raises(ConfigError, match="num_classes"):
        config_from_dict({"model": {"mask_generator": {"num_classes": -1}}})
    # a term needing a part the model lacks is named with the key to set, when the criterion is built
    no_classes = config_from_dict({"loss": {"terms": ["referring", "proposal_class"]}})
    with pytest.raises(ConfigError, match=r"'proposal_class'.*num_classes > 0"):
        CoupAlignCriterion.from_config(no_classes)
    no_sma = config_from_dict({"model": {"sma": {"enabled": False}}, "loss": {"terms": ["referring", "proposal_masks"]}})
    with pytest.raises(ConfigError, match=r"'proposal_masks'.*model.sma.enabled=true"):
        CoupAlignCriterion.from_config(no_sma)
    mixture = config_from_dict({"loss": {"terms": ["referring", "sma_map"]}})
    with pytest.raises(ConfigError, match=r"'sma_map'.*coupled"):
        CoupAlignCriterion.from_config(mixture)
