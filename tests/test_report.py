"""src/engine/report.py (the every-split table of scripts/run_eval_all.sh) and tools/eval_all.py's checks
made before any evaluation runs. The full run over a trained model is in tests/test_entry_scripts.py."""
import os
import pickle
import subprocess
import sys

import pytest

from src.engine.report import (EVAL_SPLITS, METRIC_COLUMNS, build_results, eval_splits, paper_reference,
                               plan_splits, render_markdown)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _metrics(base):
    """A metrics.json as eval.py writes it, with distinct values per key."""
    values = {key: base + k + 0.123456 for k, (_, key) in enumerate(METRIC_COLUMNS)}
    return {"dataset": "refcoco", "num_samples": 10 + int(base), "num_skipped": 0, "skipped": [],
            "input_resolution": dict(values), "original_resolution": {k: v + 0.5 for k, v in values.items()}}


def _table_rows(markdown):
    lines = [line for line in markdown.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return header, [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[1:]]


def test_splits_per_dataset():
    assert eval_splits("refcoco", "unc") == eval_splits("refcoco+", "unc") == ("val", "testA", "testB")
    assert eval_splits("refcocog", "umd") == ("val", "test")
    assert eval_splits("refcocog", "google") == eval_splits("refcoco", "google") == ("val",)
    with pytest.raises(ValueError, match="data.dataset='refcoco' with data.split_by='umd'"):
        eval_splits("refcoco", "umd")
    assert set(EVAL_SPLITS) >= {("refcoco", "unc"), ("refcoco+", "unc"), ("refcocog", "umd")}


def test_missing_splits_are_named(tmp_path):
    refs = tmp_path / "refs(unc).p"
    with open(refs, "wb") as f:
        pickle.dump([{"split": "train"}, {"split": "val"}, {"split": "testA"}], f, protocol=2)
    assert plan_splits("refcoco", "unc", str(refs)) == (["val", "testA"], ["testB"])
    with pytest.raises(FileNotFoundError, match="refs file not found"):
        plan_splits("refcoco", "unc", str(tmp_path / "absent.p"))


def test_table_holds_every_split_at_both_resolutions_with_the_paper_beside():
    metrics = {"val": _metrics(1), "testA": _metrics(2), "testB": _metrics(3)}
    results = build_results("refcoco", "unc", metrics, [], {"checkpoint": "ck"})
    assert results["paper"]["label"] == "paper (RefCOCO)"
    assert results["paper"]["oIoU"]["CoupAlign"] == {"val": 74.70, "testA": 77.76, "testB": 70.58}
    markdown = render_markdown(results)
    header, rows = _table_rows(markdown)
    assert "CoupAlign oIoU, paper (RefCOCO)" in header and "LAVT oIoU, paper (RefCOCO)" in header
    assert header.index("CoupAlign oIoU, paper (RefCOCO)") == header.index("oIoU") + 1
    assert [(r["split"], r["resolution"]) for r in rows] == [
        (s, res) for res in ("input", "original") for s in ("val", "testA", "testB")]
    for row in rows:
        m = metrics[row["split"]][f"{row['resolution']}_resolution"]
        for title, key in METRIC_COLUMNS:
            assert row[title] == f"{m[key]:.2f}" and results["metrics"][row["split"]][
                f"{row['resolution']}_resolution"][key] == m[key]
        expected_paper = {"val": "74.70", "testA": "77.76", "testB": "70.58"}[row["split"]]
        assert row["CoupAlign oIoU, paper (RefCOCO)"] == (expected_paper if row["resolution"] == "input" else "—")
    assert "only when data_root holds the real dataset" in markdown


def test_paper_numbers_only_where_the_paper_reports_them():
    assert paper_reference("refcocog", "umd")["oIoU"]["LAVT"] == {"val": 61.24, "test": 62.09}
    assert paper_reference("refcoco+", "unc")["label"] == "paper (RefCOCO+)"
    for dataset, split_by in (("refcocog", "google"), ("refcoco", "google")):
        results = build_results(dataset, split_by, {"val": _metrics(1)}, [])
        assert results["paper"] is None
        header, rows = _table_rows(render_markdown(results))
        assert not any("paper" in title for title in header) and len(rows) == 2


def test_missing_split_is_reported_in_the_table():
    results = build_results("refcocog", "umd", {"val": _metrics(1)}, ["test"], {"refs_path": "/d/refs(umd).p"})
    assert results["missing_splits"] == ["test"]
    assert "**Not evaluated**: test" in render_markdown(results)


def test_eval_all_refuses_the_options_it_chooses(tmp_path):
    config, ckpt = tmp_path / "c.yaml", tmp_path / "m.ckpt"
    config.write_text("seed: 1\n")
    ckpt.write_bytes(b"")
    for option in ("--split=testA", "--eval.output_dir=x"):
        proc = subprocess.run([sys.executable, "tools/eval_all.py", "--config_path", str(config), "--checkpoint_path",
                               str(ckpt), "--results_dir", str(tmp_path / "out"), option],
                              cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and "chosen by eval_all per split" in proc.stderr, proc.stderr
    proc = subprocess.run(["bash", "scripts/run_eval_all.sh", str(config), str(tmp_path / "absent.ckpt"), "out"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and f"checkpoint not found: {tmp_path / 'absent.ckpt'}" in proc.stderr
