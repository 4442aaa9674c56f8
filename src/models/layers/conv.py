"""Convolution with detectron2's parameter names and initialisation."""
from __future__ import annotations

from mindspore import nn, ops
from mindspore.common.initializer import HeUniform

from src.models.layers.norm import group_norm


# detectron2's `c2_xavier_fill`: kaiming_uniform_(a=1), i.e. U(-sqrt(3 / fan_in), +sqrt(3 / fan_in)).
C2_XAVIER = "c2_xavier"


class ConvNormAct(nn.Conv2d):
    """detectron2-style Conv2d: convolution, then an optional norm, then an optional ReLU.

    Subclasses nn.Conv2d so the parameters are named `weight` / `bias` / `norm.gamma` / `norm.beta`,
    as in detectron2's `Conv2d(..., norm=...)`. Padding follows PyTorch (explicit, `pad_mode="pad"`).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0,
                 has_bias: bool = True, use_norm: bool = False, relu: bool = False, weight_init=C2_XAVIER):
        if weight_init == C2_XAVIER:
            weight_init = HeUniform(negative_slope=1.0)
        super().__init__(in_channels, out_channels, kernel_size, stride=1, pad_mode="pad", padding=padding,
                         has_bias=has_bias, weight_init=weight_init, bias_init="zeros")
        self.norm = group_norm(out_channels) if use_norm else None
        self.use_norm = use_norm
        self.use_relu = relu

    def construct(self, x):
        x = super().construct(x)
        if self.use_norm:
            x = self.norm(x)
        if self.use_relu:
            x = ops.relu(x)
        return x
