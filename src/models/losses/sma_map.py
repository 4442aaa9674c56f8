"""`sma_map`: CE + Dice of SMA's own map, so that SMA must select whatever the coupled head's gate is."""
from __future__ import annotations

from src.models.losses.base import LossTerm
from src.models.losses.functional import ce_dice
from src.models.registry import LOSS_TERMS


@LOSS_TERMS.register("sma_map")
class SmaMapLoss(LossTerm):
    """``CE + dice_weight * Dice`` toward the referent of the coupled head's SMA maps ``sma_map_logits
    (S'', B, 1, h, w)`` (the sentence-weighted proposal masks of the decoder layers after the initial queries),
    summed over them; the cross-entropy's class weights are the referring loss's (src/models/coupled_head.py)."""

    default_weight = 1.0

    def __init__(self, bg_weight=0.9, fg_weight=1.1, dice_weight=1.0):
        super().__init__()
        self.bg_weight, self.fg_weight = float(bg_weight), float(fg_weight)
        self.dice_weight = float(dice_weight)

    @classmethod
    def from_config(cls, cfg) -> "SmaMapLoss":
        cls.require(cfg.model.sma.enabled and cfg.model.sma.head == "coupled", "sma_map",
                    "the coupled SMA head (model.sma.enabled=true, model.sma.head=coupled), whose own map it supervises")
        return cls(cfg.loss.ce_weight_bg, cfg.loss.ce_weight_fg, cfg.loss.dice_weight)

    @classmethod
    def activation_elements(cls, cfg, height: int, width: int) -> int:
        """CE and Dice on SMA's own map at input resolution, per decoder layer."""
        return cfg.model.mask_generator.decoder_layers * (-(-height // 4) * -(-width // 4) + 6 * height * width)

    def construct(self, outputs, batch, matching):
        return ce_dice(outputs["sma_map_logits"], batch["target"], self.bg_weight, self.fg_weight, self.dice_weight)
