"""research/tools/expression_kinds.py: every generated expression has a kind, and the table adds up.
(The kind of hand-written expressions, src/data/expression_kinds.py, is tested in tests/test_synthetic.py.)"""
import csv

import pytest

from research.tools.expression_kinds import breakdown, expression_kind


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
