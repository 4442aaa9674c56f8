"""The coupled SMA head (model.sma.head = coupled) against NumPy, and at gate 0 the per-pixel head exactly."""
import math

import numpy as np
import pytest

import mindspore as ms
from mindspore import Tensor

from src.models.coupled_head import CoupledSentenceMaskHead, no_object_log_prior
from src.models.sma import SentencePixelHead

B, N, D, H, W, D_TEXT, C = 2, 6, 8, 5, 4, 12, 3
RTOL, ATOL = 1e-5, 1e-5


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    queries = rng.standard_normal((B, N, D)).astype(np.float32)
    pixels = rng.standard_normal((B, D, H, W)).astype(np.float32)
    sentence = rng.standard_normal((B, D_TEXT)).astype(np.float32)
    class_logits = rng.standard_normal((B, N, C + 1)).astype(np.float32) * 2
    return queries, pixels, sentence, class_logits


def _head(seed, gate, log_temperature, pixel_agreement=False):
    head = CoupledSentenceMaskHead(D_TEXT, D, pixel_agreement=pixel_agreement)
    rng = np.random.default_rng(seed)
    for param in head.get_parameters():
        param.set_data(Tensor(rng.uniform(-0.8, 0.8, size=param.shape).astype(np.float32)))
    head.gate.set_data(Tensor(gate, ms.float32))
    head.log_temperature.set_data(Tensor(log_temperature, ms.float32))
    return head


def _dense(cell, x):
    return x.astype(np.float64) @ cell.weight.asnumpy().astype(np.float64).T + cell.bias.asnumpy()


def _reference(head, queries, pixels, sentence, class_logits):
    """Literal: each proposal's sigmoid mask, weighted and summed, then the logit; plus g_p . P."""
    q64, p64 = queries.astype(np.float64), pixels.astype(np.float64)
    g = _dense(head.sentence_proj, sentence)  # (B, D)
    g_pix = _dense(head.pixel_query, sentence)
    tau = math.exp(float(head.log_temperature.asnumpy()))
    scores = tau * np.einsum("bnd,bd->bn", q64, g) / math.sqrt(D)
    pixel = np.einsum("bd,bdhw->bhw", g_pix, p64)[:, None]
    if head.use_pixel_agreement:  # beta * the pixel path's mean logit inside each soft proposal mask
        masks = 1.0 / (1.0 + np.exp(-np.einsum("bnd,bdhw->bnhw", q64, p64)))
        agreement = (masks * pixel).sum(axis=(2, 3)) / (masks.sum(axis=(2, 3)) + 1.0)
        scores = scores + float(head.agreement_weight.asnumpy()) * agreement
    if class_logits is not None:
        e = np.exp(class_logits.astype(np.float64))
        scores = scores + np.log(e[..., :C].sum(-1) / e.sum(-1))  # log(1 - p(no object))
    w = np.exp(scores - scores.max(1, keepdims=True))
    w = w / w.sum(1, keepdims=True)
    mix = np.zeros((B, H, W))
    for b in range(B):
        for n in range(N):
            mix[b] += w[b, n] / (1 + np.exp(-np.einsum("d,dhw->hw", q64[b, n], p64[b])))
    mix = np.clip(mix, 1e-4, 1 - 1e-4)
    sma = np.log(mix / (1 - mix))[:, None]
    gate = float(head.gate.asnumpy())
    return pixel + gate * sma, sma, w, scores, np.einsum("bn,bnd->bd", w, q64)


@pytest.mark.parametrize("with_classes,pixel_agreement", [(True, False), (False, False), (True, True)])
def test_coupled_head_matches_numpy(inputs, with_classes, pixel_agreement):
    queries, pixels, sentence, class_logits = inputs
    class_logits = class_logits if with_classes else None
    head = _head(1, gate=0.7, log_temperature=0.4, pixel_agreement=pixel_agreement)
    if pixel_agreement:
        head.agreement_weight.set_data(Tensor(0.6, ms.float32))
    args = (Tensor(queries), Tensor(pixels), Tensor(sentence), None, None,
            None if class_logits is None else Tensor(class_logits))
    logits, weights, target_embed, scores = head.forward_with_scores(*args)
    ref_logits, _, ref_w, ref_scores, ref_a = _reference(head, queries, pixels, sentence, class_logits)
    np.testing.assert_allclose(scores.asnumpy(), ref_scores, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(weights.asnumpy(), ref_w, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(target_embed.asnumpy(), ref_a, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(logits.asnumpy(), ref_logits, rtol=1e-4, atol=1e-4)
    assert np.ptp(ref_w, axis=1).min() > 1e-2  # non-uniform weights: the scores are really tested


def test_forward_train_supervises_the_final_output_once_and_sma_maps_after_the_queries(inputs):
    queries, pixels, sentence, class_logits = inputs
    head = _head(2, gate=0.5, log_temperature=0.0)
    stages = np.stack([queries, queries[:, ::-1], queries * 0.5])  # (S=3, B, N, D)
    classes = np.stack([class_logits] * 3)
    logits, target_embed, scores, maps = head.forward_train(Tensor(stages), Tensor(pixels), Tensor(sentence),
                                                           None, None, Tensor(classes))
    assert logits.shape == (1, B, 1, H, W) and scores.shape == (3, B, N) and maps.shape == (2, B, 1, H, W)
    for s in range(3):
        ref_logits, ref_sma, _, ref_scores, ref_a = _reference(head, stages[s], pixels, sentence, class_logits)
        np.testing.assert_allclose(scores.asnumpy()[s], ref_scores, rtol=RTOL, atol=ATOL)
        if s > 0:  # stage 0 (the initial queries, the same for every image) gets no referring loss
            np.testing.assert_allclose(maps.asnumpy()[s - 1], ref_sma, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(logits.asnumpy()[0], ref_logits, rtol=1e-4, atol=1e-4)  # the final stage's
    np.testing.assert_allclose(target_embed.asnumpy(), ref_a, rtol=RTOL, atol=ATOL)


def test_gate_zero_gives_exactly_the_per_pixel_heads_logits(inputs):
    queries, pixels, sentence, class_logits = inputs
    head = _head(3, gate=0.0, log_temperature=0.3)
    pixel_head = SentencePixelHead(D_TEXT, D)
    pixel_head.sentence_proj.weight.set_data(head.pixel_query.weight.data.copy())
    pixel_head.sentence_proj.bias.set_data(head.pixel_query.bias.data.copy())
    coupled, _, _ = head(Tensor(queries), Tensor(pixels), Tensor(sentence), None, None, Tensor(class_logits))
    plain, _, _ = pixel_head(None, Tensor(pixels), Tensor(sentence))
    np.testing.assert_array_equal(coupled.asnumpy(), plain.asnumpy())
    # and the gate is what separates them: opened, the output moves
    head.gate.set_data(Tensor(0.5, ms.float32))
    opened, _, _ = head(Tensor(queries), Tensor(pixels), Tensor(sentence), None, None, Tensor(class_logits))
    assert np.abs(opened.asnumpy() - plain.asnumpy()).max() > 0.1


def test_objectness_prior_is_log_one_minus_no_object_and_has_no_gradient():
    logits = np.array([[[0.0, 0.0, 0.0, 50.0], [3.0, -1.0, 0.5, -20.0]]], np.float32)  # (1, 2, C + 1)
    prior = no_object_log_prior(Tensor(logits)).asnumpy()
    e = np.exp(logits.astype(np.float64) - logits.max(-1, keepdims=True))
    np.testing.assert_allclose(prior, np.log(e[..., :C].sum(-1) / e.sum(-1)), rtol=1e-5, atol=1e-5)
    assert prior[0, 0] < -45 and prior[0, 1] > -1e-6  # "no object" all but vetoes a proposal
    def total(x):
        return no_object_log_prior(x).sum()

    grad = ms.grad(total)(Tensor(logits))
    np.testing.assert_array_equal(grad.asnumpy(), 0.0)


def test_scale_gradient_is_the_identity_forward_and_scales_the_gradient():
    from src.models.layers import scale_gradient

    x = Tensor(np.random.default_rng(4).standard_normal((3, 5)).astype(np.float32))
    np.testing.assert_array_equal(scale_gradient(x, 0.25).asnumpy(), x.asnumpy())

    def loss(t, scale):
        return (scale_gradient(t, scale) ** 2).sum()

    full = ms.grad(loss)(x, 1.0).asnumpy()
    np.testing.assert_allclose(full, 2 * x.asnumpy(), rtol=1e-6)
    np.testing.assert_allclose(ms.grad(loss)(x, 0.25).asnumpy(), 0.25 * full, rtol=1e-6)
    np.testing.assert_array_equal(ms.grad(loss)(x, 0.0).asnumpy(), 0.0)


def test_proposal_grad_scale_scales_only_the_proposal_losses_pull_on_the_pixel_embeddings():
    """The matched proposal mask term reads P through the scale (the matcher's proposal logits)."""
    from src.models.criterion import CoupAlignCriterion
    from src.models.losses.matching import ProposalMatcher
    from src.models.losses.proposal_masks import ProposalMaskLoss

    rng = np.random.default_rng(5)
    pixels = Tensor(rng.standard_normal((B, D, 8, 8)).astype(np.float32))
    queries = Tensor(rng.standard_normal((1, B, N, D)).astype(np.float32))
    scores = Tensor(rng.standard_normal((1, B, N)).astype(np.float32))
    target = np.zeros((B, 32, 32), np.float32)
    target[:, 4:20, 6:18] = 1
    fields = {"target": Tensor(target), "others": Tensor(np.zeros((B, 1, 32, 32), np.uint8)),
              "categories": Tensor(np.zeros((B, 0), np.int32))}

    def proposal_grad(scale):
        criterion = CoupAlignCriterion([("proposal_masks", ProposalMaskLoss(), 1.0)], ProposalMatcher(0, 0.0, scale))

        def proposal_part(p):
            out = {"stage_logits": None, "pixel_embed": p, "target_embed": None, "mask_embeds": queries,
                   "scores": scores, "class_logits": None, "sma_map_logits": None}
            return criterion(out, {"target": fields["target"], "others": fields["others"],
                                   "categories": fields["categories"]})[0]

        return ms.grad(proposal_part)(pixels).asnumpy()

    full, quarter = proposal_grad(1.0), proposal_grad(0.25)
    assert np.abs(full).max() > 1e-4
    np.testing.assert_allclose(quarter, 0.25 * full, rtol=1e-4, atol=1e-7)


def test_pixel_agreement_is_the_mean_pixel_logit_inside_each_mask_without_gradient():
    from src.models.coupled_head import pixel_agreement

    masks = np.zeros((1, 2, 4), np.float32)
    masks[0, 0, :2] = 1.0  # proposal 0 covers pixels 0, 1; proposal 1 covers pixel 3 at half strength
    masks[0, 1, 3] = 0.5
    pixel = np.array([[[[4.0, 2.0], [-1.0, -6.0]]]], np.float32)  # (1, 1, 2, 2): pixels 0..3 = 4, 2, -1, -6
    got = pixel_agreement(Tensor(masks), Tensor(pixel)).asnumpy()
    np.testing.assert_allclose(got, [[(4 + 2) / (2 + 1), (0.5 * -6) / (0.5 + 1)]], rtol=1e-6)

    def total(m, p):
        return pixel_agreement(m, p).sum()

    grads = ms.grad(total, grad_position=(0, 1))(Tensor(masks), Tensor(pixel))
    assert all(np.array_equal(g.asnumpy(), np.zeros_like(g.asnumpy())) for g in grads)
