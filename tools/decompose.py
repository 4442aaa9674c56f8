"""Error decomposition of a checkpoint (issue #21): proposals, selection and output, per sample and per group.

    python tools/decompose.py --checkpoint_path CK [--config_path C] [--split val] [--data_root D]
        [--compare_per_sample OTHER/per_sample.csv | --compare_checkpoint OTHER.ckpt] [--out DIR] [--key=value ...]

For every sample of the split (src/engine/decomposition.py, at the network's input resolution as eval.py
scores it): the output's IoU, the top-weighted and the best proposal's IoU, whether SMA chose the best one
(within 0.05 IoU), SMA's weight on the best one, the share of the output on other objects (leakage) and, for
the coupled head, the IoU of the word-pixel path and of SMA's map alone. Writes OUT/per_sample.csv and
OUT/summary.json and prints a Markdown table of the means (percent) overall, on the same-category subset
(another object of the referent's category in the image, `same_category_indices` in src/engine/decomposition.py)
and per kind of expression (src/data/expression_kinds.py; synthetic data only: the kinds are left out for
sentences of other datasets).

The comparison column is another model's IoU on the same samples, with the mean difference per group:
--compare_per_sample reads eval.py's per_sample.csv (or this tool's); --compare_checkpoint scores a
checkpoint written by train.py as eval.py would, with its own stored config and this run's data.* keys.
OUT defaults to <output_dir>/decompose_<split>. Like eval.py, --config_path is optional with a train.py
checkpoint and config keys (--data_root, --eval.batch_size, --skip_bad_samples, ...) pass through.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from src.utils.runtime import apply_cpu_env_defaults  # noqa: E402

apply_cpu_env_defaults()  # before MindSpore is imported


def expression_groups(rows):
    """{"kind: <kind>": keys} from src/data/expression_kinds.py, or {} when a sentence is not a synthetic one."""
    from src.data.expression_kinds import KINDS, expression_kind

    from src.errors import DataError

    groups = {f"kind: {k}": set() for k in KINDS}
    try:
        for row in rows:
            groups[f"kind: {expression_kind(row['sentence'])}"].add((row["ref_id"], row["sent_id"]))
    except DataError as e:
        print(f"no breakdown by kind of expression: {e}")
        return {}
    return groups


def compare_checkpoint_ious(path, cfg, refer):
    """{(ref_id, sent_id): iou_input} of checkpoint `path` on `refer`, as eval.py scores it."""
    from dataclasses import replace

    from mindspore import Tensor

    from src.data.dataset import create_refer_dataset
    from src.engine.evaluator import evaluate
    from src.engine.inference import build_trained_model, build_trained_tokenizer, load_inference_config

    other = replace(load_inference_config([f"--checkpoint_path={path}"]), data=cfg.data)
    tokenizer = build_trained_tokenizer(other, "--compare_checkpoint")
    model = build_trained_model(other, "--compare_checkpoint")
    dataset = create_refer_dataset(refer, tokenizer, other.model.image_size, cfg.eval.batch_size, train=False,
                                   num_workers=cfg.data.num_workers)

    def predict(image, input_ids, attention_mask):
        return model(Tensor(image), Tensor(input_ids), Tensor(attention_mask)).asnumpy()

    result = evaluate(predict, refer, dataset, skip_bad_samples=cfg.eval.skip_bad_samples)
    return {(s.ref_id, s.sent_id): s.iou_input for s in result.samples}


def main(argv=None) -> int:
    from src.config import ConfigError
    from src.data.base import build_dataset
    from src.data.dataset import create_refer_dataset
    from src.engine import decomposition
    from src.engine.checkpoint import read_artifacts
    from src.engine.inference import build_trained_model, build_trained_tokenizer, load_inference_config
    from src.utils.cli import split_options
    from src.utils.runtime import setup_context

    args = list(sys.argv[1:] if argv is None else argv)
    options = {"compare_per_sample": "", "compare_checkpoint": "", "out": ""}
    rest = split_options(args, options)  # the tool's own options; the rest are config keys
    if options["compare_per_sample"] and options["compare_checkpoint"]:
        raise ConfigError("give --compare_per_sample or --compare_checkpoint, not both")
    cfg = load_inference_config(rest)
    if not cfg.checkpoint_path:
        raise ConfigError("tools/decompose.py needs --checkpoint_path=<a train.py checkpoint>")
    split = cfg.eval.split
    out_dir = options["out"] or os.path.join(cfg.output_dir, f"decompose_{split}")
    setup_context(cfg)
    refer = build_dataset(cfg, split)
    compare_ious, compare_source = None, options["compare_per_sample"] or options["compare_checkpoint"]
    if options["compare_per_sample"]:  # read and checked before the long run
        compare_ious = decomposition.read_per_sample_ious(compare_source)
        decomposition.check_comparison_split(compare_ious, {(s.ref_id, s.sent_id) for s in refer.samples()},
                                             compare_source, repr(refer))
    elif options["compare_checkpoint"]:
        read_artifacts(compare_source)  # a missing or unreadable file fails now, not after the run

    tokenizer = build_trained_tokenizer(cfg, "tools/decompose.py")
    model = build_trained_model(cfg, "tools/decompose.py")
    dataset = create_refer_dataset(refer, tokenizer, cfg.model.image_size, cfg.eval.batch_size, train=False,
                                   num_workers=cfg.data.num_workers)
    result = decomposition.decompose(model, refer, dataset, skip_bad_samples=cfg.eval.skip_bad_samples,
                                     progress=True)
    if options["compare_checkpoint"]:
        compare_ious = compare_checkpoint_ious(compare_source, cfg, refer)
    if compare_ious is not None:
        decomposition.attach_comparison(result.rows, compare_ious, compare_source)

    groups = {"same category": decomposition.same_category_indices(refer), **expression_groups(result.rows)}
    summary = decomposition.summarise(result.rows, groups)
    header = {"checkpoint": cfg.checkpoint_path, "dataset": cfg.data.dataset, "split_by": cfg.data.split_by,
              "split": split, "compare": compare_source or None}
    csv_path, json_path = decomposition.write_reports(result, summary, out_dir, header)
    gate = "" if result.gate is None else f", gate alpha = {result.gate:.4f}"
    print(f"error decomposition of {cfg.checkpoint_path} ({result.kind} head{gate}) on {refer!r}, percent"
          + (f"; other model: {compare_source}" if compare_source else ""))
    print(decomposition.format_table(summary, result.kind))
    if result.num_skipped:
        print(f"({result.num_skipped} unreadable samples skipped and left out of these numbers)")
    print(f"wrote {csv_path} and {json_path}")
    return 0


if __name__ == "__main__":
    from src.utils.cli import run_main

    run_main(main)
