"""The ablation table of CoupAlign (the paper's Table 3 layout) on a synthetic or real refer dataset.

    python research/tools/ablate.py --config_path configs/quickstart_cpu.yaml --data_root data/synthetic \
        [--seeds 0,1] [--rows lavt,bidir,sma,coupalign,n4,n64] [--out outputs/ablation/quickstart] \
        [--set train.epochs=2 ...]

Every (row, seed) is one process per step (train.py, eval.py on the validation split, eval.py with every
sentence replaced by one of another object in the same image = the grounding control,
tools/diagnose.py, tools/decompose.py), written under OUT/<row>/seed<k>/. A finished run leaves result.json and is not
run again; an interrupted one resumes from its last checkpoint (train.py --train.resume=true). After
every run the table is rewritten: OUT/ablation.md and OUT/ablation.json (per-seed values, mean and
spread, diagnostics of each run). Every run validates after each epoch, with the training-health diagnostics
(`PROTOCOL`).

Rows (each on the recipe of --config_path; `--set` adds overrides to all of them):

| row | what changes |
|---|---|
| lavt | one-way WPA (all of BERT first), no mask generator / SMA, no auxiliary loss |
| bidir | + words attend to pixels (bidirectional WPA) |
| sma_sum | + mask generator and SMA, only the output supervised (loss.terms=[referring]) |
| sma | + mask generator and SMA with the config's proposal terms, no auxiliary contrast |
| coupalign | + auxiliary contrast: the full model = the config as given |
| mixture | the full model with the mixture SMA head (the output is the weighted mix of the proposals; docs/method.md) |
| paper_sma | the full model with the paper's SMA scores `Q_n . g` only: no category head, mask geometry or reasoning layers |
| n4, n16, n64 | the full model with 4 / 16 / 64 proposals (the one equal to the config's N reuses coupalign) |

"same-category" is the subset of validation samples whose image holds another annotated object of the
referent's category (`same_category_indices` in src/engine/decomposition.py): the cases the paper says
CoupAlign is best at.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from typing import Dict, List

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

# Each row: model overrides, then its loss terms: the only ones (ROW_TERMS) or the config's less some (ROW_DROPS).
ROWS: Dict[str, Dict[str, object]] = {
    "lavt": {"model.wpa.bidirectional": False, "model.sma.enabled": False},
    "bidir": {"model.sma.enabled": False},
    "sma_sum": {},
    "sma": {},
    "coupalign": {},
    "mixture": {"model.sma.head": "mixture", "model.sma.pixel_agreement": False},
    "paper_sma": {"model.mask_generator.num_classes": 0, "model.sma.mask_geometry": False,
                  "model.sma.reasoning_layers": 0},
    "n4": {"model.mask_generator.num_queries": 4},
    "n16": {"model.mask_generator.num_queries": 16},
    "n64": {"model.mask_generator.num_queries": 64},
}
ROW_TERMS = {"lavt": ("referring",), "bidir": ("referring",), "sma_sum": ("referring",)}
ROW_DROPS = {"sma": ("aux_contrast",), "mixture": ("sma_map",), "paper_sma": ("proposal_class",)}
DEFAULT_ROWS = "lavt,bidir,sma_sum,sma,coupalign,n4,n64"
LABELS = {
    "lavt": "1. LAVT-style: one-way WPA, no SMA, no aux",
    "bidir": "2. + bidirectional WPA",
    "sma_sum": "3a. + mask generator + SMA, weighted sum only supervised",
    "sma": "3. + mask generator + SMA (proposal loss)",
    "coupalign": "4. + auxiliary contrast = CoupAlign",
    "mixture": "4m. CoupAlign with the mixture SMA head (SMA's mix is the only output path)",
    "paper_sma": "4p. CoupAlign with the paper's SMA scores only (no category head, geometry, reasoning)",
    "n4": "5. CoupAlign, N = 4",
    "n16": "5. CoupAlign, N = 16",
    "n64": "5. CoupAlign, N = 64",
}
METRICS = ("overall_iou", "mean_iou", "precision@0.5", "precision@0.9")
HEALTH = ("sma_entropy", "mask_embed_cosine", "top_proposal_changes", "max_token_self_similarity")


def _fmt(value) -> str:
    if isinstance(value, list):
        return "[" + ",".join(value) + "]"
    return "true" if value is True else "false" if value is False else str(value)


# Every run validates after each epoch with the training-health diagnostics, whatever the config says (the quickstart
# turns both off to save time): the per-epoch curves and diagnostics of the records are measured this way.
PROTOCOL = {"train.validate_every": 1, "train.diagnostics_pairs": 32}


def _row_overrides(row: str, cfg) -> Dict[str, object]:
    overrides = {**PROTOCOL, **ROWS[row]}
    drops = ROW_DROPS.get(row, ())
    terms = list(ROW_TERMS[row]) if row in ROW_TERMS else [t for t in cfg.loss.terms if t not in drops]
    if terms != list(cfg.loss.terms):
        overrides["loss.terms"] = terms
    if "proposal_class" not in terms and cfg.model.mask_generator.num_classes:  # an untrained category head
        overrides["model.mask_generator.num_classes"] = 0
    queries = overrides.get("model.mask_generator.num_queries")
    if queries is not None and cfg.data.max_other_objects is not None:  # room to match every object one-to-one
        overrides["data.max_other_objects"] = min(cfg.data.max_other_objects, int(queries) - 1)
    return overrides


def _run(cmd: List[str], log_path: str) -> None:
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"\n$ {' '.join(cmd)}\n")
        log.flush()
        code = subprocess.call(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                               env=dict(os.environ, GLOG_v=os.environ.get("GLOG_v", "3")))
    if code != 0:
        raise RuntimeError(f"{' '.join(cmd[:2])} failed with exit code {code}; see {log_path}")


def subset_metrics(per_sample_csv: str, keys: set) -> Dict[str, float]:
    from src.metrics import RefSegMetrics

    metrics = RefSegMetrics()
    with open(per_sample_csv, encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if (int(row["ref_id"]), int(row["sent_id"])) in keys:
                metrics.add(int(row["intersection_input"]), int(row["union_input"]))
    return metrics.compute()


def run_one(args, row: str, seed: int, cfg, keys: set) -> Dict:
    run_dir = os.path.join(args.out, row, f"seed{seed}")
    result_path = os.path.join(run_dir, "result.json")
    if os.path.isfile(result_path):
        with open(result_path, encoding="utf-8") as f:
            return json.load(f)
    os.makedirs(run_dir, exist_ok=True)
    log = os.path.join(run_dir, "run.log")
    overrides = {**_row_overrides(row, cfg), **args.set, "seed": seed}
    config_args = ["--config_path", args.config_path, f"--data_root={args.data_root}"]
    config_args += [f"--{k}={_fmt(v)}" for k, v in overrides.items()]
    py = sys.executable
    start = time.time()
    _run([py, "train.py", *config_args, f"--output_dir={run_dir}", "--train.resume=true"], log)
    train_seconds = time.time() - start
    ckpt = os.path.join(run_dir, "checkpoints", "best.ckpt")
    evals = {}
    # val and its grounding control in one process (one model load and compile); the train split on its own
    control_dir = os.path.join(run_dir, "eval_control")
    evaluations = [("val", "val", [f"--eval.control_output_dir={control_dir}"])]
    if args.eval_train:  # train-split oIoU beside val separates under- from over-fitting
        evaluations.append(("train", "train", []))
    for name, split, extra in evaluations:
        out = os.path.join(run_dir, f"eval_{name}")
        _run([py, "eval.py", *config_args, f"--checkpoint_path={ckpt}", f"--split={split}", f"--eval.output_dir={out}",
              *extra], log)
    for name in ["val", "control"] + (["train"] if args.eval_train else []):
        with open(os.path.join(run_dir, f"eval_{name}", "metrics.json"), encoding="utf-8") as f:
            evals[name] = json.load(f)["input_resolution"]
    diag_path = os.path.join(run_dir, "diagnostics.json")
    _run([py, "tools/diagnose.py", *config_args, f"--checkpoint_path={ckpt}", f"--output={diag_path}"], log)
    with open(diag_path, encoding="utf-8") as f:
        diag = json.load(f)
    dec_dir = os.path.join(run_dir, "decompose_val")  # proposals vs selection vs output (src/engine/decomposition.py)
    _run([py, "tools/decompose.py", *config_args, f"--checkpoint_path={ckpt}", "--split=val", f"--out={dec_dir}"], log)
    with open(os.path.join(dec_dir, "summary.json"), encoding="utf-8") as f:
        decomposition = json.load(f)
    health = dict(diag["metrics"])
    tokens = [v for k, v in health.items() if k.startswith("token_self_similarity_")]
    health["max_token_self_similarity"] = max(tokens) if tokens else float("nan")
    result = {"row": row, "seed": seed, "overrides": overrides, "val": evals["val"], "control": evals["control"],
              "train": evals.get("train"),
              "same_category": subset_metrics(os.path.join(run_dir, "eval_val", "per_sample.csv"), keys),
              "diagnostics": health, "warnings": diag["warnings"], "decomposition": decomposition,
              "train_seconds": train_seconds}
    with open(result_path, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    return result


def _cell(values: List[float]) -> str:
    import numpy as np

    values = [v for v in values if v == v]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{np.mean(values):.2f} ± {np.std(values):.2f}"


# (group, key) of tools/decompose.py's summary shown in the table; "gate" is the coupled head's alpha.
DECOMPOSITION = ((None, "gate"), ("overall", "oiou_pixel_path"), ("overall", "iou_best"),
                 ("same category", "selection_accuracy"), ("overall", "leakage"))


def _decomposition(result: Dict, group, key) -> float:
    """A value of the run's error decomposition (NaN where the run has none, e.g. rows run before it existed)."""
    summary = result.get("decomposition")
    if not summary:
        return float("nan")
    value = summary.get(key) if group is None else summary["groups"].get(group, {}).get(key)
    return float("nan") if value is None else float(value)


def write_table(args, results: Dict[str, List[Dict]], machine: str) -> str:
    header = ("| row | seeds | oIoU | mIoU | P@0.5 | P@0.9 | control oIoU | same-category oIoU (n) | "
              "train oIoU | SMA entropy / ln N | mask-embedding cosine | top proposal follows sentence | max token self-sim | "
              "gate | oIoU at gate 0 | oracle (best proposal) mIoU | selection acc. (same-category) | leakage |")
    lines = [f"Ablation on `{args.config_path}` + `{' '.join(f'--{k}={v}' for k, v in args.set.items()) or '-'}`, "
             f"data `{args.data_root}` (val split), mean ± std over seeds. {machine}.", "", header,
             "|" + "---|" * (header.count("|") - 1)]
    for row, runs in results.items():
        if not runs:
            continue
        n_subset = runs[0]["same_category"]["num_samples"]
        cells = [LABELS.get(row, row), ",".join(str(r["seed"]) for r in runs)]
        cells += [_cell([r["val"][m] for r in runs]) for m in METRICS]
        cells += [_cell([r["control"]["overall_iou"] for r in runs]),
                  f"{_cell([r['same_category']['overall_iou'] for r in runs])} ({n_subset})",
                  _cell([(r.get("train") or {}).get("overall_iou", float("nan")) for r in runs])]
        cells += [_cell([r["diagnostics"].get(k, float("nan")) for r in runs]) for k in HEALTH]
        cells += [_cell([_decomposition(r, *key) for r in runs]) for key in DECOMPOSITION]
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(args.out, "ablation.md"), "w", encoding="utf-8") as f:
        f.write(text)
    with open(os.path.join(args.out, "ablation.json"), "w", encoding="utf-8") as f:
        json.dump({"config": args.config_path, "set": args.set, "data_root": args.data_root, "machine": machine,
                   "rows": results}, f, indent=2)
    return text


def _machine() -> str:
    from src.utils.runtime import cpu_model

    return f"{time.strftime('%Y-%m-%d')}, {cpu_model()}, {os.cpu_count()} cores"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config_path", required=True)
    parser.add_argument("--data_root", required=True)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--rows", default=DEFAULT_ROWS)
    parser.add_argument("--out", default="")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides for every row")
    parser.add_argument("--eval_train", action="store_true", help="also evaluate every run on the train split")
    parser.add_argument("--table_only", action="store_true", help="rewrite the table from finished runs only")
    args = parser.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",") if s]
    args.rows = [r for r in args.rows.split(",") if r]
    unknown = [r for r in args.rows if r not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}; valid: {list(ROWS)}")
    pairs = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set expects KEY=VALUE, got {item!r}")
        pairs[key.lstrip("-")] = value
    args.set = pairs
    if not args.out:
        args.out = os.path.join("outputs", "ablation", os.path.splitext(os.path.basename(args.config_path))[0])
    return args


def main(argv=None) -> int:
    from src.config import load_config
    from src.data.base import build_dataset
    from src.engine.decomposition import same_category_indices

    args = parse_args(argv)
    cfg = load_config(args.config_path, [f"--data_root={args.data_root}"] + [f"--{k}={v}" for k, v in args.set.items()])
    refer = build_dataset(cfg, cfg.data.val_split)  # cfg.data.data_root is --data_root, as the runs read it
    keys = same_category_indices(refer)
    os.makedirs(args.out, exist_ok=True)
    machine = _machine()
    results: Dict[str, List[Dict]] = {row: [] for row in args.rows}
    for seed in args.seeds:  # every row once before the second seed: a stopped table is still a table
        for row in args.rows:
            queries = ROWS[row].get("model.mask_generator.num_queries")
            source = "coupalign" if queries == cfg.model.mask_generator.num_queries else row
            done = os.path.join(args.out, source, f"seed{seed}", "result.json")
            if args.table_only and not os.path.isfile(done):
                continue
            print(f"[ablate] {row} seed {seed}" + (" (= coupalign)" if source != row else ""), flush=True)
            results[row].append(run_one(args, source, seed, cfg, keys))
            print(write_table(args, results, machine), flush=True)
    print(write_table(args, results, machine))
    return 0


if __name__ == "__main__":
    sys.exit(main())
