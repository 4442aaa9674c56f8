"""Layers shared by the model parts. A new module imports its primitives from here instead of writing its own.

Which one to use (each keeps the parameter names of the checkpoints its part converts from, so that
conversion is a rename-free copy; the names are part of the checkpoint format and must not change):

* Linear: `nn.Dense` (weight/bias) in new modules; `trunc_normal_dense` where Swin's initialisation is
  wanted. BERT uses `mint.nn.Linear` (also weight/bias) because HF's layout is copied as is.
* LayerNorm: `LayerNorm` here (weight/bias, explicit eps; PyTorch's names, for Swin, BERT and WPA). The
  Mask2Former parts keep `nn.LayerNorm` (gamma/beta) for their detectron2-style names. A new module uses
  `LayerNorm` from here.
* GroupNorm / convolution: `GroupNorm`, `group_norm`, `ConvNormAct` (detectron2's names).
* Attention: `MultiHeadAttention` (PyTorch's packed in_proj; bool mask, True = not allowed); multi-scale
  deformable attention is `msdeform_attn.MSDeformAttn` (the msdeform pixel decoder's).
* Feed-forward: `FeedForward` (Linear-GELU-Linear, timm's Mlp) or `ReluMLP` (DETR's ReLU stack, its MLP).
* `softmax_fp32`: every softmax of a model part (float32 under mixed precision, src/models/amp.py).
* `gelu` / `GELU`: the exact erf GELU (MindSpore's default is the tanh approximation); `AccurateTanh`;
  `DropPath`; `InstanceNormOverPixels`; `Embedding` (a table named `weight`).
* `scale_gradient`: identity forward, gradient times a constant (the proposal branch's pull on the trunk).
* Image encoders: subclass `StagedEncoder` (the stage-by-stage API, its `construct` and `stage_output`);
  `map_to_tokens` / `tokens_to_map` reshape between (B, C, H, W) and (B, H*W, C).
"""
from src.models.layers.activation import GELU, AccurateTanh, gelu, softmax_fp32
from src.models.layers.attention import MultiHeadAttention
from src.models.layers.conv import C2_XAVIER, ConvNormAct
from src.models.layers.drop import DropPath
from src.models.layers.embedding import Embedding
from src.models.layers.grad import scale_gradient
from src.models.layers.mlp import FeedForward, ReluMLP, trunc_normal_dense
from src.models.layers.norm import GroupNorm, InstanceNormOverPixels, LayerNorm, group_norm
from src.models.layers.stages import StagedEncoder, map_to_tokens, tokens_to_map

__all__ = ["GELU", "AccurateTanh", "gelu", "softmax_fp32", "MultiHeadAttention", "C2_XAVIER", "ConvNormAct", "DropPath", "Embedding",
           "FeedForward", "ReluMLP", "trunc_normal_dense", "GroupNorm", "InstanceNormOverPixels", "LayerNorm", "group_norm",
           "StagedEncoder", "map_to_tokens", "tokens_to_map", "scale_gradient"]
