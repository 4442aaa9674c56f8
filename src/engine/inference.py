"""A trained model rebuilt from its checkpoint alone: the one path eval.py, infer.py, export.py and
preprocess.py take.

A train.py checkpoint carries, besides the weights, the run's config (`config_yaml`), the text encoder's
architecture (`bert_config_json`) and its WordPiece vocabulary (`vocab_txt`; src/engine/checkpoint.py).
So on a machine without `pretrained/`

    python eval.py --checkpoint_path best.ckpt --data_root /data/refer --split testA

works: with no --config_path the checkpoint's own config is the base (command-line keys still override
it), and the text encoder is built from the stored architecture instead of reading
model.bert.pretrained. With a --config_path the model section must fit the checkpoint, as before (a
mismatch is refused with the parameter names). Checkpoints written before these keys existed still
work the old way: they need --config_path and the pretrained files it names.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from typing import Dict, Optional, Sequence

import yaml

from src.config import Config, ConfigError, config_from_dict, parse_overrides, read_yaml

# Keys of the training run's config that describe that run's machine and launch, not the model: a
# config taken from a checkpoint gets the defaults back (a run trained under msrun is evaluated standalone).
LAUNCH_KEYS = {"distribute": False, "device_id": None}


def build_tokenizer(cfg: Config):
    """The WordPiece tokenizer of the configured text encoder. Its vocabulary must have exactly as many
    tokens as the encoder's embedding table has rows: a vocab.txt from another model would otherwise
    give ids that index the wrong rows (or beyond the table) without any error. Used for training too (it
    lives here, beside the trained model's tokenizer, so that inference code need not import the trainer)."""
    from src.data.tokenizer import BertTokenizer
    from src.models.bert import bert_config_from, vocab_path_for

    vocab = cfg.model.bert.vocab_path
    if not vocab and cfg.model.bert.pretrained:
        vocab = vocab_path_for(cfg.model.bert.pretrained)
    if not vocab:
        raise ConfigError("no vocabulary: set model.bert.vocab_path, or model.bert.pretrained to a checkpoint "
                          "written by tools/convert_bert.py (its vocab.txt is stored beside it)")
    tokenizer = BertTokenizer(vocab, max_tokens=cfg.model.max_tokens)
    table_rows = bert_config_from(cfg.model.bert).vocab_size
    if len(tokenizer.vocab) != table_rows:
        source = (f"the converted checkpoint model.bert.pretrained={cfg.model.bert.pretrained}"
                  if cfg.model.bert.pretrained else "model.bert.vocab_size")
        raise ConfigError(f"vocabulary {vocab} has {len(tokenizer.vocab)} tokens but the text encoder's embedding "
                          f"table has {table_rows} rows ({source}): this vocab.txt belongs to another model")
    return tokenizer


def load_inference_config(argv: Sequence[str], aliases: Optional[Dict[str, str]] = None,
                          default_path: str = "default_config.yaml") -> Config:
    """--config_path when given; else the config stored in --checkpoint_path (--ckpt_file); else
    `default_path`. Command-line keys override whichever it is."""
    from src.engine.checkpoint import read_artifacts

    config_path, overrides = parse_overrides(argv, aliases)
    if config_path:
        return config_from_dict(read_yaml(config_path), overrides, config_path)
    checkpoint = overrides.get("checkpoint_path")
    stored = read_artifacts(checkpoint).get("config_yaml") if checkpoint else None
    if not stored:
        return config_from_dict(read_yaml(default_path), overrides, default_path)
    data = yaml.safe_load(stored)
    data.update(LAUNCH_KEYS)
    data["checkpoint_path"] = checkpoint
    return config_from_dict(data, overrides, f"{checkpoint} (the config stored in it)")


def _require_checkpoint(cfg: Config, script: str) -> str:
    if not cfg.checkpoint_path:
        raise ConfigError(f"{script} needs --checkpoint_path=<a train.py checkpoint> (or --ckpt_file=...)")
    return cfg.checkpoint_path


def _stored_vocab_path(vocab_text: str) -> str:
    """The checkpoint's vocabulary as a file (the tokenizer reads files), cached by content."""
    digest = hashlib.sha256(vocab_text.encode("utf-8")).hexdigest()[:16]
    path = os.path.join(tempfile.gettempdir(), f"coupalign-vocab-{digest}.txt")
    if not os.path.isfile(path):
        staged = f"{path}.{os.getpid()}.tmp"
        with open(staged, "w", encoding="utf-8") as f:
            f.write(vocab_text)
        os.replace(staged, path)
    return path


def build_trained_tokenizer(cfg: Config, script: str):
    """The tokenizer for the checkpoint's text encoder. The vocabulary file the config names (vocab_path,
    or the one beside model.bert.pretrained) is used when it exists, else the vocabulary stored in the
    checkpoint; either way it is checked against the stored embedding table's size."""
    from dataclasses import replace

    from src.engine.checkpoint import read_artifacts
    from src.models.bert import BertConfig, vocab_path_for

    artifacts = read_artifacts(_require_checkpoint(cfg, script))
    if "bert_config_json" not in artifacts:  # written before checkpoints were self-contained
        return build_tokenizer(cfg)
    section = cfg.model.bert
    configured = section.vocab_path or (vocab_path_for(section.pretrained) if section.pretrained else "")
    vocab = configured
    if not (configured and os.path.isfile(configured)) and "vocab_txt" in artifacts:
        vocab = _stored_vocab_path(artifacts["vocab_txt"])
    rows = BertConfig.from_json_string(artifacts["bert_config_json"]).vocab_size
    section = replace(section, pretrained="", vocab_path=vocab, vocab_size=rows)
    return build_tokenizer(replace(cfg, model=replace(cfg.model, bert=section)))


def build_trained_model(cfg: Config, script: str):
    """The network of `cfg` with the checkpoint's weights, in inference mode. The text encoder's
    architecture comes from the checkpoint when it stores one (no pretrained file is read)."""
    from src.engine.checkpoint import load_model_weights, read_artifacts
    from src.models.factory import create_model

    path = _require_checkpoint(cfg, script)
    artifacts = read_artifacts(path)
    bert_config = None
    if "bert_config_json" in artifacts:
        from src.models.bert import BertConfig

        bert_config = BertConfig.from_json_string(artifacts["bert_config_json"])
    model = create_model(cfg, load_pretrained=False, bert_config=bert_config)
    load_model_weights(model, path)
    model.set_train(False)
    return model
