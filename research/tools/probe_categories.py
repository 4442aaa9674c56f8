"""Linear probe of the visual encoder: do its stage features tell the annotated object categories apart?

    python research/tools/probe_categories.py --checkpoint_path CK [--data_root D] [--train_images 250]
        [--sentence "the object"] [--output probe.json]
    python research/tools/probe_categories.py --config_path C --random_init [...]   # the same probe, untrained Swin
    python research/tools/probe_categories.py --checkpoint_path CK --label color    # another annotation field

For every annotated object of the images of the train split (the first --train_images) and of the val split,
each stage map S_o of the encoder (after WPA, for one fixed neutral sentence, so only the image varies) is
averaged over the object's mask; a softmax regression (NumPy, L2, features standardised on train) is fitted
on the train objects per stage and on the four stages together, and scored on the val objects. A stage
whose val accuracy stays near the majority-class rate does not carry the category, whatever the heads on
top of it do: the alignments cannot select "the star" from features that do not say which shape is a star.
`--random_init` builds the config's model without trained weights (text encoder pretrained, Swin random):
the floor a trained encoder should clear. `--label` probes another field of the annotations (the synthetic
data stores `color`, which the quickstart model does use: a check that the probe itself works).

Forward passes only. Prints a table; --output writes it as JSON.
"""
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from src.utils.runtime import apply_cpu_env_defaults  # noqa: E402

apply_cpu_env_defaults()  # before MindSpore is imported

import numpy as np  # noqa: E402


def fit_softmax_regression(x: np.ndarray, y: np.ndarray, num_classes: int, l2: float = 1e-2,
                           steps: int = 500, lr: float = 0.5) -> np.ndarray:
    """Multinomial logistic regression by full-batch gradient descent -> weights (D + 1, K), bias last.
    `x` (M, D) standardised, `y` (M,) in [0, K)."""
    xb = np.concatenate([x, np.ones((len(x), 1), x.dtype)], 1)  # (M, D + 1)
    onehot = np.eye(num_classes, dtype=np.float64)[y]  # (M, K)
    w = np.zeros((xb.shape[1], num_classes))
    for _ in range(steps):
        logits = xb @ w  # (M, K)
        logits -= logits.max(1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(1, keepdims=True)
        grad = xb.T @ (p - onehot) / len(x)
        grad[:-1] += l2 * w[:-1]
        w -= lr * grad
    return w


def accuracy(w: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    xb = np.concatenate([x, np.ones((len(x), 1), x.dtype)], 1)
    return float(((xb @ w).argmax(1) == y).mean())


def mask_pooled(feature: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """feature (C, h, w), mask (H, W) bool with H, W multiples of h, w -> (C,): the feature averaged with the
    share of each cell the mask covers as weights (a small object still reaches the coarsest stage)."""
    c, h, w = feature.shape
    cover = mask.reshape(h, mask.shape[0] // h, w, mask.shape[1] // w).mean((1, 3))  # (h, w)
    return (feature * cover[None]).sum((1, 2)) / max(float(cover.sum()), 1e-6)


def probe(train_x, train_y, val_x, val_y, slices) -> dict:
    classes = sorted(set(train_y.tolist()) | set(val_y.tolist()))
    index = {c: i for i, c in enumerate(classes)}
    ty = np.array([index[c] for c in train_y])
    vy = np.array([index[c] for c in val_y])
    majority = float(np.bincount(vy, minlength=len(classes)).max() / len(vy))
    rows = {}
    for name, part in slices.items():
        a, b = train_x[:, part], val_x[:, part]
        mean, std = a.mean(0), a.std(0) + 1e-6
        w = fit_softmax_regression((a - mean) / std, ty, len(classes))
        rows[name] = {"train_accuracy": accuracy(w, (a - mean) / std, ty),
                      "val_accuracy": accuracy(w, (b - mean) / std, vy)}
    return {"classes": len(classes), "train_objects": int(len(ty)), "val_objects": int(len(vy)),
            "val_majority_rate": majority, "probes": rows}


def main(argv=None) -> int:
    import mindspore as ms
    from mindspore import nn

    from src.config import ConfigError
    from src.utils.cli import split_options
    from src.data.base import build_dataset
    from src.data.transforms import preprocess_image, resize_mask
    from src.engine.inference import build_trained_model, build_trained_tokenizer, load_inference_config
    from src.models.factory import create_model
    from src.models.coupalign import NUM_STAGES
    from src.utils.runtime import setup_context

    args = list(sys.argv[1:] if argv is None else argv)
    options = {"train_images": "250", "sentence": "the object", "output": "", "label": "category_id"}
    random_init = "--random_init" in args
    args = [a for a in args if a != "--random_init"]
    rest = split_options(args, options)  # the tool's own options; the rest are config keys
    cfg = load_inference_config(rest)
    setup_context(cfg)
    if random_init:
        from src.engine.inference import build_tokenizer

        model = create_model(cfg, load_pretrained=True)
        model.set_train(False)
        tokenizer = build_tokenizer(cfg)
    else:
        if not cfg.checkpoint_path:
            raise ConfigError("research/tools/probe_categories.py needs --checkpoint_path "
                              "(or --config_path with --random_init)")
        model = build_trained_model(cfg, "research/tools/probe_categories.py")
        tokenizer = build_trained_tokenizer(cfg, "research/tools/probe_categories.py")

    class StageMaps(nn.Cell):
        def __init__(self, network):
            super().__init__()
            self.network = network

        def construct(self, image, input_ids, attention_mask):
            return self.network.encode(image, input_ids, attention_mask)[0]  # 4 NCHW maps

    encoder = StageMaps(model)
    encoder.set_train(False)
    size = cfg.model.image_size
    ids, mask = tokenizer.encode(options["sentence"])

    def objects(refer, max_images):
        feats, labels = [], []
        image_ids = refer.image_ids[:max_images]
        batch = 8
        for start in range(0, len(image_ids), batch):
            chunk = image_ids[start:start + batch]
            images = np.stack([preprocess_image(refer.load_image(i), size) for i in chunk])
            b = len(chunk)
            maps = encoder(ms.Tensor(images), ms.Tensor(np.repeat(ids[None], b, 0)),
                           ms.Tensor(np.repeat(mask[None], b, 0)))
            maps = [m.asnumpy() for m in maps]
            for k, image_id in enumerate(chunk):
                for ann in refer.image_annotations(image_id):
                    resized = resize_mask(refer.load_mask(ann), (size, size)) > 0  # (S, S), as the targets
                    feats.append(np.concatenate([mask_pooled(m[k], resized) for m in maps]))
                    labels.append(str(refer.annotations[ann].get(options["label"])))
        return np.stack(feats), np.array(labels)

    start = time.time()
    train_x, train_y = objects(build_dataset(cfg, "train"), int(options["train_images"]))
    val_x, val_y = objects(build_dataset(cfg, "val"), 10 ** 9)
    widths = [int(model.swin.num_features[s]) for s in range(NUM_STAGES)]
    bounds = np.cumsum([0] + widths)
    slices = {f"stage{s}": slice(bounds[s], bounds[s + 1]) for s in range(NUM_STAGES)}
    slices["all stages"] = slice(0, bounds[-1])
    result = probe(train_x, train_y, val_x, val_y, slices)
    result.update(checkpoint=cfg.checkpoint_path or "(random initialisation)", sentence=options["sentence"],
                  label=options["label"])
    what = "random initialisation" if random_init else cfg.checkpoint_path
    print(f"{options['label']} probe of {what}: {result['train_objects']} train / {result['val_objects']} val objects, "
          f"{result['classes']} categories, val majority rate {result['val_majority_rate']:.3f} "
          f"({time.time() - start:.0f} s)")
    print(f"{'features':<12} {'train acc':>9} {'val acc':>8}")
    for name, row in result["probes"].items():
        print(f"{name:<12} {row['train_accuracy']:>9.3f} {row['val_accuracy']:>8.3f}")
    if options["output"]:
        with open(options["output"], "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {options['output']}")
    return 0


if __name__ == "__main__":
    from src.utils.cli import run_main

    run_main(main)
