"""Ascend 310 post-processing: the logits .bin files written by ascend310_infer/ -> the same
metrics.json / per_sample.csv as eval.py.

    python postprocess.py --config_path C --preprocess_path PRE --result_path RES --output_dir OUT

PRE is preprocess.py's output (its samples.json names the split); RES holds <name>_0.bin float32
logits (1x1xSxS) per sample.
"""
import argparse
import sys


def main(argv=None) -> int:
    import dataclasses
    import json
    import os

    import numpy as np

    from src.config import load_config
    from src.data.base import build_dataset
    from src.engine.evaluator import Scorer, format_table, write_reports
    from src.errors import DataError

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preprocess_path", required=True)
    parser.add_argument("--result_path", required=True)
    parser.add_argument("--output_dir", required=True)
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    cfg = load_config("default_config.yaml", rest)  # validates the config keys given alongside
    meta_path = os.path.join(args.preprocess_path, "samples.json")
    if not os.path.isfile(meta_path):
        raise FileNotFoundError(f"{meta_path} not found: run preprocess.py first")
    meta = json.load(open(meta_path, encoding="utf-8"))
    # The split preprocess.py indexed, rebuilt through the registry as preprocess.py built it (so a newly
    # registered dataset works here too): samples.json's data keys take precedence over the config's.
    data = dataclasses.replace(cfg.data, data_root=meta["data_root"], dataset=meta["dataset"],
                               split_by=meta["split_by"])
    refer = build_dataset(dataclasses.replace(cfg, data=data), meta["split"])
    if meta.get("swap_sentences"):
        raise DataError(f"{meta_path}: swap_sentences is set; postprocess of a swap_sentences run is not "
                        "supported, evaluate it with eval.py")
    size = meta["image_size"]
    scorer = Scorer(refer)
    for entry in meta["samples"]:
        path = os.path.join(args.result_path, entry["name"] + "_0.bin")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"logits of sample {entry['name']} not found: {path}")
        logits = np.fromfile(path, dtype=np.float32)
        if logits.size != size * size:
            raise DataError(f"{path}: {logits.size} float32 values, expected {size}x{size} = {size * size}")
        scorer.add(entry["index"], logits.reshape(size, size))
    result = scorer.result()
    out = write_reports(result, args.output_dir, {"dataset": meta["dataset"], "split_by": meta["split_by"],
                                                  "split": meta["split"], "source": args.result_path})
    print(format_table(meta["split"], result))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    from src.utils.cli import run_main

    run_main(main)
