"""A small residual CNN with Swin's stage-by-stage API, for image encoders trained from scratch on the CPU.

Not the paper's encoder (a Swin-B pretrained on ImageNet-22k). Measured on the synthetic quickstart data
(research/NOTEBOOK.md, "Training health": category segmentation alone, 700 steps of 8 images, `tools/pretrain_visual.py`),
the from-scratch Swin of the quickstart reached 0.28 foreground-pixel accuracy on the six shape categories
(chance about 0.2) and this CNN (depths 1, 1, 1, 1) 0.78: without pretraining, a Swin this small does not
learn the shapes within the budget, and the alignments above it cannot select "the star" from features that
do not say which shape is a star. `model.image_encoder: convnet` chooses this encoder; everything after
it (WPA at every stage, pixel decoder, proposals, SMA) is unchanged.

Stages (strides 4, 8, 16, 32, channels ``model.convnet.widths``): a stem of two 3x3 stride-2 convolutions,
then per stage ``depths[i]`` basic residual blocks (3x3 conv, GroupNorm, ReLU, 3x3 conv, GroupNorm, + input,
ReLU); between stages a 3x3 stride-2 convolution with GroupNorm and ReLU. The API is every image
encoder's (src/models/layers/stages.py): tokens (B, H*W, C) between the calls, so a fusion module rewrites
them the same way as Swin's.
"""
from __future__ import annotations

from typing import Sequence

from mindspore import nn, ops
from mindspore.common.initializer import HeNormal

from src.models.layers import LayerNorm
from src.models.layers.norm import group_norm
from src.models.layers.stages import StagedEncoder, map_to_tokens, tokens_to_map
from src.models.registry import IMAGE_ENCODERS

NORM_GROUPS = 8


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, pad_mode="pad", padding=1, has_bias=False,
                     weight_init=HeNormal(mode="fan_out", nonlinearity="relu"))


class ConvNormReLU(nn.Cell):
    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv = _conv3x3(in_channels, out_channels, stride)
        self.norm = group_norm(out_channels, NORM_GROUPS)

    def construct(self, x):
        return ops.relu(self.norm(self.conv(x)))


class BasicBlock(nn.Cell):
    """ResNet's basic block with GroupNorm: relu(x + norm2(conv2(relu(norm1(conv1(x))))))."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = ConvNormReLU(channels, channels)
        self.conv2 = _conv3x3(channels, channels)
        self.norm2 = group_norm(channels, NORM_GROUPS)

    def construct(self, x):
        return ops.relu(x + self.norm2(self.conv2(self.conv1(x))))


@IMAGE_ENCODERS.register("convnet")
class ConvNetEncoder(StagedEncoder):
    """Four stages of residual convolutions at strides 4..32 with the image encoders' stage API (module docstring)."""

    def __init__(self, widths: Sequence[int] = (32, 64, 128, 256), depths: Sequence[int] = (2, 2, 2, 2),
                 in_chans: int = 3):
        super().__init__()
        widths, depths = tuple(int(w) for w in widths), tuple(int(d) for d in depths)
        if len(widths) != 4 or len(depths) != 4:
            raise ValueError(f"the conv encoder needs 4 widths and 4 depths, got {widths} and {depths}")
        self.num_layers = 4
        self.num_features = list(widths)
        self.stem = nn.SequentialCell([ConvNormReLU(in_chans, max(widths[0] // 2, 1), 2),
                                       ConvNormReLU(max(widths[0] // 2, 1), widths[0], 2)])
        self.stages = nn.CellList([nn.SequentialCell([BasicBlock(widths[i]) for _ in range(depths[i])])
                                   if depths[i] else nn.Identity() for i in range(4)])
        self.downsamples = nn.CellList([ConvNormReLU(widths[i], widths[i + 1], 2) for i in range(3)])
        for i in range(4):  # one output norm per stage, as Swin's norm0..norm3
            setattr(self, f"norm{i}", LayerNorm(widths[i]))

    @classmethod
    def from_config(cls, cfg) -> "ConvNetEncoder":
        """From a Config: its `model.convnet` section (widths, depths)."""
        return cls(cfg.model.convnet.widths, cfg.model.convnet.depths)

    def embed(self, x):
        """Image (B, 3, H, W) -> (tokens (B, ceil(H/4) * ceil(W/4), C_0), H/4, W/4)."""
        return map_to_tokens(self.stem(x))

    def run_stage(self, i: int, tokens, H: int, W: int):
        return map_to_tokens(self.stages[i](tokens_to_map(tokens, H, W)))[0]  # (B, H*W, C_i)

    def downsample(self, i: int, tokens, H: int, W: int):
        if i >= self.num_layers - 1:
            return tokens, H, W
        return map_to_tokens(self.downsamples[i](tokens_to_map(tokens, H, W)))
