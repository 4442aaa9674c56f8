"""`aux_contrast`: the auxiliary foreground/background pixel contrast (docs/method.md, "Losses").

For each sample, a random subset of foreground pixels is contrasted against a subset of background pixels (half the
hardest, half random) by their cosine similarity to the target embedding. The pixel selection (`AuxPixelSampler`)
and the loss given a selection (`aux_contrastive_loss`) are separate so each can be tested on its own. Everything
has static shapes: random subsets are drawn with random keys + ``topk``, and "not selected"/"not available" is
carried by 0/1 validity weights instead of variable-length index lists.
"""
from __future__ import annotations

import mindspore as ms
from mindspore import mint, nn, ops

from src.models.losses.base import LossTerm
from src.models.losses.functional import _VERY_NEGATIVE, l2_normalize, stride4_labels
from src.models.registry import LOSS_TERMS


def aux_contrastive_loss(similarity, fg_idx, fg_valid, bg_idx, bg_valid, temperature):
    """Foreground-vs-background contrast given a pixel selection.

    For each selected foreground pixel ``i`` of a sample, with ``s = similarity / temperature``::

        loss_i = -log( e^{s_i} / (e^{s_i} + sum_{j in B_s} e^{s_j}) )

    averaged over the valid foreground pixels of the sample; samples with no valid foreground are
    left out and the batch mean divides by the number of remaining samples (0 if there are none).

    Args:
        similarity: ``(B, hw)`` cosine similarity of each pixel embedding to the target embedding.
        fg_idx, fg_valid: ``(B, Kf)`` int indices into ``hw`` and 0/1 weights (1 = selected fg pixel).
        bg_idx, bg_valid: ``(B, Kb)`` the same for background pixels.
        temperature: ``t``.

    Returns:
        scalar loss.
    """
    fg_logit = ops.gather_elements(similarity, 1, fg_idx) / temperature  # (B, Kf)
    bg_logit = ops.gather_elements(similarity, 1, bg_idx) / temperature  # (B, Kb)
    bg_logit = ops.where(bg_valid > 0.5, bg_logit, _VERY_NEGATIVE)  # unselected bg count for nothing
    # Stable log-sum-exp over {s_i} U B_s: shift by the larger of s_i and the largest bg logit.
    shift = ops.maximum(fg_logit, bg_logit.max(axis=1, keepdims=True))  # (B, Kf)
    shift = ops.stop_gradient(shift)
    bg_sum = (ops.exp(bg_logit.expand_dims(1) - shift.expand_dims(2)) * bg_valid.expand_dims(1)).sum(axis=2)
    log_denominator = shift + ops.log(ops.exp(fg_logit - shift) + bg_sum)  # (B, Kf)
    per_pixel = log_denominator - fg_logit  # (B, Kf), >= 0
    fg_count = fg_valid.sum(axis=1)  # (B,)
    per_sample = (per_pixel * fg_valid).sum(axis=1) / ops.maximum(fg_count, 1.0)  # (B,)
    sample_valid = (fg_count > 0.5).astype(similarity.dtype)  # (B,)
    return (per_sample * sample_valid).sum() / ops.maximum(sample_valid.sum(), 1.0)


class AuxPixelSampler(nn.Cell):
    """Chooses the pixels of the auxiliary contrast, with static shapes.

    * foreground: up to ``num_fg`` pixels, a uniformly random subset of the foreground;
    * background: up to ``num_bg`` pixels: the ``round(num_bg * hard_ratio)`` background pixels most
      similar to the target embedding (hardest negatives), then random ones among the remaining
      background. When a sample has fewer background pixels than asked, all of them are used.

    Randomness comes from the keys passed in (uniform in [0, 1)): among eligible pixels the ones with
    the largest keys are taken, which is a uniformly random subset for i.i.d. keys.

    Inputs:
        similarity ``(B, hw)`` (cosine, i.e. in [-1, 1]; only its order matters), fg_mask ``(B, hw)``
        0/1, fg_keys ``(B, hw)``, bg_keys ``(B, hw)``.

    Returns:
        ``fg_idx (B, Kf) int32, fg_valid (B, Kf), bg_idx (B, Kb) int32, bg_valid (B, Kb)`` with
        ``Kf = min(num_fg, hw)``, ``Kb = min(num_hard, hw) + min(num_bg - num_hard, hw)``.
        ``*_valid`` is 1 where the slot holds a selected pixel, 0 for an empty slot.
    """

    def __init__(self, num_fg=256, num_bg=1024, hard_ratio=0.5):
        super().__init__()
        if not 0.0 <= hard_ratio <= 1.0:
            raise ValueError(f"hard_ratio must lie in [0, 1], got {hard_ratio}")
        self.num_fg = int(num_fg)
        self.num_hard = int(round(num_bg * hard_ratio))
        self.num_random_bg = int(num_bg) - self.num_hard

    def construct(self, similarity, fg_mask, fg_keys, bg_keys):
        num_pixels = similarity.shape[1]
        similarity = ops.stop_gradient(similarity)
        fg_mask = ops.stop_gradient(fg_mask.astype(ms.float32))
        bg_mask = 1.0 - fg_mask
        # Foreground: every fg pixel outranks every bg pixel (keys < 1), random order among them.
        k_fg = min(self.num_fg, num_pixels)
        fg_idx = ops.topk(fg_keys + 2.0 * fg_mask, k_fg)[1]  # (B, Kf)
        fg_idx = fg_idx.astype(ms.int32)
        fg_valid = ops.gather_elements(fg_mask, 1, fg_idx)

        bg_idx_parts = ()
        bg_valid_parts = ()
        remaining = bg_mask
        k_hard = min(self.num_hard, num_pixels)
        if k_hard > 0:
            hard_score = ops.where(bg_mask > 0.5, similarity, _VERY_NEGATIVE)
            hard_idx = ops.topk(hard_score, k_hard)[1]  # (B, Kh), most similar bg first
            hard_idx = hard_idx.astype(ms.int32)
            hard_valid = ops.gather_elements(bg_mask, 1, hard_idx)
            taken = ops.tensor_scatter_elements(ops.zeros_like(bg_mask), hard_idx, hard_valid, axis=1)
            remaining = bg_mask * (1.0 - taken)
            bg_idx_parts = bg_idx_parts + (hard_idx,)
            bg_valid_parts = bg_valid_parts + (hard_valid,)
        k_random = min(self.num_random_bg, num_pixels)
        if k_random > 0:
            rand_idx = ops.topk(bg_keys + 2.0 * remaining, k_random)[1]  # (B, Kr)
            rand_idx = rand_idx.astype(ms.int32)
            rand_valid = ops.gather_elements(remaining, 1, rand_idx)
            bg_idx_parts = bg_idx_parts + (rand_idx,)
            bg_valid_parts = bg_valid_parts + (rand_valid,)
        bg_idx = ops.concat(bg_idx_parts, axis=1)
        bg_valid = ops.concat(bg_valid_parts, axis=1)
        return (
            ops.stop_gradient(fg_idx),
            ops.stop_gradient(fg_valid),
            ops.stop_gradient(bg_idx),
            ops.stop_gradient(bg_valid),
        )


@LOSS_TERMS.register("aux_contrast")
class AuxContrastLoss(LossTerm):
    """The contrast of the pixel embeddings ``pixel_embed (B, D, h, w)`` around the target embedding ``target_embed
    (B, D)``; the target is area-averaged onto the stride-4 grid (a cell is foreground above one half).

    Args (config ``loss.aux_*``): temperature ``t``; ``num_fg`` / ``num_bg`` pixels sampled per sample; ``hard_ratio``
    the share of the background samples taken as the hardest negatives.
    """

    default_weight = 0.1

    def __init__(self, temperature=0.07, num_fg=256, num_bg=1024, hard_ratio=0.5):
        super().__init__()
        self.temperature = float(temperature)
        self.sampler = AuxPixelSampler(num_fg, num_bg, hard_ratio)
        self.keys_from_generator = ms.get_context("device_target") == "Ascend"  # see `random_keys`
        self.fixed_keys = None  # `use_fixed_keys`

    def use_fixed_keys(self, fg_keys=None, bg_keys=None) -> None:
        """Draws with these ``(B, h*w)`` keys instead of random ones (the tests, the gradient-share measurement of
        src/engine/grad_shares.py); no arguments restores random draws. Read when a graph is compiled: set it
        before the first call of a compiled step."""
        if (fg_keys is None) != (bg_keys is None):
            raise ValueError("give both the foreground and the background keys, or neither")
        self.fixed_keys = None if fg_keys is None else (fg_keys, bg_keys)

    @classmethod
    def from_config(cls, cfg) -> "AuxContrastLoss":
        loss = cfg.loss
        return cls(loss.aux_temperature, loss.aux_num_fg, loss.aux_num_bg, loss.aux_hard_ratio)

    @classmethod
    def activation_elements(cls, cfg, height: int, width: int) -> int:
        """The pixel similarities and the (num_fg x num_bg) logits, exponentials and mask of the contrast."""
        cells = -(-height // 4) * -(-width // 4)  # stride-4 cells
        return 3 * cells + 3 * min(cfg.loss.aux_num_fg, cells) * min(cfg.loss.aux_num_bg, 2 * cells)

    def pixel_similarity(self, pixel_embed, target_embed):
        """Cosine similarity of every pixel embedding to the target embedding: ``(B, h*w)``."""
        batch, dim, height, width = pixel_embed.shape
        pixels = l2_normalize(pixel_embed.reshape(batch, dim, height * width), axis=1)  # (B, D, hw)
        anchor = l2_normalize(target_embed, axis=1)  # (B, D)
        return ops.bmm(anchor.expand_dims(1), pixels).squeeze(1)  # (B, hw)

    def random_keys(self, batch, pixels):
        """``(batch, pixels)`` uniform [0, 1) keys for the random pixel choice, new at every call of a compiled step
        (checked in graph mode: tests/test_randomness.py). Ascend ignores ``ops.rand``'s seed (MindSpore's
        documentation), so there they come from ``mint.rand``, which draws from the default generator that
        `ms.manual_seed` seeds (src/utils/runtime.py); ``mint.rand`` has no CPU or GPU kernel."""
        if self.keys_from_generator:
            return mint.rand(batch, pixels)  # (B, hw)
        return ops.rand(batch, pixels)  # (B, hw); seeded from the global seed when the step is compiled

    def loss(self, pixel_embed, target_embed, target, fg_keys=None, bg_keys=None):
        """The contrast (a scalar); keys drawn with `random_keys` when not given."""
        batch, _, height, width = pixel_embed.shape
        similarity = self.pixel_similarity(pixel_embed, target_embed)  # (B, hw)
        fg_mask = stride4_labels(target, height, width).reshape(batch, height * width)  # (B, hw)
        if fg_keys is None:
            fg_keys = self.random_keys(batch, height * width)  # (B, hw)
        if bg_keys is None:
            bg_keys = self.random_keys(batch, height * width)  # (B, hw)
        fg_idx, fg_valid, bg_idx, bg_valid = self.sampler(similarity, fg_mask, fg_keys, bg_keys)
        return aux_contrastive_loss(similarity, fg_idx, fg_valid, bg_idx, bg_valid, self.temperature)

    def construct(self, outputs, batch, matching):
        if self.fixed_keys is None:
            return self.loss(outputs["pixel_embed"], outputs["target_embed"], batch["target"])
        return self.loss(outputs["pixel_embed"], outputs["target_embed"], batch["target"], self.fixed_keys[0],
                         self.fixed_keys[1])
