"""Sentence-Mask Alignment (SMA): weight the mask proposals by the sentence and project them to pixels.

docs/method.md, "SMA"::

    g = Linear(L_g)                              # sentence feature -> mask-embedding width D
    w = softmax_n(Q g / sqrt(D))                 # or sigmoid (config sma.weighting)
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

__all__ = ["SentenceMaskAlignment", "SentencePixelHead", "pool_sentence"]


def pool_sentence(lang, lang_mask, mode="cls"):
    """Sentence feature ``L_g`` from word features (config ``sma.sentence_pool``).

    Args:
        lang: ``(B, T, D_text)`` word features (the final encoder output).
        lang_mask: ``(B, T)`` 1 for real tokens, 0 for padding.
        mode: ``"cls"`` takes token 0 ([CLS]); ``"mean"`` averages the real tokens only.

    Returns:
        ``(B, D_text)``.
    """
    if mode == "cls":
        return lang[:, 0]
    if mode == "mean":
        weights = lang_mask.astype(lang.dtype).expand_dims(-1)  # (B, T, 1)
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


class SentenceMaskAlignment(nn.Cell):
    """Weights the ``N`` mask proposals by their agreement with the sentence.

    Args:
        text_dim: width of the sentence feature ``L_g``.
        mask_dim: width ``D`` of mask embeddings ``Q`` and pixel embeddings ``P``.
        weighting: ``"softmax"`` over proposals (weights sum to 1) or ``"sigmoid"`` (independent).

    Inputs:
        mask_embed ``Q (B, N, D)``, pixel_embed ``P (B, D, h, w)``, sentence ``L_g (B, D_text)``.

    Returns:
        ``(logits M (B, 1, h, w), weights w (B, N), target_embed a (B, D))``.
    """

    def __init__(self, text_dim, mask_dim, weighting="softmax"):
        super().__init__()
        if weighting not in ("softmax", "sigmoid"):
            raise ValueError(f"unknown SMA weighting {weighting!r}; expected 'softmax' or 'sigmoid'")
        self.use_softmax = weighting == "softmax"
        self.scale = 1.0 / math.sqrt(mask_dim)
        self.sentence_proj = nn.Dense(text_dim, mask_dim)
        self.softmax = nn.Softmax(axis=-1)
        self.sigmoid = nn.Sigmoid()

    def forward_with_scores(self, mask_embed, pixel_embed, sentence):
        """``construct``'s outputs plus the pre-normalisation scores ``Q g / sqrt(D)`` ``(B, N)``, which the
        proposal losses of the criterion supervise directly (a cross-entropy toward the matched proposal)."""
        # mask_embed: (B, N, D); pixel_embed: (B, D, h, w); sentence: (B, D_text)
        query = self.sentence_proj(sentence)  # (B, D), g
        scores = ops.bmm(mask_embed, query.expand_dims(-1)).squeeze(-1) * self.scale  # (B, N)
        if self.use_softmax:
            weights = self.softmax(scores)
        else:
            weights = self.sigmoid(scores)
        target_embed = ops.bmm(weights.expand_dims(1), mask_embed).squeeze(1)  # (B, D), a
        logits = _project_to_pixels(target_embed, pixel_embed)  # (B, 1, h, w), M
        return logits, weights, target_embed, scores

    def construct(self, mask_embed, pixel_embed, sentence):
        logits, weights, target_embed, _ = self.forward_with_scores(mask_embed, pixel_embed, sentence)
        return logits, weights, target_embed


class SentencePixelHead(nn.Cell):
    """The "no SMA" ablation: the projected sentence itself is the target embedding, ``M = Linear(L_g) . P``.

    Returns the same tuple as :class:`SentenceMaskAlignment` so callers need no branch; the weights
    slot is a ``(B, 1)`` tensor of zeros (there are no proposals to weight) and must not be used.
    """

    def __init__(self, text_dim, mask_dim):
        super().__init__()
        self.sentence_proj = nn.Dense(text_dim, mask_dim)

    def forward_with_scores(self, mask_embed, pixel_embed, sentence):
        """The same interface as SMA's; the one "proposal" is the target embedding, its score 0."""
        # mask_embed is accepted for interface parity and ignored.
        target_embed = self.sentence_proj(sentence)  # (B, D)
        logits = _project_to_pixels(target_embed, pixel_embed)  # (B, 1, h, w)
        weights = ops.zeros((sentence.shape[0], 1), ms.float32)  # placeholder
        return logits, weights, target_embed, weights

    def construct(self, mask_embed, pixel_embed, sentence):
        logits, weights, target_embed, _ = self.forward_with_scores(mask_embed, pixel_embed, sentence)
        return logits, weights, target_embed
