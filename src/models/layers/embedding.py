"""A lookup table with PyTorch's parameter name."""
from __future__ import annotations

import mindspore as ms
from mindspore import Parameter, nn, ops
from mindspore.common.initializer import Normal, initializer


class Embedding(nn.Cell):
    """A lookup table with PyTorch's parameter name (``weight``), built on ``ops.gather``.

    ``mint.nn.Embedding`` has the same name but no PyNative CPU kernel in MindSpore 2.10, and
    ``nn.Embedding`` calls its table ``embedding_table``. Initial values are set by
    ``BertModel._init_weights`` (HF's scheme, including the zero padding row).
    """

    def __init__(self, num_embeddings: int, embedding_dim: int):
        super().__init__()
        self.weight = Parameter(initializer(Normal(sigma=0.02), (num_embeddings, embedding_dim), ms.float32),
                                name="weight")

    def construct(self, ids):
        return ops.gather(self.weight, ids, 0)  # (..., embedding_dim)
