"""Mask generator of CoupAlign: a Mask2Former-style masked-attention transformer decoder.

N learnable queries are refined by `dec_layers` layers that cycle over the pixel decoder's three coarse
feature maps (stride 32, 16, 8, 32, ...). Each layer is, in this order (Mask2Former, post-norm):

1. masked cross-attention: queries attend to the pixels of the layer's scale, but only to pixels inside
   the query's current mask proposal, i.e. where sigmoid(Y) >= 0.5 for the proposal logits Y predicted
   before the layer (Y bilinearly resized to that scale); a query whose mask would hide every pixel
   attends to all pixels instead;
2. self-attention among the queries;
3. a ReLU feed-forward network;

each followed by a residual connection and a LayerNorm. After the learnable queries themselves and after
every layer, a shared LayerNorm and a 3-layer MLP turn the queries into mask embeddings Q_o; the proposal
masks are Y = Q_o . P (`proposal_logits`). The decoder itself has no class head and does no matching: the
optional category head (`model.mask_generator.num_classes`, `class_embed` in coupalign.py) and the proposals'
greedy one-to-one matching to the image's objects (src/models/losses/matching.py) live outside it, and
CoupAlign's Sentence-Mask Alignment weighs the proposals by the sentence.

The attention is written out (packed Q/K/V projection, head split, boolean mask) rather than using
nn.MultiheadAttention, which breaks `auto_mixed_precision("O1")` (docs/platform.md) and would
hide the masking semantics. Its parameters keep nn.MultiheadAttention's names (`in_proj_weight`,
`in_proj_bias`, `out_proj`), and the module tree mirrors Mask2Former's
`MultiScaleMaskedTransformerDecoder` state_dict (`transformer_cross_attention_layers.{i}.multihead_attn`,
`transformer_self_attention_layers.{i}.self_attn`, `transformer_ffn_layers.{i}.linear1`, `decoder_norm`,
`mask_embed.layers.{j}`, `input_proj.{l}`). Mask2Former's nn.Embedding tables `query_feat.weight`,
`query_embed.weight` and `level_embed.weight` are plain parameters here: `query_feat`, `query_embed`,
`level_embed`. LayerNorms name their affine parameters `gamma`/`beta`.
"""
from __future__ import annotations

import mindspore as ms
from mindspore import Parameter, nn, ops
from mindspore.common.initializer import HeUniform, Normal, XavierUniform, initializer
from src.errors import ConfigError

from src.models.cost import CostGeometry, PartCost, attention_flops, dense_flops
from src.models.layers import MultiHeadAttention, ReluMLP  # noqa: F401  (ReluMLP re-exported)
from src.models.registry import TRANSFORMER_DECODERS

from .position_encoding import PositionEmbeddingSine

__all__ = [
    "proposal_logits",
    "attention_mask_from_logits",
    "MultiHeadAttention",
    "CrossAttentionLayer",
    "SelfAttentionLayer",
    "FFNLayer",
    "ReluMLP",
    "MaskedTransformerDecoder",
]


def proposal_logits(mask_embed, pixel_embed):
    """Proposal mask logits Y[b, n] = mask_embed[b, n] . pixel_embed[b] at every pixel.

    mask_embed: (B, N, D); pixel_embed (P): (B, D, h, w). Returns (B, N, h, w).
    """
    batch, channels, height, width = pixel_embed.shape
    logits = ops.bmm(mask_embed, pixel_embed.reshape(batch, channels, height * width))  # (B, N, hw)
    return logits.reshape(batch, mask_embed.shape[1], height, width)


def attention_mask_from_logits(logits, size):
    """Boolean cross-attention mask (True = the query may NOT attend to that pixel) from proposal logits.

    logits: (B, N, h, w) proposal logits at any resolution; size: static (H, W) of the attended scale.
    The logits are bilinearly resized to `size` (align_corners=False) and a pixel is masked where
    sigmoid(logit) < 0.5. A query whose row would be fully masked gets a fully unmasked row.
    No gradient flows through the mask. Returns (B, N, H*W) bool.
    """
    logits = ops.stop_gradient(logits)
    resized = ops.interpolate(logits, size=size, mode="bilinear", align_corners=False)  # (B, N, H, W)
    batch, queries, height, width = resized.shape
    masked = ops.sigmoid(resized).reshape(batch, queries, height * width) < 0.5  # (B, N, HW)
    fully_masked = ops.all(masked, axis=-1, keep_dims=True)  # (B, N, 1)
    return ops.logical_and(masked, ops.logical_not(fully_masked))


class CrossAttentionLayer(nn.Cell):
    """Masked cross-attention of queries to pixels, residual, LayerNorm (post-norm)."""

    def __init__(self, d_model: int, nhead: int):
        super().__init__()
        self.multihead_attn = MultiHeadAttention(d_model, nhead)
        self.norm = nn.LayerNorm((d_model,), epsilon=1e-5)

    def construct(self, tgt, memory, memory_mask, pos, query_pos):
        """tgt, query_pos: (B, N, D); memory, pos: (B, HW, D); memory_mask: bool (B, N, HW). Returns (B, N, D)."""
        attended = self.multihead_attn(tgt + query_pos, memory + pos, memory, memory_mask)
        return self.norm(tgt + attended)


class SelfAttentionLayer(nn.Cell):
    """Self-attention among queries (position added to q and k, not v), residual, LayerNorm."""

    def __init__(self, d_model: int, nhead: int):
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, nhead)
        self.norm = nn.LayerNorm((d_model,), epsilon=1e-5)

    def construct(self, tgt, query_pos):
        """tgt, query_pos: (B, N, D). Returns (B, N, D)."""
        q = tgt + query_pos
        return self.norm(tgt + self.self_attn(q, q, tgt))


class FFNLayer(nn.Cell):
    """linear1 -> ReLU -> linear2, residual, LayerNorm."""

    def __init__(self, d_model: int, dim_feedforward: int):
        super().__init__()
        self.linear1 = nn.Dense(d_model, dim_feedforward, weight_init=XavierUniform())
        self.linear2 = nn.Dense(dim_feedforward, d_model, weight_init=XavierUniform())
        self.norm = nn.LayerNorm((d_model,), epsilon=1e-5)

    def construct(self, tgt):
        return self.norm(tgt + self.linear2(ops.relu(self.linear1(tgt))))


@TRANSFORMER_DECODERS.register("masked_attention")
class MaskedTransformerDecoder(nn.Cell):
    """Mask2Former's multi-scale masked-attention decoder, returning mask embeddings only.

    Args:
        in_channels: channels of the multi-scale features (a 1x1 conv projects them when != hidden_dim).
        hidden_dim: query width D.
        num_queries: number of proposals N.
        nheads: attention heads.
        dim_feedforward: FFN width.
        dec_layers: number of decoder layers L; layer i attends to scale i % num_feature_levels.
        mask_dim: width of the mask embeddings (must equal P's channels).
        num_feature_levels: number of memory scales (3).

    construct(multi_scale_features, pixel_embed):
        multi_scale_features: tuple of num_feature_levels maps (B, in_channels, H_l, W_l), coarse to fine.
        pixel_embed: P, (B, mask_dim, H, W).
        Returns the mask embeddings (L + 1, B, N, mask_dim): index 0 from the learnable queries before the
        first layer, index i after layer i; the last entry is the final prediction.
    """

    def __init__(self, in_channels: int = 256, hidden_dim: int = 256, num_queries: int = 100, nheads: int = 8,
                 dim_feedforward: int = 2048, dec_layers: int = 9, mask_dim: int = 256,
                 num_feature_levels: int = 3):
        super().__init__()
        if hidden_dim % 2 != 0:
            raise ConfigError(f"hidden_dim must be even for the sine position encoding, got {hidden_dim} (config: model.mask_generator.conv_dim)")
        self.hidden_dim = hidden_dim
        self.num_queries = num_queries
        self.num_heads = nheads
        self.num_layers = dec_layers
        self.num_feature_levels = num_feature_levels
        self.pe_layer = PositionEmbeddingSine(hidden_dim // 2, normalize=True)

        self.transformer_self_attention_layers = nn.CellList(
            [SelfAttentionLayer(hidden_dim, nheads) for _ in range(dec_layers)])
        self.transformer_cross_attention_layers = nn.CellList(
            [CrossAttentionLayer(hidden_dim, nheads) for _ in range(dec_layers)])
        self.transformer_ffn_layers = nn.CellList(
            [FFNLayer(hidden_dim, dim_feedforward) for _ in range(dec_layers)])
        self.decoder_norm = nn.LayerNorm((hidden_dim,), epsilon=1e-5)

        self.query_feat = Parameter(initializer(Normal(sigma=1.0), (num_queries, hidden_dim), ms.float32),
                                    name="query_feat")
        self.query_embed = Parameter(initializer(Normal(sigma=1.0), (num_queries, hidden_dim), ms.float32),
                                     name="query_embed")
        self.level_embed = Parameter(initializer(Normal(sigma=1.0), (num_feature_levels, hidden_dim), ms.float32),
                                     name="level_embed")
        projections = []
        for _ in range(num_feature_levels):
            if in_channels != hidden_dim:
                # detectron2's c2_xavier_fill: kaiming_uniform(a=1), zero bias.
                projections.append(nn.Conv2d(in_channels, hidden_dim, 1, pad_mode="pad", padding=0, has_bias=True,
                                             weight_init=HeUniform(negative_slope=1.0), bias_init="zeros"))
            else:
                projections.append(nn.Identity())
        self.input_proj = nn.CellList(projections)
        self.mask_embed = ReluMLP(hidden_dim, hidden_dim, mask_dim, 3)

    def _prediction_heads(self, queries, pixel_embed):
        """queries (B, N, D) -> mask embeddings (B, N, mask_dim) and proposal logits (B, N, H, W)."""
        mask_embed = self.mask_embed(self.decoder_norm(queries))
        return mask_embed, proposal_logits(mask_embed, pixel_embed)

    @classmethod
    def from_config(cls, cfg) -> "MaskedTransformerDecoder":
        """From a Config: `model.mask_generator`; queries of width conv_dim read the pixel decoder's conv_dim maps."""
        section = cfg.model.mask_generator
        return cls(in_channels=section.conv_dim, hidden_dim=section.conv_dim, num_queries=section.num_queries,
                   nheads=section.decoder_heads, dim_feedforward=section.decoder_ffn_dim,
                   dec_layers=section.decoder_layers, mask_dim=section.mask_dim)

    @staticmethod
    def analytic_cost(model_cfg, geometry: CostGeometry) -> PartCost:
        """Prediction heads after the queries and after every layer (a 3-layer MLP and the proposal masks
        Q . P at stride 4), masked cross-attention to the coarse maps in turn (stride 32, 16, 8, ...),
        self-attention, FFN. Input projections are identities (conv_dim = hidden). See src/models/cost.py."""
        mg = model_cfg.mask_generator
        dim, queries = mg.conv_dim, mg.num_queries
        sizes = geometry.sizes
        memory_sizes = [sizes[3], sizes[2], sizes[1]]  # coarse to fine
        stride4_pixels = sizes[0][0] * sizes[0][1]
        head = (2 * dense_flops(queries, dim, dim) + dense_flops(queries, dim, mg.mask_dim)
                + 2 * queries * mg.mask_dim * stride4_pixels)
        flops = head
        kept = sum(h * w * dim for h, w in memory_sizes) + stride4_pixels * mg.mask_dim  # memories, P (shared)
        for index in range(mg.decoder_layers):
            h, w = memory_sizes[index % 3]
            pixels = h * w
            cross = (2 * dense_flops(queries, dim, dim)          # q, out_proj
                     + 2 * dense_flops(pixels, dim, dim)         # k, v of the pixels
                     + attention_flops(queries, pixels, dim))
            self_attn = 4 * dense_flops(queries, dim, dim) + attention_flops(queries, queries, dim)
            ffn = dense_flops(queries, dim, mg.decoder_ffn_dim) + dense_flops(queries, mg.decoder_ffn_dim, dim)
            flops += cross + self_attn + ffn + head
            kept += (3 * pixels * dim                            # memory + pos (key input), projected k and v
                     + mg.decoder_heads * queries * pixels       # masked softmax output
                     + 20 * queries * dim + 2 * queries * mg.decoder_ffn_dim)
        kept += (mg.decoder_layers + 1) * 4 * queries * dim      # prediction-head MLP inputs
        attn = 3 * dim * dim + 3 * dim + dim * dim + dim
        params = mg.decoder_layers * (2 * (attn + 2 * dim) + dim * mg.decoder_ffn_dim + mg.decoder_ffn_dim
                                      + mg.decoder_ffn_dim * dim + dim + 2 * dim)
        params += 2 * dim + 2 * queries * dim + 3 * dim          # decoder_norm, query_feat/embed, level_embed
        params += 2 * (dim * dim + dim) + dim * mg.mask_dim + mg.mask_dim  # mask_embed MLP
        return PartCost(flops, kept, 0, params)

    def construct(self, multi_scale_features, pixel_embed):
        if len(multi_scale_features) != self.num_feature_levels:
            raise ValueError("MaskedTransformerDecoder: wrong number of feature levels")
        batch = pixel_embed.shape[0]
        dim = self.hidden_dim
        memories = []
        positions = []
        sizes = []
        for level in range(self.num_feature_levels):
            feature = multi_scale_features[level]  # (B, C_in, H_l, W_l)
            height, width = feature.shape[2], feature.shape[3]
            sizes.append((height, width))
            pos = self.pe_layer(feature).reshape(batch, dim, height * width).transpose(0, 2, 1)  # (B, HW, D)
            memory = self.input_proj[level](feature).reshape(batch, dim, height * width).transpose(0, 2, 1)
            positions.append(pos)
            memories.append(memory + self.level_embed[level].reshape(1, 1, dim))  # (B, HW, D)

        query_pos = ops.broadcast_to(self.query_embed.reshape(1, self.num_queries, dim),
                                     (batch, self.num_queries, dim))  # (B, N, D)
        output = ops.broadcast_to(self.query_feat.reshape(1, self.num_queries, dim),
                                  (batch, self.num_queries, dim))  # (B, N, D)

        mask_embed, logits = self._prediction_heads(output, pixel_embed)
        embeddings = [mask_embed]
        attn_mask = attention_mask_from_logits(logits, sizes[0])  # (B, N, H_0 W_0)
        for index in range(self.num_layers):
            level = index % self.num_feature_levels
            output = self.transformer_cross_attention_layers[index](
                output, memories[level], attn_mask, positions[level], query_pos)
            output = self.transformer_self_attention_layers[index](output, query_pos)
            output = self.transformer_ffn_layers[index](output)
            mask_embed, logits = self._prediction_heads(output, pixel_embed)
            embeddings.append(mask_embed)
            if index < self.num_layers - 1:  # the mask after the last layer would never be used
                attn_mask = attention_mask_from_logits(logits, sizes[(index + 1) % self.num_feature_levels])
        return ops.stack(embeddings, axis=0)  # (L + 1, B, N, mask_dim)
