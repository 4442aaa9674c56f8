"""BERT WordPiece tokenizer producing fixed-length id / mask arrays for the text encoder.

``BertTokenizer(vocab_path, max_tokens=20, lowercase=True).encode(text)`` returns
``(input_ids, attention_mask)``, two ``np.int32`` arrays of length ``max_tokens``:
``[CLS] wordpieces... [SEP]`` truncated to ``max_tokens`` (the word pieces are cut, ``[SEP]`` stays last, as
HF's ``truncation=True`` does), padded with id 0 (``[PAD]`` in BERT vocabularies), mask 1 on real tokens and
0 on padding. The output equals HF ``BertTokenizer(vocab, do_lower_case=True)(text, max_length=max_tokens,
truncation=True, padding="max_length")`` (tests/test_tokenizer.py checks this on a few hundred varied
sentences against both HF's Rust tokenizer and its pure-Python legacy one).

Implementation: the Hugging Face ``tokenizers`` library (a Rust extension, no torch), assembled from the
same parts HF's BERT tokenizer uses: ``BertNormalizer`` (clean control chars, space out CJK ideographs,
lowercase and strip accents when ``lowercase``), ``BertPreTokenizer`` (split on whitespace and punctuation),
``WordPiece`` (greedy longest match, ``##`` continuation, ``[UNK]`` for words over 100 chars or with no
match). BERT's special tokens are registered so that a literal "[SEP]" in the text is one token, as in HF.

Why ``tokenizers`` rather than ``mindspore.dataset.text.BertTokenizer``: measured on this project's 2-core
CPU machine with 10,000 RefCOCO-like sentences of 2-12 words (ids only, same vocab, same ids):

- ``tokenizers`` 0.23, a Python loop over ``encode``: 0.15 s (``encode_batch``, Rust threads: 0.11 s);
  ``import tokenizers`` 0.01 s; a 12 MB wheel with no dependencies (no torch); 57 MB peak RSS.
- ``mindspore.dataset.text.BertTokenizer`` + ``Vocab.tokens_to_ids``, eager: 2.9 s; inside a
  ``NumpySlicesDataset.map`` pipeline (1 worker): 3.0 s; ``import mindspore.dataset.text`` 1.2 s.
  It ships with mindspore (no extra dependency) but is ~20x slower.

``tokenizers`` is also the implementation HF itself uses, so parity with HF holds by construction; it is a
runtime dependency (``tokenizers>=0.15``). ``encode_batch`` below loops over ``encode`` on purpose: the Rust
thread pool does not survive ``fork`` (tokenizers then disables it with a warning) and data loaders fork
worker processes; the loop costs ~15 us a sentence.
"""
from __future__ import annotations

import os
from typing import Dict, Iterable, List, Sequence, Tuple

import numpy as np

from tokenizers import Tokenizer, decoders
from tokenizers.models import WordPiece
from tokenizers.normalizers import BertNormalizer
from tokenizers.pre_tokenizers import BertPreTokenizer

from src.errors import ConfigError, DataError

PAD_TOKEN, UNK_TOKEN, CLS_TOKEN, SEP_TOKEN, MASK_TOKEN = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
REQUIRED_TOKENS = (PAD_TOKEN, UNK_TOKEN, CLS_TOKEN, SEP_TOKEN)
# HF's BERT tokenizer only handles words up to this many characters; longer words become [UNK].
MAX_CHARS_PER_WORD = 100


def load_vocab(vocab_path: str) -> Dict[str, int]:
    """Reads a BERT ``vocab.txt`` (one token a line, id = line number) and checks it is usable.

    Raises DataError (a ValueError) naming the file when it is missing, empty, or lacks one of [PAD], [UNK],
    [CLS], [SEP].
    A duplicated token keeps its last line's id, as HF's loader does.
    """
    if not os.path.isfile(vocab_path):
        raise DataError(f"BERT vocab file not found: {vocab_path}")
    with open(vocab_path, "r", encoding="utf-8") as f:
        tokens = [line.rstrip("\r\n") for line in f]
    if not tokens or all(not t.strip() for t in tokens):
        raise DataError(f"BERT vocab file is empty: {vocab_path}")
    vocab = {token: index for index, token in enumerate(tokens)}
    missing = [t for t in REQUIRED_TOKENS if t not in vocab]
    if missing:
        raise DataError(f"BERT vocab file {vocab_path} lacks the special token(s) {missing}; "
                        f"a BERT vocab needs all of {list(REQUIRED_TOKENS)}")
    return vocab


class BertTokenizer:
    """Text -> fixed-length BERT ids and attention mask (see the module docstring for the exact rules).

    Args:
        vocab_path: BERT ``vocab.txt``.
        max_tokens: output length including [CLS] and [SEP] (>= 2). CoupAlign uses 20.
        lowercase: lowercase and strip accents (uncased models). Use False for cased vocabularies.
    """

    def __init__(self, vocab_path: str, max_tokens: int = 20, lowercase: bool = True):
        if not isinstance(max_tokens, int) or max_tokens < 2:
            raise ConfigError(f"max_tokens (model.max_tokens) must be an int >= 2 (room for [CLS] and [SEP]), "
                              f"got {max_tokens!r}")
        self.vocab_path = vocab_path
        self.max_tokens = max_tokens
        self.lowercase = lowercase
        self.vocab = load_vocab(vocab_path)
        self._id_to_token = {index: token for token, index in self.vocab.items()}
        self.pad_id = self.vocab[PAD_TOKEN]
        self.unk_id = self.vocab[UNK_TOKEN]
        self.cls_id = self.vocab[CLS_TOKEN]
        self.sep_id = self.vocab[SEP_TOKEN]
        self._tokenizer = self._build(self.vocab, lowercase)

    @staticmethod
    def _build(vocab: Dict[str, int], lowercase: bool) -> Tokenizer:
        tokenizer = Tokenizer(WordPiece(vocab, unk_token=UNK_TOKEN, max_input_chars_per_word=MAX_CHARS_PER_WORD))
        # strip_accents=None follows `lowercase`, as in HF's BERT tokenizer.
        tokenizer.normalizer = BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None,
                                              lowercase=lowercase)
        tokenizer.pre_tokenizer = BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece(prefix="##")
        specials = [t for t in (PAD_TOKEN, UNK_TOKEN, CLS_TOKEN, SEP_TOKEN, MASK_TOKEN) if t in vocab]
        tokenizer.add_special_tokens(specials)
        return tokenizer

    # The Rust Tokenizer pickles fine, but rebuilding from the vocab keeps pickles small and version-proof
    # (data loaders pickle the dataset, and with it this object, into worker processes).
    def __getstate__(self):
        return {"vocab_path": self.vocab_path, "max_tokens": self.max_tokens, "lowercase": self.lowercase}

    def __setstate__(self, state):
        self.__init__(state["vocab_path"], state["max_tokens"], state["lowercase"])

    @property
    def vocab_size(self) -> int:
        """Number of lines of the vocab file (the embedding table size a matching model has)."""
        return max(self._id_to_token) + 1

    def tokenize(self, text: str) -> List[str]:
        """Word pieces of ``text``, without [CLS]/[SEP] and without truncation."""
        return self._tokenizer.encode(text, add_special_tokens=False).tokens

    def encode(self, text: str) -> Tuple[np.ndarray, np.ndarray]:
        """``text`` -> (input_ids int32 (max_tokens,), attention_mask int32 (max_tokens,))."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        pieces = self._tokenizer.encode(text, add_special_tokens=False).ids[: self.max_tokens - 2]
        length = len(pieces) + 2
        input_ids = np.full(self.max_tokens, self.pad_id, dtype=np.int32)
        input_ids[0] = self.cls_id
        input_ids[1:length - 1] = pieces
        input_ids[length - 1] = self.sep_id
        attention_mask = np.zeros(self.max_tokens, dtype=np.int32)
        attention_mask[:length] = 1
        return input_ids, attention_mask

    def encode_batch(self, texts: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
        """Several texts -> (input_ids int32 (N, max_tokens), attention_mask int32 (N, max_tokens))."""
        ids = np.empty((len(texts), self.max_tokens), dtype=np.int32)
        mask = np.empty((len(texts), self.max_tokens), dtype=np.int32)
        for row, text in enumerate(texts):
            ids[row], mask[row] = self.encode(text)
        return ids, mask

    def convert_ids_to_tokens(self, ids: Iterable[int]) -> List[str]:
        return [self._id_to_token.get(int(i), UNK_TOKEN) for i in ids]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Ids -> text (lowercased, accents stripped when ``lowercase``); word pieces are re-joined."""
        tokens = self.convert_ids_to_tokens(ids)
        if skip_special_tokens:
            tokens = [t for t in tokens if t not in (PAD_TOKEN, CLS_TOKEN, SEP_TOKEN, MASK_TOKEN)]
        return self._tokenizer.decoder.decode(tokens)


__all__ = ["BertTokenizer", "load_vocab", "REQUIRED_TOKENS"]
