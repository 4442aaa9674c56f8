"""Evaluate a trained CoupAlign on one split by the LAVT protocol (oIoU, mIoU, precision@0.5..0.9).

    python eval.py --config_path C --checkpoint_path CK --data_root D --dataset refcocog --split_by umd \
        --split val --output_dir OUT [--save_masks true] [--visualize 16] [--skip_bad_samples true] \
        [--swap_sentences true | --eval.control_output_dir OUT_CONTROL]
    bash scripts/run_distribute_eval.sh DEVICE_NUM C CK [--key=value ...]    (every device scores a shard)

--config_path is optional with a checkpoint written by train.py (its config, text-encoder architecture
and vocabulary are stored in it; command-line keys override them); --ckpt_file is the same as
--checkpoint_path. Writes OUT/metrics.json, OUT/per_sample.csv, OUT/masks/<ref_id>_<sent_id>.png (--save_masks) and
OUT/visualize/*.png (--visualize K), and prints the paper's table. A sample whose image or mask cannot
be loaded stops the evaluation with the file and field named; with --skip_bad_samples true it is left
out of the metrics and listed (with the reason) in metrics.json. --swap_sentences true scores the grounding control
(every sentence replaced by one of another object in the same image) instead of the split's sentences;
--eval.control_output_dir OUT_CONTROL scores it too, after the split, into OUT_CONTROL (same files, no masks or
overlays).
"""
import sys

from src.utils.runtime import apply_cpu_env_defaults

apply_cpu_env_defaults()  # before MindSpore is imported


def main(argv=None) -> int:
    from dataclasses import replace

    from src.data.base import build_dataset
    from src.engine.evaluator import evaluate_split, format_table
    from src.engine.inference import build_trained_model, build_trained_tokenizer, load_inference_config
    from src.utils.log import setup_logging
    from src.utils.runtime import setup_context

    cfg = load_inference_config(sys.argv[1:] if argv is None else argv, aliases={"batch_size": "eval.batch_size"})
    out_dir = cfg.eval.output_dir or cfg.output_dir
    ctx = setup_context(cfg)  # with --distribute=true under msrun: each rank scores a shard of the split
    setup_logging(out_dir, "eval", ctx.rank)
    tokenizer = build_trained_tokenizer(cfg, "eval.py")
    model = build_trained_model(cfg, "eval.py")
    refer = build_dataset(cfg, cfg.eval.split)  # read once for the split and its grounding control
    result, path = evaluate_split(cfg, ctx, model, tokenizer, out_dir, refer)
    if ctx.is_main:
        print(format_table(cfg.eval.split, result))
        print(f"wrote {path}")
    if cfg.eval.control_output_dir:  # the grounding control with the model already loaded and compiled
        control_cfg = replace(cfg, eval=replace(cfg.eval, swap_sentences=True, save_masks=False, visualize=0))
        control, path = evaluate_split(control_cfg, ctx, model, tokenizer, cfg.eval.control_output_dir, refer)
        if ctx.is_main:
            print("grounding control (each sentence replaced by one of another object in the same image):")
            print(format_table(cfg.eval.split, control))
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    from src.utils.cli import run_main

    run_main(main)
