"""Ascend 310 post-processing: the logits .bin files written by ascend310_infer/ -> the same
metrics.json / per_sample.csv as eval.py.

    python postprocess.py --config_path C --preprocess_path PRE --result_path RES --output_dir OUT

PRE is preprocess.py's output (its samples.json names the split); RES holds <name>_0.bin float32
logits (1x1xSxS) per sample. Every file's byte size is checked against that shape before it is read: a
file of float16 values (half the bytes) or of another image size stops the run, naming the file.
"""
import argparse
import os
import sys


def read_logits(path: str, size: int):
    """The (size, size) float32 logits of one sample's file, after checking its byte size: ascend310_infer/
    writes 4 * size * size bytes per sample (float32, 1x1xSxS). Raises DataError naming the file otherwise."""
    import numpy as np

    from src.errors import DataError

    expected = 4 * size * size
    actual = os.path.getsize(path)
    if actual != expected:
        if actual == expected // 2:
            hint = ("half the bytes: float16 values. The runtime returned float16 logits and the program that "
                    "wrote them did not convert them; rebuild ascend310_infer/ (it converts float16 to float32)")
        elif actual > expected and actual % expected == 0:
            hint = f"{actual // expected} samples' worth: a whole batch in one file, not one sample"
        else:
            hint = ("another shape: were the MINDIR and preprocess.py run with the same config (model.image_size "
                    "is in samples.json)?")
        raise DataError(f"{path}: {actual} bytes, expected {expected} (float32 logits 1x1x{size}x{size}, "
                        f"image_size {size} from samples.json); {hint}")
    return np.fromfile(path, dtype=np.float32).reshape(size, size)


def main(argv=None) -> int:
    import dataclasses
    import json

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
        scorer.add(entry["index"], read_logits(path, size))
    result = scorer.result()
    out = write_reports(result, args.output_dir, {"dataset": meta["dataset"], "split_by": meta["split_by"],
                                                  "split": meta["split"], "source": args.result_path})
    print(format_table(meta["split"], result))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    from src.utils.cli import run_main

    run_main(main)
