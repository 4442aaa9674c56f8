"""`proposal_masks`: each proposal's own mask loss toward the object matched to it.

Supervising only the SMA-weighted output has a fixed point that training falls into (identical proposals, uniform
weights: every query receives the same gradient), so the proposals are matched one-to-one to the image's objects,
the referent and the other annotated objects (the paper's "mask proposals ... hypothesize possible objects";
src/models/losses/matching.py), and each matched proposal gets BCE + Dice toward its object at stride 4.
"""
from __future__ import annotations

from mindspore import ops

from src.models.losses.base import ProposalTerm
from src.models.registry import LOSS_TERMS


@LOSS_TERMS.register("proposal_masks")
class ProposalMaskLoss(ProposalTerm):
    """Per sample the mean BCE + Dice of the matched (proposal, object) pairs, then the batch mean, summed over the
    supervised stages. Per sample first: a mean of equal-size device batches is then exactly the global batch's loss
    under data parallelism (dividing by the batch's total of matched objects was not: two half batches count them
    differently)."""

    default_weight = 1.0
    name = "proposal_masks"

    def construct(self, outputs, batch, matching):
        assign, pair = matching["assign"], matching["pair"]  # (S, B, N, K') each
        per_sample = (assign * pair).sum(axis=(2, 3)) / ops.maximum(assign.sum(axis=(2, 3)), 1.0)  # (S, B)
        return per_sample.mean(axis=1).sum()
