"""Multi-scale deformable attention (Zhu et al., Deformable DETR), the attention of the "msdeform" pixel decoder
(src/models/pixel_decoder.py).

Written with plain MindSpore ops: the 4 bilinear neighbours of every sampling location are gathered and weighted in
one batched product; no custom kernel. All spatial shapes are static Python tuples read from the input shapes at
graph-compile time. Parameter names mirror Mask2Former's (detectron2) ``self_attn.*``: sampling_offsets,
attention_weights, value_proj, output_proj.
"""
from __future__ import annotations

import math

import numpy as np
import mindspore as ms
from mindspore import Tensor, nn, ops
from mindspore.common.initializer import XavierUniform

from src.errors import ConfigError
from src.models.layers.activation import softmax_fp32

__all__ = ["MSDeformAttn", "bilinear_corners", "deformable_reference_points", "level_constant"]

def _sampling_offsets_bias(n_heads: int, n_levels: int, n_points: int) -> np.ndarray:
    """Deformable DETR's initial offsets: head h looks along direction 2*pi*h/n_heads, point p at distance p+1.

    The direction (cos, sin) is scaled so its larger component is 1 (points on a square ring).
    Flattened in the (head, level, point, xy) order of the sampling_offsets output.
    """
    thetas = np.arange(n_heads, dtype=np.float64) * (2.0 * math.pi / n_heads)
    grid = np.stack([np.cos(thetas), np.sin(thetas)], axis=-1)  # (M, 2)
    grid = grid / np.abs(grid).max(axis=-1, keepdims=True)
    grid = np.tile(grid[:, None, None, :], (1, n_levels, n_points, 1))  # (M, L, P, 2)
    grid = grid * np.arange(1, n_points + 1, dtype=np.float64)[None, None, :, None]
    return grid.reshape(-1).astype(np.float32)


def deformable_reference_points(spatial_shapes):
    """Pixel-centre reference points of every level, normalised to [0, 1] as (x, y).

    spatial_shapes: tuple of (H_l, W_l). Returns (1, sum_l H_l W_l, 1, 2) float32, to be broadcast over
    the batch and the levels (no padding, so every level's valid ratio is 1 and a query's reference point
    is the same normalised position on every level).
    """
    points = []
    for height, width in spatial_shapes:
        ref_y = (ops.arange(0, height, dtype=ms.float32) + 0.5) / float(height)  # (H,)
        ref_x = (ops.arange(0, width, dtype=ms.float32) + 0.5) / float(width)  # (W,)
        ref_y = ops.broadcast_to(ref_y.reshape(height, 1), (height, width))
        ref_x = ops.broadcast_to(ref_x.reshape(1, width), (height, width))
        points.append(ops.stack((ref_x, ref_y), axis=-1).reshape(height * width, 2))  # (HW, 2)
    points = ops.concat(points, axis=0)  # (sum HW, 2)
    return points.reshape(1, -1, 1, 2)


def level_constant(values, n_points: int, dtype):
    """(1, 1, 1, L*P) of `dtype`: values[l] repeated for the P points of level l (the sampling layout)."""
    return ops.concat([ops.full((1, 1, 1, n_points), value, dtype=dtype) for value in values], axis=-1)


def bilinear_corners(px, py, spatial_shapes, n_points: int):
    """The 4 bilinear neighbours of every sampling location (zeros outside the map, align_corners=False).

    px, py: (B, Lq, M, L*P) locations in pixel units of their level (pixel centres at integers), float32 or
    float16. Returns (weights (B, Lq, M, 4LP) in px's dtype, rows (B, Lq, M, 4LP) int32 into the
    level-concatenated map), corners ordered top-left, top-right, bottom-left, bottom-right along the last axis.
    """
    int_widths = level_constant([w for _, w in spatial_shapes], n_points, ms.int32)  # (1, 1, 1, L*P)
    int_heights = level_constant([h for h, _ in spatial_shapes], n_points, ms.int32)
    level_start = [0]
    for height, width in spatial_shapes[:-1]:
        level_start.append(level_start[-1] + height * width)
    starts = level_constant(level_start, n_points, ms.int32)  # first row of each level
    largest = float(max(max(shape) for shape in spatial_shapes))

    x0 = ops.stop_gradient(ops.floor(px))  # (B, Lq, M, L*P), integral values
    y0 = ops.stop_gradient(ops.floor(py))
    fx = px - x0  # the offsets' gradient flows through these fractions, as in grid_sample
    fy = py - y0
    # The integer parts in int32, and every index below formed from them in int32: float16 holds only
    # even integers above 2048 (a row here reaches 4,724 at 480x480, and MSDeformAttn multiplies it by the
    # heads), so row arithmetic in float16 would read a neighbouring pixel. Clipping to [-2, largest side] first keeps
    # every inside/outside decision and keeps the cast in range for any offset.
    col = ops.clip_by_value(x0, -2.0, largest).astype(ms.int32)  # (B, Lq, M, L*P)
    row = ops.clip_by_value(y0, -2.0, largest).astype(ms.int32)

    def inside(coord, size):
        # 0 <= coord < size, as int32 0/1; subtracting first keeps the comparison against a scalar
        # (broadcast comparisons are slow on CPU).
        return ops.logical_and(coord >= 0, (coord - size) < 0).astype(ms.int32)

    in_x0, in_x1 = inside(col, int_widths), inside(col + 1, int_widths)  # (B, Lq, M, L*P) 0/1
    in_y0, in_y1 = inside(row, int_heights), inside(row + 1, int_heights)
    dtype = fx.dtype
    weight_x0 = (1.0 - fx) * in_x0.astype(dtype)
    weight_x1 = fx * in_x1.astype(dtype)
    weight_y0 = (1.0 - fy) * in_y0.astype(dtype)
    weight_y1 = fy * in_y1.astype(dtype)
    # Corners in the order top-left, top-right, bottom-left, bottom-right along the last axis.
    corner_weights = ops.concat((weight_y0 * weight_x0, weight_y0 * weight_x1,
                                 weight_y1 * weight_x0, weight_y1 * weight_x1), axis=-1)  # (B, Lq, M, 4LP)
    # Row of each corner in the level-concatenated map (int32); a corner outside the map has weight 0
    # and is pointed at row 0 of its level so the gather stays in range.
    top_left = row * int_widths + col  # (B, Lq, M, L*P)
    positions = ops.concat((top_left * (in_y0 * in_x0), (top_left + 1) * (in_y0 * in_x1),
                            (top_left + int_widths) * (in_y1 * in_x0),
                            (top_left + int_widths + 1) * (in_y1 * in_x1)), axis=-1)  # (B, Lq, M, 4LP)
    positions = positions + ops.concat((starts, starts, starts, starts), axis=-1)
    return corner_weights, positions


class MSDeformAttn(nn.Cell):
    """Multi-scale deformable attention (Deformable DETR), sampling by gathering the 4 bilinear neighbours.

    Every query predicts, per head, `n_points` sampling offsets on each of `n_levels` value maps and a
    softmax weight per (level, point); the output is the weighted sum of the bilinearly sampled values
    (zeros outside the map, align_corners=False, i.e. `grid_sample`'s convention), projected by
    `output_proj`.

    Why not `ops.grid_sample`: it needs one call per level on a transposed copy of the value map and a
    second weighting pass, and on CPU it took 380 ms per encoder layer at 480x480 (docs/performance.md).
    Here the bilinear weights and the attention weights are folded into one weight per (level, point,
    corner), the 4 corner rows are read with one `ops.gather` from the value map as it is laid out
    (B, Lv, heads, head_dim), and one batched (1 x 4LP) @ (4LP x head_dim) product per (query, head) sums
    them: 62 ms per layer, the same values to 1e-5. The cost is memory: autodiff keeps the 4 corner values
    (4x what grid_sample keeps) for the backward.

    Args:
        d_model: channels of queries and values; divisible by n_heads.
        n_levels: number of feature levels.
        n_heads: attention heads.
        n_points: sampling points per head and level.
    """

    def __init__(self, d_model: int = 256, n_levels: int = 3, n_heads: int = 8, n_points: int = 4):
        super().__init__()
        if d_model % n_heads != 0:
            raise ConfigError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads}) (config: model.mask_generator.msdeform.encoder_heads)")
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points
        self.head_dim = d_model // n_heads
        bias = Tensor(_sampling_offsets_bias(n_heads, n_levels, n_points))
        self.sampling_offsets = nn.Dense(d_model, n_heads * n_levels * n_points * 2,
                                         weight_init="zeros", bias_init=bias)
        self.attention_weights = nn.Dense(d_model, n_heads * n_levels * n_points,
                                          weight_init="zeros", bias_init="zeros")
        self.value_proj = nn.Dense(d_model, d_model, weight_init=XavierUniform(), bias_init="zeros")
        self.output_proj = nn.Dense(d_model, d_model, weight_init=XavierUniform(), bias_init="zeros")

    def construct(self, query, reference_points, value_input, spatial_shapes):
        """
        query: (B, Lq, C) queries (with position encoding added).
        reference_points: (B or 1, Lq, n_levels or 1, 2) normalised (x, y) in [0, 1].
        value_input: (B, Lv, C), the levels' maps flattened row-major and concatenated, Lv = sum H_l W_l.
        spatial_shapes: tuple of n_levels static (H_l, W_l) tuples.
        Returns (B, Lq, C).
        """
        batch, len_q, _ = query.shape
        len_v = value_input.shape[1]
        heads, levels, points, head_dim = self.n_heads, self.n_levels, self.n_points, self.head_dim
        samples = levels * points  # per (query, head); the last axis below runs over (level, point)

        value = self.value_proj(value_input)  # (B, Lv, C) = (B, Lv, heads, head_dim) row-major
        # sampling_offsets' outputs alternate x, y (the Deformable DETR layout, kept for checkpoint
        # compatibility); slicing its weight rows yields x and y as separate contiguous maps, which is
        # much cheaper on CPU than slicing the interleaved output.
        weight, bias = self.sampling_offsets.weight, self.sampling_offsets.bias
        offset_x = (ops.matmul(query, weight[0::2].T) + bias[0::2]).reshape(batch, len_q, heads, samples)
        offset_y = (ops.matmul(query, weight[1::2].T) + bias[1::2]).reshape(batch, len_q, heads, samples)
        attn = self.attention_weights(query).reshape(batch, len_q, heads, samples)
        attn = softmax_fp32(attn)  # (B, Lq, M, L*P), float32 inside under AMP

        # The sampling locations are computed in the query's dtype: float32, also under train.amp_level=O2
        # (src/models/amp.py keeps this cell in float32, its projections in float16); float16 under O3 and
        # in a 310 model converted to float16. Every integer (pixel, row) is formed in int32 (bilinear_corners).
        widths = level_constant([float(w) for _, w in spatial_shapes], points, query.dtype)  # (1, 1, 1, L*P)
        heights = level_constant([float(h) for h, _ in spatial_shapes], points, query.dtype)

        # Reference points (B', Lq, L', 2) -> x and y as (B', Lq, 1, L*P), L' in {1, L}.
        ref_batch, ref_levels = reference_points.shape[0], reference_points.shape[2]
        ref_x = ops.broadcast_to(reference_points[..., 0].reshape(ref_batch, len_q, 1, ref_levels, 1),
                                 (ref_batch, len_q, 1, levels, points)).reshape(ref_batch, len_q, 1, samples)
        ref_y = ops.broadcast_to(reference_points[..., 1].reshape(ref_batch, len_q, 1, ref_levels, 1),
                                 (ref_batch, len_q, 1, levels, points)).reshape(ref_batch, len_q, 1, samples)
        # Sampling location in pixel units, pixel centres at integers (align_corners=False):
        # (ref + offset / size) * size - 0.5.
        px = ref_x * widths + offset_x - 0.5  # (B, Lq, M, L*P)
        py = ref_y * heights + offset_y - 0.5
        bilinear, positions = bilinear_corners(px, py, spatial_shapes, points)  # (B, Lq, M, 4LP) each
        corner_weights = bilinear * ops.tile(attn, (1, 1, 1, 4))  # (B, Lq, M, 4LP)
        # Flat row of (b, position, head) in value viewed as (B * Lv * M, head_dim).
        head_index = ops.arange(0, heads, dtype=ms.int32).reshape(1, 1, heads, 1)
        batch_offset = (ops.arange(0, batch, dtype=ms.int32) * (len_v * heads)).reshape(batch, 1, 1, 1)
        rows = positions * heads + head_index + batch_offset  # (B, Lq, M, 4LP) int32

        corners = 4 * samples
        sampled = ops.gather(value.reshape(batch * len_v * heads, head_dim), rows.reshape(-1), 0)
        sampled = sampled.reshape(batch * len_q * heads, corners, head_dim)  # value's dtype (float16 under AMP)
        corner_weights = corner_weights.astype(sampled.dtype).reshape(batch * len_q * heads, 1, corners)
        out = ops.bmm(corner_weights, sampled)  # (B*Lq*M, 1, Dh)
        return self.output_proj(out.reshape(batch, len_q, heads * head_dim))
