"""Small layers shared by several model parts."""
from __future__ import annotations

import mindspore as ms
from mindspore import nn, ops
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
