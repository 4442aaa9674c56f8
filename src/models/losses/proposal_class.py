"""`proposal_class`: the proposals' categories (Mask2Former's class loss), so that what a proposal is (a star, a
person) is written into the mask embedding SMA scores against the sentence."""
from __future__ import annotations

from mindspore import ops

from src.models.losses.base import ProposalTerm
from src.models.registry import LOSS_TERMS


@LOSS_TERMS.register("proposal_class")
class ProposalClassLoss(ProposalTerm):
    """Cross-entropy of ``class_logits (S, B, N, C + 1)``: each matched proposal toward its object's category, every
    other one toward "no object" (class C) weighted by ``loss.no_object_weight``; per sample the mean weighted by
    (1 matched, no_object_weight unmatched), then the batch mean, summed over the stages. With it the matching's
    cost adds ``weight * -p(category)`` (src/models/losses/matching.py)."""

    default_weight = 2.0
    name = "proposal_class"

    def __init__(self, num_classes: int, no_object_weight: float = 0.1):
        super().__init__()
        self.num_classes = int(num_classes)
        self.no_object_weight = float(no_object_weight)

    @classmethod
    def from_config(cls, cfg) -> "ProposalClassLoss":
        cls.check_model(cfg)
        num_classes = cfg.model.mask_generator.num_classes
        cls.require(num_classes > 0, "proposal_class", "a category head (model.mask_generator.num_classes > 0)")
        return cls(num_classes, cfg.loss.no_object_weight)

    def construct(self, outputs, batch, matching):
        class_logits, assign, labels = outputs["class_logits"], matching["assign"], matching["labels"]
        total = ops.zeros((), class_logits.dtype)
        for s in range(assign.shape[0]):
            total = total + self._stage(class_logits[s], assign[s], labels)
        return total

    def _stage(self, class_logits, assign, labels):
        """``class_logits (B, N, C + 1)``, ``assign (B, N, K')``, ``labels (B, K', C + 1)`` one-hot -> a scalar."""
        matched = assign.sum(axis=2)  # (B, N) 1 where a proposal has an object
        goal = ops.bmm(assign, labels)  # (B, N, C + 1): the matched object's category, zeros if unmatched
        no_object = ops.concat((ops.zeros_like(goal[:, :, :self.num_classes]), (1.0 - matched).expand_dims(2)),
                               axis=2)  # (B, N, C + 1): class C where unmatched
        goal = goal + no_object
        nll = -(goal * ops.log_softmax(class_logits, axis=-1)).sum(axis=2)  # (B, N)
        weight = matched + self.no_object_weight * (1.0 - matched)  # (B, N)
        return ((weight * nll).sum(axis=1) / weight.sum(axis=1)).mean()
