"""Ascend 310 pre-processing: one split -> the .bin inputs ascend310_infer/ reads, plus the metadata
postprocess.py needs. Image decoding and resizing stay in Python; the C++ program only runs the model.

    python preprocess.py --config_path C --data_root D --dataset refcocog --split_by umd --split val \
        --output_path OUT

Writes OUT/00_image/<name>.bin (float32 1x3xSxS, ImageNet-normalised), OUT/01_input_ids/<name>.bin
(int32 1xT), OUT/02_attention_mask/<name>.bin (int32 1xT) and OUT/samples.json, one entry per
(object, sentence) with its name and index into the split's samples.
"""
import argparse
import sys

INPUT_DIRS = ("00_image", "01_input_ids", "02_attention_mask")


def main(argv=None) -> int:
    import json
    import os

    import numpy as np

    from src.config import load_config
    from src.data.refer import ReferDataset
    from src.data.transforms import preprocess_image
    from src.engine.trainer import build_tokenizer

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_path", required=True)
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    cfg = load_config("default_config.yaml", rest)
    refer = ReferDataset(cfg.data.data_root, cfg.data.dataset, cfg.data.split_by, cfg.eval.split)
    if cfg.eval.swap_sentences:
        refer = refer.with_swapped_sentences(seed=cfg.seed)
    tokenizer = build_tokenizer(cfg)
    for sub in INPUT_DIRS:
        os.makedirs(os.path.join(args.output_path, sub), exist_ok=True)
    entries, image_cache = [], {}
    for sample in refer.samples():
        name = f"{sample.index:07d}"
        if sample.image_id not in image_cache:  # consecutive samples often share the image
            image_cache.clear()
            image_cache[sample.image_id] = preprocess_image(refer.load_image(sample.image_id), cfg.model.image_size)
        ids, mask = tokenizer.encode(sample.text)
        arrays = (image_cache[sample.image_id][None], ids[None].astype(np.int32), mask[None].astype(np.int32))
        for sub, array in zip(INPUT_DIRS, arrays):
            np.ascontiguousarray(array).tofile(os.path.join(args.output_path, sub, name + ".bin"))
        entries.append({"name": name, "index": sample.index, "ref_id": sample.ref_id, "sent_id": sample.sent_id})
    meta = {"dataset": cfg.data.dataset, "split_by": cfg.data.split_by, "split": cfg.eval.split,
            "data_root": cfg.data.data_root, "image_size": cfg.model.image_size,
            "swap_sentences": cfg.eval.swap_sentences, "samples": entries}
    with open(os.path.join(args.output_path, "samples.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f)
    print(f"wrote {len(entries)} samples to {args.output_path}")
    return 0


if __name__ == "__main__":
    from src.utils.cli import run_main

    run_main(main)
