"""Where a model trained on the synthetic dataset fails: its evaluation split by the kind of expression.

    python tools/expression_kinds.py --per_sample OUT/eval_val/per_sample.csv [--per_sample ANOTHER.csv ...]

Every synthetic expression is one of a few kinds (src/data/synthetic.py: a category and/or colour filter,
then at most one superlative or one relation to a landmark). The kind is read back from the words with
the generator's own vocabulary, so this tool and the generator cannot disagree on what a word means:
  relation   "the red circle left of the blue square", "the star next to the ring"
  position   "the leftmost square", "the circle at the top"
  size       "the big triangle"
  colour     a colour and a category ("the red circle", "the square that is green")
  category   the category alone ("the ring"; its category is unique in the image)
  colour only "the red one" (no category)
For each kind and each file: samples, oIoU (sum I / sum U), mIoU and P@0.5, as a Markdown table.
"""
from __future__ import annotations

import argparse
import csv
import os
import re
import sys
from typing import Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from src.data.synthetic import (COLOUR_WORDS, GENERIC_NOUNS, NOUNS, POSITION_ADJECTIVES,  # noqa: E402
                                POSITION_PHRASES, RELATION_PHRASES, SIZE_ADJECTIVES)
from src.errors import DataError  # noqa: E402

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


def breakdown(path: str) -> Dict[str, Dict[str, float]]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"per-sample file not found: {path} (eval.py writes <output_dir>/per_sample.csv)")
    groups: Dict[str, List[dict]] = {k: [] for k in KINDS}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            groups[expression_kind(row["sentence"], path)].append(row)
    table = {}
    for kind, rows in groups.items():
        if not rows:
            continue
        inter = sum(int(r["intersection_input"]) for r in rows)
        union = sum(int(r["union_input"]) for r in rows)
        ious = [float(r["iou_input"]) for r in rows]
        table[kind] = {"n": len(rows), "oIoU": 100.0 * inter / max(union, 1), "mIoU": 100.0 * sum(ious) / len(ious),
                       "P@0.5": 100.0 * sum(i >= 0.5 for i in ious) / len(ious)}
    return table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per_sample", action="append", required=True, help="eval.py's per_sample.csv (repeatable)")
    args = parser.parse_args(argv)
    print("| file | " + " | ".join(f"{k} oIoU / P@0.5 (n)" for k in KINDS) + " |")
    print("|---" * (len(KINDS) + 1) + "|")
    for path in args.per_sample:
        table = breakdown(path)
        cells = [f"{t['oIoU']:.1f} / {t['P@0.5']:.1f} ({t['n']})" if (t := table.get(k)) else "-" for k in KINDS]
        print(f"| {path} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    from src.utils.cli import run_main

    run_main(main)
