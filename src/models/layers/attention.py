"""Multi-head attention with PyTorch `nn.MultiheadAttention`'s packed parameters (batch-first)."""
from __future__ import annotations

import mindspore as ms
from mindspore import Parameter, nn, ops
from mindspore.common.initializer import XavierUniform, initializer

from src.errors import ConfigError


# Score given to masked (query, key) pairs before the softmax: exp() of it underflows to exactly 0 in
# float32, the same result as PyTorch's -inf for every row that keeps at least one key (all rows do:
# see attention_mask_from_logits), without producing NaN if a fully masked row ever reached the softmax.
_MASKED_SCORE = -1e9


class MultiHeadAttention(nn.Cell):
    """Multi-head scaled dot-product attention with nn.MultiheadAttention's parameters (batch-first).

    Args:
        embed_dim: width D of queries, keys, values and output.
        num_heads: heads; D must be divisible by it.
    """

    def __init__(self, embed_dim: int, num_heads: int):
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ConfigError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads}) (config: model.mask_generator.decoder_heads, conv_dim)")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scale = float(self.head_dim) ** -0.5
        # Rows [0:D) project queries, [D:2D) keys, [2D:3D) values (PyTorch's packed layout).
        self.in_proj_weight = Parameter(initializer(XavierUniform(), (3 * embed_dim, embed_dim), ms.float32),
                                        name="in_proj_weight")
        self.in_proj_bias = Parameter(initializer("zeros", (3 * embed_dim,), ms.float32), name="in_proj_bias")
        self.out_proj = nn.Dense(embed_dim, embed_dim, weight_init=XavierUniform(), bias_init="zeros")

    def _project(self, x, index: int):
        """Apply the index-th (0: q, 1: k, 2: v) slice of the packed projection, split heads: (B, H, L, Dh)."""
        dim = self.embed_dim
        # In x's dtype: a float16 flag (train.amp_level) casts the parameters a cell reads in `construct`,
        # not those read in a helper method like this one.
        weight = self.in_proj_weight[index * dim:(index + 1) * dim].astype(x.dtype)  # (D, D)
        bias = self.in_proj_bias[index * dim:(index + 1) * dim].astype(x.dtype)  # (D,)
        batch, length, _ = x.shape
        y = ops.matmul(x, weight.T) + bias  # (B, L, D)
        return y.reshape(batch, length, self.num_heads, self.head_dim).transpose(0, 2, 1, 3)

    def construct(self, query, key, value, attn_mask=None):
        """
        query: (B, Nq, D); key, value: (B, Nk, D).
        attn_mask: None or bool (B, Nq, Nk), True where attention is NOT allowed (shared by all heads).
        Returns (B, Nq, D).
        """
        batch, len_q, _ = query.shape
        q = self._project(query, 0) * self.scale  # (B, H, Nq, Dh)
        k = self._project(key, 1)  # (B, H, Nk, Dh)
        v = self._project(value, 2)  # (B, H, Nk, Dh)
        scores = ops.matmul(q, k.transpose(0, 1, 3, 2)).astype(ms.float32)  # (B, H, Nq, Nk)
        if attn_mask is not None:
            scores = ops.masked_fill(scores, ops.expand_dims(attn_mask, 1), _MASKED_SCORE)
        attn = ops.softmax(scores, axis=-1).astype(v.dtype)  # (B, H, Nq, Nk)
        out = ops.matmul(attn, v)  # (B, H, Nq, Dh)
        out = out.transpose(0, 2, 1, 3).reshape(batch, len_q, self.embed_dim)
        return self.out_proj(out)
