"""Where a model trained on the synthetic dataset fails: its evaluation split by the kind of expression.

    python research/tools/expression_kinds.py --per_sample OUT/eval_val/per_sample.csv [--per_sample ANOTHER.csv ...]

The kinds (relation, position, size, colour + category, category alone, colour only) are read back from the
words by src/data/expression_kinds.py with the synthetic generator's own vocabulary.
For each kind and each file: samples, oIoU (sum I / sum U), mIoU and P@0.5, as a Markdown table.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
from typing import Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from src.data.expression_kinds import KINDS, expression_kind  # noqa: E402


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
