"""The building blocks of the Swin Transformer (src/models/swin.py): window attention with its relative position
bias, the (shifted-)window block, patch merging and one stage of blocks (`BasicLayer`), with the window data
movement they share (padding to a multiple of the window, the cyclic shift, the shifted-window mask, and the
gathers that replace them). Each block also states its own analytic cost (`analytic_flops`,
`analytic_activations`; conventions in src/models/cost.py), which the encoder sums for tools/benchmark.py.

Behaviour that differs from the ImageNet classification Swin and matters for numbers:

* A feature map whose height or width is not a multiple of the window is zero-padded (bottom/right, after
  ``norm1``) up to the next multiple inside every block, attention runs over the padded windows, and the
  padding is cropped afterwards. The window is never shrunk to the feature size and the shift
  (``window_size // 2``) is always applied in odd blocks; the shifted-window attention mask is built for
  the padded size (pad first, then roll).
* Patch merging zero-pads an odd height/width by one row/column before merging 2x2 neighbours.

The relative position index and the attention masks are constant tensors, not Parameters, and never appear in
checkpoints; parameter names are set by the attributes (``attn.qkv``, ``norm1``, ``mlp.fc1``, ...), which follow
the official Swin checkpoints.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import mindspore as ms
from mindspore import nn, ops
from mindspore.common.initializer import TruncatedNormal, initializer
from src.errors import ConfigError

from src.models.cost import attention_flops, dense_flops
from src.models.layers import DropPath, FeedForward, LayerNorm, softmax_fp32, trunc_normal_dense

__all__ = [
    "WindowAttention",
    "SwinTransformerBlock",
    "PatchMerging",
    "BasicLayer",
    "relative_position_index",
    "window_gather_indices",
    "window_partition",
    "window_reverse",
    "pad_end",
    "padded_size",
]

# Large negative logit added to attention scores between tokens from different regions of a shifted window
# (the value the reference implementation uses; after softmax it is ~e-44 relative weight).
_MASK_VALUE = -100.0


def relative_position_index(window_size: int) -> np.ndarray:
    """Index into the ``((2W-1)^2, heads)`` bias table for every (query, key) pair of a W x W window.

    Returns an int32 array of shape ``(W*W, W*W)``; entry ``[q, k]`` encodes the offset
    ``(dy, dx) = pos(q) - pos(k)`` as ``(dy + W - 1) * (2W - 1) + (dx + W - 1)`` (row-major over the table).
    """
    ys, xs = np.meshgrid(np.arange(window_size), np.arange(window_size), indexing="ij")
    coords = np.stack([ys.reshape(-1), xs.reshape(-1)])  # (2, N)
    rel = coords[:, :, None] - coords[:, None, :]  # (2, N, N)
    index = (rel[0] + window_size - 1) * (2 * window_size - 1) + (rel[1] + window_size - 1)
    return index.astype(np.int32)


def window_partition(x, window_size: int):
    """(B, H, W, C) -> (B * nW, window_size * window_size, C); H and W must be multiples of the window."""
    B, H, W, C = x.shape
    x = x.reshape(B, H // window_size, window_size, W // window_size, window_size, C)
    x = x.transpose(0, 1, 3, 2, 4, 5)  # (B, nH, nW, ws, ws, C)
    return x.reshape(-1, window_size * window_size, C)


def window_reverse(windows, window_size: int, H: int, W: int):
    """(B * nW, window_size * window_size, C) -> (B, H, W, C); inverse of ``window_partition``."""
    C = windows.shape[-1]
    x = windows.reshape(-1, H // window_size, W // window_size, window_size, window_size, C)
    x = x.transpose(0, 1, 3, 2, 4, 5)  # (B, nH, ws, nW, ws, C)
    return x.reshape(-1, H, W, C)


def pad_end(x, axis: int, amount: int):
    """Appends `amount` zeros along `axis`.

    Written with concatenation because the backward of ``ops.pad`` on CPU in MindSpore 2.10 reads
    uninitialised memory: gradients change from call to call and turn NaN within a few steps
    (tests/test_swin.py checks that repeated gradients of a padded configuration are identical).
    """
    if amount == 0:
        return x
    shape = list(x.shape)
    shape[axis] = amount
    return ops.concat((x, ops.zeros(tuple(shape), x.dtype)), axis=axis)


def _pad_bottom_right(x, pad_b: int, pad_r: int):
    """Zero-pads (B, H, W, C) to (B, H + pad_b, W + pad_r, C) at the bottom and right."""
    return pad_end(pad_end(x, 2, pad_r), 1, pad_b)


def _roll_hw(x, shift_h: int, shift_w: int):
    """``torch.roll(x, (shift_h, shift_w), dims=(1, 2))`` for (B, H, W, C) with static integer shifts.

    Written with slices and concatenation, which every backend supports (``ops.roll`` does not run
    everywhere).
    """
    H, W = x.shape[1], x.shape[2]
    shift_h = shift_h % H
    shift_w = shift_w % W
    if shift_h:
        x = ops.concat((x[:, H - shift_h:], x[:, :H - shift_h]), axis=1)
    if shift_w:
        x = ops.concat((x[:, :, W - shift_w:], x[:, :, :W - shift_w]), axis=2)
    return x


def _shifted_window_mask(Hp: int, Wp: int, window_size: int, shift_size: int):
    """Additive attention mask for shifted windows on a padded ``Hp x Wp`` map: (nW, N, N), 0 or -100.

    After the cyclic shift, a window may contain tokens from up to 3 x 3 regions that were not adjacent in
    the image. Rows are labelled 0/1/2 for ``[0, Hp - ws)``, ``[Hp - ws, Hp - shift)``, ``[Hp - shift, Hp)``
    (likewise columns); two tokens may attend to each other only if they carry the same region label.
    Built from static ints with tensor ops so it folds to a constant in graph mode.
    """
    rows = ops.arange(Hp, dtype=ms.int32)  # int32: an int64 arange falls back to AI CPU on Ascend
    cols = ops.arange(Wp, dtype=ms.int32)
    row_region = (rows >= Hp - window_size).astype(ms.int32) + (rows >= Hp - shift_size).astype(ms.int32)
    col_region = (cols >= Wp - window_size).astype(ms.int32) + (cols >= Wp - shift_size).astype(ms.int32)
    region = row_region.reshape(Hp, 1) * 3 + col_region.reshape(1, Wp)  # (Hp, Wp)
    region = region.reshape(1, Hp, Wp, 1)
    region_windows = window_partition(region, window_size).reshape(-1, window_size * window_size)  # (nW, N)
    differs = region_windows.reshape(-1, 1, window_size * window_size) != \
        region_windows.reshape(-1, window_size * window_size, 1)  # (nW, N, N)
    return differs.astype(ms.float32) * _MASK_VALUE


def window_gather_indices(H: int, W: int, window_size: int, shift_size: int):
    """Token permutations that replace pad -> roll -> window partition and its inverse by one gather each.

    Returns ``(window_index (Hp*Wp,), token_index (H*W,))`` int32: ``window_index[p]`` is the token of the
    unpadded (H*W) map that lands at position ``p`` of the flattened windows (``nW * N`` rows, window
    after window), or ``H*W`` (one appended zero row) where the window covers padding; ``token_index[t]``
    is the window position that token ``t`` comes back from. They are computed by putting the token
    numbers themselves through the data movement (so it is the same movement by construction), from
    static ints only, once per stage. Why: on CPU the padding, the sliced rolls, the two 6-D transposes
    and the crop cost ~12 ms per block of Swin-B's stage 3 at 480x480, the two gathers ~1 ms
    (docs/performance.md).
    """
    ws = window_size
    Hp = (H + ws - 1) // ws * ws
    Wp = (W + ws - 1) // ws * ws
    # Token number + 1, zero on the padding (zero padding is what the block applies to the data).
    numbers = (ops.arange(0, H * W, dtype=ms.int32) + 1).reshape(1, H, W, 1)
    numbers = _pad_bottom_right(numbers, Hp - H, Wp - W)
    if shift_size > 0:
        numbers = _roll_hw(numbers, -shift_size, -shift_size)
    numbers = window_partition(numbers, ws).reshape(-1)  # (Hp*Wp,), 0 where padding
    window_index = (numbers + H * W) % (H * W + 1)  # k + 1 -> k; 0 -> H*W (the zero row)

    positions = ops.arange(0, Hp * Wp, dtype=ms.int32).reshape(-1, ws * ws, 1)
    positions = window_reverse(positions, ws, Hp, Wp)  # (1, Hp, Wp, 1)
    if shift_size > 0:
        positions = _roll_hw(positions, shift_size, shift_size)
    token_index = positions[:, :H, :W].reshape(-1)
    return window_index, token_index


def padded_size(height: int, width: int, window_size: int) -> int:
    """Tokens of a `height` x `width` map padded up to a multiple of the window (what window attention runs on)."""
    return -(-height // window_size) * window_size * (-(-width // window_size) * window_size)


class WindowAttention(nn.Cell):
    """Multi-head self-attention inside square windows, with a learned relative position bias.

    The bias for a (query, key) pair is ``relative_position_bias_table[index(dy, dx), head]``; the index
    map is a constant tensor (not a Parameter).
    """

    def __init__(self, dim: int, window_size: int, num_heads: int, qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"dim {dim} is not divisible by num_heads {num_heads} (config: model.swin.num_heads, embed_dim)")
        self.dim = dim
        self.window_size = window_size
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        num_offsets = (2 * window_size - 1) ** 2
        self.relative_position_bias_table = ms.Parameter(
            initializer(TruncatedNormal(sigma=0.02), (num_offsets, num_heads), ms.float32),
            name="relative_position_bias_table")
        # (N*N,) flattened gather index; a constant, so it is not saved in checkpoints.
        self.relative_position_index = ms.Tensor(relative_position_index(window_size).reshape(-1))
        self.qkv = trunc_normal_dense(dim, dim * 3, has_bias=qkv_bias)
        self.attn_drop = nn.Dropout(p=attn_drop)
        self.proj = trunc_normal_dense(dim, dim)
        self.proj_drop = nn.Dropout(p=proj_drop)
        self.q_kt = ops.BatchMatMul(transpose_b=True)
        self.attn_v = ops.BatchMatMul()

    def construct(self, x, mask=None):
        """x: (B_, N, C) window tokens (B_ = B * nW); mask: None or (nW, N, N) additive mask."""
        B_, N, C = x.shape
        qkv = self.qkv(x).reshape(B_, N, 3, self.num_heads, self.head_dim)
        qkv = qkv.transpose(2, 0, 3, 1, 4)  # (3, B_, heads, N, hd)
        # Unstack rather than qkv[0], qkv[1], qkv[2]: MindSpore 2.10's CPU StridedSlice on this transposed
        # tensor is ~10x slower than Unstack and took a third of the Swin-B forward (docs/performance.md).
        q, k, v = ops.unstack(qkv, 0)
        attn = self.q_kt(q * self.scale, k)  # (B_, heads, N, N)

        bias = ops.gather(self.relative_position_bias_table, self.relative_position_index, 0)  # (N*N, heads)
        bias = bias.reshape(N, N, self.num_heads).transpose(2, 0, 1)  # (heads, N, N)
        attn = attn + bias.reshape(1, self.num_heads, N, N)
        if mask is not None:
            num_windows = mask.shape[0]
            attn = attn.reshape(B_ // num_windows, num_windows, self.num_heads, N, N) + \
                mask.reshape(1, num_windows, 1, N, N)
            attn = attn.reshape(B_, self.num_heads, N, N)
        attn = softmax_fp32(attn)  # (B_, heads, N, N), float32 inside under AMP
        attn = self.attn_drop(attn)

        x = self.attn_v(attn, v)  # (B_, heads, N, hd)
        x = x.transpose(0, 2, 1, 3).reshape(B_, N, C)
        return self.proj_drop(self.proj(x))

    def extend_repr(self):
        return f"dim={self.dim}, window_size={self.window_size}, num_heads={self.num_heads}"


class SwinTransformerBlock(nn.Cell):
    """Pre-norm transformer block with (shifted) window attention, for maps of any static size.

    ``x = x + DropPath(Attn(pad(norm1(x))))`` then ``x = x + DropPath(FeedForward(norm2(x)))``. The map is
    zero-padded to a multiple of the window after ``norm1``, cyclically shifted by ``-shift_size`` when
    ``shift_size > 0``, attended per window (with the shifted-window mask), shifted back and cropped; the
    whole movement is one gather each way (``window_gather_indices``, computed by the stage).
    """

    def __init__(self, dim: int, num_heads: int, window_size: int = 7, shift_size: int = 0,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, drop: float = 0.0, attn_drop: float = 0.0,
                 drop_path: float = 0.0):
        super().__init__()
        if not 0 <= shift_size < window_size:
            raise ValueError(f"shift_size must be in [0, window_size), got {shift_size}")
        self.dim = dim
        self.num_heads = num_heads
        self.window_size = window_size
        self.shift_size = shift_size
        self.norm1 = LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size=window_size, num_heads=num_heads, qkv_bias=qkv_bias,
                                    attn_drop=attn_drop, proj_drop=drop)
        self.drop_path = DropPath(drop_path)
        self.norm2 = LayerNorm(dim)
        self.mlp = FeedForward(dim, int(dim * mlp_ratio), drop=drop)

    def construct(self, x, H: int, W: int, window_index, token_index, attn_mask=None):
        """x: (B, H*W, C); window_index, token_index: this block's ``window_gather_indices``;
        attn_mask: (nW, N, N) for the padded map, used only when shift_size > 0."""
        B, L, C = x.shape
        N = self.window_size * self.window_size
        shortcut = x
        x = self.norm1(x)
        if window_index.shape[0] > L:  # padded map: window positions on the padding read a zero row
            x = ops.concat((x, ops.zeros((B, 1, C), x.dtype)), axis=1)
        windows = ops.gather(x, window_index, 1).reshape(-1, N, C)  # (B*nW, N, C)
        if self.shift_size > 0:
            windows = self.attn(windows, attn_mask)
        else:
            windows = self.attn(windows)
        x = ops.gather(windows.reshape(B, -1, C), token_index, 1)  # (B, H*W, C), shifted back and cropped

        x = shortcut + self.drop_path(x)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x

    def extend_repr(self):
        return f"dim={self.dim}, num_heads={self.num_heads}, window_size={self.window_size}, " \
               f"shift_size={self.shift_size}"

    # ----- analytic cost (tools/benchmark.py; conventions in src/models/cost.py) -----
    @staticmethod
    def analytic_flops(channels: int, height: int, width: int, window_size: int, mlp_ratio: float = 4.0) -> int:
        """Forward FLOPs of one block on a `height` x `width` map of `channels`. Window attention runs on the map
        padded to a multiple of the window, so the qkv and output projections and the attention itself are
        counted on the padded tokens; the MLP on the real ones."""
        tokens = height * width
        padded = padded_size(height, width, window_size)
        hidden = int(channels * mlp_ratio)
        return (dense_flops(padded, channels, 3 * channels)                              # qkv
                + attention_flops(padded, window_size * window_size, channels)           # per window: N x N, all heads
                + dense_flops(padded, channels, channels)                                # proj
                + dense_flops(tokens, channels, hidden) + dense_flops(tokens, hidden, channels))  # MLP

    @staticmethod
    def analytic_activations(channels: int, num_heads: int, height: int, width: int, window_size: int,
                             mlp_ratio: float = 4.0) -> int:
        """fp32 elements one block keeps from its forward for the backward (src/models/cost.py's rule)."""
        tokens = height * width
        padded = padded_size(height, width, window_size)
        return (3 * tokens * channels                            # norm1 input, norm2 input, fc1 input
                + 2 * int(mlp_ratio) * tokens * channels         # GELU input, fc2 input
                + 5 * padded * channels                          # qkv input, q, k, v, proj input
                + num_heads * padded * window_size * window_size)  # softmax output


class PatchMerging(nn.Cell):
    """2x downsampling: concatenate each 2x2 neighbourhood (4C), LayerNorm, Linear 4C -> 2C (no bias).

    Channel order of the concatenation is (row 0, col 0), (row 1, col 0), (row 0, col 1), (row 1, col 1),
    the order of the official implementation (weights depend on it). Odd sizes are zero-padded first.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.norm = LayerNorm(4 * dim)
        self.reduction = trunc_normal_dense(4 * dim, 2 * dim, has_bias=False)

    def construct(self, x, H: int, W: int):
        """x: (B, H*W, C) -> (B, ceil(H/2)*ceil(W/2), 2C)."""
        B, L, C = x.shape
        x = x.reshape(B, H, W, C)
        if H % 2 == 1 or W % 2 == 1:
            x = _pad_bottom_right(x, H % 2, W % 2)
        H2, W2 = (H + 1) // 2, (W + 1) // 2
        x = x.reshape(B, H2, 2, W2, 2, C).transpose(0, 1, 3, 4, 2, 5)  # (B, H2, W2, col, row, C)
        x = x.reshape(B, H2 * W2, 4 * C)
        return self.reduction(self.norm(x))

    # ----- analytic cost (tools/benchmark.py; conventions in src/models/cost.py) -----
    @staticmethod
    def analytic_flops(dim: int, height: int, width: int) -> int:
        """Forward FLOPs of merging a `height` x `width` map of `dim` channels: 2x2 neighbours (4C) -> 2C on the
        merged grid (odd sizes rounded up, as the padding does)."""
        return dense_flops(((height + 1) // 2) * ((width + 1) // 2), 4 * dim, 2 * dim)

    @staticmethod
    def analytic_activations(dim: int, height: int, width: int) -> int:
        """Kept for the backward: the norm input and the reduction input (4C x HW/4 each)."""
        return 2 * height * width * dim


class BasicLayer(nn.Cell):
    """One Swin stage: ``depth`` blocks alternating regular / shifted windows, plus optional merging.

    ``construct`` runs the blocks only; the patch merging (``downsample``) is applied separately by
    ``SwinTransformer.downsample`` so the tokens can be modified in between.
    """

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int = 7, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, drop: float = 0.0, attn_drop: float = 0.0,
                 drop_path: Sequence[float] = (), downsample: bool = True):
        super().__init__()
        if len(drop_path) != depth:
            raise ValueError(f"need {depth} drop-path rates, got {len(drop_path)}")
        self.dim = dim
        self.depth = depth
        self.window_size = window_size
        self.shift_size = window_size // 2
        self.blocks = nn.CellList([
            SwinTransformerBlock(dim, num_heads, window_size=window_size,
                                 shift_size=0 if j % 2 == 0 else self.shift_size, mlp_ratio=mlp_ratio,
                                 qkv_bias=qkv_bias, drop=drop, attn_drop=attn_drop, drop_path=drop_path[j])
            for j in range(depth)])
        self.has_downsample = downsample
        self.downsample = PatchMerging(dim) if downsample else None

    def construct(self, x, H: int, W: int):
        """x: (B, H*W, C) -> (B, H*W, C) after all blocks of the stage."""
        ws = self.window_size
        Hp = (H + ws - 1) // ws * ws
        Wp = (W + ws - 1) // ws * ws
        plain = window_gather_indices(H, W, ws, 0)
        if self.depth > 1 and self.shift_size > 0:  # odd blocks exist and shift
            attn_mask = _shifted_window_mask(Hp, Wp, ws, self.shift_size)  # (nW, N, N)
            shifted = window_gather_indices(H, W, ws, self.shift_size)
            for block in self.blocks:
                if block.shift_size > 0:
                    x = block(x, H, W, shifted[0], shifted[1], attn_mask)
                else:
                    x = block(x, H, W, plain[0], plain[1])
        else:
            for block in self.blocks:
                x = block(x, H, W, plain[0], plain[1])
        return x
