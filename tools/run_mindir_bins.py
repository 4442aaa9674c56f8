"""Runs an exported MINDIR over preprocess.py's .bin layout with MindSpore (nn.GraphCell) and writes
<name>_0.bin logits exactly as ascend310_infer/ does: a CPU/GPU stand-in for the 310 program, and the
reference the tests compare the 310 flow against. Each sample reads its image file (00_image/<image>.bin,
one per image) as samples.json maps it. Batch-1 MINDIRs only (the C++ program also runs batched ones).

    python tools/run_mindir_bins.py --mindir_path M.mindir --input_dir PRE --output_dir RES
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from src.utils.runtime import apply_cpu_env_defaults  # noqa: E402

apply_cpu_env_defaults()


def mindir_batch_size(path: str):
    """Leading dimension of the MINDIR's first input (the image), read from the file's graph description."""
    from mindspore.train import mind_ir_pb2

    model = mind_ir_pb2.ModelProto()
    with open(path, "rb") as f:
        model.ParseFromString(f.read())
    dims = [list(t.dims) for i in model.graph.input for t in i.tensor]
    return dims[0][0] if dims and dims[0] else None


def main(argv=None) -> int:
    import json

    import numpy as np
    import mindspore as ms
    from mindspore import Tensor, nn

    from src.errors import ConfigError, DataError

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mindir_path", required=True)
    parser.add_argument("--input_dir", required=True)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--device_target", default="CPU")
    args = parser.parse_args(argv)
    ms.set_device(args.device_target)
    batch = mindir_batch_size(args.mindir_path)
    if batch != 1:
        raise ConfigError(f"--mindir_path {args.mindir_path} was exported with batch {batch}; this stand-in feeds "
                          "one sample per call: export with --batch_size 1 (ascend310_infer/ runs batched MINDIRs)")
    graph = nn.GraphCell(ms.load(args.mindir_path))
    meta = json.load(open(os.path.join(args.input_dir, "samples.json"), encoding="utf-8"))
    size = meta["image_size"]
    os.makedirs(args.output_dir, exist_ok=True)
    cached_name, image = None, None
    for entry in meta["samples"]:
        name = entry["name"]
        if "image" not in entry:
            raise DataError(f"{args.input_dir}/samples.json: sample {name} has no 'image' field; it was written "
                            "by an older preprocess.py, re-run it")
        if entry["image"] != cached_name:  # consecutive samples usually share their image
            image = np.fromfile(os.path.join(args.input_dir, "00_image", entry["image"] + ".bin"), np.float32)
            cached_name = entry["image"]
        ids = np.fromfile(os.path.join(args.input_dir, "01_input_ids", name + ".bin"), np.int32)
        mask = np.fromfile(os.path.join(args.input_dir, "02_attention_mask", name + ".bin"), np.int32)
        tokens = ids.size
        logits = graph(Tensor(image.reshape(1, 3, size, size)), Tensor(ids.reshape(1, tokens)),
                       Tensor(mask.reshape(1, tokens)))
        logits.asnumpy().astype(np.float32).tofile(os.path.join(args.output_dir, name + "_0.bin"))
    print(f"wrote {len(meta['samples'])} logits files to {args.output_dir}")
    return 0


if __name__ == "__main__":
    from src.utils.cli import run_main

    run_main(main)
