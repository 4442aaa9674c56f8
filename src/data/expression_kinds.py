"""The kind of a synthetic referring expression, read back from its words.

Every expression of the synthetic dataset (src/data/synthetic_language.py) is a category and/or colour filter, then at
most one superlative or one relation to a landmark. The kind is read with the generator's own vocabulary, so
the reader and the generator cannot disagree on what a word means:
  relation    "the red circle left of the blue square", "the star next to the ring"
  position    "the leftmost square", "the circle at the top"
  size        "the big triangle"
  colour      a colour and a category ("the red circle", "the square that is green")
  category    the category alone ("the ring"; its category is unique in the image)
  colour only "the red one" (no category)
tools/decompose.py groups its error decomposition by these kinds; research/tools/expression_kinds.py
tabulates eval.py's per-sample results by them.
"""
from __future__ import annotations

import re

from src.data.synthetic_language import (GENERIC_NOUNS, NOUNS, POSITION_ADJECTIVES, POSITION_PHRASES, RELATION_PHRASES,
                                         SIZE_ADJECTIVES)
from src.data.synthetic_scenes import COLOUR_WORDS
from src.errors import DataError

KINDS = ("relation", "position", "size", "colour", "category", "colour only")


def _has_phrase(text: str, phrases) -> bool:
    return any(re.search(rf"\b{re.escape(p)}\b", text) for p in phrases)


def expression_kind(sentence: str, source: str = "") -> str:
    """The kind of a synthetic expression; a DataError (naming `source`, the file) for any other sentence."""
    text = " " + re.sub(r"[^a-z ]", " ", sentence.lower()) + " "
    if _has_phrase(text, [p for ps in RELATION_PHRASES.values() for p in ps]):
        return "relation"
    if _has_phrase(text, [p for ps in POSITION_PHRASES.values() for p in ps]
                   + [p for ps in POSITION_ADJECTIVES.values() for p in ps]):
        return "position"
    if _has_phrase(text, [p for ps in SIZE_ADJECTIVES.values() for p in ps]):
        return "size"
    has_colour = _has_phrase(text, COLOUR_WORDS)
    has_category = _has_phrase(text, [n for ns in NOUNS.values() for n in ns])
    if has_colour and has_category:
        return "colour"
    if has_category:
        return "category"
    if has_colour and _has_phrase(text, GENERIC_NOUNS):
        return "colour only"
    where = f"{source}: " if source else ""
    raise DataError(f"{where}sentence {sentence!r} is not one the synthetic generator writes (this breakdown is "
                    "for evaluations on the synthetic dataset)")
