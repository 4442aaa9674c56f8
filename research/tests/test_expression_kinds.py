"""tools/expression_kinds.py reads the kind of every synthetic expression back from its words."""
import csv
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))

from expression_kinds import breakdown, expression_kind  # noqa: E402


@pytest.mark.parametrize("sentence,kind", [
    ("the red circle to the left of the blue square", "relation"), ("Star next to the ring.", "relation"),
    ("the leftmost square", "position"), ("circle at the top", "position"), ("the big triangle", "size"),
    ("the square that is green", "colour"), ("the ring", "category"), ("the red one", "colour only"),
])
def test_kinds_of_handwritten_expressions(sentence, kind):
    assert expression_kind(sentence) == kind


def test_every_generated_expression_has_a_kind_and_the_table_adds_up(tmp_path):
    from src.data.refer import ReferDataset
    from src.data.synthetic import generate_synthetic_refer

    generate_synthetic_refer(str(tmp_path / "d"), num_images=24, seed=1)
    samples = ReferDataset(str(tmp_path / "d"), "refcoco", "unc", "train").samples()
    kinds = {expression_kind(s.text) for s in samples}  # raises on a sentence it cannot place
    assert {"relation", "position", "size"} <= kinds
    path = tmp_path / "per_sample.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["sentence", "iou_input", "intersection_input", "union_input"])
        for k, s in enumerate(samples):
            writer.writerow([s.text, 0.5 if k % 2 else 0.0, 10 if k % 2 else 0, 20])
    table = breakdown(str(path))
    assert sum(t["n"] for t in table.values()) == len(samples)
    for t in table.values():
        assert 0.0 <= t["oIoU"] <= 50.0 and t["P@0.5"] == pytest.approx(t["mIoU"] * 2, abs=1e-6)
