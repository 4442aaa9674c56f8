"""Matching the N proposals one-to-one to the image's objects (the referent is object 0, then the other annotated
objects, zero-padded), once per supervised stage, for every proposal term (src/models/losses/proposals.py).

The cost of proposal n for object k is the mean BCE + Dice of its mask against the object's area-averaged target at
the pixel embeddings' stride (4), minus ``class_cost * p_n(the object's category)`` with a category head
(Mask2Former's class cost); ``greedy_match`` assigns cheapest pairs first. The matching has no gradient; the mask
costs it computes are the proposal mask loss itself, so the terms reuse them (`Matching.pair`).
"""
from __future__ import annotations

import mindspore as ms
from mindspore import Tensor, nn, ops

from src.models.layers import scale_gradient
from src.models.losses.functional import area_downsample, pairwise_mask_losses
from src.models.transformer_decoder import proposal_logits

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


class ProposalMatcher(nn.Cell):
    """``(outputs, batch) -> {"pair", "assign", "valid", "labels"}`` (see `construct`).

    Args:
        num_classes: C > 0: the category head's classes (+ "no object"); the class cost joins the matching.
        class_cost: the weight of ``-p(category)`` in the cost (the proposal_class term's weight, as Mask2Former
            uses its class weight for both).
        proposal_grad_scale: the proposal masks' gradient into the pixel embeddings P is multiplied by this
            (model.sma.proposal_grad_scale; the model scales the transformer decoder's inputs by the same factor).
    """

    def __init__(self, num_classes: int = 0, class_cost: float = 0.0, proposal_grad_scale: float = 1.0):
        super().__init__()
        self.num_classes = int(num_classes)
        self.class_cost = float(class_cost)
        self.proposal_grad_scale = float(proposal_grad_scale)

    @classmethod
    def activation_elements(cls, cfg, height: int, width: int) -> int:
        """Per image: at every supervised stage the N proposal logits at stride 4 (kept by their matmul and by
        softplus), softplus's exponential and the sigmoid's output (tools/benchmark.py's memory estimate)."""
        mg = cfg.model.mask_generator
        stages = mg.decoder_layers + 1 if cfg.model.sma.deep_supervision else 1
        return stages * 3 * mg.num_queries * -(-height // 4) * -(-width // 4)

    def construct(self, outputs, batch):
        """``outputs``: the model's training outputs (``mask_embeds (S, B, N, D)``, ``pixel_embed (B, D, h, w)``,
        ``class_logits (S, B, N, C + 1)`` with a category head); ``batch``: ``target (B, H, W)``, ``others
        (B, K, H, W)``, ``categories (B, 1 + K)`` int with a category head.

        Returns a dict: ``pair (S, B, N, K')`` each proposal's BCE + Dice against each object (K' = 1 + K),
        ``assign (S, B, N, K')`` 0/1 (one proposal per present object), ``valid (B, K')`` 1 for a present object,
        ``labels (B, K', C + 1)`` one-hot categories (None without a category head).
        """
        mask_embeds, pixel_embed = outputs["mask_embeds"], outputs["pixel_embed"]
        _, _, height, width = pixel_embed.shape
        objects = ops.concat((batch["target"].expand_dims(1), batch["others"].astype(ms.float32)), axis=1)  # (B, K', H, W)
        soft = area_downsample(objects, height, width)  # (B, K', h, w) in [0, 1]
        valid = (soft.sum(axis=(2, 3)) > 0.0).astype(ms.float32)  # (B, K'): empty padding slots are absent
        labels = None
        if self.num_classes:
            labels = ops.one_hot(batch["categories"][:, :soft.shape[1]].astype(ms.int32), self.num_classes + 1,
                                 Tensor(1.0, ms.float32), Tensor(0.0, ms.float32))  # (B, K', C + 1)
        proposal_pixels = scale_gradient(pixel_embed, self.proposal_grad_scale)  # the proposals' pull on P, scaled
        pairs = ()
        assigns = ()
        for s in range(mask_embeds.shape[0]):
            logits = proposal_logits(mask_embeds[s], proposal_pixels)  # (B, N, h, w)
            pair = pairwise_mask_losses(logits, soft)  # (B, N, K')
            cost = pair
            if self.num_classes:  # Mask2Former's class cost: -p(the object's category)
                class_prob = ops.softmax(outputs["class_logits"][s], axis=-1)  # (B, N, C + 1)
                cost = cost - self.class_cost * ops.bmm(class_prob, labels.transpose(0, 2, 1))  # (B, N, K')
            pairs = pairs + (pair,)
            assigns = assigns + (greedy_match(cost, valid),)
        return {"pair": ops.stack(pairs), "assign": ops.stack(assigns), "valid": valid, "labels": labels}
