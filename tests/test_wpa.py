"""Word-Pixel Alignment against straightforward NumPy (float64) re-computations of docs/method.md's equations."""
import math

import numpy as np
import pytest

import mindspore as ms
from mindspore import Tensor

from src.models.wpa import AccurateTanh, PixelWordAttention, WordPixelAlignment, WordPixelAttention

B, HW, C, T, D_TEXT, HEADS = 2, 12, 8, 5, 16, 4
MASK = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=np.int32)  # sample 0 has 2 padded words
RTOL, ATOL = 1e-5, 1e-5

_erf = np.vectorize(math.erf)


def _gelu(x):
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def _softmax(x, axis=-1):
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def _instance_norm(x, eps=1e-5):
    # (B, HW, C): per sample and channel over pixels, biased variance
    mean = x.mean(axis=1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps)


def _layer_norm(x, gamma, beta, eps):
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def _randomise(cell, seed):
    """Give every parameter (biases, alpha, LayerNorm affine included) non-trivial random values."""
    rng = np.random.default_rng(seed)
    for param in cell.get_parameters():
        value = rng.uniform(-0.6, 0.6, size=param.shape).astype(np.float32)
        if param.name.endswith("gamma"):
            value = value + 1.0
        param.set_data(Tensor(value))


def _params(cell):
    return {p.name: p.asnumpy().astype(np.float64) for p in cell.get_parameters()}


def _dense(x, p, name, bias=True):
    y = x @ p[name + ".weight"].T
    return y + p[name + ".bias"] if bias else y


def _pixel_word_reference(p, vis, lang, mask, prefix=""):
    m = mask.astype(np.float64)
    q = _instance_norm(_dense(vis, p, prefix + "image_lang_att.f_query.0"))
    k = _dense(lang, p, prefix + "image_lang_att.f_key") * m[..., None]
    v = _dense(lang, p, prefix + "image_lang_att.f_value") * m[..., None]
    attn = _softmax(q @ k.transpose(0, 2, 1) / math.sqrt(C) + (m[:, None, :] - 1.0) * 1e4)
    g = _instance_norm(_dense(attn @ v, p, prefix + "image_lang_att.W.0"))
    vis_proj = _gelu(_dense(vis, p, prefix + "vis_project.0"))
    aligned = _gelu(_dense(vis_proj * g, p, prefix + "project_mm.0"))
    gate = np.tanh(_dense(np.maximum(_dense(aligned, p, prefix + "res_gate.0", False), 0), p, prefix + "res_gate.2", False))
    return vis + gate * aligned, aligned


def _word_pixel_reference(p, vis, lang, mask, prefix=""):
    d = D_TEXT // HEADS

    def heads(x):
        return x.reshape(x.shape[0], x.shape[1], HEADS, d).transpose(0, 2, 1, 3)

    q = heads(_dense(lang, p, prefix + "query"))
    k = heads(_dense(vis, p, prefix + "key"))
    v = heads(_dense(vis, p, prefix + "value"))
    attn = _softmax(q @ k.transpose(0, 1, 3, 2) / math.sqrt(d))
    ctx = (attn @ v).transpose(0, 2, 1, 3).reshape(lang.shape)
    update = _layer_norm(_dense(ctx, p, prefix + "dense"), p[prefix + "layer_norm.gamma"],
                         p[prefix + "layer_norm.beta"], 1e-12)
    return lang + p[prefix + "alpha"] * update * mask[..., None]


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    vis = rng.standard_normal((B, HW, C)).astype(np.float32)
    lang = rng.standard_normal((B, T, D_TEXT)).astype(np.float32)
    return vis, lang, MASK


@pytest.fixture(scope="module")
def pixel_word():
    cell = PixelWordAttention(C, D_TEXT)
    _randomise(cell, 1)
    return cell


@pytest.fixture(scope="module")
def word_pixel():
    cell = WordPixelAttention(D_TEXT, C, num_heads=HEADS)
    _randomise(cell, 2)
    return cell


def test_pixel_word_attention_matches_numpy(pixel_word, inputs):
    vis, lang, mask = inputs
    vis_out, aligned = pixel_word(Tensor(vis), Tensor(lang), Tensor(mask))
    ref_vis, ref_aligned = _pixel_word_reference(_params(pixel_word), vis.astype(np.float64), lang.astype(np.float64), mask)
    assert vis_out.shape == (B, HW, C) and aligned.shape == (B, HW, C)
    np.testing.assert_allclose(aligned.asnumpy(), ref_aligned, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(vis_out.asnumpy(), ref_vis, rtol=RTOL, atol=ATOL)
    # the gate must actually contribute (V' != V) for the comparison above to test it
    assert np.abs(vis_out.asnumpy() - vis).max() > 1e-2


def test_pixel_word_attention_ignores_padded_words(pixel_word, inputs):
    vis, lang, mask = inputs
    base = [x.asnumpy() for x in pixel_word(Tensor(vis), Tensor(lang), Tensor(mask))]
    changed = lang.copy()
    changed[0, 3:] = 50.0 * np.random.default_rng(3).standard_normal((2, D_TEXT))  # padded words of sample 0
    out = [x.asnumpy() for x in pixel_word(Tensor(vis), Tensor(changed), Tensor(mask.astype(np.float32)))]
    for got, ref in zip(out, base):
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)
    # sanity: a real word of sample 0 does change the output
    changed[0, 1] += 1.0
    moved = pixel_word(Tensor(vis), Tensor(changed), Tensor(mask))[1].asnumpy()
    assert np.abs(moved[0] - base[1][0]).max() > 1e-3


def test_word_pixel_attention_matches_numpy(word_pixel, inputs):
    vis, lang, mask = inputs
    assert np.abs(word_pixel.alpha.asnumpy()).min() > 0  # randomised: the H term is exercised
    out = word_pixel(Tensor(vis), Tensor(lang), Tensor(mask)).asnumpy()
    ref = _word_pixel_reference(_params(word_pixel), vis.astype(np.float64), lang.astype(np.float64), mask)
    assert out.shape == (B, T, D_TEXT)
    np.testing.assert_allclose(out, ref, rtol=RTOL, atol=ATOL)
    assert np.all(out[0, 3:] == lang[0, 3:])  # padded words receive no update


def test_word_pixel_attention_at_init_is_the_identity(inputs):
    vis, lang, mask = inputs
    cell = WordPixelAttention(D_TEXT, C, num_heads=HEADS)
    assert np.all(cell.alpha.asnumpy() == 0.0) and cell.alpha.shape == (D_TEXT,)
    out = cell(Tensor(vis), Tensor(lang), Tensor(mask)).asnumpy()
    np.testing.assert_array_equal(out, lang)  # bit for bit: no re-normalisation of the words


def test_word_pixel_attention_rejects_bad_heads():
    with pytest.raises(ValueError):
        WordPixelAttention(10, C, num_heads=4)


def test_alignment_halves_read_pre_update_features(inputs):
    vis, lang, mask = inputs
    cell = WordPixelAlignment(C, D_TEXT, num_heads=HEADS, bidirectional=True)
    _randomise(cell, 4)
    vis_out, aligned, lang_out = cell(Tensor(vis), Tensor(lang), Tensor(mask))
    p = _params(cell)
    ref_vis, ref_aligned = _pixel_word_reference(p, vis.astype(np.float64), lang.astype(np.float64), mask, "pixel_word_attn.")
    ref_lang = _word_pixel_reference(p, vis.astype(np.float64), lang.astype(np.float64), mask, "word_pixel_attn.")
    np.testing.assert_allclose(vis_out.asnumpy(), ref_vis, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(aligned.asnumpy(), ref_aligned, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(lang_out.asnumpy(), ref_lang, rtol=RTOL, atol=ATOL)


def test_alignment_one_way_keeps_words(inputs):
    vis, lang, mask = inputs
    cell = WordPixelAlignment(C, D_TEXT, num_heads=HEADS, bidirectional=False)
    names = [p.name for p in cell.get_parameters()]
    assert names and all(n.startswith("pixel_word_attn.") for n in names)
    _randomise(cell, 5)
    vis_out, aligned, lang_out = cell(Tensor(vis), Tensor(lang), Tensor(mask))
    np.testing.assert_array_equal(lang_out.asnumpy(), lang)
    ref_vis, ref_aligned = _pixel_word_reference(_params(cell), vis.astype(np.float64), lang.astype(np.float64), mask, "pixel_word_attn.")
    np.testing.assert_allclose(vis_out.asnumpy(), ref_vis, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(aligned.asnumpy(), ref_aligned, rtol=RTOL, atol=ATOL)


def test_parameter_names_mirror_lavt():
    names = {p.name for p in PixelWordAttention(C, D_TEXT).get_parameters()}
    assert names == {
        "vis_project.0.weight", "vis_project.0.bias",
        "image_lang_att.f_query.0.weight", "image_lang_att.f_query.0.bias",
        "image_lang_att.f_key.weight", "image_lang_att.f_key.bias",
        "image_lang_att.f_value.weight", "image_lang_att.f_value.bias",
        "image_lang_att.W.0.weight", "image_lang_att.W.0.bias",
        "project_mm.0.weight", "project_mm.0.bias",
        "res_gate.0.weight", "res_gate.2.weight",
    }
    assert ms.float32 == PixelWordAttention(C, D_TEXT).res_gate[0].weight.dtype


def test_accurate_tanh_value_and_gradient():
    x = np.concatenate([np.linspace(-12, 12, 4001), [0.0, 1e-6, -1e-6]]).astype(np.float32)
    cell = AccurateTanh()
    y = cell(Tensor(x)).asnumpy()
    np.testing.assert_allclose(y, np.tanh(x.astype(np.float64)), rtol=0, atol=1e-6)
    grad = ms.grad(cell)(Tensor(x)).asnumpy()
    np.testing.assert_allclose(grad, 1.0 - np.tanh(x.astype(np.float64)) ** 2, rtol=0, atol=2e-6)
    assert grad[-3] == pytest.approx(1.0)
