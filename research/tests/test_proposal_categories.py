"""research/tools/proposal_categories.py: the mask-pooled pixel embedding against loops over pixels, and the probe
wrapper finding a category that is in the features and not one that is not."""
import numpy as np

from research.tools.proposal_categories import mask_content, softmax_probe


def test_mask_content_matches_loops():
    rng = np.random.default_rng(0)
    queries, pixels = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 4, 5, 6))
    out = mask_content(queries, pixels)
    for b in range(2):
        for n in range(3):
            soft = 1.0 / (1.0 + np.exp(-np.einsum("d,dhw->hw", queries[b, n], pixels[b])))
            expected = np.einsum("hw,dhw->d", soft, pixels[b]) / (soft.sum() + 1.0)
            np.testing.assert_allclose(out[b, n], expected, rtol=1e-10)


def test_probe_finds_the_category_only_where_it_is():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 6, 500)
    centres = 3.0 * rng.standard_normal((6, 16))
    informative = centres[y] + rng.standard_normal((500, 16))
    _, val = softmax_probe(informative[:350], y[:350], informative[350:], y[350:], 6)
    assert val > 0.9
    noise = rng.standard_normal((500, 16))
    _, val = softmax_probe(noise[:350], y[:350], noise[350:], y[350:], 6)
    assert val < 1 / 6 + 0.1


def test_mask_content_pools_another_feature_under_the_hard_mask():
    rng = np.random.default_rng(2)
    queries, pixels, feature = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 4, 5, 6)), rng.standard_normal((2, 7, 5, 6))
    out = mask_content(queries, pixels, feature, hard=True)
    for b in range(2):
        for n in range(3):
            hard = np.einsum("d,dhw->hw", queries[b, n], pixels[b]) >= 0.0  # sigmoid >= 0.5
            expected = feature[b][:, hard].sum(axis=1) / (hard.sum() + 1.0)
            np.testing.assert_allclose(out[b, n], expected, rtol=1e-10)
