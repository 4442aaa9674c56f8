"""BERT's architecture hyper-parameters (Hugging Face's field names), in a module without MindSpore.

`BertConfig` is what `src/models/bert.py` builds from and what a converted checkpoint stores; the config
section `model.bert` (src/config/) derives from it, so the schema names each field once, here.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import ClassVar

from src.errors import ConfigError

# Activations this implementation supports, by the name HF's config uses. HF's "gelu" is the exact erf form.
SUPPORTED_HIDDEN_ACTS = ("gelu",)


@dataclass
class BertConfig:
    """BERT hyper-parameters, with Hugging Face's field names and bert-base-uncased's defaults."""

    # How errors name this object: "BertConfig.hidden_size" here, "model.bert.hidden_size" in the config.
    where: ClassVar[str] = "BertConfig"

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    initializer_range: float = 0.02

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings", "type_vocab_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{self.where}.{name} must be a positive int, got {value!r}")
        if self.hidden_size % self.num_attention_heads != 0:
            raise ConfigError(
                f"{self.where}.hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads})")
        if self.hidden_act not in SUPPORTED_HIDDEN_ACTS:
            raise ConfigError(
                f"{self.where}.hidden_act={self.hidden_act!r} is not supported; supported: {SUPPORTED_HIDDEN_ACTS} "
                "('gelu' is the exact erf GELU, as in HF BERT)")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"{self.where}.{name} must be in [0, 1), got {value!r}")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ConfigError(f"{self.where}.pad_token_id ({self.pad_token_id}) outside the vocabulary "
                             f"(size {self.vocab_size})")
        if self.layer_norm_eps <= 0:
            raise ConfigError(f"{self.where}.layer_norm_eps must be > 0, got {self.layer_norm_eps!r}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, d: dict) -> "BertConfig":
        """Builds a config from an HF ``config.json`` dict; keys this model does not use are ignored.

        HF options that would change the architecture away from what this module implements
        (relative position embeddings, a decoder with cross-attention) are rejected rather than ignored.
        """
        pos_type = d.get("position_embedding_type", "absolute")
        if pos_type != "absolute":
            raise ConfigError(f"position_embedding_type={pos_type!r} is not supported (only 'absolute')")
        if d.get("is_decoder", False) or d.get("add_cross_attention", False):
            raise ConfigError("decoder BERT configs (is_decoder / add_cross_attention) are not supported")
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in names}
        if kwargs.get("pad_token_id") is None:
            kwargs.pop("pad_token_id", None)  # some configs store null; keep the default 0
        return cls(**kwargs)

    @classmethod
    def from_json(cls, path: str) -> "BertConfig":
        with open(path, "r", encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    @classmethod
    def from_json_string(cls, text: str) -> "BertConfig":
        return cls.from_dict(json.loads(text))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)
