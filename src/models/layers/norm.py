"""Normalisation layers: LayerNorm and GroupNorm with checkpoint-compatible parameter names, and a
parameter-free instance norm over the pixels of a token map.

Under mixed precision (train.amp_level, src/models/amp.py) all three compute their statistics in float32
whatever their input's dtype, and return the input's dtype or `output_dtype` when set: a GroupNorm group at 480x480 holds 8 x 120 x 120
= 115,200 values, whose sum of squares passes float16's maximum (65504) once their RMS exceeds 0.75, and a
float16 running sum of that many values keeps ~3 significant digits. MindSpore's own AMP black list knows only
its `nn.LayerNorm`/BatchNorm cells. The casts are no-ops in float32. Under O2 a norm cell is flagged float32
(its input and parameters arrive in float32) and `output_dtype` = float16 hands float16 to the next cell, as
MindSpore's O2 does for its black-list cells: a float32 output would meet float16 tensors in the next
BatchMatMul, which takes no mixed dtypes (measured: "For primitive[BatchMatMul], the input type must be same").
"""
from __future__ import annotations

import mindspore as ms
from mindspore import Parameter, nn, ops
from mindspore.common.initializer import initializer


class _Float32Norm(nn.Cell):
    """Base of the norms: `output_dtype` None returns the input's dtype (src/models/amp.py sets it under O2)."""

    output_dtype = None

    def _output(self, y, input_dtype):
        return y.astype(input_dtype if self.output_dtype is None else self.output_dtype)


class LayerNorm(_Float32Norm):
    """LayerNorm over the last axis with PyTorch's parameter names (``weight``/``bias``) and an explicit eps.

    ``mindspore.nn.LayerNorm`` names its parameters gamma/beta and defaults to eps 1e-7 (PyTorch 1e-5,
    BERT 1e-12); ``mindspore.mint.nn.LayerNorm`` has no CPU kernel in MindSpore 2.10. This wraps the
    ``LayerNorm`` primitive, which runs on CPU, GPU and Ascend, so Swin and BERT checkpoints convert by
    name.
    """

    def __init__(self, normalized_dim: int, eps: float = 1e-5):
        super().__init__()
        self.normalized_dim = normalized_dim
        self.eps = eps
        self.weight = ms.Parameter(initializer("ones", (normalized_dim,), ms.float32), name="weight")
        self.bias = ms.Parameter(initializer("zeros", (normalized_dim,), ms.float32), name="bias")
        self.layer_norm = ops.LayerNorm(begin_norm_axis=-1, begin_params_axis=-1, epsilon=eps)

    def construct(self, x):
        f32 = ms.float32  # statistics in float32 under AMP (module docstring)
        y = self.layer_norm(x.astype(f32), self.weight.astype(f32), self.bias.astype(f32))[0]
        return self._output(y, x.dtype)

    def extend_repr(self):
        return f"{self.normalized_dim}, eps={self.eps}"


class GroupNorm(_Float32Norm):
    """GroupNorm over (B, C, H, W) with per-channel `gamma`/`beta` (nn.GroupNorm's parameter names).

    Each group's C/G x H x W values are normalised by the LayerNorm primitive on a (B, G, C/G*H*W) view,
    then the per-channel affine is applied. Same values as nn.GroupNorm (tests compare against HF's
    Mask2Former); on CPU nn.GroupNorm's kernel took ~16 ms per 256 x 120 x 120 map at 480x480, about
    twice this (docs/performance.md).
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5):
        super().__init__()
        self.num_groups = num_groups
        self.num_channels = num_channels
        self.eps = eps
        self.gamma = Parameter(initializer("ones", (num_channels,), ms.float32), name="gamma")
        self.beta = Parameter(initializer("zeros", (num_channels,), ms.float32), name="beta")
        self.layer_norm = ops.LayerNorm(begin_norm_axis=-1, begin_params_axis=-1, epsilon=eps)

    def construct(self, x):
        batch, channels, height, width = x.shape
        group_size = channels // self.num_groups * height * width
        dtype, f32 = x.dtype, ms.float32  # statistics and affine in float32 under AMP (module docstring)
        unit = ops.ones((group_size,), f32)  # LayerNorm's own affine left as identity
        y = self.layer_norm(x.astype(f32).reshape(batch, self.num_groups, group_size), unit, ops.zeros_like(unit))[0]
        y = y.reshape(batch, channels, height, width)
        y = y * self.gamma.astype(f32).reshape(1, channels, 1, 1) + self.beta.astype(f32).reshape(1, channels, 1, 1)
        return self._output(y, dtype)

    def extend_repr(self):
        return f"num_groups={self.num_groups}, num_channels={self.num_channels}, eps={self.eps}"


def group_norm(num_channels: int, max_groups: int = 32) -> GroupNorm:
    """GroupNorm with min(max_groups, num_channels) groups (32 for real configs; fewer for tiny test configs).

    Raises ValueError when the channels do not split evenly into the groups.
    """
    num_groups = min(max_groups, num_channels)
    if num_channels % num_groups != 0:
        raise ValueError(
            f"GroupNorm needs num_channels divisible by num_groups: {num_channels} channels, {num_groups} groups "
            f"(use a conv_dim that is a multiple of {max_groups}, or at most {max_groups})")
    return GroupNorm(num_groups, num_channels, eps=1e-5)


class InstanceNormOverPixels(_Float32Norm):
    """Parameter-free instance normalisation of ``(B, HW, C)`` tokens.

    Each channel of each sample is normalised to zero mean and unit (biased) variance over the pixel axis,
    which is what PyTorch's ``InstanceNorm1d(C)`` (affine=False, eps=1e-5) does on the ``(B, C, HW)``
    layout LAVT uses. MindSpore's own InstanceNorm is affine by default and not available on every
    backend, hence this small cell.
    """

    def __init__(self, eps=1e-5):
        super().__init__()
        self.eps = eps

    def construct(self, x):
        # x: (B, HW, C). The means over pixels are (1 x HW) @ (HW x C) products with a row of 1/HW: on
        # CPU a ReduceMean over the middle axis is ~3.5x slower (docs/performance.md).
        batch, pixels, _ = x.shape
        dtype = x.dtype
        x = x.astype(ms.float32)  # (B, HW, C); statistics in float32 under AMP (module docstring)
        average = ops.full((batch, 1, pixels), 1.0 / pixels, dtype=ms.float32)
        mean = ops.bmm(average, x)  # (B, 1, C)
        centred = x - mean
        var = ops.bmm(average, centred * centred)  # (B, 1, C), biased like PyTorch
        return self._output(centred * ops.rsqrt(var + self.eps), dtype)
