"""Building the criterion's two dicts (src/models/outputs.py) and small criteria in tests."""
import numpy as np

from mindspore import Tensor

from src.models.criterion import CoupAlignCriterion
from src.models.losses.aux_contrast import AuxContrastLoss
from src.models.losses.referring import ReferringLoss
from src.models.outputs import TRAIN_OUTPUTS


def outputs(**fields):
    """The model's training outputs: the given fields (arrays or Tensors), every other one None."""
    unknown = set(fields) - set(TRAIN_OUTPUTS)
    assert not unknown, f"not training outputs: {unknown}"
    return {name: _tensor(fields.get(name)) for name in TRAIN_OUTPUTS}


def traced_outputs(stage_logits, pixel_embed, target_embed):
    """`outputs` inside a function that graph mode compiles (no NumPy there): the referring loss's fields."""
    return {"stage_logits": stage_logits, "pixel_embed": pixel_embed, "target_embed": target_embed, "mask_embeds": None,
            "scores": None, "class_logits": None, "sma_map_logits": None}


def traced_batch(target, others, categories):
    """`batch` inside a function that graph mode compiles: every field given as a Tensor."""
    return {"target": target, "others": others, "categories": categories}


def batch(target, others=None, categories=None):
    """The batch's fields; ``others`` (B, 0, H, W) and ``categories`` (B, 0) zero-size when not given."""
    target = np.asarray(target.asnumpy() if isinstance(target, Tensor) else target, np.float32)
    b, height, width = target.shape
    others = np.zeros((b, 0, height, width), np.uint8) if others is None else others
    categories = np.zeros((b, 0), np.int32) if categories is None else categories
    return {"target": Tensor(target), "others": _tensor(others), "categories": _tensor(categories)}


def seg_aux_criterion(dice_weight=1.0, deep_supervision=True, aux=True, num_fg=256, num_bg=1024, temperature=0.07,
                      aux_weight=0.1):
    """The referring loss and (``aux``) the auxiliary contrast: the LAVT-like part of the criterion."""
    terms = [("referring", ReferringLoss(dice_weight=dice_weight, deep_supervision=deep_supervision), 1.0)]
    if aux:
        terms.append(("aux_contrast", AuxContrastLoss(temperature, num_fg, num_bg), aux_weight))
    return CoupAlignCriterion(terms)


def named(criterion, values):
    """{name: float} of a criterion's output tuple."""
    return {name: float(v.asnumpy()) for name, v in zip(criterion.loss_names, values)}


def _tensor(x):
    if x is None or isinstance(x, Tensor):
        return x
    return Tensor(np.asarray(x))
