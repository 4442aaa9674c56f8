"""The referring and auxiliary-contrast loss terms and their sum by CoupAlignCriterion, against PyTorch
(cross-entropy, resizing) and NumPy (Dice, auxiliary contrast)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mindspore as ms
from mindspore import Tensor, nn

from criterion_inputs import batch, named, outputs, seg_aux_criterion, traced_batch, traced_outputs
from src.models.losses.aux_contrast import AuxPixelSampler, aux_contrastive_loss
from src.models.losses.functional import nearest_resize, pairwise_mask_losses, stride4_labels
from src.models.losses.matching import greedy_match

RTOL, ATOL = 1e-5, 1e-6
S, B, D, h, w = 3, 3, 8, 6, 6  # stages, batch, embed width, stride-4 grid
H, W = 24, 26  # input resolution: non-integer column ratio exercises the resize index rules
NUM_FG, NUM_BG, TEMP = 6, 10, 0.07


# ----------------------------------------------------------------------------- references
def _torch_seg_terms(logits, target, ce_weights=(0.9, 1.1), smooth=1.0):
    """Per-stage CE (PyTorch weighted mean) and Dice (NumPy) on bilinearly upsampled logits."""
    ce, dice = [], []
    tgt = torch.from_numpy(target.astype(np.int64))
    for stage in logits:
        up = F.interpolate(torch.from_numpy(stage).double(), size=target.shape[1:], mode="bilinear", align_corners=False)
        two_class = torch.cat([torch.zeros_like(up), up], dim=1)
        ce.append(F.cross_entropy(two_class, tgt, weight=torch.tensor(ce_weights, dtype=torch.float64)).item())
        prob = torch.sigmoid(up[:, 0]).numpy()
        inter = (prob * target).sum(axis=(1, 2))
        dice.append(np.mean(1.0 - (2 * inter + smooth) / (prob.sum(axis=(1, 2)) + target.sum(axis=(1, 2)) + smooth)))
    return np.array(ce), np.array(dice)


def _torch_nearest(mask, size):
    return F.interpolate(torch.from_numpy(mask[:, None].astype(np.float32)), size=size, mode="nearest")[:, 0].numpy()


def _torch_area_labels(mask, size):
    """Stride-4 labels of the LAVT-free definition: a cell is foreground when its area average exceeds 0.5."""
    avg = F.adaptive_avg_pool2d(torch.from_numpy(mask[:, None].astype(np.float64)), size)[:, 0].numpy()
    return (avg > 0.5).astype(np.float32)


def _np_loss_given_selection(sim, fg_idx, fg_valid, bg_idx, bg_valid, temp):
    per_sample = []
    for b in range(sim.shape[0]):
        fg = [sim[b, i] / temp for i, v in zip(fg_idx[b], fg_valid[b]) if v > 0]
        bg = np.array([sim[b, j] / temp for j, v in zip(bg_idx[b], bg_valid[b]) if v > 0])
        if not fg:
            continue
        per_sample.append(np.mean([-(s - np.log(np.exp(s) + np.exp(bg).sum())) for s in fg]))
    return float(np.mean(per_sample)) if per_sample else 0.0


def _np_select(sim, fg_mask, fg_keys, bg_keys, num_fg, num_bg, hard_ratio):
    """Selected fg set, hard bg set and random bg set per sample, by sorting."""
    num_hard = int(round(num_bg * hard_ratio))
    out = []
    for b in range(sim.shape[0]):
        fg = np.flatnonzero(fg_mask[b] > 0.5)
        bg = np.flatnonzero(fg_mask[b] < 0.5)
        fg_sel = fg[np.argsort(-fg_keys[b, fg], kind="stable")][:num_fg]
        hard = bg[np.argsort(-sim[b, bg], kind="stable")][:num_hard]
        rest = np.setdiff1d(bg, hard)
        rand = rest[np.argsort(-bg_keys[b, rest], kind="stable")][: num_bg - num_hard]
        out.append((set(fg_sel.tolist()), set(hard.tolist()), set(rand.tolist())))
    return out


def _np_aux(pixel_embed, target_embed, target, fg_keys, bg_keys, hard_ratio=0.5):
    p = pixel_embed.astype(np.float64).reshape(pixel_embed.shape[0], pixel_embed.shape[1], -1)
    p = p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12)
    a = target_embed.astype(np.float64)
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    sim = np.einsum("bd,bdn->bn", a, p)
    fg_mask = _torch_area_labels(target, pixel_embed.shape[2:]).reshape(target.shape[0], -1)
    losses = []
    for b, (fg_sel, hard, rand) in enumerate(_np_select(sim, fg_mask, fg_keys, bg_keys, NUM_FG, NUM_BG, hard_ratio)):
        if not fg_sel:
            continue
        neg = np.array([sim[b, j] / TEMP for j in hard | rand])
        losses.append(np.mean([np.log(np.exp(sim[b, i] / TEMP) + np.exp(neg).sum()) - sim[b, i] / TEMP for i in fg_sel]))
    return float(np.mean(losses)) if losses else 0.0


# ----------------------------------------------------------------------------- wrappers for functions
class _Nearest(nn.Cell):
    def construct(self, mask, ref):
        return nearest_resize(mask, ref.shape[0], ref.shape[1])


class _LossGivenSelection(nn.Cell):
    def construct(self, sim, fg_idx, fg_valid, bg_idx, bg_valid):
        return aux_contrastive_loss(sim, fg_idx, fg_valid, bg_idx, bg_valid, TEMP)


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    logits = (2.0 * rng.standard_normal((S, B, 1, h, w))).astype(np.float32)
    target = np.zeros((B, H, W), np.float32)
    target[0, 3:20, 5:22] = 1.0  # large object: more fg pixels at stride 4 than NUM_FG
    target[1, 8:13, 9:14] = 1.0  # small object: fewer fg pixels than NUM_FG
    target[2, 1:3, 1:3] = 1.0  # tiny object: a quarter of one stride-4 cell, no label
    pixel_embed = rng.standard_normal((B, D, h, w)).astype(np.float32)
    target_embed = rng.standard_normal((B, D)).astype(np.float32)
    fg_keys = rng.random((B, h * w)).astype(np.float32)
    bg_keys = rng.random((B, h * w)).astype(np.float32)
    return logits, target, pixel_embed, target_embed, fg_keys, bg_keys


@pytest.fixture(scope="module")
def criterion():
    return seg_aux_criterion(num_fg=NUM_FG, num_bg=NUM_BG, temperature=TEMP)


def _losses(crit, logits, target, pixel_embed, target_embed, fg_keys=None, bg_keys=None):
    """{name: value} of `crit` on these arrays; the aux contrast draws `fg_keys`/`bg_keys` when given."""
    if "aux_contrast" in crit.term_names:
        crit.term("aux_contrast").use_fixed_keys(*(None if k is None else Tensor(k) for k in (fg_keys, bg_keys)))
    out = outputs(stage_logits=logits, pixel_embed=pixel_embed, target_embed=target_embed)
    return named(crit, crit(out, batch(target)))


# ----------------------------------------------------------------------------- segmentation loss
def test_cross_entropy_matches_torch_weighted_mean(data):
    logits, target = data[0], data[1]
    crit = seg_aux_criterion(dice_weight=0.0, deep_supervision=False, aux=False)
    losses = _losses(crit, logits, target, data[2], data[3])
    ce, _ = _torch_seg_terms(logits[-1:], target)
    assert list(losses) == ["loss", "referring"]
    np.testing.assert_allclose(losses["referring"], ce[0], rtol=RTOL)
    np.testing.assert_allclose(losses["loss"], ce[0], rtol=RTOL)
    # the weighted-mean convention matters here: dividing by the pixel count would differ by > 1 %
    up = F.interpolate(torch.from_numpy(logits[-1]).double(), size=(H, W), mode="bilinear", align_corners=False)
    per_pixel = F.cross_entropy(torch.cat([torch.zeros_like(up), up], 1), torch.from_numpy(target).long(),
                                weight=torch.tensor([0.9, 1.1], dtype=torch.float64), reduction="none")
    assert abs(per_pixel.mean().item() - ce[0]) > 1e-2 * ce[0]


@pytest.mark.parametrize("deep_supervision", [True, False])
def test_seg_loss_ce_plus_dice_and_deep_supervision(data, deep_supervision):
    logits, target = data[0], data[1]
    crit = seg_aux_criterion(dice_weight=0.7, deep_supervision=deep_supervision, aux=False)
    losses = _losses(crit, logits, target, data[2], data[3])
    ce, dice = _torch_seg_terms(logits, target)
    per_stage = ce + 0.7 * dice
    expected = per_stage.sum() if deep_supervision else per_stage[-1]
    np.testing.assert_allclose(losses["referring"], expected, rtol=RTOL)
    np.testing.assert_allclose(losses["loss"], expected, rtol=RTOL)


def test_seg_loss_gradient_matches_torch(data):
    logits, target = data[0], data[1]
    crit = seg_aux_criterion(dice_weight=1.0, aux=False)

    extra = batch(target)

    def seg_only(x, t, p, a):
        return crit(traced_outputs(x, p, a), traced_batch(t, extra["others"], extra["categories"]))[0]

    grad = ms.grad(seg_only, grad_position=0)(Tensor(logits), Tensor(target), Tensor(data[2]), Tensor(data[3]))
    x = torch.from_numpy(logits).double().requires_grad_(True)
    tgt = torch.from_numpy(target).double()
    loss = 0.0
    for stage in range(S):
        up = F.interpolate(x[stage], size=(H, W), mode="bilinear", align_corners=False)
        loss = loss + F.cross_entropy(torch.cat([torch.zeros_like(up), up], 1), tgt.long(),
                                      weight=torch.tensor([0.9, 1.1], dtype=torch.float64))
        prob = torch.sigmoid(up[:, 0])
        loss = loss + (1 - (2 * (prob * tgt).sum((1, 2)) + 1) / (prob.sum((1, 2)) + tgt.sum((1, 2)) + 1)).mean()
    loss.backward()
    np.testing.assert_allclose(grad.asnumpy(), x.grad.numpy(), rtol=1e-4, atol=1e-7)


# ----------------------------------------------------------------------------- resizing
@pytest.mark.parametrize("src,dst", [((24, 24), (6, 6)), ((37, 23), (10, 7)), ((50, 13), (13, 5)), ((13, 9), (20, 11))])
def test_nearest_resize_matches_torch(src, dst):
    mask = np.random.default_rng(sum(src)).random((2,) + src).astype(np.float32)
    got = _Nearest()(Tensor(mask), Tensor(np.zeros(dst, np.float32))).asnumpy()
    np.testing.assert_array_equal(got, _torch_nearest(mask, dst))


# ----------------------------------------------------------------------------- auxiliary contrast
def test_loss_given_selection_matches_numpy_and_torch_gradient():
    rng = np.random.default_rng(5)
    batch, pixels, kf, kb = 4, 30, 5, 9
    sim = rng.uniform(-1, 1, (batch, pixels)).astype(np.float32)
    fg_idx = np.stack([rng.permutation(pixels)[:kf] for _ in range(batch)]).astype(np.int32)
    bg_idx = np.stack([rng.permutation(pixels)[:kb] for _ in range(batch)]).astype(np.int32)
    fg_valid = (rng.random((batch, kf)) > 0.3).astype(np.float32)
    bg_valid = (rng.random((batch, kb)) > 0.3).astype(np.float32)
    fg_valid[0, 0] = 1.0
    fg_valid[1] = 0.0  # a sample without foreground: left out of the mean
    bg_valid[2] = 0.0  # a sample without background: its loss is log(1) = 0 but it counts
    args = (sim, fg_idx, fg_valid, bg_idx, bg_valid)
    cell = _LossGivenSelection()
    got = cell(*(Tensor(x) for x in args)).asnumpy()
    ref = _np_loss_given_selection(*args, TEMP)
    assert ref > 0.1
    np.testing.assert_allclose(got, ref, rtol=RTOL)
    # gradient w.r.t. the similarities against PyTorch autograd of the naive formula
    grad = ms.grad(cell, grad_position=0)(*(Tensor(x) for x in args)).asnumpy()
    s = torch.from_numpy(sim).double().requires_grad_(True)
    losses = []
    for b in range(batch):
        fg = s[b, torch.from_numpy(fg_idx[b][fg_valid[b] > 0]).long()] / TEMP
        bg = s[b, torch.from_numpy(bg_idx[b][bg_valid[b] > 0]).long()] / TEMP
        if len(fg):
            losses.append((torch.log(torch.exp(fg) + torch.exp(bg).sum()) - fg).mean())
    torch.stack(losses).mean().backward()
    np.testing.assert_allclose(grad, s.grad.numpy(), rtol=1e-4, atol=1e-6)


def test_sampler_selection_properties():
    rng = np.random.default_rng(7)
    pixels = 64
    fg_counts = [30, 4, 0, 58]  # 58 fg leaves 6 bg: fewer than the hard quota
    fg_mask = np.zeros((4, pixels), np.float32)
    for b, count in enumerate(fg_counts):
        fg_mask[b, rng.permutation(pixels)[:count]] = 1.0
    sim = rng.uniform(-1, 1, (4, pixels)).astype(np.float32)
    fg_keys = rng.random((4, pixels)).astype(np.float32)
    bg_keys = rng.random((4, pixels)).astype(np.float32)
    sampler = AuxPixelSampler(NUM_FG, NUM_BG, 0.5)
    fg_idx, fg_valid, bg_idx, bg_valid = (x.asnumpy() for x in sampler(*(Tensor(x) for x in (sim, fg_mask, fg_keys, bg_keys))))
    assert fg_idx.shape == (4, NUM_FG) and bg_idx.shape == (4, NUM_BG)
    expected = _np_select(sim, fg_mask, fg_keys, bg_keys, NUM_FG, NUM_BG, 0.5)
    for b, count in enumerate(fg_counts):
        chosen_fg = fg_idx[b][fg_valid[b] > 0]
        assert len(chosen_fg) == min(NUM_FG, count) == len(set(chosen_fg.tolist()))
        assert np.all(fg_mask[b, chosen_fg] == 1.0)
        assert set(chosen_fg.tolist()) == expected[b][0]  # the largest keys among fg
        hard = bg_idx[b, : NUM_BG // 2][bg_valid[b, : NUM_BG // 2] > 0]
        rand = bg_idx[b, NUM_BG // 2:][bg_valid[b, NUM_BG // 2:] > 0]
        num_bg = pixels - count
        assert len(hard) + len(rand) == min(NUM_BG, num_bg)
        assert np.all(fg_mask[b, np.concatenate([hard, rand])] == 0.0)
        assert not set(hard.tolist()) & set(rand.tolist())
        # hard negatives are exactly the most similar background pixels
        bg_all = np.flatnonzero(fg_mask[b] == 0)
        top = bg_all[np.argsort(-sim[b, bg_all])][: NUM_BG // 2]
        assert set(hard.tolist()) == set(top.tolist()) == expected[b][1]
        assert set(rand.tolist()) == expected[b][2]


def test_aux_loss_end_to_end_matches_numpy(criterion, data):
    logits, target, pixel_embed, target_embed, fg_keys, bg_keys = data
    small = _torch_area_labels(target, (h, w))
    assert target[2].sum() > 0 and small[2].sum() == 0  # sample 2 loses its object at stride 4
    # the labels are the cells' area averages, not their top-left pixels: the two differ here
    assert not np.array_equal(small, _torch_nearest(target, (h, w)))
    assert small[0].sum() > NUM_FG and 0 < small[1].sum() < NUM_FG
    losses = _losses(criterion, *data)
    ref_aux = _np_aux(pixel_embed, target_embed, target, fg_keys, bg_keys)
    np.testing.assert_allclose(losses["aux_contrast"], ref_aux, rtol=RTOL)
    # the empty sample is excluded from the batch mean (not counted as a zero)
    ref_valid_only = _np_aux(pixel_embed[:2], target_embed[:2], target[:2], fg_keys[:2], bg_keys[:2])
    np.testing.assert_allclose(ref_aux, ref_valid_only, rtol=1e-12)
    ce, dice = _torch_seg_terms(logits, target)
    np.testing.assert_allclose(losses["referring"], (ce + dice).sum(), rtol=RTOL)
    np.testing.assert_allclose(losses["loss"], (ce + dice).sum() + 0.1 * ref_aux, rtol=RTOL)


def test_all_background_batch_gives_zero_aux(criterion, data):
    logits, _, pixel_embed, target_embed, fg_keys, bg_keys = data
    empty = np.zeros((B, H, W), np.float32)
    losses = _losses(criterion, logits, empty, pixel_embed, target_embed, fg_keys, bg_keys)
    assert losses["aux_contrast"] == 0.0
    assert np.isfinite(losses["loss"]) and losses["loss"] == losses["referring"]


@pytest.fixture(scope="module")
def total_grad(criterion):
    """Gradient of the total w.r.t. (logits, pixel_embed, target_embed) with the aux keys of `data`, compiled once
    for the module."""
    aux = criterion.term("aux_contrast")
    extra = batch(np.zeros((B, H, W), np.float32))

    def total_loss(x, t, p, a):
        return criterion(traced_outputs(x, p, a), traced_batch(t, extra["others"], extra["categories"]))[0]

    def grads(x, t, p, a, kf, kb):
        aux.use_fixed_keys(kf, kb)  # before the first call compiles the graph: the same keys in every call
        return ms.jit(ms.grad(total_loss, grad_position=(0, 2, 3)))(x, t, p, a)

    return grads


@pytest.mark.parametrize("all_background", [False, True])
def test_gradients_are_finite(total_grad, data, all_background):
    logits, target, pixel_embed, target_embed, fg_keys, bg_keys = data
    pixel_embed = pixel_embed.copy()
    pixel_embed[0, :, 0, 0] = 0.0  # a zero embedding: normalisation must not produce NaN
    if all_background:
        target = np.zeros_like(target)
    grads = total_grad(*(Tensor(x) for x in (logits, target, pixel_embed, target_embed, fg_keys, bg_keys)))
    for g in grads:
        assert np.all(np.isfinite(g.asnumpy()))
    assert np.abs(grads[0].asnumpy()).max() > 0
    if not all_background:
        assert np.abs(grads[1].asnumpy()).max() > 0 and np.abs(grads[2].asnumpy()).max() > 0


def test_random_selection_reproducible_under_seed(data):
    logits, target, pixel_embed, target_embed = (Tensor(x) for x in data[:4])
    results = []
    for _ in range(2):
        ms.set_seed(11)
        crit = seg_aux_criterion(num_fg=2, num_bg=4, temperature=TEMP)  # strict subsets
        out = outputs(stage_logits=logits, pixel_embed=pixel_embed, target_embed=target_embed)
        first = crit(out, batch(target))[2].asnumpy()
        second = crit(out, batch(target))[2].asnumpy()
        results.append((first, second))
    assert results[0][0] == results[1][0] and results[0][1] == results[1][1]
    assert results[0][0] != results[0][1]  # fresh keys on every call
