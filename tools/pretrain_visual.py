"""Pretrain the image encoder on the object categories of the train split, for configurations that have no
pretrained Swin (the CPU quickstart): a stand-in for the ImageNet pretraining the paper starts from, and a
measure of how fast an encoder learns the shapes at all.

    python tools/pretrain_visual.py --config_path configs/quickstart_cpu.yaml --data_root data/synthetic \
        --out pretrained/swin_synthetic.ckpt [--steps 3000] [--lr 5e-4] [--batch_size 8] [--eval_every 500] \
        [--fields category_id,color]
    python train.py --config_path configs/quickstart_cpu.yaml --model.swin.pretrained=pretrained/swin_synthetic.ckpt

The task is segmentation by annotation field: every stride-4 cell is labelled with the value of `--fields`
(default `category_id`; several fields, comma-separated, get one classifier each and their losses add up) of
the annotated object covering more than half of it (instances.json of the train split: the same annotations
the proposal loss reads), background weighted 0.1 as "no object" is in the training loss. Category alone
teaches a CNN the shapes and lets it forget the colours the sentences also name (research/NOTEBOOK.md,
"Training health"); `--fields category_id,color` keeps both where the annotations carry a colour (the
synthetic data does).

The encoder is the config's `model.image_encoder` (the Swin of `model.swin` with its stem, sizes and window,
or the `convnet`); a light head (a 1x1 projection of each stage to 64 channels, summed at stride 4, a 1x1
classifier per field) is thrown away. Images are resized to model.image_size and flipped left-right at random
(no sentences here, so a flip changes no label). Every --eval_every steps it prints, per field, the val
split's foreground-pixel accuracy and per-object accuracy (majority vote over the object's cells); the written
checkpoint holds the encoder's parameters under its own names: what `model.<image_encoder>.pretrained` loads
(`model.swin.pretrained`, `model.convnet.pretrained`). The images are held in memory: meant for small data
sets (--max_images).
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from src.utils.runtime import apply_cpu_env_defaults  # noqa: E402

apply_cpu_env_defaults()  # before MindSpore is imported

import numpy as np  # noqa: E402

HEAD_DIM = 64
BACKGROUND_WEIGHT = 0.1


def covered_cells(refer, image_id: int, size: int, stride: int):
    """[(annotation id, (size/stride, size/stride) bool: the cells its mask covers more than half of)] for the
    image resized to (size, size). Read once per image, whatever the number of fields labelled from it."""
    from src.data.transforms import resize_mask

    cells = size // stride
    covered = []
    for ann in refer.image_annotations(image_id):
        mask = resize_mask(refer.load_mask(ann), (size, size)).astype(np.float32)
        covered.append((ann, mask.reshape(cells, stride, cells, stride).mean(axis=(1, 3)) > 0.5))
    return covered


def field_cells(refer, image_id: int, size: int, stride: int, field: str, class_index, covered=None) -> np.ndarray:
    """(size/stride, size/stride) int32: the class index of the annotation field `field` of the object covering
    more than half of each cell of the image resized to (size, size), or len(class_index) (background; also a
    value the train split never has). `covered`: covered_cells of the image, when already computed."""
    if covered is None:
        covered = covered_cells(refer, image_id, size, stride)
    cells = size // stride
    label = np.full((cells, cells), len(class_index), np.int32)
    for ann, cells_of_ann in covered:
        label[cells_of_ann] = class_index.get(refer.annotations[ann].get(field), len(class_index))
    return label


def field_classes(refer, field: str):
    """{value: class index} of an annotation field over the split's annotations, in sorted order."""
    from src.errors import ConfigError

    values = set()
    for ann_id, ann in refer.annotations.items():
        if field not in ann:
            raise ConfigError(f"{refer.instances_path}: annotation {ann_id} has no field '{field}' (--fields); "
                              f"its fields: {', '.join(sorted(ann))}")
        values.add(ann[field])
    if not values:
        raise ConfigError(f"{refer.instances_path}: no annotations to pretrain on")
    return {v: k for k, v in enumerate(sorted(values, key=str))}


def load_split(refer, size: int, stride: int, fields, class_indices, max_images: int):
    """Images (N, 3, size, size) and labels (N, len(fields), size/stride, size/stride); an annotation value the
    train split never has counts as background in the val split."""
    from src.data.transforms import preprocess_image

    images, labels = [], []
    for image_id in refer.image_ids[:max_images]:
        images.append(preprocess_image(refer.load_image(image_id), size))
        covered = covered_cells(refer, image_id, size, stride)
        labels.append(np.stack([field_cells(refer, image_id, size, stride, field, class_indices[field], covered)
                                for field in fields]))
    return np.stack(images), np.stack(labels)


def scores(pred: np.ndarray, labels: np.ndarray, background: int):
    """(foreground-pixel accuracy, per-object accuracy): objects are the connected runs of one label per image,
    approximated by the label's cells in that image (synthetic images rarely repeat a category)."""
    fg = labels != background
    pixel = float((pred[fg] == labels[fg]).mean()) if fg.any() else 0.0
    hits = total = 0
    for p, y in zip(pred, labels):
        for c in np.unique(y[y != background]):
            votes = np.bincount(p[y == c], minlength=background + 1)
            hits += int(votes.argmax() == c)
            total += 1
    return pixel, hits / max(total, 1)


def main(argv=None) -> int:
    import mindspore as ms
    from mindspore import nn, ops

    from src.config import ConfigError, load_config
    from src.utils.cli import split_options
    from src.data.base import build_dataset
    from src.models.registry import IMAGE_ENCODERS
    from src.utils.runtime import setup_context

    args = list(sys.argv[1:] if argv is None else argv)
    options = {"out": "", "steps": "3000", "lr": "5e-4", "batch_size": "8", "eval_every": "500",
               "max_images": "100000", "config_path": "", "fields": "category_id"}
    rest = split_options(args, options)  # the tool's own options; the rest are config keys
    if not options["out"]:
        raise ConfigError("tools/pretrain_visual.py needs --out <checkpoint to write>")
    fields = [f for f in options["fields"].split(",") if f]
    if not fields or len(set(fields)) != len(fields):
        raise ConfigError(f"--fields {options['fields']!r}: expected distinct annotation fields, comma-separated")
    cfg = load_config(options["config_path"] or None, rest)
    setup_context(cfg)
    ms.set_seed(cfg.seed)
    size, stride = cfg.model.image_size, 4  # every registered image encoder's first map is at stride 4
    if size % (stride * 8):
        raise ConfigError(f"model.image_size = {size}: tools/pretrain_visual.py needs a multiple of {stride * 8}")
    train = build_dataset(cfg, cfg.data.train_split)
    val = build_dataset(cfg, cfg.data.val_split)
    class_indices = {field: field_classes(train, field) for field in fields}
    backgrounds = [len(class_indices[field]) for field in fields]  # per field: the index of "no object"
    start = time.time()
    max_images = int(options["max_images"])
    train_x, train_y = load_split(train, size, stride, fields, class_indices, max_images)
    val_x, val_y = load_split(val, size, stride, fields, class_indices, max_images)
    print(f"{len(train_x)} train / {len(val_x)} val images; classes: "
          + ", ".join(f"{field} {n}" for field, n in zip(fields, backgrounds)) + f"; {time.time() - start:.0f} s")

    encoder = IMAGE_ENCODERS.get(cfg.model.image_encoder).from_config(cfg)
    cells = size // stride

    class Segmenter(nn.Cell):
        def __init__(self):
            super().__init__()
            self.encoder = encoder
            self.lateral = nn.CellList([nn.Conv2d(c, HEAD_DIM, 1, has_bias=True) for c in encoder.num_features])
            self.classifiers = nn.CellList([nn.Conv2d(HEAD_DIM, n + 1, 1, has_bias=True) for n in backgrounds])

        def construct(self, x):
            features = self.encoder(x)  # 4 NCHW maps, strides 4 .. 32
            y = self.lateral[0](features[0])  # (B, 64, S/4, S/4)
            for s in range(1, len(features)):
                y = y + ops.interpolate(self.lateral[s](features[s]), size=(cells, cells), mode="bilinear",
                                        align_corners=False)
            y = ops.relu(y)
            return tuple(classifier(y) for classifier in self.classifiers)  # per field (B, C_f + 1, S/4, S/4)

    net = Segmenter()

    def loss_fn(x, y):
        total = 0.0
        for f, logits in enumerate(net(x)):
            logits = logits.transpose(0, 2, 3, 1).reshape(-1, backgrounds[f] + 1)  # (B*cells*cells, C_f + 1)
            label = y[:, f].reshape(-1, 1)
            nll = -ops.gather_elements(ops.log_softmax(logits, -1), 1, label).squeeze(1)
            weight = ops.where(label.squeeze(1) == backgrounds[f], BACKGROUND_WEIGHT, 1.0)
            total = total + (weight * nll).sum() / weight.sum()
        return total

    optimizer = nn.AdamWeightDecay(net.trainable_params(), learning_rate=float(options["lr"]), weight_decay=0.01)
    grad_fn = ms.value_and_grad(loss_fn, None, optimizer.parameters)

    @ms.jit
    def train_step(x, y):
        loss, grads = grad_fn(x, y)
        optimizer(grads)
        return loss

    def evaluate():
        net.set_train(False)
        preds = [[] for _ in fields]
        for k in range(0, len(val_x), 16):
            for f, logits in enumerate(net(ms.Tensor(val_x[k:k + 16]))):
                preds[f].append(logits.asnumpy().argmax(1))
        net.set_train(True)
        return [scores(np.concatenate(preds[f]), val_y[:, f], backgrounds[f]) for f in range(len(fields))]

    rng = np.random.default_rng(cfg.seed)
    batch, steps, every = int(options["batch_size"]), int(options["steps"]), int(options["eval_every"])
    net.set_train(True)
    start = time.time()
    for step in range(1, steps + 1):
        pick = rng.integers(0, len(train_x), batch)
        flip = rng.random(batch) < 0.5
        x = np.where(flip[:, None, None, None], train_x[pick][..., ::-1], train_x[pick])
        y = np.where(flip[:, None, None, None], train_y[pick][..., ::-1], train_y[pick])
        loss = train_step(ms.Tensor(np.ascontiguousarray(x)), ms.Tensor(np.ascontiguousarray(y)))
        if step % every == 0 or step == steps:
            report = " | ".join(f"{field}: val foreground-pixel accuracy {pixel:.3f} object accuracy {per_object:.3f}"
                                for field, (pixel, per_object) in zip(fields, evaluate()))
            print(f"step {step}/{steps} loss {float(loss.asnumpy()):.3f} | {report} | {time.time() - start:.0f} s",
                  flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(options["out"])), exist_ok=True)
    ms.save_checkpoint([{"name": name[len("encoder."):], "data": p} for name, p in net.parameters_and_names()
                        if name.startswith("encoder.")], options["out"])
    print(f"wrote {options['out']} (load with --model.{cfg.model.image_encoder}.pretrained={options['out']})")
    return 0


if __name__ == "__main__":
    from src.utils.cli import run_main

    run_main(main)
