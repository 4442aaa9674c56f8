"""The stage-by-stage API every image encoder has, and the token <-> map reshapes it is written with.

The fused model (src/models/coupalign.py) does not call an image encoder's ``construct``: it runs the stages
one by one and rewrites the tokens between them (WPA). Every image encoder therefore exposes, with tokens
(B, H*W, C_i) between the calls and H, W Python ints::

    tokens, H, W = encoder.embed(image)                    # stride-4 tokens of stage 0
    tokens = encoder.run_stage(i, tokens, H, W)            # the blocks of stage i
    feature_i = encoder.stage_output(i, tokens, H, W)      # norm{i} over channels, (B, C_i, H, W)
    tokens, H, W = encoder.downsample(i, tokens, H, W)     # to stage i + 1 (identity after the last)

``StagedEncoder`` holds the two parts that are the same for every encoder: ``stage_output`` (a LayerNorm
named ``norm{i}`` per stage, the segmentation Swin checkpoints' names) and ``construct`` (the four calls in
order, no fusion: the plain backbone). A new encoder subclasses it and defines ``num_layers``, ``embed``,
``run_stage``, ``downsample`` and the ``norm{i}`` cells.
"""
from __future__ import annotations

from mindspore import nn


def map_to_tokens(x):
    """(B, C, H, W) -> (tokens (B, H*W, C), H, W)."""
    B, C, H, W = x.shape
    return x.reshape(B, C, H * W).transpose(0, 2, 1), H, W  # (B, H*W, C)


def tokens_to_map(tokens, H: int, W: int):
    """(B, H*W, C) -> (B, C, H, W)."""
    B, _, C = tokens.shape
    return tokens.transpose(0, 2, 1).reshape(B, C, H, W)  # (B, C, H, W)


class StagedEncoder(nn.Cell):
    """Base of the image encoders: the shared ``stage_output`` and ``construct`` (module docstring)."""

    def stage_output(self, i: int, tokens, H: int, W: int):
        """Apply ``norm{i}`` and reshape (B, H*W, C_i) -> (B, C_i, H, W)."""
        return tokens_to_map(getattr(self, "norm" + str(i))(tokens), H, W)

    def construct(self, x):
        """Image (B, C_in, H, W) -> tuple of ``num_layers`` NCHW maps at strides 4, 8, 16, 32 (sizes rounded up)."""
        tokens, H, W = self.embed(x)
        outs = ()
        for i in range(self.num_layers):
            tokens = self.run_stage(i, tokens, H, W)
            outs = outs + (self.stage_output(i, tokens, H, W),)
            tokens, H, W = self.downsample(i, tokens, H, W)
        return outs
