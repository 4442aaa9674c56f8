"""Evaluate a trained CoupAlign on one split by the LAVT protocol (oIoU, mIoU, precision@0.5..0.9).

    python eval.py --config_path C --checkpoint_path CK --data_root D --dataset refcocog --split_by umd \
        --split val --output_dir OUT [--save_masks true] [--visualize 16] [--skip_bad_samples true]
    bash scripts/run_distribute_eval.sh DEVICE_NUM C CK [--key=value ...]    (every device scores a shard)

--config_path is optional with a checkpoint written by train.py (its config, text-encoder architecture
and vocabulary are stored in it; command-line keys override them); --ckpt_file is the same as
--checkpoint_path. Writes OUT/metrics.json, OUT/per_sample.csv, OUT/masks/<ref_id>_<sent_id>.png (--save_masks) and
OUT/visualize/*.png (--visualize K), and prints the paper's table. A sample whose image or mask cannot
be loaded stops the evaluation with the file and field named; with --skip_bad_samples true it is left
out of the metrics and listed (with the reason) in metrics.json.
"""
import sys

from src.utils.runtime import apply_cpu_env_defaults

apply_cpu_env_defaults()  # before MindSpore is imported


def main(argv=None) -> int:
    import os

    from mindspore import Tensor

    from src.data.dataset import create_refer_dataset
    from src.data.refer import ReferDataset
    from src.engine.evaluator import evaluate, format_table, gather_shards, write_reports
    from src.engine.inference import build_trained_model, build_trained_tokenizer, load_inference_config
    from src.utils.log import setup_logging
    from src.utils.runtime import setup_context
    from src.utils.visualize import overlay, write_png

    cfg = load_inference_config(sys.argv[1:] if argv is None else argv, aliases={"batch_size": "eval.batch_size"})
    out_dir = cfg.eval.output_dir or cfg.output_dir
    ctx = setup_context(cfg)  # with --distribute=true under msrun: each rank scores a shard of the split
    setup_logging(out_dir, "eval", ctx.rank)
    refer = ReferDataset(cfg.data.data_root, cfg.data.dataset, cfg.data.split_by, cfg.eval.split)
    if cfg.eval.swap_sentences:
        refer = refer.with_swapped_sentences(seed=cfg.seed)
    shard = dict(num_shards=ctx.group_size, shard_id=ctx.rank) if ctx.group_size > 1 else {}
    dataset = create_refer_dataset(refer, build_trained_tokenizer(cfg, "eval.py"), cfg.model.image_size, cfg.eval.batch_size,
                                   train=False, num_workers=cfg.data.num_workers, **shard)
    model = build_trained_model(cfg, "eval.py")

    def predict(image, input_ids, attention_mask):
        return model(Tensor(image), Tensor(input_ids), Tensor(attention_mask)).asnumpy()

    if cfg.eval.save_masks:
        os.makedirs(os.path.join(out_dir, "masks"), exist_ok=True)
    if cfg.eval.visualize:
        os.makedirs(os.path.join(out_dir, "visualize"), exist_ok=True)

    def on_prediction(sample, original_logits, position):
        mask = original_logits > 0
        if cfg.eval.save_masks:
            write_png(os.path.join(out_dir, "masks", f"{sample.ref_id}_{sample.sent_id}.png"), mask.astype("uint8") * 255)
        if ctx.is_main and position < cfg.eval.visualize:
            picture = overlay(refer.load_image(sample.image_id), mask, sample.text)
            write_png(os.path.join(out_dir, "visualize", f"{position:04d}_{sample.ref_id}_{sample.sent_id}.png"), picture)

    shard_result = evaluate(predict, refer, dataset, on_prediction=on_prediction, progress=ctx.is_main,
                            skip_bad_samples=cfg.eval.skip_bad_samples)
    result = gather_shards(shard_result, ctx)
    if not ctx.is_main:
        return 0
    path = write_reports(result, out_dir, {"dataset": cfg.data.dataset, "split_by": cfg.data.split_by,
                                           "split": cfg.eval.split, "checkpoint": cfg.checkpoint_path,
                                           "swap_sentences": cfg.eval.swap_sentences})
    print(format_table(cfg.eval.split, result))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    from src.utils.cli import run_main

    run_main(main)
