"""Evaluates a checkpoint on every split of the configured dataset and writes one combined table.

    python tools/eval_all.py --config_path C --checkpoint_path CK --results_dir OUT [--key=value ...]
    (or: bash scripts/run_eval_all.sh C CK OUT [--key=value ...])

The splits follow data.dataset and data.split_by (refcoco / refcoco+ unc: val testA testB; refcocog umd:
val test; refcocog / refcoco google: val); those the refs file does not hold are reported and skipped.
The model is built and loaded once and scores every split in this process (eval.py's own code,
src/engine/evaluator.py: evaluate_split), with each split's output in OUT/<split>/ (metrics.json,
per_sample.csv, eval.log); then OUT/results.json and OUT/results.md hold every split's metrics in the
paper's layout, with the paper's oIoU beside ours for RefCOCO, RefCOCO+ and G-Ref umd. The other
--key=value options go to every eval.py run (e.g. --data_root=..., --eval.batch_size=4); --split and
--eval.output_dir are chosen here. Relative paths are relative to the directory this is run from.
"""
import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from src.utils.runtime import apply_cpu_env_defaults  # noqa: E402

apply_cpu_env_defaults()  # before MindSpore is imported

# eval.py's own short names, so that the options it accepts are read the same way here.
EVAL_ALIASES = {"batch_size": "eval.batch_size"}
OWN_KEYS = ("eval.split", "eval.output_dir")


def main(argv=None) -> int:
    import json

    from dataclasses import replace

    from src.config import ARGS_CWD_ENV, ConfigError, parse_overrides
    from src.engine.evaluator import evaluate_split, format_table
    from src.engine.inference import build_trained_model, build_trained_tokenizer, load_inference_config
    from src.engine.report import build_results, plan_splits, render_markdown
    from src.errors import DataError
    from src.utils.log import setup_logging
    from src.utils.runtime import setup_context

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config_path", required=True)
    parser.add_argument("--checkpoint_path", required=True)
    parser.add_argument("--results_dir", required=True, help="OUT: OUT/<split>/ per split, OUT/results.{md,json}")
    args, overrides = parser.parse_known_args(sys.argv[1:] if argv is None else argv)

    # Relative paths on this command line, and in the options passed on to eval.py (src/config/ reads
    # ARGS_CWD_ENV), are the caller's; eval.py itself runs from the repository root, as the config files expect.
    caller_dir = os.environ.setdefault(ARGS_CWD_ENV, os.getcwd())

    def caller_path(path):
        return os.path.normpath(os.path.join(caller_dir, os.path.expanduser(path)))

    config_path, checkpoint_path, out = map(caller_path, (args.config_path, args.checkpoint_path, args.results_dir))
    for what, path in (("config file", config_path), ("checkpoint", checkpoint_path)):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{what} not found: {path}")
    _, given = parse_overrides(overrides, EVAL_ALIASES)
    clash = [key for key in OWN_KEYS if key in given]
    if clash:
        raise ConfigError(f"{', '.join('--' + k for k in clash)}: chosen by eval_all per split "
                          f"(OUT/<split>/); leave them out")
    os.chdir(ROOT)  # config-file paths (data_root: data/refer, pretrained/...) are relative to the repository
    cfg = load_inference_config(["--config_path", config_path, f"--checkpoint_path={checkpoint_path}", *overrides],
                                aliases=EVAL_ALIASES)
    dataset, split_by, data_root = cfg.data.dataset, cfg.data.split_by, os.path.abspath(cfg.data.data_root)
    refs_path = os.path.join(data_root, dataset, f"refs({split_by}).p")
    splits, missing = plan_splits(dataset, split_by, refs_path)
    if missing:
        print(f"eval_all: WARNING: {refs_path} holds no refs of split(s) {', '.join(missing)}; evaluating only "
              f"{', '.join(splits) or 'nothing'}", file=sys.stderr)
    if not splits:
        raise DataError(f"{refs_path} holds none of the evaluation splits of {dataset}({split_by}): "
                        f"expected one or more of {', '.join(missing)}")

    ctx = setup_context(cfg)
    tokenizer = build_trained_tokenizer(cfg, "eval_all.py")
    model = build_trained_model(cfg, "eval_all.py")
    metrics_by_split, metrics_paths = {}, {}
    for position, split in enumerate(splits, 1):
        split_dir = os.path.join(out, split)
        print(f"eval_all: [{position}/{len(splits)}] {dataset}({split_by}) {split} -> {split_dir}", flush=True)
        setup_logging(split_dir, "eval", ctx.rank)
        split_cfg = replace(cfg, eval=replace(cfg.eval, split=split, output_dir=split_dir))
        result, path = evaluate_split(split_cfg, ctx, model, tokenizer, split_dir)
        print(format_table(split, result))
        with open(path, encoding="utf-8") as f:
            metrics_by_split[split] = json.load(f)
        metrics_paths[split] = path

    header = {"checkpoint": checkpoint_path, "config": config_path, "data_root": data_root, "refs_path": refs_path}
    results = build_results(dataset, split_by, metrics_by_split, missing, header, metrics_paths)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    table = render_markdown(results)
    with open(os.path.join(out, "results.md"), "w", encoding="utf-8") as f:
        f.write(table)
    print(table)
    print(f"wrote {os.path.join(out, 'results.md')} and results.json")
    return 0


if __name__ == "__main__":
    from src.utils.cli import run_main

    run_main(main)
