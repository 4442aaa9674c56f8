"""Swin Transformer image encoder (segmentation-style backbone) as MindSpore Cells.

This is the hierarchical Swin Transformer (Liu et al., ICCV 2021) in the form used as a dense-prediction
backbone: four stages of window-attention blocks at strides 4, 8, 16 and 32, a LayerNorm on each stage
output (``norm0`` .. ``norm3``), no absolute position embedding (unless ``ape_grid``), and no classification
head. This module holds the encoder (its stems, the stage-by-stage API, presets and weight loading) and its
analytic cost; the blocks (window attention, the shifted-window block, patch merging, a stage of blocks) and
their window padding are src/models/swin_blocks.py's, with what differs from the classification Swin there.

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
converting official weights is a near-identity map (see ``tools/convert_swin.py``).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import mindspore as ms
from mindspore import Parameter, nn, ops
from mindspore.common.initializer import HeNormal, TruncatedNormal, initializer
from src.errors import ConfigError

from src.models.cost import conv_flops
from src.models.layers import LayerNorm
from src.models.layers.norm import group_norm
from src.models.layers.stages import StagedEncoder, map_to_tokens
from src.models.registry import IMAGE_ENCODERS
from src.models.swin_blocks import BasicLayer, PatchMerging, SwinTransformerBlock, pad_end
from src.models.weights import load_into
from src.arch.swin import SWIN_PRESETS, swin_arch

__all__ = [
    "PatchEmbed",
    "ConvStem",
    "SwinTransformer",
    "build_swin",
    "load_swin_checkpoint",
]


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
            x = pad_end(pad_end(x, 3, pad_r), 2, pad_b)  # NCHW, zeros bottom/right
        tokens, Wh, Ww = map_to_tokens(self.proj(x))  # (B, Wh*Ww, C0)
        if self.norm is not None:
            tokens = self.norm(tokens)
        return tokens, Wh, Ww

    @staticmethod
    def analytic_cost(height: int, width: int, in_chans: int = 3, embed_dim: int = 96, patch_size: int = 4
                      ) -> Tuple[int, int]:
        """(forward FLOPs, fp32 elements kept for the backward) of one image (src/models/cost.py's conventions):
        the patch projection; its input and the patch norm's input are kept."""
        h0, w0 = -(-height // patch_size), -(-width // patch_size)
        return (conv_flops(h0, w0, in_chans, embed_dim, patch_size),
                in_chans * height * width + h0 * w0 * embed_dim)


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

    @staticmethod
    def analytic_cost(height: int, width: int, in_chans: int = 3, embed_dim: int = 96, patch_size: int = 4
                      ) -> Tuple[int, int]:
        """(forward FLOPs, fp32 elements kept for the backward) of one image (src/models/cost.py's conventions):
        the stride-2 3x3 convolutions with GroupNorm + ReLU and the 1x1 projection; norms and ReLU not counted
        in the FLOPs."""
        steps = patch_size.bit_length() - 1
        flops, kept = 0, in_chans * height * width
        channels, h, w = in_chans, height, width
        for j in range(steps):
            width_j = max(embed_dim // 2 ** (steps - 1 - j), 1)
            h, w = -(-h // 2), -(-w // 2)
            flops += conv_flops(h, w, channels, width_j, 3)
            kept += 3 * h * w * width_j  # conv output (norm input), norm output (ReLU input), ReLU output
            channels = width_j
        h0, w0 = -(-height // patch_size), -(-width // patch_size)
        flops += conv_flops(h0, w0, channels, embed_dim, 1)
        kept += h0 * w0 * embed_dim  # patch norm input
        return flops, kept


STEMS = {"patch": PatchEmbed, "conv": ConvStem}


@IMAGE_ENCODERS.register("swin")  # the image encoder of the paper (model.image_encoder: swin)
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
    def from_config(cls, cfg) -> "SwinTransformer":
        """From a Config: its `model.swin` section; `model.image_size` sizes the `ape` table."""
        section = cfg.model.swin
        grid = -(-cfg.model.image_size // section.patch_size)  # patches per side (PatchEmbed pads up)
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

    # ----- analytic cost (read by tools/benchmark.py; conventions in src/models/cost.py) -----
    # `arch` is this class's constructor arguments as a dict (src.arch.swin.swin_arch(section)).
    @staticmethod
    def stage_sizes(height: int, width: int, patch_size: int = 4, num_stages: int = 4) -> List[Tuple[int, int]]:
        """Map sizes of the stages for a `height` x `width` image: the patch grid (the input padded up to the
        patch), then a 2x merge per stage with odd sizes rounded up (as the patch merging pads them)."""
        h, w = -(-height // patch_size), -(-width // patch_size)
        sizes = [(h, w)]
        for _ in range(num_stages - 1):
            h, w = -(-h // 2), -(-w // 2)
            sizes.append((h, w))
        return sizes

    @classmethod
    def analytic_flops(cls, arch: Dict, height: int, width: int, in_chans: int = 3) -> "OrderedDict[str, int]":
        """Forward FLOPs of one image per piece: 'patch_embed' (the stem), then 'stage0'..'stage3', each the
        blocks of the stage plus the merging after it."""
        embed_dim, depths = int(arch["embed_dim"]), list(arch["depths"])
        window, patch = int(arch["window_size"]), int(arch.get("patch_size", 4))
        ratio = float(arch.get("mlp_ratio", 4.0))
        sizes = cls.stage_sizes(height, width, patch, len(depths))
        stem = STEMS[arch.get("stem", "patch")]
        out = OrderedDict(patch_embed=stem.analytic_cost(height, width, in_chans, embed_dim, patch)[0])
        for i, depth in enumerate(depths):
            (h, w), channels = sizes[i], embed_dim * 2 ** i
            stage = depth * SwinTransformerBlock.analytic_flops(channels, h, w, window, ratio)
            if i < len(depths) - 1:
                stage += PatchMerging.analytic_flops(channels, h, w)
            out[f"stage{i}"] = stage
        return out

    @classmethod
    def analytic_activations(cls, arch: Dict, height: int, width: int, recompute_stages: Sequence[int] = (),
                             in_chans: int = 3) -> Tuple[int, int]:
        """(fp32 elements kept for the backward of one image, the most one block keeps). A block of a stage in
        `recompute_stages` keeps only its input; its backward rebuilds the rest, which stays the working set."""
        embed_dim, depths = int(arch["embed_dim"]), list(arch["depths"])
        window, patch = int(arch["window_size"]), int(arch.get("patch_size", 4))
        ratio = float(arch.get("mlp_ratio", 4.0))
        sizes = cls.stage_sizes(height, width, patch, len(depths))
        stem = STEMS[arch.get("stem", "patch")]
        kept = stem.analytic_cost(height, width, in_chans, embed_dim, patch)[1]
        largest, recomputed = 0, set(recompute_stages)
        for i, depth in enumerate(depths):
            (h, w), channels = sizes[i], embed_dim * 2 ** i
            per_block = SwinTransformerBlock.analytic_activations(channels, arch["num_heads"][i], h, w, window, ratio)
            largest = max(largest, per_block)
            kept += depth * (h * w * channels if i in recomputed else per_block)
            if i < len(depths) - 1:
                kept += PatchMerging.analytic_activations(channels, h, w)
            kept += h * w * channels  # the stage output norm_i's input
        return kept, largest

    # stage_output and construct: StagedEncoder's (src/models/layers/stages.py).


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
    matched relative to ``swin`` (``src.models.weights.load_into``), so a prefix such as ``backbone.`` does not
    matter. Returns ``{"loaded": [...], "missing": [...], "unexpected": [...]}``. A shape mismatch always
    raises ``ValueError``; with ``strict`` a missing or unexpected key does too.
    """
    saved = ms.load_checkpoint(ckpt_path)
    missing, unexpected = load_into(swin, saved, ckpt_path, strict=strict)
    loaded = sorted(k for k in saved if k not in set(unexpected))
    return {"loaded": loaded, "missing": missing, "unexpected": unexpected}
