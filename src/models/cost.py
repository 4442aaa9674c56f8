"""Analytic cost of a model part, in pure Python: forward FLOPs, activations kept for the backward, and
parameters, for one image. Each registered part (fusion module, pixel decoder, transformer decoder) answers
for itself through `analytic_cost(model_cfg, geometry) -> PartCost`, so a new part brings its own counts and
tools/benchmark.py (FLOPs per part, the training-memory estimate, the parameter count) needs no if-chain.

Conventions (checked against torch.utils.flop_counter and the built models in tests/test_benchmark.py):
2 FLOPs per multiply-add. Activation elements follow the accounting rule of `tools/benchmark.py`'s
`activation_elements`: a dense layer or convolution keeps its input, norms their input, GELU its input,
ReLU and softmax their output; additions, reshapes and O(tokens) or O(channels) tensors are free.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple


@dataclass(frozen=True)
class CostGeometry:
    """What the parts' costs depend on besides their own config: the encoder stages' map sizes (strides
    4, 8, 16, 32) and channels, the text width and the sentence length."""
    sizes: Tuple[Tuple[int, int], ...]  # (h, w) per stage
    channels: Tuple[int, ...]  # C per stage
    text_dim: int
    tokens: int


@dataclass(frozen=True)
class PartCost:
    flops: int  # forward FLOPs, one image
    activations: int  # fp32 elements kept from the forward for the backward, one image
    largest_layer: int  # the most any single layer of the part keeps (the backward's working set), one image
    params: int


def dense_flops(tokens: int, in_features: int, out_features: int) -> int:
    """A dense layer applied to `tokens` vectors."""
    return 2 * tokens * in_features * out_features


def conv_flops(out_height: int, out_width: int, in_channels: int, out_channels: int, kernel: int) -> int:
    return 2 * out_height * out_width * in_channels * out_channels * kernel * kernel


def attention_flops(queries: int, keys: int, width: int) -> int:
    """Scores (q . k over `width` channels summed across heads) plus the weighted sum of values."""
    return 2 * (2 * queries * keys * width)


def total(costs: List[PartCost]) -> PartCost:
    return PartCost(sum(c.flops for c in costs), sum(c.activations for c in costs),
                    max((c.largest_layer for c in costs), default=0), sum(c.params for c in costs))
