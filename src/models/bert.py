"""BERT text encoder (bert-base-uncased family) as MindSpore Cells, with an interface for layer-wise fusion.

CoupAlign runs the 12 BERT layers in groups interleaved with its Word-Pixel Alignment (WPA) modules: group i
runs, WPA_i updates the word features, and group i+1 reads the updated words. So besides the usual
``construct`` this module exposes the pieces separately, all usable inside another Cell's graph-mode
``construct``:

    hidden = bert.embed(input_ids, token_type_ids)                 # (B, T, H)
    attention_bias = bert.extended_attention_mask(attention_mask)       # (B, 1, 1, T), 0 / -1e4
    for start, end in bert.layer_groups(4):                       # Python ints, fixed at build time
        hidden = bert.run_layers(hidden, attention_bias, start, end)    # (B, T, H)
        ...fusion module updates hidden...

``construct(input_ids, attention_mask, token_type_ids=None)`` is exactly those calls with one group, so the
fused and the plain paths share one code path.

Parameter names mirror the Hugging Face ``BertModel`` state dict (``embeddings.word_embeddings.weight``,
``encoder.layer.0.attention.self.query.weight``, ``encoder.layer.0.attention.output.LayerNorm.weight``, ...),
so converting an HF checkpoint is an identity mapping on names (see ``tools/convert_bert.py``).
``mindspore.mint.nn.LayerNorm`` would give those names but has no CPU kernel in MindSpore 2.10, so
``src.models.layers.LayerNorm`` wraps the ``ops.LayerNorm`` primitive with ``weight``/``bias`` Parameters instead.

Numerics follow HF BERT: LayerNorm epsilon from the config (1e-12, not MindSpore's 1e-7 default), exact erf
GELU (not MindSpore's tanh default), attention scores scaled by 1/sqrt(head_dim), an additive mask on the key
axis. Padding never leaks into real tokens: a padded key gets -1e4 added to its score, whose exponential
underflows to exactly 0 in float32 (and float16), so real-token outputs do not depend on what sits at padded
positions. Padded query positions are still computed (they attend to the real tokens), as in HF.
-1e4 rather than float32's minimum keeps the mask representable in float16 on Ascend.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from typing import Dict, List, Optional, Tuple

import numpy as np

import mindspore as ms
from mindspore import Parameter, Tensor, mint, nn, ops
from mindspore.common.initializer import Normal, One, Zero, initializer
from src.errors import CheckpointError

from src.arch.bert import SUPPORTED_HIDDEN_ACTS, BertConfig  # noqa: F401  (re-exported)
from src.models.layers import Embedding, LayerNorm, gelu, softmax_fp32
from src.models.weights import load_into

# Added to the attention score of a padded key. exp(-1e4) is exactly 0 in float32/float16.
MASK_NEGATIVE = -10000.0

# Checkpoint keys written by ``save_converted_bert`` next to the weights.
CONFIG_CKPT_KEY = "bert_config_json"
VOCAB_SUFFIX = ".vocab.txt"


# ----------------------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------------------
class BertEmbeddings(nn.Cell):
    """Word + absolute position + token type embeddings, then LayerNorm and dropout."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.max_position_embeddings = config.max_position_embeddings
        self.word_embeddings = Embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = LayerNorm(config.hidden_size, config.layer_norm_eps)
        self.dropout = nn.Dropout(p=config.hidden_dropout_prob)

    def construct(self, input_ids, token_type_ids=None):
        # input_ids: (B, T) int32; token_type_ids: (B, T) int32 or None (all segment 0)
        seq_len = input_ids.shape[1]
        if seq_len > self.max_position_embeddings:
            raise ValueError("BERT input longer than max_position_embeddings")
        if token_type_ids is None:
            token_type_ids = ops.zeros_like(input_ids)
        position_ids = ops.arange(0, seq_len, dtype=ms.int32)  # (T,), not a Parameter; mint.arange has no PyNative CPU kernel
        hidden = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)  # (B, T, H)
        hidden = hidden + self.position_embeddings(position_ids)  # (T, H) broadcast over B
        return self.dropout(self.LayerNorm(hidden))


class BertSelfAttention(nn.Cell):
    """Multi-head scaled dot-product self-attention with an additive key mask."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.query = mint.nn.Linear(config.hidden_size, config.hidden_size)
        self.key = mint.nn.Linear(config.hidden_size, config.hidden_size)
        self.value = mint.nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(p=config.attention_probs_dropout_prob)

    def _split_heads(self, x):
        # (B, T, H) -> (B, heads, T, head_dim)
        batch, seq_len, _ = x.shape
        return x.reshape(batch, seq_len, self.num_heads, self.head_dim).transpose(0, 2, 1, 3)

    def construct(self, hidden, attention_bias):
        # hidden: (B, T, H); attention_bias: (B, 1, 1, T) additive
        batch, seq_len, hidden_size = hidden.shape
        query = self._split_heads(self.query(hidden))  # (B, h, T, d)
        key = self._split_heads(self.key(hidden))      # (B, h, T, d)
        value = self._split_heads(self.value(hidden))  # (B, h, T, d)
        scores = mint.matmul(query, key.transpose(0, 1, 3, 2)) * self.scale  # (B, h, T, T)
        scores = scores + attention_bias.astype(scores.dtype)  # float16 under mixed precision; -1e4 fits
        probs = self.dropout(softmax_fp32(scores))  # (B, h, T, T), float32 inside under AMP
        context = mint.matmul(probs, value)  # (B, h, T, d)
        return context.transpose(0, 2, 1, 3).reshape(batch, seq_len, hidden_size)  # (B, T, H)


class BertSelfOutput(nn.Cell):
    """Attention output projection, dropout, residual add and LayerNorm (post-norm)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = mint.nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = LayerNorm(config.hidden_size, config.layer_norm_eps)
        self.dropout = nn.Dropout(p=config.hidden_dropout_prob)

    def construct(self, context, residual):
        return self.LayerNorm(self.dropout(self.dense(context)) + residual)  # (B, T, H)


class BertAttention(nn.Cell):
    """Self-attention block; the child is called ``self`` to match HF's ``attention.self.*`` names."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertSelfOutput(config)

    def construct(self, hidden, attention_bias):
        return self.output(self.self(hidden, attention_bias), hidden)  # (B, T, H)


class BertIntermediate(nn.Cell):
    """Feed-forward expansion H -> intermediate_size with the exact (erf) GELU."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = mint.nn.Linear(config.hidden_size, config.intermediate_size)

    def construct(self, hidden):
        return gelu(self.dense(hidden))  # (B, T, I)


class BertOutput(nn.Cell):
    """Feed-forward contraction intermediate_size -> H, dropout, residual add and LayerNorm."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = mint.nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = LayerNorm(config.hidden_size, config.layer_norm_eps)
        self.dropout = nn.Dropout(p=config.hidden_dropout_prob)

    def construct(self, intermediate, residual):
        return self.LayerNorm(self.dropout(self.dense(intermediate)) + residual)  # (B, T, H)


class BertLayer(nn.Cell):
    """One transformer encoder layer: attention block then feed-forward block, each post-norm."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def construct(self, hidden, attention_bias):
        attended = self.attention(hidden, attention_bias)                      # (B, T, H)
        return self.output(self.intermediate(attended), attended)       # (B, T, H)


class BertEncoder(nn.Cell):
    """The stack of layers; ``layer`` is a CellList so names read ``encoder.layer.<i>.*`` as in HF."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.layer = nn.CellList([BertLayer(config) for _ in range(config.num_hidden_layers)])

    def construct(self, hidden, attention_bias):
        for layer in self.layer:
            hidden = layer(hidden, attention_bias)
        return hidden


class BertPooler(nn.Cell):
    """HF's pooler: tanh(Linear(hidden state of the first token)). Unused by CoupAlign; optional."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = mint.nn.Linear(config.hidden_size, config.hidden_size)

    def construct(self, hidden):
        return ops.tanh(self.dense(hidden[:, 0]))  # (B, H)


# ----------------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------------
class BertModel(nn.Cell):
    """BERT encoder returning the last hidden state, with ``embed`` / ``run_layers`` for fusion models.

    Args:
        config: architecture (HF field names).
        add_pooler: also build ``pooler.dense`` (HF's [CLS] pooler), reachable through ``pool``. The
            pooler is not part of ``construct``'s output.

    ``construct(input_ids (B, T) int32, attention_mask (B, T) int, token_type_ids (B, T) int32 | None)``
    returns (B, T, hidden_size) float32.
    """

    def __init__(self, config: Optional[BertConfig] = None, add_pooler: bool = False):
        super().__init__()
        self.config = config if config is not None else BertConfig()
        self.num_layers = self.config.num_hidden_layers
        self.embeddings = BertEmbeddings(self.config)
        self.encoder = BertEncoder(self.config)
        self.add_pooler = add_pooler
        if add_pooler:
            self.pooler = BertPooler(self.config)
        self._init_weights()

    def _init_weights(self):
        """HF's initialisation: N(0, initializer_range) weights, zero biases, unit LayerNorm, zero pad row."""
        std = self.config.initializer_range
        for name, param in self.parameters_and_names():
            if name.endswith("LayerNorm.weight"):
                param.set_data(initializer(One(), param.shape, param.dtype))
            elif name.endswith(".bias"):
                param.set_data(initializer(Zero(), param.shape, param.dtype))
            else:  # Linear and Embedding weights
                param.set_data(initializer(Normal(sigma=std), param.shape, param.dtype))
        table = self.embeddings.word_embeddings.weight
        data = table.asnumpy()
        data[self.config.pad_token_id] = 0.0
        table.set_data(Tensor(data))

    # --- pieces used by fusion models (callable inside another Cell's graph-mode construct) ---------------
    def embed(self, input_ids, token_type_ids=None):
        """(B, T) int32 token ids [, (B, T) segment ids] -> (B, T, H) embedded tokens."""
        return self.embeddings(input_ids, token_type_ids)

    def extended_attention_mask(self, attention_mask):
        """(B, T) 1/0 mask -> (B, 1, 1, T) float32 additive mask: 0 at tokens, MASK_NEGATIVE at padding."""
        mask = attention_mask.astype(ms.float32)[:, None, None, :]  # (B, 1, 1, T)
        return (1.0 - mask) * MASK_NEGATIVE

    def run_layers(self, hidden, attention_bias, start: int, end: int):
        """Runs encoder layers start .. end-1 (Python ints, unrolled at compile time). (B, T, H) -> (B, T, H)."""
        for index in range(start, end):
            hidden = self.encoder.layer[index](hidden, attention_bias)
        return hidden

    def layer_groups(self, num_groups: int) -> List[Tuple[int, int]]:
        """Splits the layers into ``num_groups`` consecutive (start, end) ranges covering all of them.

        An even split when possible (12 layers in 4 groups -> 3 each); otherwise the first
        ``num_layers % num_groups`` groups get one extra layer (6 layers in 4 groups -> 2, 2, 1, 1).
        Every group has at least one layer, so ``num_groups`` must be in [1, num_layers].
        """
        return split_layers(self.num_layers, num_groups)

    def pool(self, hidden):
        """HF's pooled output, tanh(dense(hidden[:, 0])); needs ``add_pooler=True``. (B, T, H) -> (B, H)."""
        if not self.add_pooler:
            raise ValueError("BertModel was built with add_pooler=False")
        return self.pooler(hidden)

    def construct(self, input_ids, attention_mask, token_type_ids=None):
        hidden = self.embed(input_ids, token_type_ids)               # (B, T, H)
        attention_bias = self.extended_attention_mask(attention_mask)      # (B, 1, 1, T)
        return self.run_layers(hidden, attention_bias, 0, self.num_layers)  # (B, T, H)


def split_layers(num_layers: int, num_groups: int) -> List[Tuple[int, int]]:
    """Consecutive (start, end) ranges splitting ``num_layers`` into ``num_groups`` non-empty groups;
    earlier groups take the remainder. See ``BertModel.layer_groups``."""
    if not isinstance(num_groups, int) or not 1 <= num_groups <= num_layers:
        raise ValueError(f"num_groups must be an int in [1, {num_layers}] (one layer per group at least), "
                         f"got {num_groups!r}")
    base, extra = divmod(num_layers, num_groups)
    groups, start = [], 0
    for g in range(num_groups):
        end = start + base + (1 if g < extra else 0)
        groups.append((start, end))
        start = end
    return groups


# ----------------------------------------------------------------------------------------------------------
# Weights: expected shapes, loading into a (possibly nested) BertModel, converted-checkpoint format
# ----------------------------------------------------------------------------------------------------------
def expected_param_shapes(config: BertConfig, add_pooler: bool = False) -> Dict[str, Tuple[int, ...]]:
    """Name -> shape of every Parameter of ``BertModel(config, add_pooler)``, without building it."""
    h, i = config.hidden_size, config.intermediate_size
    shapes = {
        "embeddings.word_embeddings.weight": (config.vocab_size, h),
        "embeddings.position_embeddings.weight": (config.max_position_embeddings, h),
        "embeddings.token_type_embeddings.weight": (config.type_vocab_size, h),
        "embeddings.LayerNorm.weight": (h,),
        "embeddings.LayerNorm.bias": (h,),
    }
    for n in range(config.num_hidden_layers):
        p = f"encoder.layer.{n}."
        for proj in ("query", "key", "value"):
            shapes[p + f"attention.self.{proj}.weight"] = (h, h)
            shapes[p + f"attention.self.{proj}.bias"] = (h,)
        shapes[p + "attention.output.dense.weight"] = (h, h)
        shapes[p + "attention.output.dense.bias"] = (h,)
        shapes[p + "attention.output.LayerNorm.weight"] = (h,)
        shapes[p + "attention.output.LayerNorm.bias"] = (h,)
        shapes[p + "intermediate.dense.weight"] = (i, h)
        shapes[p + "intermediate.dense.bias"] = (i,)
        shapes[p + "output.dense.weight"] = (h, i)
        shapes[p + "output.dense.bias"] = (h,)
        shapes[p + "output.LayerNorm.weight"] = (h,)
        shapes[p + "output.LayerNorm.bias"] = (h,)
    if add_pooler:
        shapes["pooler.dense.weight"] = (h, h)
        shapes["pooler.dense.bias"] = (h,)
    return shapes


def load_bert_params(model: BertModel, params: Dict[str, object], strict: bool = True
                     ) -> Tuple[List[str], List[str]]:
    """Copies ``params`` (HF-style names relative to the BERT cell -> numpy array / Tensor / Parameter) into
    ``model``, which may be nested inside a bigger network (``src.models.weights.load_into`` matches names
    relative to ``model``). Returns (missing, unexpected) names; a shape mismatch always raises
    ValueError, and with ``strict`` any missing or unexpected name does too.
    """
    return load_into(model, params, "BERT parameters", strict=strict)


def vocab_path_for(ckpt_path: str) -> str:
    """Where ``save_converted_bert`` puts the vocabulary: ``<dir>/<stem>.vocab.txt`` beside the checkpoint."""
    stem, _ = os.path.splitext(ckpt_path)
    return stem + VOCAB_SUFFIX


def save_converted_bert(params: Dict[str, np.ndarray], config: BertConfig, dst: str,
                        vocab_src: Optional[str] = None) -> Optional[str]:
    """Writes a self-describing BERT checkpoint: weights + config JSON (``bert_config_json`` string entry)
    in ``dst``, and a copy of the vocabulary as ``<dst stem>.vocab.txt``. Returns the vocab path written."""
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    entries = [{"name": k, "data": Tensor(np.ascontiguousarray(v, dtype=np.float32))}
               for k, v in params.items()]
    ms.save_checkpoint(entries, dst, append_dict={CONFIG_CKPT_KEY: json.dumps(config.to_dict(), sort_keys=True)})
    if vocab_src is None:
        return None
    vocab_dst = vocab_path_for(dst)
    if os.path.abspath(vocab_src) != os.path.abspath(vocab_dst):
        shutil.copyfile(vocab_src, vocab_dst)
    return vocab_dst


def load_converted_bert(path: str) -> Tuple[BertConfig, Dict[str, Parameter], Optional[str]]:
    """Reads a checkpoint written by ``tools/convert_bert.py``.

    Returns (config, params, vocab_path): ``params`` maps HF-style names to Parameters (feed it to
    ``load_bert_params``); ``vocab_path`` is the sidecar ``<stem>.vocab.txt`` or None if absent.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"BERT checkpoint not found: {path}")
    raw = ms.load_checkpoint(path)
    config_json = raw.pop(CONFIG_CKPT_KEY, None)
    if not isinstance(config_json, str):
        raise CheckpointError(f"{path} has no '{CONFIG_CKPT_KEY}' entry: not written by tools/convert_bert.py")
    config = BertConfig.from_dict(json.loads(config_json))
    vocab = vocab_path_for(path)
    return config, raw, (vocab if os.path.isfile(vocab) else None)


def bert_config_from(section) -> BertConfig:
    """The text encoder's architecture for a `model.bert` section (src.config.BertSection): the converted
    checkpoint's own config when `pretrained` is set, else the section's architecture fields."""
    if section.pretrained:
        config, _, _ = load_converted_bert(section.pretrained)
        return config
    return section.architecture()


def build_bert_from_checkpoint(path: str, add_pooler: bool = False) -> Tuple[BertModel, Optional[str]]:
    """Convenience: a BertModel with the converted weights loaded, and the vocabulary path."""
    config, params, vocab = load_converted_bert(path)
    model = BertModel(config, add_pooler=add_pooler)
    load_bert_params(model, params, strict=True)
    return model, vocab



# ----------------------------------------------------------------------------------------------------------
# Analytic cost (read by tools/benchmark.py; conventions in src/models/cost.py)
# ----------------------------------------------------------------------------------------------------------
def bert_layer_flops(hidden: int, intermediate: int, tokens: int) -> int:
    """Forward FLOPs of one `BertLayer` on `tokens` tokens."""
    from src.models.cost import attention_flops, dense_flops

    return (dense_flops(tokens, hidden, 3 * hidden)          # query, key, value
            + attention_flops(tokens, tokens, hidden)        # scores + context
            + dense_flops(tokens, hidden, hidden)            # attention output
            + dense_flops(tokens, hidden, intermediate) + dense_flops(tokens, intermediate, hidden))


def bert_flops(config: BertConfig, tokens: int, batch: int = 1, num_layers: Optional[int] = None) -> int:
    """Forward FLOPs of `BertModel`'s encoder layers (the embedding is a look-up; no pooler)."""
    layers = config.num_hidden_layers if num_layers is None else num_layers
    return batch * layers * bert_layer_flops(config.hidden_size, config.intermediate_size, tokens)


def bert_activations(config: BertConfig, tokens: int) -> int:
    """fp32 elements `BertModel` keeps from its forward for the backward of one sentence of `tokens` tokens: per
    layer 8 (T, H) tensors, 2 (T, intermediate) ones (GELU input, output dense input) and the attention
    probabilities (heads, T, T); plus the embedding norm's input."""
    hidden, inter, heads = config.hidden_size, config.intermediate_size, config.num_attention_heads
    per_layer = 8 * tokens * hidden + 2 * tokens * inter + heads * tokens * tokens
    return config.num_hidden_layers * per_layer + tokens * hidden

__all__ = [
    "BertConfig", "BertModel", "BertEmbeddings", "BertLayer", "MASK_NEGATIVE",
    "SUPPORTED_HIDDEN_ACTS", "split_layers", "expected_param_shapes", "load_bert_params",
    "save_converted_bert", "load_converted_bert", "build_bert_from_checkpoint", "vocab_path_for",
]
