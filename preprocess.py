"""Ascend 310 pre-processing: one split -> the .bin inputs ascend310_infer/ reads, plus the metadata
postprocess.py needs. Image decoding and resizing stay in Python; the C++ program only runs the model.

    python preprocess.py --config_path C --data_root D --dataset refcocog --split_by umd --split val \
        --output_path OUT [--reuse auto|never|always]
    python preprocess.py --checkpoint_path CK --data_root D --split val --output_path OUT   (no config or
        pretrained/ needed: the trained checkpoint holds both)

Writes, under OUT:
  00_image/<image_id>.bin          float32 1x3xSxS, ImageNet-normalised: ONE file per image, shared by all
                                   the (object, sentence) samples on that image (RefCOCO val: ~1,500 images
                                   for ~10,800 samples, 4 GB at 480x480 instead of 30 GB)
  01_input_ids/<name>.bin          int32 1xT, one per sample
  02_attention_mask/<name>.bin     int32 1xT, one per sample
  samples.txt                      one line per sample, "<name> <image_id>", in the order to run them (the
                                   C++ program's index; plain text is simpler to parse there than JSON)
  samples.json                     the same mapping plus each sample's index into the split, ref and
                                   sentence ids, and the split's identity (postprocess.py reads it)
  preprocess_stamp.json            what the output was made from; written last, so it also marks the
                                   output complete

--reuse auto (default) keeps an existing output whose stamp matches this run's arguments (config values
that shape the inputs, data_root, the refs / instances / vocabulary files' size and modification time)
and redoes it otherwise; never always redoes; always keeps any complete output. The images are not
stamped (too many to check): after changing image files, use --reuse never.
"""
import argparse
import sys

INPUT_DIRS = ("00_image", "01_input_ids", "02_attention_mask")
IMAGE_DIR, SAMPLE_DIRS = INPUT_DIRS[0], INPUT_DIRS[1:]
INDEX_FILE = "samples.txt"
META_FILE = "samples.json"
STAMP_FILE = "preprocess_stamp.json"
# Bump when the layout of the output changes, so outputs of an older preprocess.py are redone.
FORMAT_VERSION = 2


def _file_signature(path: str) -> dict:
    import os

    st = os.stat(path)
    return {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def make_stamp(cfg, vocab_path: str) -> dict:
    """Everything the written inputs depend on, except the image files themselves."""
    import os

    data_dir = os.path.join(cfg.data.data_root, cfg.data.dataset)
    stamp = {
        "format": FORMAT_VERSION,
        "data_root": os.path.abspath(cfg.data.data_root),
        "dataset": cfg.data.dataset, "split_by": cfg.data.split_by, "split": cfg.eval.split,
        "image_size": cfg.model.image_size, "max_tokens": cfg.model.max_tokens,
        "swap_sentences": cfg.eval.swap_sentences,
        "seed": cfg.seed if cfg.eval.swap_sentences else None,  # only the swap draws anything
        "vocab": _file_signature(vocab_path) if os.path.isfile(vocab_path) else vocab_path,
    }
    for name, file_name in (("refs", f"refs({cfg.data.split_by}).p"), ("instances", "instances.json")):
        path = os.path.join(data_dir, file_name)
        stamp[name] = _file_signature(path) if os.path.isfile(path) else path
    return stamp


def existing_output_problem(out: str, stamp: dict, check_stamp: bool):
    """None if `out` holds a complete preprocessing (made with `stamp` when `check_stamp`), else why not."""
    import json
    import os

    stamp_path = os.path.join(out, STAMP_FILE)
    if not os.path.isfile(stamp_path):
        return f"no {STAMP_FILE} (nothing there yet, or an interrupted run)"
    try:
        with open(stamp_path, encoding="utf-8") as f:
            old = json.load(f)
        with open(os.path.join(out, META_FILE), encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        return f"unreadable {STAMP_FILE} or {META_FILE}: {e}"
    if check_stamp and old != stamp:
        changed = sorted(k for k in set(old) | set(stamp) if old.get(k) != stamp.get(k))
        return f"made with other arguments (changed: {', '.join(changed)})"
    expected = {IMAGE_DIR: len({e.get("image") for e in meta.get("samples", [])})}
    expected.update({sub: len(meta.get("samples", [])) for sub in SAMPLE_DIRS})
    for sub, count in expected.items():
        folder = os.path.join(out, sub)
        found = len([n for n in os.listdir(folder) if n.endswith(".bin")]) if os.path.isdir(folder) else 0
        if found != count:
            return f"{folder} holds {found} .bin files, {META_FILE} expects {count}"
    if not os.path.isfile(os.path.join(out, INDEX_FILE)):
        return f"no {INDEX_FILE}"
    return None


def clear_output(out: str) -> None:
    """Removes what an earlier run wrote (only our own files), so no stale sample survives a redo."""
    import os

    for name in (STAMP_FILE, META_FILE, INDEX_FILE):  # the stamp first: a half-cleared folder is never "complete"
        path = os.path.join(out, name)
        if os.path.isfile(path):
            os.remove(path)
    for sub in INPUT_DIRS:
        folder = os.path.join(out, sub)
        if os.path.isdir(folder):
            for name in os.listdir(folder):
                if name.endswith(".bin"):
                    os.remove(os.path.join(folder, name))


def main(argv=None) -> int:
    import json
    import os

    import numpy as np

    from src.config import ConfigError
    from src.engine.inference import load_inference_config
    from src.models.bert import vocab_path_for

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_path", required=True)
    parser.add_argument("--reuse", choices=("auto", "never", "always"), default="auto",
                        help="keep an existing complete output: when its stamp matches (auto), never, always")
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    cfg = load_inference_config(rest)  # --checkpoint_path alone is enough: config and vocabulary are in it
    out = args.output_path
    vocab = cfg.model.bert.vocab_path  # where build_tokenizer looks: the config's, or the one beside the converted BERT
    if not vocab and cfg.model.bert.pretrained:
        vocab = vocab_path_for(cfg.model.bert.pretrained)
    if cfg.checkpoint_path and not os.path.isfile(vocab):
        vocab = cfg.checkpoint_path  # the vocabulary stored in it (src/engine/inference.py)
    stamp = make_stamp(cfg, vocab)
    if args.reuse != "never":
        problem = existing_output_problem(out, stamp, check_stamp=args.reuse == "auto")
        if problem is None:
            print(f"reusing the preprocessing in {out} ({STAMP_FILE} matches; --reuse never redoes it)")
            return 0
        if args.reuse == "always":
            raise ConfigError(f"--reuse always, but {out} holds no complete preprocessing: {problem}")
        if os.path.exists(os.path.join(out, STAMP_FILE)):
            print(f"redoing the preprocessing in {out}: {problem}")

    from src.data.base import build_dataset
    from src.data.transforms import preprocess_image
    from src.engine.inference import build_trained_tokenizer
    from src.engine.inference import build_tokenizer

    refer = build_dataset(cfg, cfg.eval.split)
    if cfg.eval.swap_sentences:
        refer = refer.with_swapped_sentences(seed=cfg.seed)
    tokenizer = build_trained_tokenizer(cfg, "preprocess.py") if cfg.checkpoint_path else build_tokenizer(cfg)
    clear_output(out)
    for sub in INPUT_DIRS:
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    entries, written_images = [], set()
    for sample in refer.samples():
        name, image = f"{sample.index:07d}", str(sample.image_id)
        if image not in written_images:  # each image is decoded and written once, whatever the sample order
            pixels = preprocess_image(refer.load_image(sample.image_id), cfg.model.image_size)
            np.ascontiguousarray(pixels[None], dtype=np.float32).tofile(os.path.join(out, IMAGE_DIR, image + ".bin"))
            written_images.add(image)
        ids, mask = tokenizer.encode(sample.text)
        for sub, array in zip(SAMPLE_DIRS, (ids, mask)):
            np.ascontiguousarray(array[None], dtype=np.int32).tofile(os.path.join(out, sub, name + ".bin"))
        entries.append({"name": name, "image": image, "image_id": sample.image_id, "index": sample.index,
                        "ref_id": sample.ref_id, "sent_id": sample.sent_id})
    with open(os.path.join(out, INDEX_FILE), "w", encoding="utf-8") as f:
        f.write("".join(f"{e['name']} {e['image']}\n" for e in entries))
    meta = {"dataset": cfg.data.dataset, "split_by": cfg.data.split_by, "split": cfg.eval.split,
            "data_root": os.path.abspath(cfg.data.data_root), "image_size": cfg.model.image_size,
            "max_tokens": cfg.model.max_tokens, "swap_sentences": cfg.eval.swap_sentences,
            "image_dir": IMAGE_DIR, "index_file": INDEX_FILE, "num_images": len(written_images),
            "samples": entries}
    with open(os.path.join(out, META_FILE), "w", encoding="utf-8") as f:
        json.dump(meta, f)
    with open(os.path.join(out, STAMP_FILE), "w", encoding="utf-8") as f:
        json.dump(stamp, f, indent=1)
    print(f"wrote {len(entries)} samples on {len(written_images)} images to {out}")
    return 0


if __name__ == "__main__":
    from src.utils.cli import run_main

    run_main(main)
