"""Pixel decoders of CoupAlign's mask generator: word-pixel aligned features F1..F4 -> per-pixel embeddings P.

Two interchangeable decoders (`mask_generator.pixel_decoder`, see docs/method.md, "Mask
generator"), both returning `(P, multi_scale_features)`:

* `MSDeformAttnPixelDecoder` ("msdeform", the paper config): the Mask2Former pixel decoder. F2..F4
  (strides 8, 16, 32) are projected to `conv_dim`, refined jointly by a stack of multi-scale deformable
  attention encoder layers, and the stride-8 result is merged with F1 (stride 4) by one FPN step.
* `FPNPixelDecoder` ("fpn"): a plain top-down FPN (Mask2Former's BasePixelDecoder); cheap on CPU.

`P` is (B, mask_dim, H1, W1) at stride 4; `multi_scale_features` is a tuple of three
(B, conv_dim, H_l, W_l) maps ordered coarse (stride 32) to fine (stride 8): the memory that the
masked transformer decoder attends to.

The multi-scale deformable attention itself is `src/models/layers/msdeform_attn.py`.

Parameter names mirror the Mask2Former (detectron2) state_dict: `input_proj.{i}.{0,1}`,
`transformer.level_embed`, `transformer.encoder.layers.{i}.{self_attn.*, norm1, linear1, linear2, norm2}`,
`adapter_1`, `layer_1` (+ `.norm`), `mask_features`. Norm layers name their affine parameters
`gamma`/`beta` (PyTorch: `weight`/`bias`).
"""
from __future__ import annotations

import mindspore as ms
from mindspore import Parameter, nn, ops
from mindspore.common.initializer import Normal, XavierUniform, initializer
from src.errors import ConfigError

from src.models.cost import CostGeometry, PartCost, conv_flops, dense_flops
from src.models.layers import ConvNormAct, group_norm
from src.models.layers.msdeform_attn import MSDeformAttn, deformable_reference_points
from src.models.registry import PIXEL_DECODERS

from .position_encoding import PositionEmbeddingSine

__all__ = [
    "MSDeformAttnEncoderLayer",
    "MSDeformAttnTransformerEncoderOnly",
    "MSDeformAttnPixelDecoder",
    "FPNPixelDecoder",
    "build_pixel_decoder",
]


def _dropout(p: float) -> nn.Cell:
    return nn.Dropout(p=p) if p > 0 else nn.Identity()


class MSDeformAttnEncoderLayer(nn.Cell):
    """Deformable self-attention over all levels' pixels, then a ReLU FFN; residual + LayerNorm after each."""

    def __init__(self, d_model: int = 256, dim_feedforward: int = 1024, dropout: float = 0.0,
                 n_levels: int = 3, n_heads: int = 8, n_points: int = 4):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = _dropout(dropout)
        self.norm1 = nn.LayerNorm((d_model,), epsilon=1e-5)
        self.linear1 = nn.Dense(d_model, dim_feedforward, weight_init=XavierUniform())
        self.dropout2 = _dropout(dropout)
        self.linear2 = nn.Dense(dim_feedforward, d_model, weight_init=XavierUniform())
        self.dropout3 = _dropout(dropout)
        self.norm2 = nn.LayerNorm((d_model,), epsilon=1e-5)

    def construct(self, src, pos, reference_points, spatial_shapes):
        """src, pos: (B, Lv, C); reference_points: (1 or B, Lv, 1 or L, 2). Returns (B, Lv, C)."""
        attended = self.self_attn(src + pos, reference_points, src, spatial_shapes)
        src = self.norm1(src + self.dropout1(attended))
        hidden = self.dropout2(ops.relu(self.linear1(src)))
        src = self.norm2(src + self.dropout3(self.linear2(hidden)))
        return src


class _EncoderLayers(nn.Cell):
    """Holds the encoder layers under `layers` (state_dict path `transformer.encoder.layers.{i}`)."""

    def __init__(self, layers):
        super().__init__()
        self.layers = nn.CellList(layers)


class MSDeformAttnTransformerEncoderOnly(nn.Cell):
    """Deformable transformer encoder over a list of same-width feature maps (Mask2Former's encoder-only)."""

    def __init__(self, d_model: int = 256, n_heads: int = 8, num_encoder_layers: int = 6,
                 dim_feedforward: int = 1024, dropout: float = 0.0, num_feature_levels: int = 3,
                 enc_n_points: int = 4):
        super().__init__()
        self.num_feature_levels = num_feature_levels
        self.encoder = _EncoderLayers([
            MSDeformAttnEncoderLayer(d_model, dim_feedforward, dropout, num_feature_levels, n_heads, enc_n_points)
            for _ in range(num_encoder_layers)])
        self.level_embed = Parameter(initializer(Normal(sigma=1.0), (num_feature_levels, d_model), ms.float32),
                                     name="level_embed")

    def construct(self, srcs, pos_embeds):
        """srcs, pos_embeds: tuples of num_feature_levels maps (B, C, H_l, W_l).

        Returns (memory (B, sum H_l W_l, C), spatial_shapes tuple of (H_l, W_l)).
        """
        flat_src = []
        flat_pos = []
        shapes = []
        for level in range(self.num_feature_levels):
            batch, channels, height, width = srcs[level].shape
            shapes.append((height, width))
            flat_src.append(srcs[level].reshape(batch, channels, height * width).transpose(0, 2, 1))  # (B, HW, C)
            pos = pos_embeds[level].reshape(batch, channels, height * width).transpose(0, 2, 1)
            flat_pos.append(pos + self.level_embed[level].reshape(1, 1, channels))
        spatial_shapes = tuple(shapes)
        memory = ops.concat(flat_src, axis=1)  # (B, Lv, C)
        pos = ops.concat(flat_pos, axis=1)  # (B, Lv, C)
        reference_points = deformable_reference_points(spatial_shapes)  # (1, Lv, 1, 2)
        for layer in self.encoder.layers:
            memory = layer(memory, pos, reference_points, spatial_shapes)
        return memory, spatial_shapes


@PIXEL_DECODERS.register("msdeform")
class MSDeformAttnPixelDecoder(nn.Cell):
    """Mask2Former's pixel decoder: deformable encoder over strides 8..32, one FPN step to stride 4.

    Args:
        in_channels: channels of (F1, F2, F3, F4), strides (4, 8, 16, 32).
        conv_dim: width of the encoder and of the multi-scale features.
        mask_dim: channels of the per-pixel embeddings P.
        num_encoder_layers, n_heads, n_points, dim_feedforward, dropout: deformable encoder settings.
        recompute_sampling: recompute every deformable attention in the backward (`Cell.recompute`)
            instead of keeping its gathered neighbours; same gradients, less training memory.

    construct(features) with features = (F1, F2, F3, F4), each (B, C_i, H_i, W_i), returns
    (P (B, mask_dim, H1, W1), (stride-32, stride-16, stride-8 maps, each (B, conv_dim, H_l, W_l))).
    """

    def __init__(self, in_channels=(128, 256, 512, 1024), conv_dim: int = 256, mask_dim: int = 256,
                 num_encoder_layers: int = 6, n_heads: int = 8, n_points: int = 4, dim_feedforward: int = 1024,
                 dropout: float = 0.0, recompute_sampling: bool = False):
        super().__init__()
        if len(in_channels) != 4:
            raise ValueError(f"in_channels must list the 4 strides' channels (F1..F4), got {in_channels}")
        if conv_dim % 2 != 0:
            raise ConfigError(f"conv_dim must be even for the sine position encoding, got {conv_dim} (config: model.mask_generator.conv_dim)")
        self.num_feature_levels = 3
        # Input projections of F4, F3, F2 (coarse to fine, as Mask2Former orders its levels).
        self.input_proj = nn.CellList([
            nn.SequentialCell([
                nn.Conv2d(channels, conv_dim, 1, pad_mode="pad", padding=0, has_bias=True,
                          weight_init=XavierUniform(), bias_init="zeros"),
                group_norm(conv_dim),
            ])
            for channels in tuple(in_channels[1:])[::-1]])
        self.transformer = MSDeformAttnTransformerEncoderOnly(
            d_model=conv_dim, n_heads=n_heads, num_encoder_layers=num_encoder_layers,
            dim_feedforward=dim_feedforward, dropout=dropout, num_feature_levels=self.num_feature_levels,
            enc_n_points=n_points)
        if recompute_sampling:
            for layer in self.transformer.encoder.layers:
                layer.self_attn.recompute()
        self.pe_layer = PositionEmbeddingSine(conv_dim // 2, normalize=True)
        self.mask_features = ConvNormAct(conv_dim, mask_dim, 1, has_bias=True)
        # The FPN step to stride 4 (the norm makes a conv bias redundant, as in Mask2Former).
        self.adapter_1 = ConvNormAct(in_channels[0], conv_dim, 1, has_bias=False, use_norm=True)
        self.layer_1 = ConvNormAct(conv_dim, conv_dim, 3, padding=1, has_bias=False, use_norm=True, relu=True)

    @classmethod
    def from_config(cls, cfg, in_channels) -> "MSDeformAttnPixelDecoder":
        """From a Config: `model.mask_generator` and its `msdeform` sub-section; `in_channels` of the 4 input maps."""
        section = cfg.model.mask_generator
        own = section.msdeform
        return cls(tuple(in_channels), section.conv_dim, section.mask_dim, num_encoder_layers=own.encoder_layers,
                   n_heads=own.encoder_heads, n_points=own.encoder_points, dim_feedforward=own.encoder_ffn_dim,
                   recompute_sampling=own.recompute_sampling)

    @staticmethod
    def analytic_cost(model_cfg, geometry: CostGeometry) -> PartCost:
        """The deformable encoder over strides 8..32 plus the FPN step to stride 4 (src/models/cost.py)."""
        mg = model_cfg.mask_generator
        own, dim, levels = mg.msdeform, mg.conv_dim, 3
        sizes, channels = geometry.sizes, geometry.channels
        (h1, w1), n1 = sizes[0], sizes[0][0] * sizes[0][1]
        lv = sum(h * w for h, w in sizes[1:])  # encoder tokens
        samples = own.encoder_heads * levels * own.encoder_points
        layer_flops = (dense_flops(lv, dim, dim)                    # value_proj
                       + dense_flops(lv, dim, 2 * samples)          # sampling_offsets
                       + dense_flops(lv, dim, samples)              # attention_weights
                       + 2 * lv * levels * own.encoder_points * dim  # weighted sum of the sampled values
                       + dense_flops(lv, dim, dim)                  # output_proj
                       + dense_flops(lv, dim, own.encoder_ffn_dim) + dense_flops(lv, own.encoder_ffn_dim, dim))
        flops = (sum(conv_flops(h, w, c, dim, 1) for (h, w), c in zip(sizes[1:], channels[1:]))  # input_proj
                 + own.encoder_layers * layer_flops
                 + conv_flops(h1, w1, channels[0], dim, 1)           # adapter_1
                 + conv_flops(h1, w1, dim, dim, 3)                   # layer_1
                 + conv_flops(h1, w1, dim, mg.mask_dim, 1))          # mask_features

        layer_kept = (7 * lv * dim                                   # query, value_proj in, value maps, out_proj in, norms, linear1 in
                      + lv * own.encoder_ffn_dim)                    # ReLU output (linear2 input)
        sampling = (4 * lv * dim * levels * own.encoder_points       # the 4 gathered bilinear neighbours of every sample
                    # corner weights (4), attention weights, bilinear fractions (x, y), in-map masks
                    + 8 * lv * own.encoder_heads * levels * own.encoder_points)
        if own.recompute_sampling:  # recomputed in the backward, one layer at a time
            largest = layer_kept + sampling
        else:
            layer_kept += sampling
            largest = layer_kept
        kept = (sum(h * w * c for (h, w), c in zip(sizes[1:], channels[1:])) + lv * dim  # input_proj conv, GN
                + own.encoder_layers * layer_kept
                + n1 * channels[0] + 5 * n1 * dim)  # FPN step: adapter_1 in, GN, layer_1 in, GN, ReLU, mask_features in

        layer_params = (dim * 2 * samples + 2 * samples + dim * samples + samples + 2 * (dim * dim + dim)
                        + 2 * dim + dim * own.encoder_ffn_dim + own.encoder_ffn_dim + own.encoder_ffn_dim * dim + dim
                        + 2 * dim)
        params = (sum(c * dim + dim + 2 * dim for c in channels[1:])  # input_proj conv + GN
                  + own.encoder_layers * layer_params + 3 * dim       # + level_embed
                  + dim * mg.mask_dim + mg.mask_dim                   # mask_features (1x1)
                  + channels[0] * dim + 2 * dim + 9 * dim * dim + 2 * dim)  # adapter_1, layer_1 (no bias, GN)
        return PartCost(flops, kept, largest, params)

    def construct(self, features):
        f1, f2, f3, f4 = features
        coarse_to_fine = (f4, f3, f2)
        srcs = []
        pos = []
        for level in range(self.num_feature_levels):
            srcs.append(self.input_proj[level](coarse_to_fine[level]))  # (B, conv_dim, H_l, W_l)
            pos.append(self.pe_layer(coarse_to_fine[level]))  # (B, conv_dim, H_l, W_l)
        memory, spatial_shapes = self.transformer(tuple(srcs), tuple(pos))  # (B, Lv, conv_dim)

        batch, _, channels = memory.shape
        maps = []
        start = 0
        for level in range(self.num_feature_levels):
            height, width = spatial_shapes[level]
            level_memory = memory[:, start:start + height * width]  # (B, HW, C)
            maps.append(level_memory.transpose(0, 2, 1).reshape(batch, channels, height, width))
            start += height * width

        # FPN step: stride-8 encoder output, upsampled, plus the projected stride-4 feature.
        lateral = self.adapter_1(f1)  # (B, conv_dim, H1, W1)
        upsampled = ops.interpolate(maps[-1], size=(f1.shape[2], f1.shape[3]), mode="bilinear",
                                    align_corners=False)
        fused = self.layer_1(lateral + upsampled)  # (B, conv_dim, H1, W1)
        return self.mask_features(fused), (maps[0], maps[1], maps[2])


@PIXEL_DECODERS.register("fpn")
class FPNPixelDecoder(nn.Cell):
    """Plain top-down FPN over F1..F4 (Mask2Former's BasePixelDecoder), for CPU-sized configs.

    The coarsest map goes through a 3x3 conv (`layer_4`); each finer level adds a 1x1 lateral
    projection (`adapter_i`) to the nearest-upsampled coarser output and applies a 3x3 conv (`layer_i`);
    every conv has GroupNorm, the 3x3 ones also ReLU. A 3x3 `mask_features` conv on the stride-4
    output gives P. Same return signature as MSDeformAttnPixelDecoder.
    """

    def __init__(self, in_channels=(128, 256, 512, 1024), conv_dim: int = 256, mask_dim: int = 256):
        super().__init__()
        if len(in_channels) != 4:
            raise ValueError(f"in_channels must list the 4 strides' channels (F1..F4), got {in_channels}")
        c1, c2, c3, c4 = in_channels
        self.layer_4 = ConvNormAct(c4, conv_dim, 3, padding=1, has_bias=False, use_norm=True, relu=True)
        self.adapter_3 = ConvNormAct(c3, conv_dim, 1, has_bias=False, use_norm=True)
        self.layer_3 = ConvNormAct(conv_dim, conv_dim, 3, padding=1, has_bias=False, use_norm=True, relu=True)
        self.adapter_2 = ConvNormAct(c2, conv_dim, 1, has_bias=False, use_norm=True)
        self.layer_2 = ConvNormAct(conv_dim, conv_dim, 3, padding=1, has_bias=False, use_norm=True, relu=True)
        self.adapter_1 = ConvNormAct(c1, conv_dim, 1, has_bias=False, use_norm=True)
        self.layer_1 = ConvNormAct(conv_dim, conv_dim, 3, padding=1, has_bias=False, use_norm=True, relu=True)
        self.mask_features = ConvNormAct(conv_dim, mask_dim, 3, padding=1, has_bias=True)

    @classmethod
    def from_config(cls, cfg, in_channels) -> "FPNPixelDecoder":
        """From a Config: `model.mask_generator`; `in_channels` of the 4 input maps."""
        section = cfg.model.mask_generator
        return cls(tuple(in_channels), section.conv_dim, section.mask_dim)

    @staticmethod
    def analytic_cost(model_cfg, geometry: CostGeometry) -> PartCost:
        """3x3 conv on stride 32, then a 1x1 lateral and a 3x3 conv per finer level (src/models/cost.py)."""
        mg = model_cfg.mask_generator
        dim = mg.conv_dim
        (h1, w1), (h2, w2), (h3, w3), (h4, w4) = geometry.sizes
        c1, c2, c3, c4 = geometry.channels
        flops = conv_flops(h4, w4, c4, dim, 3)
        params = 9 * c4 * dim + 2 * dim
        for (h, w), c in (((h3, w3), c3), ((h2, w2), c2), ((h1, w1), c1)):
            flops += conv_flops(h, w, c, dim, 1) + conv_flops(h, w, dim, dim, 3)
            params += c * dim + 2 * dim + 9 * dim * dim + 2 * dim
        flops += conv_flops(h1, w1, dim, mg.mask_dim, 3)    # mask_features
        params += 9 * dim * mg.mask_dim + mg.mask_dim
        kept = sum(h * w * c + 5 * h * w * dim for (h, w), c in zip(geometry.sizes, geometry.channels))  # lateral conv in + GN, 3x3 conv in + GN + ReLU
        kept += h1 * w1 * dim
        return PartCost(flops, kept, 0, params)

    @staticmethod
    def _merge(coarser, lateral):
        """Nearest-upsample `coarser` to `lateral`'s size and add."""
        size = (lateral.shape[2], lateral.shape[3])
        return lateral + ops.interpolate(coarser, size=size, mode="nearest")

    def construct(self, features):
        f1, f2, f3, f4 = features
        y4 = self.layer_4(f4)  # (B, conv_dim, H4, W4), stride 32
        y3 = self.layer_3(self._merge(y4, self.adapter_3(f3)))  # stride 16
        y2 = self.layer_2(self._merge(y3, self.adapter_2(f2)))  # stride 8
        y1 = self.layer_1(self._merge(y2, self.adapter_1(f1)))  # stride 4
        return self.mask_features(y1), (y4, y3, y2)


def build_pixel_decoder(name: str, in_channels, conv_dim: int = 256, mask_dim: int = 256, **kwargs) -> nn.Cell:
    """The registered pixel decoder `name` from explicit arguments (constructor keywords in `kwargs`);
    CoupAlign builds from the config instead (`from_config`)."""
    return PIXEL_DECODERS.get(name)(tuple(in_channels), conv_dim, mask_dim, **kwargs)
