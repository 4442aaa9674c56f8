"""Normalisation layers: LayerNorm and GroupNorm with checkpoint-compatible parameter names, and a
parameter-free instance norm over the pixels of a token map."""
from __future__ import annotations

import mindspore as ms
from mindspore import Parameter, nn, ops
from mindspore.common.initializer import initializer


class LayerNorm(nn.Cell):
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
        return self.layer_norm(x, self.weight, self.bias)[0]

    def extend_repr(self):
        return f"{self.normalized_dim}, eps={self.eps}"


class GroupNorm(nn.Cell):
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
        unit = ops.ones((group_size,), x.dtype)  # LayerNorm's own affine left as identity
        x = self.layer_norm(x.reshape(batch, self.num_groups, group_size), unit, ops.zeros_like(unit))[0]
        x = x.reshape(batch, channels, height, width)
        return x * self.gamma.reshape(1, channels, 1, 1) + self.beta.reshape(1, channels, 1, 1)

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


class InstanceNormOverPixels(nn.Cell):
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
        average = ops.full((batch, 1, pixels), 1.0 / pixels, dtype=x.dtype)
        mean = ops.bmm(average, x)  # (B, 1, C)
        centred = x - mean
        var = ops.bmm(average, centred * centred)  # (B, 1, C), biased like PyTorch
        return centred * ops.rsqrt(var + self.eps)
