"""Sentence-Mask Alignment against NumPy, including M = literal sum_n w_n (Q_n . P)."""
import math

import numpy as np
import pytest

from mindspore import Tensor, nn

from src.models.sma import SentenceMaskAlignment, SentencePixelHead, pool_sentence

B, N, D, H, W, T, D_TEXT = 2, 6, 8, 5, 4, 7, 12
RTOL, ATOL = 1e-5, 1e-5


def _randomise(cell, seed):
    rng = np.random.default_rng(seed)
    for param in cell.get_parameters():
        param.set_data(Tensor(rng.uniform(-0.8, 0.8, size=param.shape).astype(np.float32)))


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    queries = rng.standard_normal((B, N, D)).astype(np.float32)
    pixels = rng.standard_normal((B, D, H, W)).astype(np.float32)
    sentence = rng.standard_normal((B, D_TEXT)).astype(np.float32)
    return queries, pixels, sentence


def _reference(cell, queries, pixels, sentence):
    weight = cell.sentence_proj.weight.asnumpy().astype(np.float64)
    bias = cell.sentence_proj.bias.asnumpy().astype(np.float64)
    q64, p64 = queries.astype(np.float64), pixels.astype(np.float64)
    g = sentence.astype(np.float64) @ weight.T + bias  # (B, D)
    scores = np.einsum("bnd,bd->bn", q64, g) / math.sqrt(D)
    e = np.exp(scores - scores.max(axis=1, keepdims=True))
    w = e / e.sum(axis=1, keepdims=True)
    # literal: one proposal mask per n, weighted, then summed
    logits = np.zeros((B, 1, H, W))
    for b in range(B):
        for n in range(N):
            proposal = np.einsum("d,dhw->hw", q64[b, n], p64[b])  # Y_n = Q_n . P
            logits[b, 0] += w[b, n] * proposal
    target_embed = np.einsum("bn,bnd->bd", w, q64)
    return logits, w, target_embed


def test_sma_matches_literal_weighted_sum(inputs):
    cell = SentenceMaskAlignment(D_TEXT, D)
    _randomise(cell, 1)
    logits, weights, target_embed = cell(*(Tensor(x) for x in inputs))
    ref_logits, ref_w, ref_a = _reference(cell, *inputs)
    assert logits.shape == (B, 1, H, W) and weights.shape == (B, N) and target_embed.shape == (B, D)
    np.testing.assert_allclose(weights.asnumpy(), ref_w, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(target_embed.asnumpy(), ref_a, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(logits.asnumpy(), ref_logits, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(weights.asnumpy().sum(axis=1), 1.0, rtol=1e-6)
    # weights must be non-uniform for the comparison to test the sentence projection
    assert np.ptp(weights.asnumpy(), axis=1).min() > 1e-2
    # training reads forward_with_scores: the same mix
    _, soft, _, _ = cell.forward_with_scores(*(Tensor(x) for x in inputs))
    np.testing.assert_allclose(soft.asnumpy(), ref_w, rtol=RTOL, atol=ATOL)


def test_sentence_pixel_head_matches_numpy(inputs):
    cell = SentencePixelHead(D_TEXT, D)
    _randomise(cell, 2)
    queries, pixels, sentence = inputs
    logits, weights, target_embed = cell(Tensor(queries), Tensor(pixels), Tensor(sentence))
    a = sentence.astype(np.float64) @ cell.sentence_proj.weight.asnumpy().T + cell.sentence_proj.bias.asnumpy()
    ref = np.einsum("bd,bdhw->bhw", a, pixels.astype(np.float64))[:, None]
    np.testing.assert_allclose(target_embed.asnumpy(), a, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(logits.asnumpy(), ref, rtol=RTOL, atol=ATOL)
    assert weights.shape == (B, 1) and np.all(weights.asnumpy() == 0)


class _Pool(nn.Cell):
    def __init__(self, mode):
        super().__init__()
        self.mode = mode

    def construct(self, lang, mask):
        return pool_sentence(lang, mask, self.mode)


def test_pool_sentence_mean_ignores_padding_and_cls_takes_first():
    rng = np.random.default_rng(3)
    lang = rng.standard_normal((B, T, D_TEXT)).astype(np.float32)
    mask = np.zeros((B, T), np.int32)
    mask[0, :3] = 1
    mask[1, :7] = 1
    mean_pool = _Pool("mean")
    out = mean_pool(Tensor(lang), Tensor(mask)).asnumpy()
    ref = np.stack([lang[0, :3].mean(0), lang[1, :7].mean(0)])
    np.testing.assert_allclose(out, ref, rtol=RTOL, atol=ATOL)
    changed = lang.copy()
    changed[0, 3:] = 100.0
    np.testing.assert_allclose(mean_pool(Tensor(changed), Tensor(mask)).asnumpy(), ref, rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(_Pool("cls")(Tensor(lang), Tensor(mask)).asnumpy(), lang[:, 0])


def test_mask_geometry_scores_match_numpy(inputs):
    """sma.mask_geometry: each proposal's score adds Linear(centroid x, centroid y, area of sigmoid(Q_n . P)) . g;
    the target embedding stays sum_n w_n Q_n. Checked by loops over pixels; and a proposal far to the left
    has a smaller centroid x than one far to the right (the axes are not swapped)."""
    queries, pixels, sentence = inputs
    cell = SentenceMaskAlignment(D_TEXT, D, geometry=True)
    _randomise(cell, 2)
    _, weights, target_embed = cell(*(Tensor(x) for x in inputs))
    q64, p64 = queries.astype(np.float64), pixels.astype(np.float64)
    geometry = np.zeros((B, N, 3))
    for b in range(B):
        for n in range(N):
            soft = 1.0 / (1.0 + np.exp(-np.einsum("d,dhw->hw", q64[b, n], p64[b])))  # (H, W)
            ys, xs = np.mgrid[0:H, 0:W]
            geometry[b, n] = [(soft * (xs + 0.5) / W).sum() / soft.sum(), (soft * (ys + 0.5) / H).sum() / soft.sum(),
                              soft.mean()]
    proj_w = cell.geometry_proj.weight.asnumpy().astype(np.float64)
    proj_b = cell.geometry_proj.bias.asnumpy().astype(np.float64)
    keys = q64 + geometry @ proj_w.T + proj_b
    g = sentence.astype(np.float64) @ cell.sentence_proj.weight.asnumpy().T + cell.sentence_proj.bias.asnumpy()
    scores = np.einsum("bnd,bd->bn", keys, g) / math.sqrt(D)
    e = np.exp(scores - scores.max(axis=1, keepdims=True))
    np.testing.assert_allclose(weights.asnumpy(), e / e.sum(axis=1, keepdims=True), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(target_embed.asnumpy(), np.einsum("bn,bnd->bd", weights.asnumpy(), q64), rtol=1e-4,
                               atol=1e-5)

    from src.models.sma import mask_geometry
    side = np.zeros((1, 1, 4, 8), np.float32)
    side[..., :2] = 1.0  # pixel feature 1 on the two left columns
    left_right = np.array([[[20.0], [-20.0]]], np.float32)  # proposal 0: the left columns; 1: the rest
    geo = mask_geometry(Tensor(left_right), Tensor(side * 2 - 1)).asnumpy()[0]
    np.testing.assert_allclose(geo[:, 0], [1 / 8, 5 / 8], atol=1e-3)  # centroid x: columns 0-1 vs 2-7
    np.testing.assert_allclose(geo[:, 1], [0.5, 0.5], atol=1e-3)
    np.testing.assert_allclose(geo[:, 2], [0.25, 0.75], atol=1e-3)


def test_reasoning_scores_read_the_words_and_the_other_proposals_but_not_padding(inputs):
    """sma.reasoning_layers: a proposal's score depends on the individual words and on the other proposals
    (what one pooled vector dotted with one proposal cannot do), never on padding tokens; the target
    embedding is still sum_n w_n Q_n of the unchanged mask embeddings."""
    queries, pixels, sentence = inputs
    rng = np.random.default_rng(4)
    words = rng.standard_normal((B, T, D_TEXT)).astype(np.float32)
    attention_mask = np.ones((B, T), np.int32)
    attention_mask[:, 4:] = 0
    cell = SentenceMaskAlignment(D_TEXT, D, reasoning_layers=2, reasoning_heads=2)
    _randomise(cell, 5)

    def scores(q=queries, w=words):
        _, weights, target_embed, raw = cell.forward_with_scores(Tensor(q), Tensor(pixels), Tensor(sentence),
                                                                 Tensor(w), Tensor(attention_mask))
        np.testing.assert_allclose(target_embed.asnumpy(), np.einsum("bn,bnd->bd", weights.asnumpy(), q),
                                   rtol=1e-4, atol=1e-5)
        return raw.asnumpy()

    base = scores()
    padded = words.copy()
    padded[:, 4:] = rng.standard_normal((B, T - 4, D_TEXT))
    np.testing.assert_allclose(scores(w=padded), base, rtol=1e-5, atol=1e-5)  # padding is invisible
    reworded = words.copy()
    reworded[:, 2] = rng.standard_normal((B, D_TEXT))
    assert np.abs(scores(w=reworded) - base).max() > 1e-3
    others = queries.copy()
    others[:, 1:] = rng.standard_normal((B, N - 1, D))  # proposal 0 unchanged, its neighbours changed
    assert np.abs(scores(q=others)[:, 0] - base[:, 0]).max() > 1e-3
    plain = SentenceMaskAlignment(D_TEXT, D)
    _randomise(plain, 5)
    _, _, _, plain_raw = plain.forward_with_scores(Tensor(others), Tensor(pixels), Tensor(sentence))
    _, _, _, plain_base = plain.forward_with_scores(Tensor(queries), Tensor(pixels), Tensor(sentence))
    np.testing.assert_allclose(plain_raw.asnumpy()[:, 0], plain_base.asnumpy()[:, 0], rtol=1e-5)  # the paper's: no
