"""CoupAlign training loss: weighted cross-entropy + Dice on the SMA logits, and the auxiliary
foreground/background pixel contrast (docs/method.md, "Losses").

``total = seg_loss + aux_weight * aux_loss + proposal_loss``, where

* ``seg_loss`` sums, over the supervised decoder stages (only the last one without deep supervision),
  ``CE + dice_weight * Dice`` of the logits upsampled (bilinear, align_corners=False) to the input size;
* ``aux_loss`` contrasts, per sample, a random subset of foreground pixels against a subset of
  background pixels (half hardest, half random) by their cosine similarity to the target embedding;
* ``proposal_loss`` (config ``loss.proposal_loss``) gives the N mask proposals a signal of their own.
  Supervising only the SMA-weighted sum has a fixed point that training falls into (identical
  proposals, uniform weights: every query receives the same gradient), so:
  - ``weighted``: ``sum_n w_n L(Y_n, referent)``, each proposal's own CE+Dice weighted by its SMA weight
    (a mixture of experts: the weights move toward the proposals that fit);
  - ``matched``: the proposals are matched one-to-one (greedy on the CE+Dice cost, as Mask2Former's
    matching but without a classifier) to the image's objects: the referent alone
    (``loss.proposal_targets: referent``, "the best proposal") or the referent and every other annotated
    object of the image (``all_objects``, the paper's "mask proposals ... hypothesize possible
    objects"); each matched proposal gets CE+Dice toward its object, and the SMA scores get a
    cross-entropy toward the proposal matched to the referent (``loss.sma_ce_weight``).
  Each is computed at stride 4 against area-averaged targets and summed over the supervised stages.

The pixel selection (:class:`AuxPixelSampler`) and the loss given a selection
(:func:`aux_contrastive_loss`) are separate so each can be tested on its own. Everything has static
shapes: random subsets are drawn with random keys + ``topk``, and "not selected"/"not available" is
carried by 0/1 validity weights instead of by variable-length index lists.
"""
import mindspore as ms
from mindspore import Tensor, mint, nn, ops

from .layers import scale_gradient
from .transformer_decoder import proposal_logits

__all__ = [
    "softplus",
    "l2_normalize",
    "nearest_resize",
    "area_downsample",
    "stride4_labels",
    "pairwise_mask_losses",
    "greedy_match",
    "weighted_ce_two_class",
    "dice_loss",
    "aux_contrastive_loss",
    "AuxPixelSampler",
    "CoupAlignCriterion",
]

# A finite stand-in for -inf: exp() of it underflows to 0 and its gradients stay finite. Out of float16's
# range (max 65504): the criterion computes in float32 whatever the model's precision (CoupAlignCriterion
# casts its inputs; `_float32`).
_VERY_NEGATIVE = -1e30

PROPOSAL_LOSSES = ("none", "weighted", "matched")
PROPOSAL_TARGETS = ("referent", "all_objects")


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
    positions = ops.arange(out_size, dtype=ms.int32).astype(ms.float32) * scale  # (out,); int32: no int64 (AI CPU) on Ascend
    idx = ops.floor(positions).astype(ms.int32)
    return ops.minimum(idx, in_size - 1)


def nearest_resize(mask, height, width):
    """Nearest-neighbour resize of ``(B, H, W)`` to ``(B, height, width)`` with PyTorch's index rule."""
    rows = nearest_indices(mask.shape[1], height)  # (height,)
    cols = nearest_indices(mask.shape[2], width)  # (width,)
    return ops.gather(ops.gather(mask, rows, 1), cols, 2)


def area_downsample(masks, height, width):
    """Area average of ``(B, K, H, W)`` maps onto a ``(height, width)`` grid: ``(B, K, height, width)``.

    Each output cell is the mean of the input pixels it covers, i.e. the soft label of the cell centred at
    ``s*j + (s-1)/2`` for stride ``s`` (where the logits place it). A reshape-mean when the sizes divide,
    else adaptive average pooling.
    """
    batch, num, in_h, in_w = masks.shape
    masks = masks.astype(ms.float32)
    if in_h % height == 0 and in_w % width == 0:
        cells = masks.reshape(batch, num, height, in_h // height, width, in_w // width)
        return cells.mean(axis=(3, 5))
    return ops.adaptive_avg_pool2d(masks, (height, width))


def stride4_labels(target, height, width):
    """Foreground labels of the stride-4 cells of ``(B, H, W)``: area average > 0.5, ``(B, height, width)``.

    (An earlier version took each cell's top-left pixel (PyTorch nearest), shifting the labels 1.5 pixels
    up-left of the cell centres that the logits use: decoded back, those labels scored a median IoU
    of 0.71 against the true masks on the synthetic val split.)
    """
    return (area_downsample(target.expand_dims(1), height, width).squeeze(1) > 0.5).astype(ms.float32)


def pairwise_mask_losses(logits, targets):
    """Mean BCE + Dice of every proposal against every target, ``(B, N, K)``, by matrix products.

    Args:
        logits: ``(B, N, h, w)`` proposal logits; targets: ``(B, K, h, w)`` soft targets in [0, 1].
    """
    batch, num, height, width = logits.shape
    flat = logits.reshape(batch, num, height * width)  # (B, N, hw)
    goal = targets.reshape(batch, targets.shape[1], height * width)  # (B, K, hw)
    # BCE(y, t) = softplus(y) - y t, averaged over pixels
    bce = (softplus(flat).sum(axis=2, keepdims=True) - ops.bmm(flat, goal.transpose(0, 2, 1))) / (height * width)
    prob = ops.sigmoid(flat)  # (B, N, hw)
    inter = ops.bmm(prob, goal.transpose(0, 2, 1))  # (B, N, K)
    denom = prob.sum(axis=2, keepdims=True) + goal.sum(axis=2).expand_dims(1)  # (B, N, K)
    dice = 1.0 - (2.0 * inter + 1.0) / (denom + 1.0)
    return bce + dice


# Added to the cost of pairs that may no longer be matched (taken rows and columns, absent targets). Costs
# accumulate up to three of it (absent target, taken row, taken column), far beyond float16's 65504: float32
# only, as for _VERY_NEGATIVE.
_BLOCKED = 1e6


def greedy_match(cost, valid):
    """One-to-one assignment of targets to proposals, cheapest pair first (static shapes, no gradient).

    Args:
        cost: ``(B, N, K)`` cost of proposal n for target k (K <= N); valid: ``(B, K)`` 1 for a real target.

    Returns:
        ``(B, N, K)`` 0/1: at most one 1 per row and per column, exactly one per valid column.

    Greedy rather than Hungarian: it needs no host round trip inside the compiled step, and with the
    few objects per image here the two rarely differ (both are exact for K = 1).
    """
    cost = ops.stop_gradient(cost)
    batch, num, objects = cost.shape
    cost = cost + (1.0 - valid.astype(cost.dtype)).expand_dims(1) * _BLOCKED  # absent targets never win
    assign = ops.zeros_like(cost)
    for _ in range(objects):
        flat = cost.reshape(batch, num * objects)
        pick = ops.one_hot(ops.argmin(flat, axis=1), num * objects, Tensor(1.0, ms.float32),
                           Tensor(0.0, ms.float32)).reshape(batch, num, objects)  # (B, N, K)
        usable = (flat.min(axis=1) < _BLOCKED / 2).astype(cost.dtype).reshape(batch, 1, 1)
        pick = pick * usable
        assign = assign + pick
        taken = pick.sum(axis=2, keepdims=True) + pick.sum(axis=1, keepdims=True)  # row n and column k
        cost = cost + taken * _BLOCKED
    return ops.stop_gradient(assign)


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


class CoupAlignCriterion(nn.Cell):
    """Segmentation loss (CE + Dice, optionally deeply supervised) plus the auxiliary pixel contrast.

    Args (all config keys, defaults from docs/method.md):
        ce_weights: (background, foreground) class weights of the cross-entropy (LAVT: 0.9, 1.1).
        dice_weight: weight of the Dice term (0 disables it).
        aux_weight: weight of the auxiliary contrast in the total.
        aux_temperature: temperature ``t`` of the contrast.
        aux_num_fg / aux_num_bg: foreground / background pixels sampled per sample.
        aux_hard_ratio: share of the background samples taken as the hardest negatives.
        deep_supervision: sum the segmentation loss over all given stages; else only the last.
        use_aux: compute the auxiliary loss (else it is 0 and pixel/target embeddings are ignored).
        dice_smooth: additive smoothing of the Dice ratio (1.0).
        proposal_loss: ``none`` | ``weighted`` | ``matched`` (module docstring).
        proposal_targets: ``referent`` | ``all_objects`` (``matched`` only; the latter needs ``others``).
        proposal_weight: weight of the proposals' own CE+Dice in the total.
        sma_ce_weight: weight of the cross-entropy on the SMA scores (``matched`` only).
        match_score_weight: ``matched`` only: the referent's matching cost adds this times
            ``-log softmax(SMA scores)`` (DETR's class cost), so the referent goes to a proposal SMA already
            prefers when masks fit about equally; 0 = masks alone decide.
        num_classes: C > 0 classifies the proposals into C object categories + "no object" (Mask2Former): each
            matched proposal gets a cross-entropy toward its object's category, every other one toward "no
            object" weighted by ``no_object_weight``, per sample averaged by those weights; the total adds
            ``class_weight`` times it, and the matching cost adds ``class_weight * -p(category)``.

    Inputs:
        logits_per_layer: ``(S, B, 1, h, w)`` SMA logits at stride 4, one per supervised decoder stage
            (the last is the final prediction).
        target: ``(B, H, W)`` float 0/1 ground truth at input resolution.
        pixel_embed: ``(B, D, h, w)`` pixel embeddings ``P``.
        target_embed: ``(B, D)`` target embedding ``a`` of the final stage.
        fg_keys, bg_keys: optional ``(B, h*w)`` uniform [0, 1) keys for the random pixel choice; drawn
            with ``ops.rand`` when omitted (reproducible under ``ms.set_seed`` set before the cell is
            built and first run).
        mask_embeds: ``(S, B, N, D)`` mask embeddings per supervised stage (proposal losses only).
        sma_scores: ``(S, B, N)`` SMA scores before the softmax (proposal losses only).
        others: ``(B, K, H, W)`` masks of the image's other objects, zero-padded (``all_objects`` only).
        class_logits: ``(S, B, N, C + 1)`` category logits of the proposals (``num_classes`` > 0 only).
        categories: ``(B, 1 + K)`` int class of the referent, then of each of ``others`` (C in empty slots).
        pixel_class_logits: ``(B, C + 1, h, w)`` category logits of every pixel embedding (``pixel_class_weight``
            > 0 only).
        proposal_grad_scale: the proposal masks' gradient into ``P`` is multiplied by this (model.sma.proposal_grad_scale;
            the model scales the transformer decoder's inputs by the same factor).
        sma_map_logits: ``(S'', B, 1, h, w)`` SMA's own maps of the coupled head (``sma_map_weight`` > 0 only):
            CE + Dice toward the referent summed over its stages, so SMA must select whatever the gate is.

    Returns:
        a tuple of float32 scalars named by ``loss_names``: ``(loss, seg_loss, aux_loss, proposal_loss)``, and
        ``class_loss`` when ``num_classes`` > 0, ``pixel_class_loss`` when ``pixel_class_weight`` > 0,
        ``sma_map_loss`` last when ``sma_map_weight`` > 0;
        ``loss`` is the weighted total. ``seg_loss`` and
        ``aux_loss`` are unweighted, ``proposal_loss`` is its contribution to the total, ``class_loss`` is
        unweighted.
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
        proposal_loss="none",
        proposal_targets="referent",
        proposal_weight=1.0,
        sma_ce_weight=1.0,
        match_score_weight=0.0,
        num_classes=0,
        class_weight=2.0,
        no_object_weight=0.1,
        pixel_class_weight=0.0,
        sma_map_weight=0.0,
        proposal_grad_scale=1.0,
    ):
        super().__init__()
        if num_classes and proposal_loss != "matched":
            raise ValueError("classifying the proposals (num_classes > 0) needs proposal_loss='matched'")
        if pixel_class_weight and not (num_classes and proposal_targets == "all_objects"):
            raise ValueError("the pixel category loss (pixel_class_weight > 0) needs the categories of every object "
                             "of the image: num_classes > 0 and proposal_targets='all_objects'")
        self.num_classes = int(num_classes)
        self.pixel_classes = bool(pixel_class_weight)
        self.class_weight = float(class_weight)
        self.no_object_weight = float(no_object_weight)
        # The outputs: the total, then each part; the total is sum(weight * part) over loss_weights (the
        # proposal loss applies its own weights inside: matched mask losses and the SMA cross-entropy).
        self.sma_map = bool(sma_map_weight)
        self.proposal_grad_scale = float(proposal_grad_scale)
        self.loss_names = (("loss", "seg_loss", "aux_loss", "proposal_loss") + (("class_loss",) if num_classes else ())
                           + (("pixel_class_loss",) if self.pixel_classes else ())
                           + (("sma_map_loss",) if self.sma_map else ()))
        self.loss_weights = ((1.0, float(aux_weight) if use_aux else 0.0, 1.0) + ((float(class_weight),) if num_classes else ())
                             + ((float(pixel_class_weight),) if self.pixel_classes else ())
                             + ((float(sma_map_weight),) if self.sma_map else ()))
        if proposal_loss not in PROPOSAL_LOSSES:
            raise ValueError(f"unknown proposal_loss {proposal_loss!r}; expected one of {PROPOSAL_LOSSES}")
        if proposal_targets not in PROPOSAL_TARGETS:
            raise ValueError(f"unknown proposal_targets {proposal_targets!r}; expected one of {PROPOSAL_TARGETS}")
        self.proposal_loss = proposal_loss
        self.all_objects = proposal_targets == "all_objects"
        self.proposal_weight = float(proposal_weight)
        self.sma_ce_weight = float(sma_ce_weight)
        self.match_score_weight = float(match_score_weight)
        self.bg_weight = float(ce_weights[0])
        self.fg_weight = float(ce_weights[1])
        self.dice_weight = float(dice_weight)
        self.dice_smooth = float(dice_smooth)
        self.aux_temperature = float(aux_temperature)
        self.deep_supervision = bool(deep_supervision)
        self.use_aux = bool(use_aux)
        self.sampler = AuxPixelSampler(aux_num_fg, aux_num_bg, aux_hard_ratio)
        self.keys_from_generator = ms.get_context("device_target") == "Ascend"  # see `random_keys`

    @classmethod
    def from_config(cls, cfg) -> "CoupAlignCriterion":
        """From a whole Config: `loss`, plus what the model supervises (deep supervision, SMA, category head)."""
        return build_criterion(cfg.loss, cfg.model.sma.deep_supervision, cfg.model.sma.enabled,
                               cfg.model.mask_generator.num_classes, coupled=cfg.model.sma.head == "coupled",
                               proposal_grad_scale=cfg.model.sma.proposal_grad_scale)

    def seg_loss(self, logits_per_layer, target):
        """Sum over stages of ``CE + dice_weight * Dice`` at input resolution; returns a scalar."""
        if not self.deep_supervision:
            logits_per_layer = logits_per_layer[-1:]
        return self.ce_dice(logits_per_layer, target)

    def ce_dice(self, logits_per_layer, target):
        """``CE + dice_weight * Dice`` of ``(S, B, 1, h, w)`` logits upsampled to the target's size, summed over S."""
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

    def random_keys(self, batch, pixels):
        """``(batch, pixels)`` uniform [0, 1) keys for the random pixel choice, new at every call of a compiled step
        (checked in graph mode: tests/test_randomness.py). Ascend ignores ``ops.rand``'s seed (MindSpore's
        documentation), so there they come from ``mint.rand``, which draws from the default generator that
        `ms.manual_seed` seeds (src/utils/runtime.py); ``mint.rand`` has no CPU or GPU kernel."""
        if self.keys_from_generator:
            return mint.rand(batch, pixels)  # (B, hw)
        return ops.rand(batch, pixels)  # (B, hw); seeded from the global seed when the step is compiled

    def aux_loss(self, pixel_embed, target_embed, target, fg_keys=None, bg_keys=None):
        """The auxiliary contrast; GT is nearest-downsampled to the pixel-embedding grid."""
        batch, _, height, width = pixel_embed.shape
        similarity = self.pixel_similarity(pixel_embed, target_embed)  # (B, hw)
        fg_mask = stride4_labels(target, height, width).reshape(batch, height * width)  # (B, hw)
        if fg_keys is None:
            fg_keys = self.random_keys(batch, height * width)  # (B, hw)
        if bg_keys is None:
            bg_keys = self.random_keys(batch, height * width)  # (B, hw)
        fg_idx, fg_valid, bg_idx, bg_valid = self.sampler(similarity, fg_mask, fg_keys, bg_keys)
        return aux_contrastive_loss(similarity, fg_idx, fg_valid, bg_idx, bg_valid, self.aux_temperature)

    def proposal_losses(self, mask_embeds, sma_scores, pixel_embed, target, others=None, class_logits=None,
                        categories=None):
        """The proposals' own loss summed over stages (see the module docstring): a scalar, or with
        ``num_classes`` > 0 the pair (mask and SMA terms as weighted into the total, the unweighted category
        cross-entropy summed over stages).

        ``mask_embeds (S, B, N, D)``, ``sma_scores (S, B, N)``, ``pixel_embed (B, D, h, w)``,
        ``target (B, H, W)``, ``others (B, K, H, W)`` or None, ``class_logits (S, B, N, C + 1)`` and
        ``categories (B, K')`` int (K' = 1 + K, or 1 without others) when ``num_classes`` > 0.
        """
        batch, _, height, width = pixel_embed.shape
        objects = target.expand_dims(1)  # (B, 1, H, W): the referent is object 0
        if self.all_objects and others is None:
            raise ValueError("loss.proposal_targets=all_objects needs the other objects' masks (the 'others' input, "
                             "data.max_other_objects); the batch has none")
        if self.all_objects:
            objects = ops.concat((objects, others.astype(ms.float32)), axis=1)  # (B, 1 + K, H, W)
        soft = area_downsample(objects, height, width)  # (B, K', h, w) in [0, 1]
        valid = (soft.sum(axis=(2, 3)) > 0.0).astype(ms.float32)  # (B, K'): empty padding slots are absent
        total = ops.zeros((), ms.float32)
        class_total = ops.zeros((), ms.float32)
        labels = None
        if self.num_classes:
            labels = ops.one_hot(categories[:, :soft.shape[1]].astype(ms.int32), self.num_classes + 1,
                                 Tensor(1.0, ms.float32), Tensor(0.0, ms.float32))  # (B, K', C + 1)
        proposal_pixels = scale_gradient(pixel_embed, self.proposal_grad_scale)  # the proposals' pull on P, scaled
        for s in range(mask_embeds.shape[0]):
            logits = proposal_logits(mask_embeds[s], proposal_pixels)  # (B, N, h, w)
            if self.proposal_loss == "weighted":
                own = pairwise_mask_losses(logits, soft[:, :1]).squeeze(2)  # (B, N) vs the referent
                weights = ops.softmax(sma_scores[s], axis=-1)  # (B, N)
                total = total + self.proposal_weight * (weights * own).sum(axis=1).mean()
                continue
            pair = pairwise_mask_losses(logits, soft)  # (B, N, K')
            log_prob = ops.log_softmax(sma_scores[s], axis=-1)  # (B, N)
            cost = pair
            if self.match_score_weight != 0.0:  # DETR's class cost: the referent prefers the proposal SMA likes
                referent_cost = pair[:, :, :1] - self.match_score_weight * log_prob.expand_dims(2)  # (B, N, 1)
                cost = ops.concat((referent_cost, pair[:, :, 1:]), axis=2)
            if self.num_classes:  # Mask2Former's class cost: -p(the object's category)
                class_prob = ops.softmax(class_logits[s], axis=-1)  # (B, N, C + 1)
                cost = cost - self.class_weight * ops.bmm(class_prob, labels.transpose(0, 2, 1))  # (B, N, K')
            assign = greedy_match(cost, valid)  # (B, N, K')
            # Per sample (the mean over its matched objects), then the batch mean: a mean of equal-size
            # device batches is then exactly the global batch's loss under data parallelism. (Dividing
            # by the batch's total of matched objects was not: two half batches count them differently.)
            per_sample = (assign * pair).sum(axis=(1, 2)) / ops.maximum(assign.sum(axis=(1, 2)), 1.0)  # (B,)
            chosen = assign[:, :, 0]  # (B, N) one-hot: the proposal matched to the referent (none if empty)
            ce = -(chosen * log_prob).sum(axis=1)  # (B,)
            total = total + self.proposal_weight * per_sample.mean() + self.sma_ce_weight * ce.mean()
            if self.num_classes:
                class_total = class_total + self._class_loss(class_logits[s], assign, labels)
        if self.num_classes:
            return total, class_total
        return total

    def _class_loss(self, class_logits, assign, labels):
        """Category cross-entropy of one stage: ``class_logits (B, N, C + 1)``, ``assign (B, N, K')`` from the
        matching, ``labels (B, K', C + 1)`` one-hot; unmatched proposals aim at "no object" (class C).
        Per sample the mean weighted by (1 matched, no_object_weight unmatched), then the batch mean."""
        matched = assign.sum(axis=2)  # (B, N) 1 where a proposal has an object
        goal = ops.bmm(assign, labels)  # (B, N, C + 1): the matched object's category, zeros if unmatched
        no_object = ops.concat((ops.zeros_like(goal[:, :, :self.num_classes]), (1.0 - matched).expand_dims(2)),
                               axis=2)  # (B, N, C + 1): class C where unmatched
        goal = goal + no_object
        nll = -(goal * ops.log_softmax(class_logits, axis=-1)).sum(axis=2)  # (B, N)
        weight = matched + self.no_object_weight * (1.0 - matched)  # (B, N)
        return ((weight * nll).sum(axis=1) / weight.sum(axis=1)).mean()

    def pixel_class_loss(self, pixel_class_logits, target, others, categories):
        """Category cross-entropy of every stride-4 cell: ``pixel_class_logits (B, C + 1, h, w)``, the label of a cell
        is the category of the object covering more than half of it (the referent or one of ``others``), else
        "no object" (class C). Background cells weigh ``no_object_weight`` (as unmatched proposals do: most cells
        are background); per sample the weighted mean, then the batch mean."""
        batch, num_labels, height, width = pixel_class_logits.shape
        objects = ops.concat((target.expand_dims(1), others.astype(ms.float32)), axis=1)  # (B, K', H, W)
        cover = (area_downsample(objects, height, width) > 0.5).astype(ms.float32)  # (B, K', h, w)
        cover = cover.reshape(batch, -1, height * width).transpose(0, 2, 1)  # (B, hw, K')
        labels = ops.one_hot(categories.astype(ms.int32), num_labels, ops.ones((), ms.float32),
                             ops.zeros((), ms.float32))  # (B, K', C + 1)
        goal = ops.bmm(cover, labels)  # (B, hw, C + 1): the covering object's category, zeros on background
        covered = ops.minimum(goal.sum(axis=2), 1.0)  # (B, hw); visible masks do not overlap
        goal = goal / ops.maximum(goal.sum(axis=2, keepdims=True), 1.0)
        goal = ops.concat((goal[:, :, :num_labels - 1], goal[:, :, num_labels - 1:] + (1.0 - covered).expand_dims(2)),
                          axis=2)  # (B, hw, C + 1)
        logits = pixel_class_logits.reshape(batch, num_labels, height * width).transpose(0, 2, 1)  # (B, hw, C + 1)
        nll = -(goal * ops.log_softmax(logits, axis=-1)).sum(axis=2)  # (B, hw)
        weight = covered + self.no_object_weight * (1.0 - covered)  # (B, hw)
        return ((weight * nll).sum(axis=1) / weight.sum(axis=1)).mean()

    def construct(self, logits_per_layer, target, pixel_embed, target_embed, fg_keys=None, bg_keys=None,
                  mask_embeds=None, sma_scores=None, others=None, class_logits=None, categories=None,
                  pixel_class_logits=None, sma_map_logits=None):
        # The loss in float32 whatever the model's precision (train.amp_level; float16 outputs under O2/O3):
        # its constants and its sums over every pixel do not fit float16. No-op casts at O0.
        logits_per_layer, pixel_embed, target_embed = (_float32(logits_per_layer), _float32(pixel_embed),
                                                       _float32(target_embed))
        mask_embeds, sma_scores, class_logits = _float32(mask_embeds), _float32(sma_scores), _float32(class_logits)
        pixel_class_logits, sma_map_logits = _float32(pixel_class_logits), _float32(sma_map_logits)
        target = target.astype(ms.float32)
        seg = self.seg_loss(logits_per_layer, target)
        zero = ops.zeros((), ms.float32)
        aux = self.aux_loss(pixel_embed, target_embed, target, fg_keys, bg_keys) if self.use_aux else zero
        parts = (seg, aux)
        if self.proposal_loss == "none":
            parts = parts + (zero,)
        else:
            if not self.deep_supervision:
                mask_embeds, sma_scores = mask_embeds[-1:], sma_scores[-1:]
            if self.num_classes:
                if not self.deep_supervision:
                    class_logits = class_logits[-1:]
                parts = parts + self.proposal_losses(mask_embeds, sma_scores, pixel_embed, target, others,
                                                     class_logits, categories)  # (proposal, class)
            else:
                parts = parts + (self.proposal_losses(mask_embeds, sma_scores, pixel_embed, target, others),)
        if self.pixel_classes:
            parts = parts + (self.pixel_class_loss(pixel_class_logits, target, others, categories),)
        if self.sma_map:
            parts = parts + (self.ce_dice(sma_map_logits, target),)
        total = parts[0] * self.loss_weights[0]
        for i in range(1, len(parts)):
            total = total + parts[i] * self.loss_weights[i]
        return (total,) + parts


def _float32(x):
    """``x`` as float32 (None stays None)."""
    return None if x is None else x.astype(ms.float32)


def build_criterion(loss, deep_supervision: bool = True, use_sma: bool = True, num_classes: int = 0,
                    coupled: bool = False, proposal_grad_scale: float = 1.0) -> CoupAlignCriterion:
    """The criterion of a `loss` section (src.config.LossSection); without SMA (the "no SMA" ablation) there are
    no proposals to supervise. `num_classes` > 0 (model.mask_generator.num_classes) adds the category loss;
    `coupled` (model.sma.head = coupled) the loss on SMA's own map (loss.sma_map_weight)."""
    return CoupAlignCriterion(ce_weights=(loss.ce_weight_bg, loss.ce_weight_fg), dice_weight=loss.dice_weight,
                              aux_weight=loss.aux_weight, aux_temperature=loss.aux_temperature,
                              aux_num_fg=loss.aux_num_fg, aux_num_bg=loss.aux_num_bg,
                              aux_hard_ratio=loss.aux_hard_ratio, deep_supervision=deep_supervision,
                              use_aux=loss.aux_enabled, proposal_loss=loss.proposal_loss if use_sma else "none",
                              proposal_targets=loss.proposal_targets, proposal_weight=loss.proposal_weight,
                              sma_ce_weight=loss.sma_ce_weight, match_score_weight=loss.match_score_weight,
                              num_classes=num_classes if use_sma else 0, class_weight=loss.class_weight,
                              no_object_weight=loss.no_object_weight,
                              pixel_class_weight=loss.pixel_class_weight if use_sma else 0.0,
                              sma_map_weight=loss.sma_map_weight if use_sma and coupled else 0.0,
                              proposal_grad_scale=proposal_grad_scale)
