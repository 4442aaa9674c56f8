"""Sentence-Mask Alignment (SMA): weight the mask proposals by the sentence and project them to pixels.

docs/method.md, "SMA"::

    g = Linear(L_g)                              # sentence feature -> mask-embedding width D
    w = softmax_n(Q g / sqrt(D))
    M = sum_n w_n (Q_n . P)                      # target logits at stride 4

``M`` is computed as ``a . P`` with the *target embedding* ``a = sum_n w_n Q_n``: the same number by
linearity, but without materialising the ``N`` proposal masks. ``a`` is also the anchor of the
auxiliary foreground/background contrast in the criterion.

Shapes: ``B`` batch, ``N`` proposals, ``D`` mask-embedding width, ``h x w`` the stride-4 grid,
``T`` tokens, ``D_text`` width of the word features.
"""
import math

import mindspore as ms
from mindspore import nn, ops

from .layers import softmax_fp32
from .registry import SMA_HEADS
from .transformer_decoder import CrossAttentionLayer, FFNLayer, SelfAttentionLayer

__all__ = ["ProposalReasoning", "SentenceMaskAlignment", "SentencePixelHead", "mask_geometry", "pool_sentence"]


def pool_sentence(lang, attention_mask, mode="cls"):
    """Sentence feature ``L_g`` from word features (config ``sma.sentence_pool``).

    Args:
        lang: ``(B, T, D_text)`` word features (the final encoder output).
        attention_mask: ``(B, T)`` 1 for real tokens, 0 for padding.
        mode: ``"cls"`` takes token 0 ([CLS]); ``"mean"`` averages the real tokens only.

    Returns:
        ``(B, D_text)``.
    """
    if mode == "cls":
        return lang[:, 0]
    if mode == "mean":
        weights = attention_mask.astype(lang.dtype).expand_dims(-1)  # (B, T, 1)
        total = (lang * weights).sum(axis=1)  # (B, D_text)
        count = ops.maximum(weights.sum(axis=1), 1.0)  # (B, 1); an all-padding row gives zeros
        return total / count
    raise ValueError(f"unknown sentence pooling {mode!r}; expected 'cls' or 'mean'")


def _project_to_pixels(embed, pixel_embed):
    """``embed . P`` per pixel: ``(B, D)`` x ``(B, D, h, w)`` -> ``(B, 1, h, w)``."""
    batch, dim, height, width = pixel_embed.shape
    pixels = pixel_embed.reshape(batch, dim, height * width)  # (B, D, hw)
    logits = ops.bmm(embed.expand_dims(1), pixels)  # (B, 1, hw)
    return logits.reshape(batch, 1, height, width)


def mask_geometry(mask_embed, pixel_embed):
    """Where each proposal lies and how large it is: ``(B, N, 3)`` = centroid x, centroid y (in [0, 1], pixel
    centres) and area (share of the image) of the soft mask ``sigmoid(Q_n . P)``. A read-out: no gradient."""
    batch, dim, height, width = pixel_embed.shape
    logits = ops.bmm(mask_embed, pixel_embed.reshape(batch, dim, height * width))  # (B, N, hw)
    soft = ops.stop_gradient(ops.sigmoid(logits))  # (B, N, hw)
    xs = ((ops.arange(width, dtype=ms.float32) + 0.5) / width).reshape(1, width)
    ys = ((ops.arange(height, dtype=ms.float32) + 0.5) / height).reshape(height, 1)
    grid_x = ops.broadcast_to(xs, (height, width)).reshape(height * width, 1)  # (hw, 1)
    grid_y = ops.broadcast_to(ys, (height, width)).reshape(height * width, 1)
    mass = soft.sum(axis=2, keepdims=True)  # (B, N, 1)
    centre_x = ops.matmul(soft, grid_x) / ops.maximum(mass, 1e-6)  # (B, N, 1)
    centre_y = ops.matmul(soft, grid_y) / ops.maximum(mass, 1e-6)
    area = mass / (height * width)
    return ops.concat((centre_x, centre_y, area), axis=2)  # (B, N, 3)


class ProposalReasoning(nn.Cell):
    """Reads the sentence word by word before the proposals are scored (config ``sma.reasoning_layers``).

    Each layer: the proposals attend to the words (cross-attention, padding masked), then to each other
    (self-attention), then an FFN, each with a residual and a LayerNorm (the layers of the mask generator,
    with words instead of pixels as memory). The self-attention lets a proposal's score depend on the others
    the sentence names ("the star left of the blue square": is there a blue square to my right?), which a
    dot product of one pooled sentence vector with one proposal cannot express. The output only scores the
    proposals; the masks still come from the unchanged mask embeddings.

    Inputs: keys ``(B, N, D)``, words ``(B, T, D_text)``, attention_mask ``(B, T)`` 1 = real token. Output ``(B, N, D)``.
    """

    def __init__(self, text_dim, dim, num_layers, num_heads=4, ffn_dim=None):
        super().__init__()
        self.word_proj = nn.Dense(text_dim, dim)
        self.cross = nn.CellList([CrossAttentionLayer(dim, num_heads) for _ in range(num_layers)])
        self.self_attn = nn.CellList([SelfAttentionLayer(dim, num_heads) for _ in range(num_layers)])
        self.ffn = nn.CellList([FFNLayer(dim, ffn_dim or 2 * dim) for _ in range(num_layers)])

    def construct(self, keys, words, attention_mask):
        memory = self.word_proj(words)  # (B, T, D)
        batch, num, _ = keys.shape
        padding = ops.broadcast_to((attention_mask < 1).expand_dims(1), (batch, num, attention_mask.shape[1]))  # (B, N, T)
        no_pos_words = ops.zeros_like(memory)
        no_pos_keys = ops.zeros_like(keys)
        for i in range(len(self.cross)):
            keys = self.cross[i](keys, memory, padding, no_pos_words, no_pos_keys)
            keys = self.self_attn[i](keys, no_pos_keys)
            keys = self.ffn[i](keys)
        return keys


@SMA_HEADS.register("mixture")
class SentenceMaskAlignment(nn.Cell):
    """Weights the ``N`` mask proposals by their agreement with the sentence.

    Args:
        text_dim: width of the sentence feature ``L_g``.
        mask_dim: width ``D`` of mask embeddings ``Q`` and pixel embeddings ``P``.
        geometry: add ``Linear(mask_geometry(Q, P))`` to each ``Q_n`` in the scores (not in ``a``): the
            sentence can then prefer the leftmost, topmost or largest proposal (config ``sma.mask_geometry``).
        reasoning_layers: > 0 passes the score keys through `ProposalReasoning` with the words first
            (config ``sma.reasoning_layers``); needs ``words`` and ``attention_mask`` in the call.

    Inputs:
        mask_embed ``Q (B, N, D)``, pixel_embed ``P (B, D, h, w)``, sentence ``L_g (B, D_text)``.

    Returns:
        ``(logits M (B, 1, h, w), weights w (B, N), target_embed a (B, D))``.
    """

    def __init__(self, text_dim, mask_dim, geometry=False, reasoning_layers=0, reasoning_heads=4):
        super().__init__()
        self.geometry_proj = nn.Dense(3, mask_dim) if geometry else None
        self.reasoning = (ProposalReasoning(text_dim, mask_dim, reasoning_layers, reasoning_heads)
                          if reasoning_layers else None)
        self.scale = 1.0 / math.sqrt(mask_dim)
        self.sentence_proj = nn.Dense(text_dim, mask_dim)

    @classmethod
    def from_config(cls, cfg, text_dim: int) -> "SentenceMaskAlignment":
        """From a Config: `model.sma`, with the mask generator's width and heads; `text_dim` of the text encoder."""
        sma, mg = cfg.model.sma, cfg.model.mask_generator
        return cls(text_dim, mg.mask_dim, geometry=sma.mask_geometry, reasoning_layers=sma.reasoning_layers,
                   reasoning_heads=mg.decoder_heads)

    def sentence_scores(self, mask_embed, pixel_embed, sentence, words=None, attention_mask=None):
        """The sentence's agreement with each proposal, ``Q_n . g / sqrt(D)`` ``(B, N)`` (with the geometry and
        reasoning keys where configured). ``words (B, T, D_text)`` and ``attention_mask (B, T)`` are used by the
        reasoning layers only."""
        # mask_embed: (B, N, D); pixel_embed: (B, D, h, w); sentence: (B, D_text)
        query = self.sentence_proj(sentence)  # (B, D), g
        keys = mask_embed
        if self.geometry_proj is not None:
            keys = mask_embed + self.geometry_proj(mask_geometry(mask_embed, pixel_embed))  # (B, N, D)
        if self.reasoning is not None:
            keys = self.reasoning(keys, words, attention_mask)  # (B, N, D)
        return ops.bmm(keys, query.expand_dims(-1)).squeeze(-1) * self.scale  # (B, N)

    def forward_with_scores(self, mask_embed, pixel_embed, sentence, words=None, attention_mask=None, class_logits=None):
        """``construct``'s outputs plus the pre-normalisation scores ``(B, N)`` (`sentence_scores`), which the
        proposal losses of the criterion supervise directly (a cross-entropy toward the matched proposal).
        ``class_logits`` is read by the coupled head only (its objectness); accepted here for one interface."""
        scores = self.sentence_scores(mask_embed, pixel_embed, sentence, words, attention_mask)  # (B, N)
        weights = softmax_fp32(scores)  # (B, N), float32 inside under AMP
        target_embed = ops.bmm(weights.expand_dims(1), mask_embed).squeeze(1)  # (B, D), a
        logits = _project_to_pixels(target_embed, pixel_embed)  # (B, 1, h, w), M
        return logits, weights, target_embed, scores

    def forward_train(self, mask_embeds, pixel_embed, sentence, words=None, attention_mask=None, class_logits=None):
        """Every supervised stage (the registry's interface): the mix of each stage's proposals is both the
        referring output and SMA's own map -> (logits (S, B, 1, h, w), a of the final stage (B, D), scores
        (S, B, N), the same logits)."""
        stage_logits = ()
        stage_scores = ()
        target_embed = None
        for s in range(mask_embeds.shape[0]):
            logits, _, target_embed, scores = self.forward_with_scores(mask_embeds[s], pixel_embed, sentence, words,
                                                                       attention_mask)
            stage_logits = stage_logits + (logits,)
            stage_scores = stage_scores + (scores,)
        stage_logits = ops.stack(stage_logits)  # (S, B, 1, h, w)
        return stage_logits, target_embed, ops.stack(stage_scores), stage_logits

    def construct(self, mask_embed, pixel_embed, sentence, words=None, attention_mask=None, class_logits=None):
        """Inference (`CoupAlign.predict`): the weighted mix."""
        logits, weights, target_embed, _ = self.forward_with_scores(mask_embed, pixel_embed, sentence, words,
                                                                    attention_mask)
        return logits, weights, target_embed


class SentencePixelHead(nn.Cell):
    """The "no SMA" ablation: the projected sentence itself is the target embedding, ``M = Linear(L_g) . P``.

    Returns the same tuple as :class:`SentenceMaskAlignment` so callers need no branch; the weights
    slot is a ``(B, 1)`` tensor of zeros (there are no proposals to weight) and must not be used.
    """

    def __init__(self, text_dim, mask_dim):
        super().__init__()
        self.sentence_proj = nn.Dense(text_dim, mask_dim)

    @classmethod
    def from_config(cls, cfg, text_dim: int) -> "SentencePixelHead":
        return cls(text_dim, cfg.model.mask_generator.mask_dim)

    def forward_with_scores(self, mask_embed, pixel_embed, sentence, words=None, attention_mask=None, class_logits=None):
        """The same interface as SMA's; the one "proposal" is the target embedding, its score 0."""
        # mask_embed, words and attention_mask are accepted for interface parity and ignored.
        target_embed = self.sentence_proj(sentence)  # (B, D)
        logits = _project_to_pixels(target_embed, pixel_embed)  # (B, 1, h, w)
        weights = ops.zeros((sentence.shape[0], 1), ms.float32)  # placeholder
        return logits, weights, target_embed, weights

    def construct(self, mask_embed, pixel_embed, sentence, words=None, attention_mask=None, class_logits=None):
        logits, weights, target_embed, _ = self.forward_with_scores(mask_embed, pixel_embed, sentence)
        return logits, weights, target_embed


# ----- analytic cost (read by tools/benchmark.py; conventions in src/models/cost.py) -----
def sma_flops(text_dim: int, mask_dim: int, queries: int, stride4_pixels: int, enabled: bool = True) -> int:
    """Forward FLOPs of one supervised stage of `SentenceMaskAlignment` or, with `enabled=False`, of the no-SMA
    `SentencePixelHead`: the sentence projection g and the target embedding's product with the stride-4 pixel
    embeddings, plus (SMA) the scores Q g and the mix a = w Q. The optional geometry and reasoning keys and the
    coupled head's extra terms are not counted."""
    flops = 2 * text_dim * mask_dim + 2 * mask_dim * stride4_pixels  # g, a . P
    if enabled:
        flops += 2 * (2 * queries * mask_dim)  # scores Q g, target embedding a = w Q
    return flops
