"""`create_model(cfg)` builds a registered model (src/models/registry.py, MODELS) from a validated Config and
loads the converted Swin / BERT checkpoints it names, printing what was and was not loaded.

The entry point of src/models: the entry scripts, the engine and the tools import it from here; no module of
src/models imports it (the parts below it are found through the registries).
"""
from __future__ import annotations

import logging
import os
from typing import List

import mindspore as ms

from src.models.bert import bert_config_from, load_converted_bert
from src.models.coupalign import CoupAlign
from src.models.registry import MODELS
from src.models.weights import load_into

logger = logging.getLogger(__name__)

register_model = MODELS.register


def list_models() -> List[str]:
    return MODELS.keys()


def create_model(cfg, name: str = "coupalign", load_pretrained: bool = True, bert_config=None):
    """Builds the registered model `name` from `cfg` (a src.config.Config). `bert_config` (a BertConfig,
    e.g. stored in a trained checkpoint) fixes the text encoder's architecture without reading
    model.bert.pretrained; it implies load_pretrained=False for the text encoder."""
    return MODELS.get(name)(cfg, load_pretrained=load_pretrained, bert_config=bert_config)


@register_model("coupalign")
def _build_coupalign(cfg, load_pretrained: bool = True, bert_config=None):
    if bert_config is not None:  # a trained checkpoint's own architecture: nothing pretrained to read
        if load_pretrained:
            raise ValueError("create_model: bert_config is for rebuilding a trained model (load_pretrained=False)")
        return CoupAlign(cfg, bert_config)
    bert_section = cfg.model.bert
    if bert_section.pretrained and not os.path.isfile(bert_section.pretrained):
        raise FileNotFoundError(f"model.bert.pretrained: checkpoint not found: {bert_section.pretrained} "
                                "(convert one with tools/convert_bert.py, or set model.bert.pretrained='')")
    # A converted BERT checkpoint defines the architecture; read it once for config and weights.
    bert_config, bert_params, _ = (load_converted_bert(bert_section.pretrained) if bert_section.pretrained
                                   else (bert_config_from(bert_section), None, None))
    model = CoupAlign(cfg, bert_config)
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
