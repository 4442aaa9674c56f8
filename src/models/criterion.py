"""CoupAlign training loss: weighted cross-entropy + Dice on the SMA logits, and the auxiliary
foreground/background pixel contrast (method.md, "Losses").

``total = seg_loss + aux_weight * aux_loss``, where

* ``seg_loss`` sums, over the supervised decoder stages (only the last one without deep supervision),
  ``CE + dice_weight * Dice`` of the logits upsampled (bilinear, align_corners=False) to the input size;
* ``aux_loss`` contrasts, per sample, a random subset of foreground pixels against a subset of
  background pixels (half hardest, half random) by their cosine similarity to the target embedding.

The pixel selection (:class:`AuxPixelSampler`) and the loss given a selection
(:func:`aux_contrastive_loss`) are separate so each can be tested on its own. Everything has static
shapes: random subsets are drawn with random keys + ``topk``, and "not selected"/"not available" is
carried by 0/1 validity weights instead of by variable-length index lists.
"""
import mindspore as ms
from mindspore import nn, ops

__all__ = [
    "softplus",
    "l2_normalize",
    "nearest_resize",
    "weighted_ce_two_class",
    "dice_loss",
    "aux_contrastive_loss",
    "AuxPixelSampler",
    "CoupAlignCriterion",
]

# A finite stand-in for -inf: exp() of it underflows to 0 and its gradients stay finite.
_VERY_NEGATIVE = -1e30


def softplus(x):
    """``log(1 + e^x)`` without overflow: ``relu(x) + log1p(e^{-|x|})``."""
    return ops.relu(x) + ops.log1p(ops.exp(-ops.abs(x)))


def l2_normalize(x, axis, eps=1e-12):
    """``x / max(||x||, eps)`` along ``axis`` (PyTorch's ``F.normalize``), with a finite gradient at 0."""
    sq_norm = (x * x).sum(axis=axis, keepdims=True)
    return x * ops.rsqrt(ops.maximum(sq_norm, eps * eps))


def nearest_indices(in_size, out_size):
    """Source indices of PyTorch's ``interpolate(mode='nearest')``: ``min(floor(i * in/out), in - 1)``.

    The scale is a float32 quotient and the product is float32, as in PyTorch's kernel, so the indices
    agree with PyTorch even where ``in/out`` is not an integer.
    """
    scale = ops.scalar_to_tensor(in_size, ms.float32) / ops.scalar_to_tensor(out_size, ms.float32)
    positions = ops.arange(out_size).astype(ms.float32) * scale  # (out,)
    idx = ops.floor(positions).astype(ms.int32)
    return ops.minimum(idx, in_size - 1)


def nearest_resize(mask, height, width):
    """Nearest-neighbour resize of ``(B, H, W)`` to ``(B, height, width)`` with PyTorch's index rule."""
    rows = nearest_indices(mask.shape[1], height)  # (height,)
    cols = nearest_indices(mask.shape[2], width)  # (width,)
    return ops.gather(ops.gather(mask, rows, 1), cols, 2)


def weighted_ce_two_class(logits, target, bg_weight, fg_weight):
    """Class-weighted cross-entropy of the two-class logits ``(0, M)``, one value per leading index.

    Matches ``torch.nn.functional.cross_entropy(stack([0, M], 1), target, weight=(bg, fg))``: the
    weighted per-pixel losses are summed and divided by the summed weights of the target classes
    (not by the pixel count), over the batch and all pixels.

    Args:
        logits: ``(S, B, H, W)`` foreground logits ``M`` for ``S`` stages.
        target: ``(B, H, W)`` in ``{0, 1}``.

    Returns:
        ``(S,)`` loss per stage.
    """
    target = target.astype(logits.dtype)
    pixel_weight = bg_weight * (1.0 - target) + fg_weight * target  # (B, H, W)
    # -log softmax((0, M))[fg] = softplus(-M); -log softmax((0, M))[bg] = softplus(M)
    nll = target * softplus(-logits) + (1.0 - target) * softplus(logits)  # (S, B, H, W)
    weighted = (nll * pixel_weight).sum(axis=(1, 2, 3))  # (S,)
    return weighted / pixel_weight.sum()


def dice_loss(logits, target, smooth=1.0):
    """Soft Dice on sigmoid probabilities, per sample then averaged over the batch.

    ``1 - (2 sum(p t) + smooth) / (sum p + sum t + smooth)``; ``smooth = 1`` keeps an empty target
    with an empty prediction at loss ~0.

    Args:
        logits: ``(S, B, H, W)``; target: ``(B, H, W)``.

    Returns:
        ``(S,)`` loss per stage.
    """
    target = target.astype(logits.dtype)
    prob = ops.sigmoid(logits)  # (S, B, H, W)
    inter = (prob * target).sum(axis=(2, 3))  # (S, B)
    denom = prob.sum(axis=(2, 3)) + target.sum(axis=(1, 2))  # (S, B)
    dice = 1.0 - (2.0 * inter + smooth) / (denom + smooth)  # (S, B)
    return dice.mean(axis=1)


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
        _, fg_idx = ops.topk(fg_keys + 2.0 * fg_mask, k_fg)  # (B, Kf)
        fg_idx = fg_idx.astype(ms.int32)
        fg_valid = ops.gather_elements(fg_mask, 1, fg_idx)

        bg_idx_parts = ()
        bg_valid_parts = ()
        remaining = bg_mask
        k_hard = min(self.num_hard, num_pixels)
        if k_hard > 0:
            hard_score = ops.where(bg_mask > 0.5, similarity, _VERY_NEGATIVE)
            _, hard_idx = ops.topk(hard_score, k_hard)  # (B, Kh), most similar bg first
            hard_idx = hard_idx.astype(ms.int32)
            hard_valid = ops.gather_elements(bg_mask, 1, hard_idx)
            taken = ops.tensor_scatter_elements(ops.zeros_like(bg_mask), hard_idx, hard_valid, axis=1)
            remaining = bg_mask * (1.0 - taken)
            bg_idx_parts = bg_idx_parts + (hard_idx,)
            bg_valid_parts = bg_valid_parts + (hard_valid,)
        k_random = min(self.num_random_bg, num_pixels)
        if k_random > 0:
            _, rand_idx = ops.topk(bg_keys + 2.0 * remaining, k_random)  # (B, Kr)
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


class CoupAlignCriterion(nn.Cell):
    """Segmentation loss (CE + Dice, optionally deeply supervised) plus the auxiliary pixel contrast.

    Args (all config keys, defaults from method.md):
        ce_weights: (background, foreground) class weights of the cross-entropy (LAVT: 0.9, 1.1).
        dice_weight: weight of the Dice term (0 disables it).
        aux_weight: weight of the auxiliary contrast in the total.
        aux_temperature: temperature ``t`` of the contrast.
        aux_num_fg / aux_num_bg: foreground / background pixels sampled per sample.
        aux_hard_ratio: share of the background samples taken as the hardest negatives.
        deep_supervision: sum the segmentation loss over all given stages; else only the last.
        use_aux: compute the auxiliary loss (else it is 0 and pixel/target embeddings are ignored).
        dice_smooth: additive smoothing of the Dice ratio (1.0).

    Inputs:
        logits_per_layer: ``(S, B, 1, h, w)`` SMA logits at stride 4, one per supervised decoder stage
            (the last is the final prediction).
        target: ``(B, H, W)`` float 0/1 ground truth at input resolution.
        pixel_embed: ``(B, D, h, w)`` pixel embeddings ``P``.
        target_embed: ``(B, D)`` target embedding ``a`` of the final stage.
        fg_keys, bg_keys: optional ``(B, h*w)`` uniform [0, 1) keys for the random pixel choice; drawn
            with ``ops.rand`` when omitted (reproducible under ``ms.set_seed`` set before the cell is
            built and first run).

    Returns:
        ``(total, seg_loss, aux_loss)`` float32 scalars; ``aux_loss`` is unweighted.
    """

    def __init__(
        self,
        ce_weights=(0.9, 1.1),
        dice_weight=1.0,
        aux_weight=0.1,
        aux_temperature=0.07,
        aux_num_fg=256,
        aux_num_bg=1024,
        aux_hard_ratio=0.5,
        deep_supervision=True,
        use_aux=True,
        dice_smooth=1.0,
    ):
        super().__init__()
        self.bg_weight = float(ce_weights[0])
        self.fg_weight = float(ce_weights[1])
        self.dice_weight = float(dice_weight)
        self.dice_smooth = float(dice_smooth)
        self.aux_weight = float(aux_weight)
        self.aux_temperature = float(aux_temperature)
        self.deep_supervision = bool(deep_supervision)
        self.use_aux = bool(use_aux)
        self.sampler = AuxPixelSampler(aux_num_fg, aux_num_bg, aux_hard_ratio)

    def seg_loss(self, logits_per_layer, target):
        """Sum over stages of ``CE + dice_weight * Dice`` at input resolution; returns a scalar."""
        if not self.deep_supervision:
            logits_per_layer = logits_per_layer[-1:]
        num_stages, batch, _, height, width = logits_per_layer.shape
        out_h, out_w = target.shape[1], target.shape[2]
        logits = logits_per_layer.reshape(num_stages * batch, 1, height, width)
        logits = ops.interpolate(logits, size=(out_h, out_w), mode="bilinear", align_corners=False)
        logits = logits.reshape(num_stages, batch, out_h, out_w)  # (S, B, H, W)
        per_stage = weighted_ce_two_class(logits, target, self.bg_weight, self.fg_weight)  # (S,)
        if self.dice_weight != 0.0:
            per_stage = per_stage + self.dice_weight * dice_loss(logits, target, self.dice_smooth)
        return per_stage.sum()

    def pixel_similarity(self, pixel_embed, target_embed):
        """Cosine similarity of every pixel embedding to the target embedding: ``(B, h*w)``."""
        batch, dim, height, width = pixel_embed.shape
        pixels = l2_normalize(pixel_embed.reshape(batch, dim, height * width), axis=1)  # (B, D, hw)
        anchor = l2_normalize(target_embed, axis=1)  # (B, D)
        return ops.bmm(anchor.expand_dims(1), pixels).squeeze(1)  # (B, hw)

    def aux_loss(self, pixel_embed, target_embed, target, fg_keys=None, bg_keys=None):
        """The auxiliary contrast; GT is nearest-downsampled to the pixel-embedding grid."""
        batch, _, height, width = pixel_embed.shape
        similarity = self.pixel_similarity(pixel_embed, target_embed)  # (B, hw)
        small_target = nearest_resize(target, height, width).reshape(batch, height * width)
        fg_mask = (small_target > 0.5).astype(ms.float32)  # (B, hw)
        if fg_keys is None:
            fg_keys = ops.rand(batch, height * width)
        if bg_keys is None:
            bg_keys = ops.rand(batch, height * width)
        fg_idx, fg_valid, bg_idx, bg_valid = self.sampler(similarity, fg_mask, fg_keys, bg_keys)
        return aux_contrastive_loss(similarity, fg_idx, fg_valid, bg_idx, bg_valid, self.aux_temperature)

    def construct(self, logits_per_layer, target, pixel_embed, target_embed, fg_keys=None, bg_keys=None):
        target = target.astype(ms.float32)
        seg = self.seg_loss(logits_per_layer, target)
        if self.use_aux:
            aux = self.aux_loss(pixel_embed, target_embed, target, fg_keys, bg_keys)
            total = seg + self.aux_weight * aux
        else:
            aux = ops.zeros((), ms.float32)
            total = seg
        return total, seg, aux
