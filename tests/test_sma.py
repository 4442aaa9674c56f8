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


def _reference(cell, queries, pixels, sentence, weighting):
    weight = cell.sentence_proj.weight.asnumpy().astype(np.float64)
    bias = cell.sentence_proj.bias.asnumpy().astype(np.float64)
    q64, p64 = queries.astype(np.float64), pixels.astype(np.float64)
    g = sentence.astype(np.float64) @ weight.T + bias  # (B, D)
    scores = np.einsum("bnd,bd->bn", q64, g) / math.sqrt(D)
    if weighting == "softmax":
        e = np.exp(scores - scores.max(axis=1, keepdims=True))
        w = e / e.sum(axis=1, keepdims=True)
    else:
        w = 1.0 / (1.0 + np.exp(-scores))
    # literal: one proposal mask per n, weighted, then summed
    logits = np.zeros((B, 1, H, W))
    for b in range(B):
        for n in range(N):
            proposal = np.einsum("d,dhw->hw", q64[b, n], p64[b])  # Y_n = Q_n . P
            logits[b, 0] += w[b, n] * proposal
    target_embed = np.einsum("bn,bnd->bd", w, q64)
    return logits, w, target_embed


@pytest.mark.parametrize("weighting", ["softmax", "sigmoid"])
def test_sma_matches_literal_weighted_sum(inputs, weighting):
    cell = SentenceMaskAlignment(D_TEXT, D, weighting=weighting)
    _randomise(cell, 1)
    logits, weights, target_embed = cell(*(Tensor(x) for x in inputs))
    ref_logits, ref_w, ref_a = _reference(cell, *inputs, weighting)
    assert logits.shape == (B, 1, H, W) and weights.shape == (B, N) and target_embed.shape == (B, D)
    np.testing.assert_allclose(weights.asnumpy(), ref_w, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(target_embed.asnumpy(), ref_a, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(logits.asnumpy(), ref_logits, rtol=RTOL, atol=ATOL)
    if weighting == "softmax":
        np.testing.assert_allclose(weights.asnumpy().sum(axis=1), 1.0, rtol=1e-6)
    else:
        assert not np.allclose(weights.asnumpy().sum(axis=1), 1.0, atol=1e-3)
    # weights must be non-uniform for the comparison to test the sentence projection
    assert np.ptp(weights.asnumpy(), axis=1).min() > 1e-2


def test_sma_rejects_unknown_weighting():
    with pytest.raises(ValueError):
        SentenceMaskAlignment(D_TEXT, D, weighting="max")


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
