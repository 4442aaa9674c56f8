"""Pretrain the image encoder on the object categories of the train split, for configurations that have no
pretrained Swin (the CPU quickstart): a stand-in for the ImageNet pretraining the paper starts from, and a
measure of how fast an encoder learns the shapes at all.

    python tools/pretrain_visual.py --config_path configs/quickstart_cpu.yaml --data_root data/synthetic \
        --out pretrained/swin_synthetic.ckpt [--steps 3000] [--lr 5e-4] [--batch_size 8] [--eval_every 500]
    python train.py --config_path configs/quickstart_cpu.yaml --model.swin.pretrained=pretrained/swin_synthetic.ckpt

The task is category segmentation: every stride-4 cell is labelled with the category of the annotated object
covering more than half of it (instances.json of the train split: the same annotations the proposal loss
reads), background weighted 0.1 as "no object" is in the training loss. The encoder is the config's
`model.image_encoder` (the Swin of `model.swin` with its stem, sizes and window, or the `convnet`); a light
head (a 1x1 projection of each stage to 64 channels, summed at stride 4, a 1x1 classifier) is thrown away.
Images are resized to model.image_size and flipped left-right at random (no sentences here, so a flip changes
no label). Every --eval_every steps it prints
the val split's foreground-pixel accuracy and per-object accuracy (majority vote over the object's cells);
the written checkpoint holds the encoder's parameters under its own names (for the Swin: what
`model.swin.pretrained` loads). The images are held in memory: meant for small data sets (--max_images).
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


def category_cells(refer, image_id: int, size: int, stride: int, class_index) -> np.ndarray:
    """(size/stride, size/stride) int32: the class index of the object covering more than half of each cell of
    the image resized to (size, size), or len(class_index) (background)."""
    from src.data.transforms import resize_mask

    cells = size // stride
    label = np.full((cells, cells), len(class_index), np.int32)
    for ann in refer.image_annotations(image_id):
        mask = resize_mask(refer.load_mask(ann), (size, size)).astype(np.float32)
        share = mask.reshape(cells, stride, cells, stride).mean(axis=(1, 3))
        label[share > 0.5] = class_index[int(refer.annotations[ann]["category_id"])]
    return label


def load_split(refer, size: int, stride: int, class_index, max_images: int):
    from src.data.transforms import preprocess_image

    images, labels = [], []
    for image_id in refer.image_ids[:max_images]:
        images.append(preprocess_image(refer.load_image(image_id), size))
        labels.append(category_cells(refer, image_id, size, stride, class_index))
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
    from src.models.registry import IMAGE_ENCODERS, discover
    from src.utils.runtime import setup_context

    args = list(sys.argv[1:] if argv is None else argv)
    options = {"out": "", "steps": "3000", "lr": "5e-4", "batch_size": "8", "eval_every": "500",
               "max_images": "100000", "config_path": ""}
    rest = split_options(args, options)  # the tool's own options; the rest are config keys
    if not options["out"]:
        raise ConfigError("tools/pretrain_visual.py needs --out <checkpoint to write>")
    cfg = load_config(options["config_path"] or None, rest)
    setup_context(cfg)
    ms.set_seed(cfg.seed)
    size, stride = cfg.model.image_size, 4  # every registered image encoder's first map is at stride 4
    if size % (stride * 8):
        raise ConfigError(f"model.image_size = {size}: tools/pretrain_visual.py needs a multiple of {stride * 8}")
    train = build_dataset(cfg, cfg.data.train_split)
    val = build_dataset(cfg, cfg.data.val_split)
    category_ids = sorted({int(a["category_id"]) for a in train.annotations.values()})
    if not category_ids:
        raise ConfigError(f"{train.instances_path}: no annotated categories to pretrain on")
    class_index = {c: k for k, c in enumerate(category_ids)}
    background = len(category_ids)
    start = time.time()
    max_images = int(options["max_images"])
    train_x, train_y = load_split(train, size, stride, class_index, max_images)
    val_x, val_y = load_split(val, size, stride, class_index, max_images)
    print(f"{len(train_x)} train / {len(val_x)} val images, {background} categories, {time.time() - start:.0f} s")

    discover()
    encoder = IMAGE_ENCODERS.get(cfg.model.image_encoder)(cfg.model)
    cells = size // stride

    class Segmenter(nn.Cell):
        def __init__(self):
            super().__init__()
            self.encoder = encoder
            self.lateral = nn.CellList([nn.Conv2d(c, HEAD_DIM, 1, has_bias=True) for c in encoder.num_features])
            self.classifier = nn.Conv2d(HEAD_DIM, background + 1, 1, has_bias=True)

        def construct(self, x):
            features = self.encoder(x)  # 4 NCHW maps, strides 4 .. 32
            y = self.lateral[0](features[0])  # (B, 64, S/4, S/4)
            for s in range(1, len(features)):
                y = y + ops.interpolate(self.lateral[s](features[s]), size=(cells, cells), mode="bilinear",
                                        align_corners=False)
            return self.classifier(ops.relu(y))  # (B, C + 1, S/4, S/4)

    net = Segmenter()

    def loss_fn(x, y):
        logits = net(x).transpose(0, 2, 3, 1).reshape(-1, background + 1)  # (B*cells*cells, C + 1)
        y = y.reshape(-1, 1)
        nll = -ops.gather_elements(ops.log_softmax(logits, -1), 1, y).squeeze(1)
        weight = ops.where(y.squeeze(1) == background, BACKGROUND_WEIGHT, 1.0)
        return (weight * nll).sum() / weight.sum()

    optimizer = nn.AdamWeightDecay(net.trainable_params(), learning_rate=float(options["lr"]), weight_decay=0.01)
    grad_fn = ms.value_and_grad(loss_fn, None, optimizer.parameters)

    @ms.jit
    def train_step(x, y):
        loss, grads = grad_fn(x, y)
        optimizer(grads)
        return loss

    def evaluate():
        net.set_train(False)
        pred = np.concatenate([net(ms.Tensor(val_x[k:k + 16])).asnumpy().argmax(1) for k in range(0, len(val_x), 16)])
        net.set_train(True)
        return scores(pred, val_y, background)

    rng = np.random.default_rng(cfg.seed)
    batch, steps, every = int(options["batch_size"]), int(options["steps"]), int(options["eval_every"])
    net.set_train(True)
    start = time.time()
    for step in range(1, steps + 1):
        pick = rng.integers(0, len(train_x), batch)
        flip = rng.random(batch) < 0.5
        x = np.where(flip[:, None, None, None], train_x[pick][..., ::-1], train_x[pick])
        y = np.where(flip[:, None, None], train_y[pick][..., ::-1], train_y[pick])
        loss = train_step(ms.Tensor(np.ascontiguousarray(x)), ms.Tensor(np.ascontiguousarray(y)))
        if step % every == 0 or step == steps:
            pixel, per_object = evaluate()
            print(f"step {step}/{steps} loss {float(loss.asnumpy()):.3f} | val foreground-pixel accuracy {pixel:.3f} "
                  f"object accuracy {per_object:.3f} | {time.time() - start:.0f} s", flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(options["out"])), exist_ok=True)
    ms.save_checkpoint([{"name": name[len("encoder."):], "data": p} for name, p in net.parameters_and_names()
                        if name.startswith("encoder.")], options["out"])
    print(f"wrote {options['out']}" + (f" (load with --model.swin.pretrained={options['out']})"
                                       if cfg.model.image_encoder == "swin" else ""))
    return 0


if __name__ == "__main__":
    from src.utils.cli import run_main

    run_main(main)
