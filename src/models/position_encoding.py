"""Fixed 2-D sine/cosine position encoding for feature maps (the DETR / Mask2Former "sine" encoding).

Every pixel (y, x) of an H x W map gets a vector of 2 * num_pos_feats channels: the first half encodes
the row, the second half the column. Coordinates are pixel counts (1..H, 1..W); with `normalize=True`
they are divided by the map size (plus a small epsilon) and multiplied by `scale`, so the encoding
depends on the relative position only and is comparable across pyramid levels. Each coordinate c is
then turned into sin(c / T^(2k/F)) for even channels 2k and cos(c / T^(2k/F)) for odd channels 2k+1
(T = temperature, F = num_pos_feats), interleaved sin, cos, sin, cos, ...

This module has no parameters. Padding masks are not supported: CoupAlign resizes every image to the
same square input, so every pixel of every map is valid.
"""
from __future__ import annotations

import math

import mindspore as ms
from mindspore import nn, ops


class PositionEmbeddingSine(nn.Cell):
    """Sine position encoding of a (B, C, H, W) feature map's grid, returned as (B, 2 * num_pos_feats, H, W).

    Args:
        num_pos_feats: channels per axis (half of the output channels); must be even.
        temperature: wavelength base T of the frequencies.
        normalize: divide the 1-based coordinates by the map size before scaling.
        scale: multiplier of the normalised coordinates (2*pi by default); only used with `normalize`.
        eps: added to the map size in the normalisation (1e-6, as in DETR).
    """

    def __init__(self, num_pos_feats: int = 64, temperature: float = 10000.0, normalize: bool = True,
                 scale: float = 2 * math.pi, eps: float = 1e-6):
        super().__init__()
        if num_pos_feats % 2 != 0:
            raise ValueError(f"num_pos_feats must be even to pair sin/cos channels, got {num_pos_feats}")
        self.num_pos_feats = int(num_pos_feats)
        self.temperature = float(temperature)
        self.normalize = bool(normalize)
        self.scale = float(scale)
        self.eps = float(eps)

    def _axis_encoding(self, length: int):
        """(length, num_pos_feats) encoding of positions 1..length along one axis."""
        coord = ops.arange(1, length + 1, dtype=ms.float32)  # (length,)
        if self.normalize:
            coord = coord / (float(length) + self.eps) * self.scale
        # Frequency of channel j: T^(2 * floor(j / 2) / F), shared by the sin/cos pair (2k, 2k+1).
        channel = ops.arange(0, self.num_pos_feats, dtype=ms.float32)  # (F,)
        dim_t = ops.pow(self.temperature, 2.0 * ops.floor(channel / 2.0) / float(self.num_pos_feats))  # (F,)
        angle = coord.reshape(length, 1) / dim_t.reshape(1, self.num_pos_feats)  # (length, F)
        # Interleave: channel 2k = sin(angle[:, 2k]), channel 2k+1 = cos(angle[:, 2k+1]).
        half = self.num_pos_feats // 2
        sin_part = ops.sin(angle[:, 0::2])  # (length, F/2)
        cos_part = ops.cos(angle[:, 1::2])  # (length, F/2)
        return ops.stack((sin_part, cos_part), axis=2).reshape(length, 2 * half)  # (length, F)

    def construct(self, x):
        """x: (B, C, H, W), only its shape is used. Returns (B, 2F, H, W) float32."""
        batch, _, height, width = x.shape
        feats = self.num_pos_feats
        pos_y = self._axis_encoding(height)  # (H, F)
        pos_x = self._axis_encoding(width)  # (W, F)
        pos_y = ops.broadcast_to(pos_y.reshape(height, 1, feats), (height, width, feats))  # (H, W, F)
        pos_x = ops.broadcast_to(pos_x.reshape(1, width, feats), (height, width, feats))  # (H, W, F)
        pos = ops.concat((pos_y, pos_x), axis=2).transpose(2, 0, 1)  # (2F, H, W)
        return ops.broadcast_to(pos.reshape(1, 2 * feats, height, width), (batch, 2 * feats, height, width))
