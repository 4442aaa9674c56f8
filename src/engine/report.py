"""The combined evaluation report of every split of a dataset (tools/eval_all.py, scripts/run_eval_all.sh).

Which splits a dataset / split_by is evaluated on, which of them a refs file actually holds, and one table in
the paper's layout (rows = splits, columns P@0.5 ... P@0.9, oIoU, mIoU; at the input and at the original
resolution) built from eval.py's metrics.json files, with the paper's oIoU beside ours where the paper
reports one. Pure Python, no MindSpore: it can be read and tested without a model.
"""
from __future__ import annotations

import os
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from src.errors import ConfigError, DataError

# The evaluation splits of each dataset / split_by (the train split is never evaluated). RefCOCO's google
# split file also holds a "test" split, but the literature reports its val only.
EVAL_SPLITS: Dict[Tuple[str, str], Tuple[str, ...]] = {
    ("refcoco", "unc"): ("val", "testA", "testB"),
    ("refcoco+", "unc"): ("val", "testA", "testB"),
    ("refcocog", "umd"): ("val", "test"),
    ("refcocog", "google"): ("val",),
    ("refcoco", "google"): ("val",),
}

# oIoU (%) of the paper, docs/method.md "Numbers to reproduce" (single model per dataset, input resolution).
PAPER_OIOU: Dict[Tuple[str, str], Dict[str, Dict[str, float]]] = {
    ("refcoco", "unc"): {"CoupAlign": {"val": 74.70, "testA": 77.76, "testB": 70.58},
                         "LAVT": {"val": 72.73, "testA": 75.82, "testB": 68.79}},
    ("refcoco+", "unc"): {"CoupAlign": {"val": 62.92, "testA": 68.34, "testB": 56.69},
                          "LAVT": {"val": 62.14, "testA": 68.38, "testB": 55.10}},
    ("refcocog", "umd"): {"CoupAlign": {"val": 62.84, "test": 62.22},
                          "LAVT": {"val": 61.24, "test": 62.09}},
}
PAPER_DATASET_NAME = {("refcoco", "unc"): "RefCOCO", ("refcoco+", "unc"): "RefCOCO+", ("refcocog", "umd"): "G-Ref umd"}
PAPER_METHODS = ("CoupAlign", "LAVT")

# (column title, key in metrics.json) in the paper's order.
METRIC_COLUMNS: Tuple[Tuple[str, str], ...] = (
    ("P@0.5", "precision@0.5"), ("P@0.6", "precision@0.6"), ("P@0.7", "precision@0.7"),
    ("P@0.8", "precision@0.8"), ("P@0.9", "precision@0.9"), ("oIoU", "overall_iou"), ("mIoU", "mean_iou"),
)
RESOLUTIONS = (("input", "input_resolution"), ("original", "original_resolution"))


def eval_splits(dataset: str, split_by: str) -> Tuple[str, ...]:
    """The splits to evaluate for `dataset` (`split_by`); ConfigError for a pair the paper's datasets lack."""
    try:
        return EVAL_SPLITS[(dataset, split_by)]
    except KeyError:
        known = ", ".join(f"{d}({s})" for d, s in EVAL_SPLITS)
        raise ConfigError(f"no evaluation splits known for data.dataset={dataset!r} with data.split_by={split_by!r}; "
                          f"expected one of {known}") from None


def splits_in_refs_file(refs_path: str) -> List[str]:
    """The distinct `split` values of a refs(<split_by>).p file, sorted."""
    from src.data.refer import _load_pickle

    if not os.path.isfile(refs_path):
        raise FileNotFoundError(f"refs file not found: {refs_path} (expected <data_root>/<dataset>/refs(<split_by>).p)")
    try:
        refs = _load_pickle(refs_path)
    except Exception as exc:  # a truncated or foreign file: say which one (as ReferDataset does)
        raise DataError(f"{refs_path}: cannot unpickle refs ({exc})") from exc
    if not isinstance(refs, list):
        raise DataError(f"{refs_path}: expected a pickled list of refs, got {type(refs).__name__}")
    return sorted({str(r.get("split")) for r in refs if isinstance(r, dict)})


def plan_splits(dataset: str, split_by: str, refs_path: str) -> Tuple[List[str], List[str]]:
    """(splits to evaluate that the refs file holds, expected splits it does not hold), each in paper order."""
    present = set(splits_in_refs_file(refs_path))
    expected = eval_splits(dataset, split_by)
    return [s for s in expected if s in present], [s for s in expected if s not in present]


def paper_reference(dataset: str, split_by: str) -> Optional[Dict]:
    """The paper's oIoU for this dataset, labelled, or None where the paper reports none."""
    key = (dataset, split_by)
    if key not in PAPER_OIOU:
        return None
    name = PAPER_DATASET_NAME[key]
    return {
        "label": f"paper ({name})",
        "resolution": "input",
        "source": "docs/method.md, Numbers to reproduce",
        "note": (f"The paper's numbers are for the real {name} at the input resolution; they are comparable "
                 f"only when data_root holds the real dataset (the synthetic data of "
                 f"tools/make_synthetic_refer.py is also named refcoco)."),
        "oIoU": {method: dict(PAPER_OIOU[key][method]) for method in PAPER_METHODS},
    }


def build_results(dataset: str, split_by: str, metrics_by_split: Mapping[str, Dict], missing: Sequence[str],
                  header: Optional[Dict] = None, metrics_paths: Optional[Mapping[str, str]] = None) -> Dict:
    """results.json: the metrics of every evaluated split (copied from its metrics.json), the splits that could
    not be evaluated, and the paper's reference numbers where there are any."""
    results = dict(header or {})
    results.update(dataset=dataset, split_by=split_by, splits=list(metrics_by_split), missing_splits=list(missing))
    results["metrics"] = {}
    for split, metrics in metrics_by_split.items():
        entry = {"num_samples": metrics["num_samples"], "num_skipped": metrics.get("num_skipped", 0)}
        for _, key in RESOLUTIONS:
            entry[key] = {k: metrics[key][k] for _, k in METRIC_COLUMNS}
        if metrics_paths and split in metrics_paths:
            entry["metrics_path"] = metrics_paths[split]
        results["metrics"][split] = entry
    results["paper"] = paper_reference(dataset, split_by)
    return results


def _cell(value: Optional[float]) -> str:
    return "—" if value is None else f"{value:.2f}"


def render_markdown(results: Dict) -> str:
    """results.md: one table, rows = splits (input resolution first, as the paper, then original), the paper's
    oIoU beside ours on the input-resolution rows."""
    paper = results.get("paper")
    titles = ["split", "resolution"] + [title for title, _ in METRIC_COLUMNS[:-1]]
    if paper:
        titles += [f"{method} oIoU, {paper['label']}" for method in PAPER_METHODS]
    titles += [METRIC_COLUMNS[-1][0], "N"]
    lines = [f"# Evaluation: {results['dataset']} ({results['split_by']})", ""]
    for key in ("checkpoint", "config", "data_root"):
        if results.get(key):
            lines.append(f"- {key}: `{results[key]}`")
    lines += ["", "| " + " | ".join(titles) + " |", "|" + "---|" * len(titles)]
    for resolution, key in RESOLUTIONS:
        for split in results["splits"]:
            metrics = results["metrics"][split]
            values = metrics[key]
            row = [split, resolution] + [_cell(values[k]) for _, k in METRIC_COLUMNS[:-1]]
            if paper:
                row += [_cell(paper["oIoU"][m].get(split) if resolution == paper["resolution"] else None)
                        for m in PAPER_METHODS]
            row += [_cell(values[METRIC_COLUMNS[-1][1]]), str(metrics["num_samples"])]
            lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    lines.append("P@t: share of samples with IoU >= t; oIoU: sum of intersections / sum of unions; mIoU: mean "
                 "per-sample IoU; all in percent (README, Metrics). Input resolution is the paper's protocol.")
    if paper:
        lines += ["", f"Paper numbers ({paper['source']}): {paper['note']}"]
    skipped = {s: m["num_skipped"] for s, m in results["metrics"].items() if m.get("num_skipped")}
    if skipped:
        lines += ["", "Unreadable samples left out: " + ", ".join(f"{s} {n}" for s, n in skipped.items())]
    if results.get("missing_splits"):
        lines += ["", f"**Not evaluated**: {', '.join(results['missing_splits'])} — the refs file "
                      f"{results.get('refs_path', '')} holds no refs of these splits."]
    return "\n".join(lines) + "\n"
