"""Write the synthetic referring-segmentation dataset in the refer format (see src/data/synthetic.py).

    python tools/make_synthetic_refer.py --out data/synthetic [--images 600 --seed 0]

Then train/evaluate with ``data_root=<out> dataset=refcoco split_by=unc`` (splits train, val,
testA, testB). The same seed and arguments give byte-identical files.
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from src.data.synthetic import generate_synthetic_refer  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output data_root")
    parser.add_argument("--images", type=int, default=600, help="number of images (>= 4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gray-fraction", type=float, default=0.15, help="share of grayscale images")
    args = parser.parse_args(argv)
    start = time.time()
    scenes = generate_synthetic_refer(args.out, num_images=args.images, seed=args.seed,
                                      gray_fraction=args.gray_fraction)
    refs = collections.Counter()
    sentences = collections.Counter()
    images = collections.Counter()
    for scene in scenes:
        images[scene.split] += 1
        refs[scene.split] += len(scene.refs)
        sentences[scene.split] += sum(len(chosen) for _, _, chosen in scene.refs)
    for split in ("train", "val", "testA", "testB"):
        print(f"{split:>6}: {images[split]:5d} images {refs[split]:5d} refs {sentences[split]:6d} sentences")
    print(f"wrote {args.out} in {time.time() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
