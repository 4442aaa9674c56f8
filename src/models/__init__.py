"""`create_model(cfg)` builds a registered model (src/models/registry.py, MODELS) from a validated Config and
loads the converted Swin / BERT checkpoints it names, printing what was and was not loaded."""
from __future__ import annotations

import logging
import os
from typing import Dict, List, Tuple

from src.errors import CheckpointError
from src.models.registry import MODELS

logger = logging.getLogger(__name__)

register_model = MODELS.register


def list_models() -> List[str]:
    return MODELS.keys()


def create_model(cfg, name: str = "coupalign", load_pretrained: bool = True, bert_config=None):
    """Builds the registered model `name` from `cfg` (a src.config.Config). `bert_config` (a BertConfig,
    e.g. stored in a trained checkpoint) fixes the text encoder's architecture without reading
    model.bert.pretrained; it implies load_pretrained=False for the text encoder."""
    return MODELS.get(name)(cfg, load_pretrained=load_pretrained, bert_config=bert_config)


def load_into(cell, params: Dict[str, object], source: str, strict: bool = False) -> Tuple[List[str], List[str]]:
    """Loads `params` (names relative to `cell`, values NumPy arrays / Tensors / Parameters) into `cell`,
    which may sit anywhere inside a bigger network: names are matched relative to it, so a Swin or BERT
    checkpoint loads into `model.swin` / `model.bert` as well as into a standalone encoder.

    Shapes are checked first, so a mismatch is reported by name (with `source`, e.g. the file) instead of
    failing deep inside MindSpore. Returns (model parameters not loaded, checkpoint entries not used);
    with `strict`, either being non-empty raises CheckpointError too.
    """
    import mindspore as ms

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


@register_model("coupalign")
def _build_coupalign(cfg, load_pretrained: bool = True, bert_config=None):
    import mindspore as ms

    from src.models.bert import load_converted_bert
    from src.models.bert import bert_config_from
    from src.models.coupalign import CoupAlign

    if bert_config is not None:  # a trained checkpoint's own architecture: nothing pretrained to read
        if load_pretrained:
            raise ValueError("create_model: bert_config is for rebuilding a trained model (load_pretrained=False)")
        return CoupAlign(cfg.model, bert_config)
    bert_section = cfg.model.bert
    if bert_section.pretrained and not os.path.isfile(bert_section.pretrained):
        raise FileNotFoundError(f"model.bert.pretrained: checkpoint not found: {bert_section.pretrained} "
                                "(convert one with tools/convert_bert.py, or set model.bert.pretrained='')")
    # A converted BERT checkpoint defines the architecture; read it once for config and weights.
    bert_config, bert_params, _ = (load_converted_bert(bert_section.pretrained) if bert_section.pretrained
                                   else (bert_config_from(bert_section), None, None))
    model = CoupAlign(cfg.model, bert_config)
    if not load_pretrained:
        return model
    # The image encoder sits at model.swin whichever is chosen; its weights come from its own config section.
    image_part = cfg.model.image_encoder
    image_path = getattr(cfg.model, image_part).pretrained
    sources = ((image_part, image_path, model.swin), ("bert", bert_section.pretrained, model.bert))
    writers = {"swin": "convert one with tools/convert_swin.py", "bert": "convert one with tools/convert_bert.py"}
    for part, path, encoder in sources:
        if not path:
            logger.info("%s: no pretrained checkpoint configured; random initialisation", part)
            continue
        if not os.path.isfile(path):
            writer = writers.get(part, "write one with tools/pretrain_visual.py")
            raise FileNotFoundError(f"model.{part}.pretrained: checkpoint not found: {path} "
                                    f"({writer}, or set model.{part}.pretrained='')")
        params = bert_params if part == "bert" else ms.load_checkpoint(path)
        missing, unused = load_into(encoder, params, f"model.{part}.pretrained={path}")
        logger.info("%s: loaded %d tensors from %s; %d model parameters not in the checkpoint%s; "
                    "%d checkpoint entries unused%s", part, len(params) - len(unused), path, len(missing),
                    f" ({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''})" if missing else "",
                    len(unused), f" ({', '.join(unused[:5])}{', ...' if len(unused) > 5 else ''})" if unused else "")
        if missing:
            # Expected for Swin classification checkpoints (no norm0..norm2: they start fresh, as in LAVT).
            logger.warning("model.%s.pretrained: %d parameters start from random initialisation: %s",
                           part, len(missing), ", ".join(missing))
    return model
