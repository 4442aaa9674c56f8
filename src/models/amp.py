"""Mixed precision (config `train.amp_level`) applied in place: the model keeps its class and its methods.

`mindspore.amp.auto_mixed_precision` returns a wrapper Cell (`_OutputTo32`) for O2/O3, which has none of
CoupAlign's methods (`forward_train`, `class_embed`, `encode`, `head`) that the loss cell, the trainer, the
diagnostics and the gradient shares call, and its O1 rewrites the source of every Cell's `construct` (and
fails on networks holding `nn.MultiheadAttention`, docs/platform.md). Here the same per-Cell precision flags
(`Cell.to_float`) are set on the model's own sub-cells instead; the root model is left unflagged, so the
model's own methods and its output (the logits, upsampled in float32 by `CoupAlign.predict`) keep their
dtype.

Levels (the compute dtype is float16):

* ``O0``: everything float32.
* ``O1`` is not offered. MindSpore's O1 rewrites each Cell's `construct` from source (not the methods this model
  is called through); the same white list set as cell flags (Dense/Conv float16, the rest float32) leaves float16
  projections meeting float32 tensors in BatchMatMuls, which MindSpore does not promote (measured: Swin's
  attention, "For primitive[BatchMatMul], the input type must be same"). O2 is the level to use.
* ``O2`` (the Ascend recipe, configs/ascend_910.yaml): every sub-cell float16 except the `FP32_CELLS`: the
  norm layers (project's and MindSpore's; they output float32, so the residual streams after a norm stay
  float32 while every matmul runs in float16, as PyTorch's autocast does) and the deformable attention's
  location arithmetic (`MSDeformAttn`; its projections are float16).
* ``O3``: every sub-cell float16 (MindSpore's "cast everything"), norms included.

At every level some places compute in float32 because the code says so, not because of a flag: the
statistics of the project's norms (src/models/layers/norm.py), every softmax (`softmax_fp32`), the loss
(the criterion casts its inputs to float32) and the output logits. Pair O2/O3 with `train.loss_scale` > 1
(dynamic loss scaling): float16 gradients underflow without it.

Graph mode is what the flags are defined for (training and evaluation compile). In PyNative, MindSpore
casts every op inside a float16 cell, explicit float32 casts included (measured), so eager diagnostics of
an O2/O3 model run their softmaxes in float16.
"""
from __future__ import annotations

import mindspore as ms
from mindspore import nn

from src.models.layers.norm import _Float32Norm
from mindspore._c_expression import MixedPrecisionType  # the flag's type, as nn.Cell imports it

from src.config import AMP_O1_REASON, CHOICES

AMP_LEVELS = CHOICES["train.amp_level"]  # ("O0", "O2", "O3"): the config's allowed values


def fp32_cells():
    """Cells kept float32 under O2: MindSpore's black list, the project's norms, the deformable sampling."""
    from src.models.layers.norm import GroupNorm, InstanceNormOverPixels, LayerNorm
    from src.models.layers.msdeform_attn import MSDeformAttn

    return (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.InstanceNorm2d,
            LayerNorm, GroupNorm, InstanceNormOverPixels, MSDeformAttn)


def apply_mixed_precision(model: nn.Cell, level: str, dtype=ms.float16) -> nn.Cell:
    """Sets the precision flags of `model`'s sub-cells for `level` (module docstring) and returns `model`
    itself (`model.amp_level` records the level). Calling it again with another level replaces the flags.
    Raises ValueError for an unknown level (config key train.amp_level)."""
    if level == "O1":
        raise ValueError(f"train.amp_level = 'O1' is not supported: {AMP_O1_REASON}")
    if level not in AMP_LEVELS:
        raise ValueError(f"train.amp_level = {level!r}; expected one of {', '.join(AMP_LEVELS)}")
    if level == "O0" and getattr(model, "amp_level", "O0") == "O0":
        return model  # nothing set before: leave the cells unflagged
    keep = fp32_cells()

    def wanted(cell):
        if level == "O2":
            return ms.float32 if isinstance(cell, keep) else dtype
        return dtype if level == "O3" else ms.float32

    # Parents come before their children in cells_and_names(), and to_float flags a cell's whole subtree,
    # so each cell ends with its own choice (MSDeformAttn float32, its projections float16).
    for _, cell in model.cells_and_names():
        if cell is not model:
            cell.to_float(wanted(cell))
            if isinstance(cell, _Float32Norm):  # float32 inside; O2 hands float16 on (layers/norm.py)
                cell.output_dtype = dtype if level == "O2" else None
    # Parts the model keeps in float32 at every level (CoupAlign: its heads), after the loop: to_float flags the
    # whole subtree.
    for name in getattr(model, "fp32_parts", ()):
        part = getattr(model, name, None)
        if part is not None:
            part.to_float(ms.float32)
            for _, cell in part.cells_and_names():
                if isinstance(cell, _Float32Norm):
                    cell.output_dtype = None
    model.amp_level = level
    return model


def precision_of(cell: nn.Cell):
    """The dtype whose flag `apply_mixed_precision` left on `cell` (ms.float16 / ms.float32), or None."""
    kind = getattr(cell, "mixed_precision_type", None)
    return {MixedPrecisionType.FP16: ms.float16, MixedPrecisionType.FP32: ms.float32,
            MixedPrecisionType.BF16: ms.bfloat16}.get(kind)
