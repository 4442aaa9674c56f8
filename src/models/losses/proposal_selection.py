"""`proposal_selection`: SMA's scores are trained to pick the proposal matched to the referent."""
from __future__ import annotations

from mindspore import ops

from src.models.losses.base import ProposalTerm
from src.models.registry import LOSS_TERMS


@LOSS_TERMS.register("proposal_selection")
class ProposalSelectionLoss(ProposalTerm):
    """Cross-entropy of the softmax of SMA's scores ``scores (S, B, N)`` toward the proposal matched to the referent
    (object 0 of the matching; none when the referent's mask is empty), the batch mean summed over the stages."""

    default_weight = 1.0
    name = "proposal_selection"

    def construct(self, outputs, batch, matching):
        chosen = matching["assign"][:, :, :, 0]  # (S, B, N) one-hot: the referent's proposal
        log_prob = ops.log_softmax(outputs["scores"], axis=-1)  # (S, B, N)
        return -(chosen * log_prob).sum(axis=2).mean(axis=1).sum()
