"""`referring`: the referring segmentation loss, CE + Dice of the output logits (LAVT's, with Dice)."""
from __future__ import annotations

from src.models.losses.base import LossTerm
from src.models.losses.functional import ce_dice
from src.models.registry import LOSS_TERMS


@LOSS_TERMS.register("referring")
class ReferringLoss(LossTerm):
    """``CE + dice_weight * Dice`` of the referring logits ``stage_logits (S', B, 1, h, w)`` upsampled (bilinear) to
    the target's size, summed over the supervised stages (the last one only without
    ``model.sma.deep_supervision``). The cross-entropy weighs background and foreground pixels by
    ``loss.ce_weight_bg`` / ``ce_weight_fg`` (LAVT: 0.9 / 1.1) and divides by the summed weights, as PyTorch's."""

    default_weight = 1.0

    def __init__(self, bg_weight=0.9, fg_weight=1.1, dice_weight=1.0, deep_supervision=True):
        super().__init__()
        self.bg_weight, self.fg_weight = float(bg_weight), float(fg_weight)
        self.dice_weight = float(dice_weight)
        self.deep_supervision = bool(deep_supervision)

    @classmethod
    def from_config(cls, cfg) -> "ReferringLoss":
        loss = cfg.loss
        return cls(loss.ce_weight_bg, loss.ce_weight_fg, loss.dice_weight, cfg.model.sma.deep_supervision)

    def construct(self, outputs, batch, matching):
        logits = outputs["stage_logits"]  # (S', B, 1, h, w)
        if not self.deep_supervision:
            logits = logits[-1:]
        return ce_dice(logits, batch["target"], self.bg_weight, self.fg_weight, self.dice_weight)
