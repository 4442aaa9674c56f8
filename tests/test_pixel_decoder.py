"""Pixel decoders and their parts against NumPy re-computations (and HF transformers' Mask2Former as an oracle).

All in fp32 graph mode on tiny configurations.
"""
import math

import numpy as np
import pytest
import mindspore as ms
from mindspore import Tensor, nn, ops

from gradcheck import assert_every_parameter_gets_gradient
from src.models.layers import group_norm
from src.models.layers.msdeform_attn import MSDeformAttn, deformable_reference_points
from src.models.pixel_decoder import FPNPixelDecoder, MSDeformAttnPixelDecoder, build_pixel_decoder
from src.models.position_encoding import PositionEmbeddingSine

IN_CHANNELS = (16, 32, 64, 128)
STRIDES = (4, 8, 16, 32)
IMAGE = 64  # features at 16x16, 8x8, 4x4, 2x2
BATCH = 2


# ----------------------------------------------------------------------------------------------------------------
# NumPy oracles
# ----------------------------------------------------------------------------------------------------------------
def np_sine_position(height, width, num_pos_feats, temperature=10000.0, normalize=True, scale=2 * math.pi):
    """(2F, H, W) written from the formula, one pixel and channel at a time."""
    out = np.zeros((2 * num_pos_feats, height, width), np.float64)
    for y in range(height):
        for x in range(width):
            cy, cx = float(y + 1), float(x + 1)
            if normalize:
                cy = cy / (height + 1e-6) * scale
                cx = cx / (width + 1e-6) * scale
            for j in range(num_pos_feats):
                freq = temperature ** (2 * (j // 2) / num_pos_feats)
                fn = math.sin if j % 2 == 0 else math.cos
                out[j, y, x] = fn(cy / freq)
                out[num_pos_feats + j, y, x] = fn(cx / freq)
    return out


def np_bilinear_sample(image, px, py):
    """Bilinear sample of image (H, W, C) at pixel coordinates (px, py), pixel centres at integers; zeros outside."""
    height, width = image.shape[:2]
    x0, y0 = math.floor(px), math.floor(py)
    result = np.zeros(image.shape[2:], np.float64)
    for yi, wy in ((y0, y0 + 1 - py), (y0 + 1, py - y0)):
        for xi, wx in ((x0, x0 + 1 - px), (x0 + 1, px - x0)):
            if 0 <= yi < height and 0 <= xi < width:
                result += wy * wx * image[yi, xi]
    return result


def np_msdeform_attn(params, query, reference_points, value_input, spatial_shapes, n_heads, n_levels, n_points):
    """Deformable attention looping over every (batch, query, head, level, point)."""
    p = {k: v.astype(np.float64) for k, v in params.items()}
    query, value_input = query.astype(np.float64), value_input.astype(np.float64)
    batch, len_q, channels = query.shape
    head_dim = channels // n_heads
    value = value_input @ p["value_proj.weight"].T + p["value_proj.bias"]
    offsets = (query @ p["sampling_offsets.weight"].T + p["sampling_offsets.bias"]).reshape(
        batch, len_q, n_heads, n_levels, n_points, 2)
    logits = (query @ p["attention_weights.weight"].T + p["attention_weights.bias"]).reshape(
        batch, len_q, n_heads, n_levels * n_points)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights = (weights / weights.sum(-1, keepdims=True)).reshape(batch, len_q, n_heads, n_levels, n_points)
    starts = np.cumsum([0] + [h * w for h, w in spatial_shapes])
    out = np.zeros((batch, len_q, n_heads, head_dim))
    for b in range(batch):
        for q in range(len_q):
            for m in range(n_heads):
                for lvl, (height, width) in enumerate(spatial_shapes):
                    vmap = value[b, starts[lvl]:starts[lvl + 1], m * head_dim:(m + 1) * head_dim]
                    vmap = vmap.reshape(height, width, head_dim)
                    ref = reference_points[b if reference_points.shape[0] > 1 else 0, q,
                                           lvl if reference_points.shape[2] > 1 else 0]
                    for pt in range(n_points):
                        loc_x = ref[0] + offsets[b, q, m, lvl, pt, 0] / width
                        loc_y = ref[1] + offsets[b, q, m, lvl, pt, 1] / height
                        # align_corners=False: normalised 0 is the left edge of pixel 0 -> pixel coord -0.5.
                        sample = np_bilinear_sample(vmap, loc_x * width - 0.5, loc_y * height - 0.5)
                        out[b, q, m] += weights[b, q, m, lvl, pt] * sample
    out = out.reshape(batch, len_q, channels)
    return out @ p["output_proj.weight"].T + p["output_proj.bias"]


def randomize_params(cell, rng, scale=0.3):
    """Overwrite every parameter with N(0, scale) (GroupNorm/LayerNorm gammas around 1)."""
    for name, param in cell.parameters_and_names():
        shape = param.shape
        value = rng.normal(0.0, scale, shape)
        if name.endswith("gamma"):
            value = 1.0 + value
        param.set_data(Tensor(value.astype(np.float32)))


def params_np(cell):
    return {name: param.asnumpy() for name, param in cell.parameters_and_names()}


def random_features(rng, batch=BATCH):
    return tuple(rng.normal(0.0, 1.0, (batch, c, IMAGE // s, IMAGE // s)).astype(np.float32)
                 for c, s in zip(IN_CHANNELS, STRIDES))


# ----------------------------------------------------------------------------------------------------------------
# Position encoding, the sampler, reference points
# ----------------------------------------------------------------------------------------------------------------
class _PosWrapper(nn.Cell):
    def __init__(self, num_pos_feats, normalize):
        super().__init__()
        self.pe = PositionEmbeddingSine(num_pos_feats, normalize=normalize)

    def construct(self, x):
        return self.pe(x)


@pytest.mark.parametrize("normalize", [True, False])
def test_sine_position_encoding_matches_numpy(normalize):
    x = Tensor(np.zeros((2, 3, 5, 7), np.float32))
    out = _PosWrapper(8, normalize)(x).asnumpy()
    ref = np_sine_position(5, 7, 8, normalize=normalize)
    assert out.shape == (2, 16, 5, 7) and out.dtype == np.float32
    np.testing.assert_allclose(out[0], ref, rtol=1e-5, atol=2e-6)
    np.testing.assert_array_equal(out[0], out[1])


class _SamplerProbe(nn.Cell):
    """MSDeformAttn reduced to its sampler: 1 level, 1 head, 1 point, identity projections, zero offsets,
    so query q returns the bilinear sample of the value map at reference point q."""

    def __init__(self, channels, shape):
        super().__init__()
        self.attn = MSDeformAttn(d_model=channels, n_levels=1, n_heads=1, n_points=1)
        eye = Tensor(np.eye(channels, dtype=np.float32))
        for dense in (self.attn.value_proj, self.attn.output_proj):
            dense.weight.set_data(eye)
        self.attn.sampling_offsets.bias.set_data(Tensor(np.zeros(2, np.float32)))
        self.shape = shape

    def construct(self, reference_points, value_input):
        query = ops.zeros((1, reference_points.shape[1], value_input.shape[2]), ms.float32)
        return self.attn(query, reference_points, value_input, (self.shape,))


def test_sampler_matches_naive_bilinear_at_boundaries():
    rng = np.random.default_rng(0)
    height, width, channels = 4, 5, 3
    image = rng.normal(size=(height, width, channels)).astype(np.float32)
    dx, dy = 1.0 / width, 1.0 / height  # one pixel in normalised [0, 1] units
    points = [
        (0.0, 0.0), (1.0, 1.0), (0.0, 1.0), (1.0, 0.0),  # outer corners: 1/4 of a pixel inside
        (dx / 2, dy / 2), (1.0 - dx / 2, 1.0 - dy / 2),  # first/last pixel centres exactly
        (-dx / 2, 0.55),  # pixel coordinate -1 in x: zero weight on the map, only the outside neighbour
        (-0.3 * dx, 0.6), (1.0 + 0.3 * dx, 0.3), (0.65, -0.25 * dy), (0.5, 1.0 + 0.4 * dy),
        (-2 * dx, 0.5), (1.0 + 3 * dx, 1.0 + 3 * dy),  # fully outside -> 0
        (0.5615, 0.272), (0.885, 0.655),  # interior
    ]
    refs = np.array(points, np.float32).reshape(1, len(points), 1, 2)
    out = _SamplerProbe(channels, (height, width))(
        Tensor(refs), Tensor(image.reshape(1, height * width, channels))).asnumpy()[0]  # (n, C)
    ref = np.stack([np_bilinear_sample(image.astype(np.float64), x * width - 0.5, y * height - 0.5)
                    for x, y in points])
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
    assert np.all(ref[-4:-2] == 0.0)  # the fully outside points really are zero
    np.testing.assert_allclose(ref[4], image[0, 0], rtol=1e-6)  # a pixel centre returns the pixel
    np.testing.assert_allclose(ref[5], image[-1, -1], rtol=1e-6)


class _RefPoints(nn.Cell):
    def __init__(self, shapes):
        super().__init__()
        self.shapes = shapes

    def construct(self, x):
        return deformable_reference_points(self.shapes) + x


def test_reference_points_are_pixel_centres():
    shapes = ((3, 4), (2, 2), (1, 3))
    out = _RefPoints(shapes)(Tensor(np.zeros((), np.float32))).asnumpy()
    ref = [((x + 0.5) / w, (y + 0.5) / h) for h, w in shapes for y in range(h) for x in range(w)]
    np.testing.assert_allclose(out.reshape(-1, 2), np.array(ref), rtol=1e-6, atol=1e-7)
    assert out.shape == (1, sum(h * w for h, w in shapes), 1, 2)


def test_sampling_offsets_init_follows_deformable_detr():
    cell = MSDeformAttn(d_model=32, n_levels=3, n_heads=8, n_points=4)
    bias = cell.sampling_offsets.bias.asnumpy().reshape(8, 3, 4, 2)
    # Head h points along angle 2*pi*h/8, normalised so the larger component is 1; point p at distance p+1.
    directions = np.array([[1, 0], [1, 1], [0, 1], [-1, 1], [-1, 0], [-1, -1], [0, -1], [1, -1]], np.float32)
    expected = directions[:, None, None, :] * np.arange(1, 5, dtype=np.float32)[None, None, :, None]
    np.testing.assert_allclose(bias, np.broadcast_to(expected, bias.shape), atol=1e-6)
    assert not cell.sampling_offsets.weight.asnumpy().any()
    assert not cell.attention_weights.weight.asnumpy().any() and not cell.attention_weights.bias.asnumpy().any()


def test_group_norm_rejects_indivisible_channels():
    assert group_norm(16).num_groups == 16 and group_norm(64).num_groups == 32
    with pytest.raises(ValueError, match="divisible"):
        group_norm(48)


# ----------------------------------------------------------------------------------------------------------------
# MSDeformAttn vs the naive loop
# ----------------------------------------------------------------------------------------------------------------
MSDA_SHAPES = ((5, 6), (3, 4), (2, 2))


class _MSDAWrapper(nn.Cell):
    def __init__(self, attn, shapes):
        super().__init__()
        self.attn = attn
        self.shapes = shapes

    def construct(self, query, reference_points, value_input):
        return self.attn(query, reference_points, value_input, self.shapes)


@pytest.fixture(scope="module")
def msda_case():
    rng = np.random.default_rng(1)
    d_model, n_heads, n_levels, n_points = 16, 2, 3, 3
    attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
    randomize_params(attn, rng, scale=0.3)
    # Offsets of a few pixels in any direction: many points land between pixels, some outside the maps.
    attn.sampling_offsets.bias.set_data(Tensor(rng.normal(0.0, 2.0, attn.sampling_offsets.bias.shape)
                                               .astype(np.float32)))
    len_v = sum(h * w for h, w in MSDA_SHAPES)
    len_q = 7
    inputs = dict(
        query=rng.normal(size=(BATCH, len_q, d_model)).astype(np.float32),
        reference_points=rng.uniform(-0.1, 1.1, (BATCH, len_q, n_levels, 2)).astype(np.float32),
        value_input=rng.normal(size=(BATCH, len_v, d_model)).astype(np.float32),
    )
    return _MSDAWrapper(attn, MSDA_SHAPES), inputs, (n_heads, n_levels, n_points)


def test_msdeform_attn_matches_naive_numpy(msda_case):
    cell, inputs, (n_heads, n_levels, n_points) = msda_case
    out = cell(*(Tensor(inputs[k]) for k in ("query", "reference_points", "value_input"))).asnumpy()
    params = {k.split("attn.", 1)[1]: v for k, v in params_np(cell).items()}
    ref = np_msdeform_attn(params, inputs["query"], inputs["reference_points"], inputs["value_input"],
                           MSDA_SHAPES, n_heads, n_levels, n_points)
    assert out.shape == ref.shape == (BATCH, 7, 16)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    # The random offsets must exercise both sides of the map border, or the test would prove little.
    query = inputs["query"].astype(np.float64)
    offsets = (query @ params["sampling_offsets.weight"].T + params["sampling_offsets.bias"]).reshape(
        BATCH, 7, n_heads, n_levels, n_points, 2)
    loc = inputs["reference_points"][:, :, None, :, None, :] + offsets / np.array(
        [[w, h] for h, w in MSDA_SHAPES])[None, None, None, :, None, :]
    outside = (loc < 0) | (loc > 1)
    assert 0.1 < outside.any(-1).mean() < 0.9


def test_msdeform_attn_broadcast_reference_points(msda_case):
    """The (1, Lq, 1, 2) form used by the encoder equals the same points given per batch and level."""
    cell, inputs, _ = msda_case
    ref_small = inputs["reference_points"][:1, :, :1]  # (1, Lq, 1, 2)
    ref_full = np.ascontiguousarray(np.broadcast_to(ref_small, inputs["reference_points"].shape))
    out_small = cell(Tensor(inputs["query"]), Tensor(ref_small), Tensor(inputs["value_input"])).asnumpy()
    out_full = cell(Tensor(inputs["query"]), Tensor(ref_full), Tensor(inputs["value_input"])).asnumpy()
    np.testing.assert_allclose(out_small, out_full, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# Whole pixel decoders: shapes, HF parity, gradients
# ----------------------------------------------------------------------------------------------------------------
MSDEFORM_KW = dict(num_encoder_layers=2, n_heads=2, n_points=4, dim_feedforward=64)


@pytest.fixture(scope="module")
def decoders():
    rng = np.random.default_rng(2)
    ms.set_seed(0)
    nets = {
        "msdeform": build_pixel_decoder("msdeform", IN_CHANNELS, 32, 24, **MSDEFORM_KW),
        "fpn": build_pixel_decoder("fpn", IN_CHANNELS, 32, 24),
    }
    feats = random_features(rng)
    outputs = {name: net(tuple(Tensor(f) for f in feats)) for name, net in nets.items()}
    return nets, feats, outputs


@pytest.mark.parametrize("name", ["msdeform", "fpn"])
def test_pixel_decoder_output_contract(decoders, name):
    nets, _, outputs = decoders
    assert isinstance(nets[name], MSDeformAttnPixelDecoder if name == "msdeform" else FPNPixelDecoder)
    pixel_embed, multi_scale = outputs[name]
    assert pixel_embed.shape == (BATCH, 24, 16, 16) and pixel_embed.dtype == ms.float32
    assert isinstance(multi_scale, tuple) and len(multi_scale) == 3
    assert [tuple(m.shape) for m in multi_scale] == [(BATCH, 32, 2, 2), (BATCH, 32, 4, 4), (BATCH, 32, 8, 8)]
    assert all(m.dtype == ms.float32 for m in multi_scale)
    assert all(np.isfinite(t.asnumpy()).all() for t in (pixel_embed,) + multi_scale)


def test_build_pixel_decoder_rejects_unknown():
    with pytest.raises(ValueError, match="unknown pixel decoder"):
        build_pixel_decoder("aspp", IN_CHANNELS, 32, 32)


def _to_hf_pixel_decoder_key(name):
    """Our (detectron2-style) parameter name -> HF Mask2FormerPixelDecoder state_dict key."""
    name = name.replace("transformer.encoder.", "encoder.").replace("transformer.level_embed", "level_embed")
    name = name.replace("input_proj.", "input_projections.").replace("mask_features.", "mask_projection.")
    for ours, theirs in ((".norm1.", ".self_attn_layer_norm."), (".norm2.", ".final_layer_norm."),
                         (".linear1.", ".fc1."), (".linear2.", ".fc2.")):
        name = name.replace(ours, theirs)
    for conv in ("adapter_1", "layer_1"):
        name = name.replace(f"{conv}.norm.", f"{conv}.1.").replace(f"{conv}.weight", f"{conv}.0.weight")
    return name.replace(".gamma", ".weight").replace(".beta", ".bias")


def test_msdeform_pixel_decoder_matches_hf_mask2former(decoders):
    """Independent oracle: transformers' Mask2FormerPixelDecoder loaded with our weights (strict key match)."""
    torch = pytest.importorskip("torch")
    hf = pytest.importorskip("transformers.models.mask2former.modeling_mask2former")
    from transformers import Mask2FormerConfig

    nets, feats, outputs = decoders
    net = nets["msdeform"]
    config = Mask2FormerConfig(feature_size=32, mask_feature_size=24, encoder_layers=2, num_attention_heads=2,
                               encoder_feedforward_dim=64, common_stride=4, feature_strides=list(STRIDES))
    ref_net = hf.Mask2FormerPixelDecoder(config, feature_channels=list(IN_CHANNELS)).eval()
    state = {_to_hf_pixel_decoder_key(k): torch.from_numpy(v) for k, v in params_np(net).items()}
    ref_net.load_state_dict(state, strict=True)
    with torch.no_grad():
        ref = ref_net([torch.from_numpy(f) for f in feats])
    pixel_embed, multi_scale = outputs["msdeform"]
    np.testing.assert_allclose(pixel_embed.asnumpy(), ref.mask_features.numpy(), rtol=1e-4, atol=1e-4)
    for ours, theirs in zip(multi_scale, ref.multi_scale_features):
        np.testing.assert_allclose(ours.asnumpy(), theirs.numpy(), rtol=1e-4, atol=1e-4)


class _ProjectedLoss(nn.Cell):
    """A generic scalar of every output: sum of outputs times fixed random tensors."""

    def __init__(self, net, shapes, seed):
        super().__init__()
        self.net = net
        rng = np.random.default_rng(seed)
        self.proj = [Tensor(rng.normal(size=s).astype(np.float32)) for s in shapes]

    def construct(self, features):
        pixel_embed, multi_scale = self.net(features)
        loss = (pixel_embed * self.proj[0]).sum()
        for index in range(3):
            loss = loss + (multi_scale[index] * self.proj[index + 1]).sum()
        return loss


def test_msdeform_pixel_decoder_gradients_match_hf_mask2former():
    """The backward of our gather-based sampler against PyTorch autograd through HF's grid_sample-based
    deformable attention: gradients of a generic scalar of all outputs with respect to every parameter
    (sampling offsets and attention weights included) and to the input features."""
    torch = pytest.importorskip("torch")
    hf = pytest.importorskip("transformers.models.mask2former.modeling_mask2former")
    from transformers import Mask2FormerConfig

    rng = np.random.default_rng(7)
    # conv_dim 64: see test_pixel_decoder_gradients_reach_every_parameter (no exactly-zero gradients).
    net = build_pixel_decoder("msdeform", IN_CHANNELS, 64, 24, **MSDEFORM_KW)
    randomize_params(net, rng, scale=0.3)  # offsets of about a pixel: many samples cross pixel and map borders
    feats = random_features(rng)
    shapes = [(BATCH, 24, 16, 16), (BATCH, 64, 2, 2), (BATCH, 64, 4, 4), (BATCH, 64, 8, 8)]
    loss_cell = _ProjectedLoss(net, shapes, seed=8)
    weights = loss_cell.trainable_params()
    features = tuple(Tensor(f) for f in feats)
    loss, (feature_grads, param_grads) = ms.value_and_grad(loss_cell, 0, weights)(features)

    config = Mask2FormerConfig(feature_size=64, mask_feature_size=24, encoder_layers=2, num_attention_heads=2,
                               encoder_feedforward_dim=64, common_stride=4, feature_strides=list(STRIDES))
    ref_net = hf.Mask2FormerPixelDecoder(config, feature_channels=list(IN_CHANNELS)).eval()
    names = [p.name[len("net."):] for p in weights]  # loss_cell.net.<name>
    ref_net.load_state_dict({_to_hf_pixel_decoder_key(n): torch.from_numpy(p.asnumpy()) for n, p in
                             zip(names, weights)}, strict=True)
    t_feats = [torch.tensor(f, requires_grad=True) for f in feats]
    ref = ref_net(t_feats)
    proj = [torch.from_numpy(t.asnumpy()) for t in loss_cell.proj]
    t_loss = (ref.mask_features * proj[0]).sum() + sum(
        (m * p).sum() for m, p in zip(ref.multi_scale_features, proj[1:]))
    t_loss.backward()
    np.testing.assert_allclose(loss.asnumpy(), t_loss.item(), rtol=1e-4)
    t_params = dict(ref_net.named_parameters())
    checked = 0
    for name, grad in zip(names, param_grads):
        theirs = t_params[_to_hf_pixel_decoder_key(name)].grad.numpy()
        scale = np.abs(theirs).max()
        np.testing.assert_allclose(grad.asnumpy(), theirs, rtol=1e-3, atol=1e-4 * scale + 1e-6, err_msg=name)
        checked += "sampling_offsets" in name or "attention_weights" in name
    assert checked == 8  # weight and bias of both, in each of the 2 layers
    for ours, theirs in zip(feature_grads, t_feats):
        np.testing.assert_allclose(ours.asnumpy(), theirs.grad.numpy(), rtol=1e-3,
                                   atol=1e-4 * np.abs(theirs.grad.numpy()).max())


def test_recompute_sampling_gives_the_same_gradients():
    """`recompute_sampling` trades memory for a second gather in the backward; nothing else may change."""
    grads = []
    for recompute in (False, True):
        rng = np.random.default_rng(9)
        net = build_pixel_decoder("msdeform", IN_CHANNELS, 64, 24, recompute_sampling=recompute, **MSDEFORM_KW)
        # Cell.recompute() marks the cell (MindSpore keeps the flag in `_has_config_recompute`).
        assert [getattr(layer.self_attn, "_has_config_recompute", False)
                for layer in net.transformer.encoder.layers] == [recompute] * MSDEFORM_KW["num_encoder_layers"]
        randomize_params(net, rng, scale=0.3)
        shapes = [(BATCH, 24, 16, 16), (BATCH, 64, 2, 2), (BATCH, 64, 4, 4), (BATCH, 64, 8, 8)]
        loss_cell = _ProjectedLoss(net, shapes, seed=10)
        loss, param_grads = ms.value_and_grad(loss_cell, None, loss_cell.trainable_params())(
            tuple(Tensor(f) for f in random_features(rng)))
        grads.append((float(loss.asnumpy()), [g.asnumpy() for g in param_grads]))
    (loss_a, grads_a), (loss_b, grads_b) = grads
    assert loss_a == loss_b
    assert len(grads_a) == len(grads_b) > 0
    for a, b in zip(grads_a, grads_b):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert any(np.abs(a).max() > 0 for a in grads_a)


@pytest.mark.parametrize("name", ["msdeform", "fpn"])
def test_pixel_decoder_gradients_reach_every_parameter(name):
    # conv_dim 64 so GroupNorm(32) has 2 channels per group: with 1 channel per group (conv_dim 32) the bias
    # of the conv before a GroupNorm (input_proj.{i}.0.bias, as in Mask2Former) is cancelled by the
    # normalisation and has an exactly-zero gradient in theory.
    rng = np.random.default_rng(3)
    kwargs = MSDEFORM_KW if name == "msdeform" else {}
    net = build_pixel_decoder(name, IN_CHANNELS, 64, 24, **kwargs)
    randomize_params(net, rng, scale=0.2)  # non-zero attention/offset weights so every path carries gradient
    shapes = [(BATCH, 24, 16, 16), (BATCH, 64, 2, 2), (BATCH, 64, 4, 4), (BATCH, 64, 8, 8)]
    loss_cell = _ProjectedLoss(net, shapes, seed=4)
    weights = loss_cell.trainable_params()
    grad_fn = ms.value_and_grad(loss_cell, None, weights)
    loss, grads = grad_fn(tuple(Tensor(f) for f in random_features(rng)))
    assert np.isfinite(loss.asnumpy())
    assert_every_parameter_gets_gradient(weights, grads, len(net.trainable_params()))
