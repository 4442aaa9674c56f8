"""Small layers shared by several model parts."""
from __future__ import annotations

import math

import mindspore as ms
from mindspore import nn, ops
from mindspore.common.initializer import initializer

_INV_SQRT2 = 1.0 / math.sqrt(2.0)


def gelu(x):
    """Exact (erf) GELU, ``x * (1 + erf(x / sqrt(2))) / 2``, as PyTorch's default ``nn.GELU()``.

    ``ops.gelu(approximate="none")`` divides by a sqrt(2) tensor; multiplying by its inverse gives the same
    values (within one ulp) and on CPU a scalar Mul is several times cheaper than a tensor Div
    (docs/performance.md).
    """
    return x * (ops.erf(x * _INV_SQRT2) + 1.0) * 0.5


class GELU(nn.Cell):
    """``gelu`` as a Cell (no parameters), for SequentialCells."""

    def construct(self, x):
        return gelu(x)


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
