"""Dense stacks: Swin's truncated-normal Linear, the transformer feed-forward (`FeedForward`, timm's `Mlp`) and
DETR's MLP (`ReluMLP`: ReLU between layers). Two names that say which, where timm and DETR spell them
Mlp and MLP."""
from __future__ import annotations

from mindspore import nn, ops
from mindspore.common.initializer import TruncatedNormal

from src.models.layers.activation import GELU


def trunc_normal_dense(in_features: int, out_features: int, has_bias: bool = True) -> nn.Dense:
    """Linear layer with Swin's initialisation (truncated normal std 0.02, zero bias)."""
    return nn.Dense(in_features, out_features, weight_init=TruncatedNormal(sigma=0.02),
                    bias_init="zeros", has_bias=has_bias)


class FeedForward(nn.Cell):
    """Transformer feed-forward: Linear -> exact (erf) GELU -> Dropout -> Linear -> Dropout."""

    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = trunc_normal_dense(in_features, hidden_features)
        self.act = GELU()
        self.fc2 = trunc_normal_dense(hidden_features, in_features)
        self.drop = nn.Dropout(p=drop)

    def construct(self, x):
        x = self.drop(self.act(self.fc1(x)))
        return self.drop(self.fc2(x))


class ReluMLP(nn.Cell):
    """num_layers Dense layers with ReLU between them (none after the last)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.num_layers = num_layers
        self.layers = nn.CellList([nn.Dense(i, o) for i, o in zip(dims_in, dims_out)])

    def construct(self, x):
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index < self.num_layers - 1:
                x = ops.relu(x)
        return x
