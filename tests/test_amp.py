"""Mixed precision (train.amp_level, src/models/amp.py) and the float16-safety of the numerics it reaches.

What CPU MindSpore 2.10 runs here: O2 and O3 compile and train on CPU in graph mode (the float16 MatMul,
BatchMatMul, Conv2D and LayerNorm kernels exist), so the whole-model steps below are real; each takes 1.5-3.5
min to compile on a shared 2-core machine, so they are marked slow. The default run checks the precision each cell
ends with (no compile), the norms, the criterion and the deformable sampling's indices in float16.
"""
import numpy as np
import pytest

import mindspore as ms
from mindspore import Tensor, nn, ops

from src.config import config_from_dict
from src.models.amp import AMP_LEVELS, apply_mixed_precision, precision_of
from src.models.layers.msdeform_attn import bilinear_corners

IMAGE, TOKENS, VOCAB = 32, 6, 50

# The smallest CoupAlign with every part kind the paper config has (Swin, BERT, WPA, the deformable pixel decoder,
# the masked-attention decoder, SMA, the matched proposal loss, the aux loss): compile time, not size, is the cost.
TINY_AMP = {
    "model": {
        "image_size": IMAGE, "max_tokens": TOKENS,
        "swin": {"preset": "", "embed_dim": 8, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2], "window_size": 2,
                 "drop_path_rate": 0.0},
        "bert": {"vocab_size": VOCAB, "hidden_size": 16, "num_hidden_layers": 4, "num_attention_heads": 2,
                 "intermediate_size": 32, "max_position_embeddings": 16},
        "wpa": {"word_heads": 2},
        "mask_generator": {"pixel_decoder": "msdeform", "conv_dim": 16, "mask_dim": 16, "encoder_layers": 1,
                           "encoder_heads": 2, "encoder_points": 2, "encoder_ffn_dim": 32, "num_queries": 4,
                           "decoder_layers": 1, "decoder_heads": 2, "decoder_ffn_dim": 32},
        "sma": {"deep_supervision": False},
    },
    "loss": {"aux_num_fg": 8, "aux_num_bg": 16},
}


def _tiny_model(**train):
    from src.models.coupalign import CoupAlign

    cfg = config_from_dict(TINY_AMP, {f"train.{k}": v for k, v in train.items()})
    ms.set_seed(0)
    return cfg, CoupAlign(cfg)


def _norm_cells(model):
    from src.models.layers.norm import GroupNorm, InstanceNormOverPixels, LayerNorm

    kinds = (LayerNorm, GroupNorm, InstanceNormOverPixels, nn.LayerNorm)
    return [(name, cell) for name, cell in model.cells_and_names() if isinstance(cell, kinds)]


# ------------------------------------------------------------------------------------------------ the flags
def test_levels_set_precision_in_place_and_keep_the_model():
    from src.models.layers.norm import GroupNorm, InstanceNormOverPixels, LayerNorm
    from src.models.layers.msdeform_attn import MSDeformAttn

    _, model = _tiny_model()
    dense = [(n, c) for n, c in model.cells_and_names() if isinstance(c, (nn.Dense, nn.Conv2d, ms.mint.nn.Linear))
             and not n.startswith(("head.", "class_embed"))]
    norms = _norm_cells(model)
    own_norms = [(n, c) for n, c in norms if isinstance(c, (LayerNorm, GroupNorm, InstanceNormOverPixels))]
    assert len(dense) > 30 and len(own_norms) > 15 and any(isinstance(c, GroupNorm) for _, c in own_norms)
    assert any(isinstance(c, InstanceNormOverPixels) for _, c in own_norms)
    deform = [c for _, c in model.cells_and_names() if isinstance(c, MSDeformAttn)]
    assert deform
    for level in ("O2", "O3", "O2"):  # a second call replaces the flags of the first
        assert apply_mixed_precision(model, level) is model
        assert model.amp_level == level and hasattr(model, "forward_train") and hasattr(model, "encode")
        # the master weights stay float32 at every level; only the compute is cast
        assert all(p.dtype == ms.float32 for p in model.get_parameters())
        assert precision_of(model) is None  # the root is never flagged: its methods and output keep their dtype
        assert all(precision_of(c) == ms.float16 for _, c in dense), level
        # the heads stay float32 at every level (CoupAlign.fp32_parts)
        assert all(precision_of(c) == ms.float32 for _, c in model.head.cells_and_names())
        assert precision_of(model.class_embed) == ms.float32 or model.class_embed is None
        if level == "O2":  # norms float32 in, float16 out; the deformable locations float32, its projections float16
            assert all(precision_of(c) == ms.float32 for _, c in norms)
            assert all(c.output_dtype == ms.float16 for _, c in own_norms)
            assert all(precision_of(c) == ms.float32 and precision_of(c.value_proj) == ms.float16 for c in deform)
        if level == "O3":  # every sub-cell float16 (the norms' statistics stay float32 inside: next test)
            assert all(precision_of(c) == ms.float16 for _, c in norms)
            assert all(c.output_dtype is None for _, c in own_norms)
    for bad in ("O4", "O1"):  # O1: not offered (src/models/amp.py says why)
        with pytest.raises(ValueError, match="train.amp_level"):
            apply_mixed_precision(model, bad)
    assert set(AMP_LEVELS) == {"O0", "O2", "O3"}


# ------------------------------------------------------------------------------------------------ the norms
class _Flagged(nn.Cell):
    """`cell` flagged float16 (as O3 leaves every norm), called through construct like a model part."""

    def __init__(self, cell):
        super().__init__()
        self.cell = cell
        self.cell.to_float(ms.float16)

    def construct(self, x):
        return self.cell(x)


def test_norms_compute_their_statistics_in_float32_under_float16():
    """Values of std 300: squares of deviations above 256 leave float16's range (65504), and a group's sum of
    squares (here 9,216 values, at 480x480 115,200) far more; the float32 statistics give the float32 result to
    float16 rounding. (The CPU's float16 LayerNorm kernel accumulates in float32 itself, so on the CPU only
    the instance norm, which squares in plain ops, went wrong before: all-zero output.)"""
    from src.models.layers.norm import GroupNorm, InstanceNormOverPixels, LayerNorm

    rng = np.random.default_rng(0)
    maps = (300.0 * rng.standard_normal((2, 32, 24, 24)) + 50.0).astype(np.float32)
    tokens = (300.0 * rng.standard_normal((2, 576, 16)) + 50.0).astype(np.float32)
    wide = (300.0 * rng.standard_normal((2, 5, 4096)) + 50.0).astype(np.float32)
    cases = ((GroupNorm(2, 32), maps), (InstanceNormOverPixels(), tokens), (LayerNorm(4096), wide))
    for norm, x in cases:
        expected = norm(Tensor(x)).asnumpy()  # float32 cell, float32 input
        got = _Flagged(norm)(Tensor(x, ms.float16))
        assert got.dtype == ms.float16, type(norm).__name__
        got = got.asnumpy().astype(np.float32)
        assert np.isfinite(got).all(), type(norm).__name__
        # float16 rounding of the input (2^-11 relative: 1.5e-3 of one std at 3 std) and of the output (2^-11)
        np.testing.assert_allclose(got, expected, atol=4e-3, rtol=2e-3, err_msg=type(norm).__name__)


# ------------------------------------------------------------------------------------------------ the loss
def test_criterion_in_float16_inputs_gives_the_float32_loss():
    """The model hands the criterion float16 tensors under O2/O3: its -1e30 / 1e6 constants and pixel sums must
    stay float32, so the loss equals the loss of the same values given in float32."""
    from src.models.criterion import CoupAlignCriterion

    crit = CoupAlignCriterion.from_config(config_from_dict(TINY_AMP, {"model.sma.deep_supervision": True}))
    assert crit.term_names == ("referring", "aux_contrast", "proposal_masks", "proposal_selection")
    rng = np.random.default_rng(1)
    stages, batch, queries, dim, h = 2, 2, 4, 8, 8
    target = np.zeros((batch, 32, 32), np.float32)
    target[0, 4:20, 6:16] = 1
    target[1, 10:30, 8:28] = 1
    others = np.zeros((batch, 2, 32, 32), np.uint8)
    others[0, 0, 24:30, 20:30] = 1  # sample 1's second slot is empty: an absent target (the 1e6 block)
    values = [rng.standard_normal(s).astype(np.float32) for s in
              ((stages, batch, 1, h, h), (batch, dim, h, h), (batch, dim), (stages, batch, queries, dim),
               (stages, batch, queries))]
    # keys in float32 either way (the model does not make them); half the pixels fg, so the -1e30 fill is used
    keys = [Tensor(rng.random((batch, h * h)).astype(np.float32)) for _ in range(2)]

    crit.term("aux_contrast").use_fixed_keys(*keys)
    fields = {"target": Tensor(target), "others": Tensor(others), "categories": Tensor(np.zeros((batch, 0), np.int32))}

    def loss(dtype):
        logits, pixel, anchor, embeds, scores = (Tensor(v.astype(np.float16).astype(np.float32), dtype) for v in values)
        out = crit({"stage_logits": logits, "pixel_embed": pixel, "target_embed": anchor, "mask_embeds": embeds,
                    "scores": scores, "class_logits": None, "sma_map_logits": None}, fields)
        return np.array([o.asnumpy() for o in out], np.float64)

    expected, got = loss(ms.float32), loss(ms.float16)
    assert np.isfinite(got).all()
    # the inputs are the same float16-representable numbers both ways: only float32 rounding differs
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------ whole model
def _batch():
    rng = np.random.default_rng(0)
    image = rng.standard_normal((2, 3, IMAGE, IMAGE)).astype(np.float32)
    ids = rng.integers(1, VOCAB, (2, TOKENS)).astype(np.int32)
    mask = np.ones((2, TOKENS), np.int32)
    mask[1, 4:] = 0
    target = np.zeros((2, IMAGE, IMAGE), np.float32)
    target[0, 4:20, 6:16] = 1
    target[1, 10:30, 8:28] = 1
    others = np.zeros((2, 3, IMAGE, IMAGE), np.uint8)  # the tiny model's 4 proposals: up to 3 other objects
    others[0, 0, 24:30, 20:30] = 1
    categories = np.zeros((2, 0), np.int32)  # no category head
    return [Tensor(a) for a in (image, ids, mask, target, others, categories)]


@pytest.fixture(scope="module")
def fp32_step():
    """The first step at O0 from the same initial weights: its losses (computed before the update) and the names
    of the parameters the update changed."""
    from src.engine.train_step import build_train_step

    cfg, model = _tiny_model()
    step = build_train_step(cfg, model, 1e-4)
    before = {p.name: p.asnumpy().copy() for p in model.trainable_params()}
    losses = np.array([o.asnumpy() for o in step(*_batch())[:-1]], np.float64)
    return losses, {p.name for p in model.trainable_params() if not np.array_equal(p.asnumpy(), before[p.name])}


@pytest.mark.slow  # 1.5-3.5 min per level (compile) on a shared 2-core machine
@pytest.mark.parametrize("level", ["O2", "O3"])
def test_one_training_step_per_level_with_dynamic_loss_scaling(level, fp32_step):
    fp32_losses, fp32_moved = fp32_step
    from src.engine.train_step import build_train_step

    cfg, model = _tiny_model(amp_level=level, loss_scale=1024.0)
    step = build_train_step(cfg, model, 1e-4)
    assert step.net_with_loss.model is model and step.use_loss_scale
    before = {p.name: p.asnumpy().copy() for p in model.trainable_params()}
    out = step(*_batch())
    losses, finite = np.array([o.asnumpy() for o in out[:-1]], np.float64), bool(out[-1].asnumpy())
    assert finite and np.isfinite(losses).all()
    # measured |O2 - O0| / O0: 2e-4 on the total, 1e-3 on the aux contrast (its hardest negatives are ranked by
    # float16 similarities); 2e-2 is 20x that and far below what a float16 overflow or a wrong cast gives
    np.testing.assert_allclose(losses, fp32_losses, rtol=2e-2, atol=2e-3)
    assert np.isclose(float(step.scaler.scale_value.asnumpy()), 1024.0)  # no overflow: the scale was kept
    moved = {p.name for p in model.trainable_params() if not np.array_equal(p.asnumpy(), before[p.name])}
    assert moved == fp32_moved and len(moved) > 200  # the update was applied, to the parameters O0 updates
    assert all(p.dtype == ms.float32 for p in model.get_parameters())


# ------------------------------------------------------------------------------------------------ deformable indices
class _Corners(nn.Cell):
    def __init__(self, shapes, points):
        super().__init__()
        self.shapes, self.points = shapes, points

    def construct(self, px, py):
        return bilinear_corners(px, py, self.shapes, self.points)


def test_deformable_sampling_rows_are_exact_in_float16():
    """The 310 runs the exported model in float16 (MindSpore Lite's Ascend default). Rows of the level-concatenated
    map above 2048 are not all float16 numbers: the corners must come out of float16 locations exactly as out of
    float32 ones. Locations on quarter pixels are float16-exact, so any difference is the index arithmetic's."""
    shapes, points = ((64, 80), (16, 16)), 2  # rows up to 64 * 80 + 16 * 16 = 5376
    rng = np.random.default_rng(0)
    queries, heads = 300, 2
    sizes = np.array([80.0] * points + [16.0] * points, np.float32)  # (L*P,) widths
    heights = np.array([64.0] * points + [16.0] * points, np.float32)
    quarter = rng.integers(0, 4, (2, 1, queries, heads, 2 * points)) / 4.0
    px = np.floor(rng.uniform(-1.5, sizes + 0.5, (1, queries, heads, 2 * points))) + quarter[0]
    py = np.floor(rng.uniform(-1.5, heights + 0.5, (1, queries, heads, 2 * points))) + quarter[1]
    px, py = px.astype(np.float32), py.astype(np.float32)
    corners = _Corners(shapes, points)
    w32, rows32 = (a.asnumpy() for a in corners(Tensor(px), Tensor(py)))
    w16, rows16 = corners(Tensor(px, ms.float16), Tensor(py, ms.float16))
    assert rows16.dtype == ms.int32 and w16.dtype == ms.float16
    assert rows32.max() > 4096  # the range float16 cannot count in steps of 1
    np.testing.assert_array_equal(rows16.asnumpy(), rows32)
    np.testing.assert_array_equal(w16.asnumpy().astype(np.float32), w32)  # quarter fractions: exact products
    # and every location was read where a float64 reference reads it
    x0, y0 = np.floor(px), np.floor(py)
    width = np.repeat([80, 16], points).reshape(1, 1, 1, -1)
    start = np.repeat([0, 64 * 80], points).reshape(1, 1, 1, -1)
    inside = (x0 >= 0) & (x0 < width) & (y0 >= 0) & (y0 < np.repeat([64, 16], points).reshape(1, 1, 1, -1))
    np.testing.assert_array_equal(rows32[..., :2 * points][inside], (start + y0 * width + x0)[inside].astype(np.int64))


def test_deformable_attention_in_float16_reads_the_float32_neighbours():
    """The whole cell flagged float16 (O3, or a float16 310 model) against float32: a neighbour read one pixel
    off would change the output by the map's pixel-to-pixel variation (~1), float16 rounding by ~1e-2."""
    from src.models.layers.msdeform_attn import MSDeformAttn, deformable_reference_points

    ms.set_seed(0)
    attn = MSDeformAttn(d_model=16, n_levels=2, n_heads=2, n_points=2)
    rng = np.random.default_rng(1)
    shapes = ((64, 48), (8, 8))
    len_v = 64 * 48 + 64
    value = Tensor(rng.standard_normal((1, len_v, 16)).astype(np.float32))
    query = Tensor(rng.standard_normal((1, 256, 16)).astype(np.float32))  # 256 of the pixels ask
    # offsets of a few pixels, as a trained model's
    attn.sampling_offsets.weight.set_data(Tensor(0.5 * rng.standard_normal((16, 16)).astype(np.float32)))
    ref = deformable_reference_points(shapes)[:, -256 - 64:-64]  # (1, 256, 1, 2): the last rows of the 64x48 level
    expected = _Call(attn, shapes)(query, ref, value).asnumpy()
    got = _Call(attn, shapes, ms.float16)(query.astype(ms.float16), ref.astype(ms.float16), value.astype(ms.float16))
    assert got.dtype == ms.float16
    np.testing.assert_allclose(got.asnumpy().astype(np.float32), expected, atol=3e-2, rtol=2e-2)


class _Call(nn.Cell):
    def __init__(self, cell, shapes, dtype=None):
        super().__init__()
        self.cell, self.shapes = cell, shapes
        if dtype is not None:
            self.cell.to_float(dtype)

    def construct(self, query, ref, value):
        return self.cell(query, ref, value, self.shapes)


# ------------------------------------------------------------------------------------------------ the Ascend recipe
def test_ascend_recipe_config_and_backend_settings(caplog):
    import logging
    import os

    from src.config import ConfigError, load_config
    from src.utils.runtime import apply_backend_settings, backend_settings

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = load_config(os.path.join(root, "configs", "ascend_910.yaml"))
    assert (cfg.device_target, cfg.train.amp_level, cfg.train.loss_scale) == ("Ascend", "O2", 1024.0)
    assert cfg.model.swin.preset == "base" and cfg.model.image_size == 480  # the paper's model, from default_config
    cache = os.path.abspath(os.path.join(cfg.output_dir, "compile_cache"))
    assert backend_settings(cfg) == {"jit_level": "O0", "precision_mode": "allow_fp32_to_fp16",
                                     "compile_cache_path": cache}
    cfg.device_target = "GPU"  # no Ascend precision mode there
    assert backend_settings(cfg) == {"jit_level": "O0", "compile_cache_path": cache}
    cfg.device_target = "CPU"  # none of them: logged as ignored, nothing set
    before = (ms.get_context("jit_config"), os.environ.get("MS_COMPILER_CACHE_ENABLE"))
    with caplog.at_level(logging.INFO, logger="src.utils.runtime"):
        assert apply_backend_settings(cfg) == {}
    assert "backend settings not used on CPU" in caplog.text and "backend.precision_mode='allow_fp32_to_fp16'" in caplog.text
    assert (ms.get_context("jit_config"), os.environ.get("MS_COMPILER_CACHE_ENABLE")) == before
    for override, key in (("--backend.jit_level=O2", "backend.jit_level"),
                          ("--backend.precision_mode=fp16", "backend.precision_mode"),
                          ("--train.amp_level=O4", "train.amp_level"),
                          ("--train.amp_level=O1", "train.amp_level"), ("--train.loss_scale=0.5", "train.loss_scale")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_config(os.path.join(root, "configs", "ascend_910.yaml"), [override])
