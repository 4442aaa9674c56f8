"""Swin Transformer image encoder (segmentation-style backbone) as MindSpore Cells.

This is the hierarchical Swin Transformer (Liu et al., ICCV 2021) in the form used as a dense-prediction
backbone: four stages of window-attention blocks at strides 4, 8, 16 and 32, a LayerNorm on each stage
output (``norm0`` .. ``norm3``), no absolute position embedding, and no classification head.

Behaviour that differs from the ImageNet classification Swin and matters for numbers:

* A feature map whose height or width is not a multiple of the window is zero-padded (bottom/right, after
  ``norm1``) up to the next multiple inside every block, attention runs over the padded windows, and the
  padding is cropped afterwards. The window is never shrunk to the feature size and the shift
  (``window_size // 2``) is always applied in odd blocks; the shifted-window attention mask is built for
  the padded size (pad first, then roll).
* Patch merging zero-pads an odd height/width by one row/column before merging 2x2 neighbours.

The model can be driven stage by stage so that a fusion module can rewrite the tokens after the blocks of
a stage and before its patch merging (the CoupAlign early-fusion point)::

    tokens, H, W = swin.embed(image)                    # (B, H*W, C0)
    for i in range(swin.num_layers):                     # unrolled in graph mode, i is a Python int
        tokens = swin.run_stage(i, tokens, H, W)         # (B, H*W, C_i)
        tokens = fuse_i(tokens, ...)                     # user code
        feature_i = swin.stage_output(i, tokens, H, W)   # (B, C_i, H, W), after norm_i
        tokens, H, W = swin.downsample(i, tokens, H, W)  # merging after stage i (identity for the last)

``SwinTransformer.construct`` is exactly this loop without fusion, so there is one code path; it and
``stage_output`` are shared by every image encoder (``StagedEncoder``, src/models/layers/stages.py).

Parameter names follow the official Swin checkpoints (``patch_embed.proj.weight``,
``layers.0.blocks.0.attn.qkv.weight``, ``layers.0.downsample.reduction.weight``, ``norm0.weight``, ...), so
converting official weights is a near-identity map (see ``tools/convert_swin.py``). The relative position
index and the attention masks are constant tensors, not Parameters, and never appear in checkpoints.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
import mindspore as ms
from mindspore import Parameter, nn, ops
from mindspore.common.initializer import HeNormal, TruncatedNormal, initializer
from src.errors import ConfigError

from src.models.layers import DropPath, FeedForward, LayerNorm, softmax_fp32, trunc_normal_dense
from src.models.layers.norm import group_norm
from src.models.layers.stages import StagedEncoder, map_to_tokens
from src.models.registry import IMAGE_ENCODERS
from src.arch.swin import SWIN_PRESETS, swin_arch

__all__ = [
    "SWIN_PRESETS",
    "LayerNorm",
    "DropPath",
    "FeedForward",
    "WindowAttention",
    "SwinTransformerBlock",
    "PatchMerging",
    "PatchEmbed",
    "BasicLayer",
    "SwinTransformer",
    "build_swin",
    "load_swin_checkpoint",
    "relative_position_index",
    "window_gather_indices",
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


def _pad_end(x, axis: int, amount: int):
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
    return _pad_end(_pad_end(x, 2, pad_r), 1, pad_b)


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


class PatchEmbed(nn.Cell):
    """Non-overlapping patch projection: Conv(k=p, s=p) then optional LayerNorm over channels.

    Inputs whose size is not a multiple of the patch are zero-padded bottom/right.
    """

    def __init__(self, patch_size: int = 4, in_chans: int = 3, embed_dim: int = 96, patch_norm: bool = True):
        super().__init__()
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size,
                              pad_mode="valid", has_bias=True)
        self.norm = LayerNorm(embed_dim) if patch_norm else None

    def construct(self, x):
        """x: (B, C_in, H, W) -> tokens (B, Wh*Ww, embed_dim), Wh, Ww."""
        H, W = x.shape[2], x.shape[3]
        p = self.patch_size
        pad_b = (p - H % p) % p
        pad_r = (p - W % p) % p
        if pad_b > 0 or pad_r > 0:
            x = _pad_end(_pad_end(x, 3, pad_r), 2, pad_b)  # NCHW, zeros bottom/right
        tokens, Wh, Ww = map_to_tokens(self.proj(x))  # (B, Wh*Ww, C0)
        if self.norm is not None:
            tokens = self.norm(tokens)
        return tokens, Wh, Ww


class ConvStem(nn.Cell):
    """Overlapping convolutional stem with the stride of a patch embedding (Xiao et al., "Early Convolutions Help
    Transformers See Better", NeurIPS 2021): log2(patch_size) 3x3 stride-2 convolutions, each followed by a
    GroupNorm and a ReLU (channels embed_dim / 2^(k-1-j) for conv j of k), then a 1x1 projection to embed_dim
    and the optional LayerNorm. Same interface and output grid as PatchEmbed (ceil(H / patch) tokens per
    side), other parameter names (`patch_embed.convs.*`, `patch_embed.proj.*` is 1x1): a released Swin
    checkpoint does not load into it. For Swins trained from scratch (the CPU quickstart): a 4x4 patch
    projection sees each 4x4 cell alone, and measured on the quickstart the stage features then did not
    tell the shape categories apart (research/NOTEBOOK.md, "Training health").
    """

    def __init__(self, patch_size: int = 4, in_chans: int = 3, embed_dim: int = 96, patch_norm: bool = True):
        super().__init__()
        steps = int(round(np.log2(patch_size)))
        if patch_size < 2 or 2 ** steps != patch_size:
            raise ValueError(f"a convolutional stem needs a power-of-two patch size >= 2, got {patch_size}")
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        widths = [max(embed_dim // 2 ** (steps - 1 - j), 1) for j in range(steps)]
        convs, norms = [], []
        channels = in_chans
        for width in widths:
            convs.append(nn.Conv2d(channels, width, 3, stride=2, pad_mode="pad", padding=1, has_bias=False,
                                   weight_init=HeNormal(mode="fan_out", nonlinearity="relu")))
            norms.append(group_norm(width, max_groups=8))
            channels = width
        self.convs = nn.CellList(convs)
        self.norms = nn.CellList(norms)
        self.proj = nn.Conv2d(channels, embed_dim, 1, has_bias=True, pad_mode="valid")
        self.norm = LayerNorm(embed_dim) if patch_norm else None

    def construct(self, x):
        """x: (B, C_in, H, W) -> tokens (B, Wh*Ww, embed_dim), Wh = ceil(H / patch), Ww = ceil(W / patch)."""
        for conv, norm in zip(self.convs, self.norms):
            x = ops.relu(norm(conv(x)))  # (B, width_j, ceil(H / 2^(j+1)), ceil(W / 2^(j+1)))
        tokens, Wh, Ww = map_to_tokens(self.proj(x))  # (B, Wh*Ww, C0)
        if self.norm is not None:
            tokens = self.norm(tokens)
        return tokens, Wh, Ww


STEMS = {"patch": PatchEmbed, "conv": ConvStem}


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


class SwinTransformer(StagedEncoder):
    """Swin Transformer backbone returning the four normalised stage maps (strides 4, 8, 16, 32).

    Args:
        embed_dim: channels of stage 0; stage i has ``embed_dim * 2**i``.
        depths: blocks per stage.
        num_heads: attention heads per stage.
        window_size: attention window (square); maps are padded up to a multiple of it.
        patch_size, in_chans: patch embedding.
        mlp_ratio: hidden size of the MLP relative to the stage width.
        qkv_bias: learn a bias in the qkv projection.
        drop_rate: dropout after patch embedding and in MLP/attention projections.
        attn_drop_rate: dropout on attention weights.
        drop_path_rate: stochastic depth of the last block; rates grow linearly from 0 over all blocks.
        patch_norm: LayerNorm after the patch projection.
        stem: "patch" (Swin's non-overlapping patch projection) or "conv" (ConvStem, same output grid).

    ``construct(x: (B, in_chans, H, W)) -> tuple`` of 4 NCHW maps ``(B, num_features[i], H/4/2^i, W/4/2^i)``
    (sizes rounded up). See the module docstring for the stage-by-stage API.
    """

    def __init__(self, embed_dim: int = 128, depths: Sequence[int] = (2, 2, 18, 2),
                 num_heads: Sequence[int] = (4, 8, 16, 32), window_size: int = 12, patch_size: int = 4,
                 in_chans: int = 3, mlp_ratio: float = 4.0, qkv_bias: bool = True, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.3, patch_norm: bool = True,
                 ape_grid: Optional[Tuple[int, int]] = None, stem: str = "patch", recompute_stages: Sequence[int] = ()):
        super().__init__()
        depths = tuple(int(d) for d in depths)
        num_heads = tuple(int(h) for h in num_heads)
        if len(depths) != len(num_heads):
            raise ValueError(f"depths {depths} and num_heads {num_heads} differ in length")
        self.num_layers = len(depths)
        self.embed_dim = embed_dim
        self.depths = depths
        self.num_heads = num_heads
        self.window_size = window_size
        self.patch_size = patch_size
        self.num_features = [int(embed_dim * 2 ** i) for i in range(self.num_layers)]

        if stem not in STEMS:
            raise ValueError(f"unknown Swin stem {stem!r}; expected one of {sorted(STEMS)}")
        self.stem = stem
        self.patch_embed = STEMS[stem](patch_size, in_chans, embed_dim, patch_norm)
        # Swin's `ape` option: a learned absolute position embedding added to the patch tokens, one per cell of
        # the (static) ape_grid = (H/patch, W/patch). Off in the released Swin-B; without it no layer knows
        # where in the image a token lies (relative bias within windows only).
        self.ape_grid = None if ape_grid is None else (int(ape_grid[0]), int(ape_grid[1]))
        self.absolute_pos_embed = None
        if self.ape_grid is not None:
            self.absolute_pos_embed = Parameter(initializer(TruncatedNormal(sigma=0.02),
                                                            (1, self.ape_grid[0] * self.ape_grid[1], embed_dim),
                                                            ms.float32), name="absolute_pos_embed")
        self.pos_drop = nn.Dropout(p=drop_rate)

        # Stochastic depth rate grows linearly over all blocks of all stages.
        total = sum(depths)
        dpr = [float(r) for r in np.linspace(0.0, drop_path_rate, total)] if total else []
        self.drop_path_rates = dpr
        layers = []
        for i in range(self.num_layers):
            start = sum(depths[:i])
            layers.append(BasicLayer(
                dim=self.num_features[i], depth=depths[i], num_heads=num_heads[i], window_size=window_size,
                mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop=drop_rate, attn_drop=attn_drop_rate,
                drop_path=dpr[start:start + depths[i]], downsample=i < self.num_layers - 1))
        self.layers = nn.CellList(layers)
        # Activation recompute per block (what the reference Swin's use_checkpoint does): a block keeps only its
        # input for the backward, which recomputes the rest. Per block, not per stage, so that the recomputed span
        # stays one block's worth of memory.
        self.recompute_stages = tuple(int(i) for i in recompute_stages)
        for i in self.recompute_stages:
            for block in self.layers[i].blocks:
                block.recompute()
        # One output norm per stage, named norm0..norm{n-1} as in the segmentation Swin checkpoints.
        for i in range(self.num_layers):
            setattr(self, f"norm{i}", LayerNorm(self.num_features[i]))

    @classmethod
    def from_config(cls, section, image_size: int) -> "SwinTransformer":
        """From a `model.swin` section (src.config.SwinSection); `image_size` sizes the `ape` table."""
        grid = -(-image_size // section.patch_size)  # patches per side (PatchEmbed pads up)
        return cls(**swin_arch(section), ape_grid=(grid, grid) if section.ape else None,
                   recompute_stages=section.recompute_stages)

    # ----- stage-by-stage API (usable from another Cell's graph-mode construct) -----
    def embed(self, x):
        """Image (B, in_chans, H, W) -> (tokens (B, Wh*Ww, C0), Wh, Ww) with Wh, Ww Python ints."""
        tokens, H, W = self.patch_embed(x)
        if self.absolute_pos_embed is not None:
            if (H, W) != self.ape_grid:
                raise ValueError(f"absolute position embedding for a {self.ape_grid} patch grid, got ({H}, {W})")
            tokens = tokens + self.absolute_pos_embed  # (B, H*W, C0)
        return self.pos_drop(tokens), H, W

    def run_stage(self, i: int, tokens, H: int, W: int):
        """Blocks of stage ``i`` (a Python int): (B, H*W, C_i) -> (B, H*W, C_i); no patch merging."""
        return self.layers[i](tokens, H, W)

    def downsample(self, i: int, tokens, H: int, W: int):
        """Patch merging after stage ``i``: -> (tokens (B, H2*W2, C_{i+1}), H2, W2); identity for the last."""
        layer = self.layers[i]
        if not layer.has_downsample:
            return tokens, H, W
        return layer.downsample(tokens, H, W), (H + 1) // 2, (W + 1) // 2

    # stage_output and construct: StagedEncoder's (src/models/layers/stages.py).


@IMAGE_ENCODERS.register("swin")
def swin_encoder(model_cfg) -> SwinTransformer:
    """The image encoder of the paper: `model.swin` at `model.image_size` (registered as model.image_encoder: swin)."""
    return SwinTransformer.from_config(model_cfg.swin, model_cfg.image_size)


def build_swin(preset: Optional[str] = None, **overrides) -> SwinTransformer:
    """Build a ``SwinTransformer`` from a named preset (tiny/small/base/large) plus keyword overrides.

    With ``preset=None`` the constructor defaults (Swin-B, window 12) apply.
    """
    kwargs = {}
    if preset is not None:
        if preset not in SWIN_PRESETS:
            raise ConfigError(f"unknown Swin preset {preset!r}; choose from {sorted(SWIN_PRESETS)}")
        kwargs.update(SWIN_PRESETS[preset])
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    return SwinTransformer(**kwargs)


def load_swin_checkpoint(swin: SwinTransformer, ckpt_path: str, strict: bool = True) -> dict:
    """Load a checkpoint written by ``tools/convert_swin.py`` into ``swin``, wherever it sits in a model.

    Names in the file are relative to ``SwinTransformer`` (``layers.0.blocks.0.attn.qkv.weight``) and are
    matched relative to ``swin`` (``src.models.load_into``), so a prefix such as ``backbone.`` does not
    matter. Returns ``{"loaded": [...], "missing": [...], "unexpected": [...]}``. A shape mismatch always
    raises ``ValueError``; with ``strict`` a missing or unexpected key does too.
    """
    from src.models import load_into  # the package imports this module

    saved = ms.load_checkpoint(ckpt_path)
    missing, unexpected = load_into(swin, saved, ckpt_path, strict=strict)
    loaded = sorted(k for k in saved if k not in set(unexpected))
    return {"loaded": loaded, "missing": missing, "unexpected": unexpected}
