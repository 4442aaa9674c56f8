"""Segment the object a sentence describes in your own image.

    python infer.py --config_path C --checkpoint_path CK --image IMG --text "the red car on the left" \
        [--text "another sentence" ...] --output OUT.png

--config_path is optional with a checkpoint written by train.py: its config and vocabulary are
stored in it (src/engine/inference.py). For each sentence writes the mask (0/255 PNG at the image's size) and an overlay with the sentence
written on it: OUT.png and OUT_overlay.png for one sentence, OUT_<k>.png / OUT_<k>_overlay.png for several.
Any image size and mode (RGB, grayscale, RGBA, palette, 16-bit; JPEG or PNG).
"""
import argparse
import sys

from src.utils.runtime import apply_cpu_env_defaults

apply_cpu_env_defaults()  # before MindSpore is imported


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--image", required=True, help="input image file")
    parser.add_argument("--text", action="append", required=True, help="referring sentence (repeatable)")
    parser.add_argument("--output", required=True, help="output mask PNG path")
    return parser.parse_known_args(argv)  # the rest are config keys


def output_paths(output: str, k: int, count: int):
    stem = output[:-4] if output.lower().endswith(".png") else output
    if count > 1:
        stem = f"{stem}_{k}"
    return stem + ".png", stem + "_overlay.png"


def main(argv=None) -> int:
    import os

    import numpy as np
    from mindspore import Tensor

    from src.data.refer import read_image_rgb
    from src.data.transforms import preprocess_image
    from src.engine.inference import build_trained_model, build_trained_tokenizer, load_inference_config
    from src.errors import ConfigError
    from src.metrics import resize_logits_to
    from src.utils.runtime import setup_context
    from src.utils.visualize import overlay, write_png

    args, rest = parse_args(sys.argv[1:] if argv is None else argv)
    texts = [t.strip() for t in args.text]
    empty = [i for i, t in enumerate(texts) if not t]
    if empty:
        raise ConfigError(f"--text number {empty[0] + 1} is empty: give the sentence that describes the object")
    cfg = load_inference_config(rest)
    image = read_image_rgb(args.image)  # (H, W, 3) uint8, clear error if unreadable
    setup_context(cfg)
    tokenizer = build_trained_tokenizer(cfg, "infer.py")
    model = build_trained_model(cfg, "infer.py")

    pixels = Tensor(preprocess_image(image, cfg.model.image_size)[None])  # (1, 3, S, S)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    for k, text in enumerate(texts):
        ids, mask = tokenizer.encode(text)
        logits = model(pixels, Tensor(ids[None]), Tensor(mask[None])).asnumpy()[0, 0]  # (S, S)
        # Resize in row bands so a huge image never needs a full float copy at once.
        height, width = image.shape[:2]
        prediction = np.zeros((height, width), np.uint8)
        band = max(1, (1 << 24) // max(width, 1))
        full = resize_logits_to(logits, (height, width)) if height * width <= (1 << 26) else None
        if full is not None:
            prediction = (full > 0).astype(np.uint8)
        else:
            rows = resize_logits_to(logits, (height, logits.shape[1]))  # (H, S): cheap
            for top in range(0, height, band):
                part = resize_logits_to(rows[top:top + band], (min(band, height - top), width))
                prediction[top:top + band] = part > 0
        mask_path, overlay_path = output_paths(args.output, k, len(texts))
        write_png(mask_path, prediction * 255)
        write_png(overlay_path, overlay(image, prediction.astype(bool), text))
        print(f"{text!r}: {int(prediction.sum())} pixels ({100.0 * prediction.mean():.1f}% of the image) -> "
              f"{mask_path}, {overlay_path}")
    return 0


if __name__ == "__main__":
    from src.utils.cli import run_main

    run_main(main)
