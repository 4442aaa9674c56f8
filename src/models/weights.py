"""`load_into(cell, params, source)`: parameter arrays into a cell by their names relative to it.

A leaf module (MindSpore and src.errors only), so that the encoders' own loaders (src/models/bert.py, swin.py),
the model factory (src/models/factory.py) and the checkpoint reader (src/engine/checkpoint.py) share it without
importing one another.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import mindspore as ms

from src.errors import CheckpointError


def load_into(cell, params: Dict[str, object], source: str, strict: bool = False) -> Tuple[List[str], List[str]]:
    """Loads `params` (names relative to `cell`, values NumPy arrays / Tensors / Parameters) into `cell`,
    which may sit anywhere inside a bigger network: names are matched relative to it, so a Swin or BERT
    checkpoint loads into `model.swin` / `model.bert` as well as into a standalone encoder.

    Shapes are checked first, so a mismatch is reported by name (with `source`, e.g. the file) instead of
    failing deep inside MindSpore. Returns (model parameters not loaded, checkpoint entries not used);
    with `strict`, either being non-empty raises CheckpointError too.
    """
    own = dict(cell.parameters_and_names())
    mismatched = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                  for k, v in params.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if mismatched:
        raise CheckpointError(f"{source}: shapes do not match the configured model:\n  " + "\n  ".join(mismatched))
    missing = sorted(k for k in own if k not in params)
    unused = sorted(k for k in params if k not in own)
    if strict and (missing or unused):
        raise CheckpointError(f"{source}: parameters do not match the model: {len(missing)} missing {missing[:8]}, "
                         f"{len(unused)} unexpected {unused[:8]}")
    for name, value in params.items():
        if name in own:
            data = value if isinstance(value, ms.Tensor) else ms.Tensor(value)
            own[name].set_data(data.astype(own[name].dtype))
    return missing, unused
