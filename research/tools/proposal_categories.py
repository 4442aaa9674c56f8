"""Does a trained CoupAlign know what its proposals are? (issue #21; research/NOTEBOOK.md, "Ablation").

    python research/tools/proposal_categories.py --checkpoint_path CK --data_root D [--batches 50] [--out F.json]

For every sample of the train split (the first `--batches` batches) and of the val split, the final stage's best
proposal (the highest IoU with the referent, as tools/decompose.py picks it) is described three ways:
1. the category head's answer (argmax over the categories + "no object"), against the referent's category;
2. its mask embedding Q_n, and 3. its mask-pooled pixel embedding ``sum_hw m_n P / (sum_hw m_n + 1)``,
   ``m_n = sigmoid(Q_n . P)`` (what the mask covers): a softmax regression fitted on the train samples and scored on
   val says whether the category can be read off linearly.
The head's accuracy well below the probes' means the head does not learn what its input holds; both probes at the
majority rate mean the input does not hold it.
"""
import argparse
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from src.utils.runtime import apply_cpu_env_defaults  # noqa: E402

apply_cpu_env_defaults()  # before MindSpore is imported

import numpy as np  # noqa: E402


def softmax_probe(train_x, train_y, val_x, val_y, classes):
    """probe_categories.py's probe (softmax regression on features standardised by the train split) on all of
    the features -> (train, val) accuracy. `classes` is kept for the callers; the probe counts the labels itself."""
    from research.tools.probe_categories import probe

    result = probe(train_x, train_y, val_x, val_y, {"all": slice(None)})["probes"]["all"]
    return result["train_accuracy"], result["val_accuracy"]


def mask_content(mask_embed, pixel_embed):
    """``(B, N, D)``, ``(B, D, h, w)`` NumPy -> the mask-pooled pixel embedding of every proposal ``(B, N, D)``."""
    pixels = pixel_embed.reshape(pixel_embed.shape[0], pixel_embed.shape[1], -1)  # (B, D, hw)
    soft = 1.0 / (1.0 + np.exp(-np.einsum("bnd,bdk->bnk", mask_embed, pixels)))  # (B, N, hw)
    return np.einsum("bnk,bdk->bnd", soft, pixels) / (soft.sum(-1, keepdims=True) + 1.0)


def describe_split(model, refer, dataset, classes, max_batches):
    """-> per best proposal: (category head's class, referent's class, mask embedding, mask content)."""
    from mindspore import Tensor, ops

    from src.engine.decomposition import proposal_ious
    from src.models.transformer_decoder import proposal_logits

    head_pred, truth, embeds, contents = [], [], [], []
    # take(), not a break out of the loop: a probe that broke out of the iterator kept running after writing its output
    for batch in dataset.take(max_batches).create_dict_iterator(num_epochs=1, output_numpy=True):
        _, pixel_embed, mask_embeds, _ = model.forward_features(Tensor(batch["image"]), Tensor(batch["input_ids"]),
                                                                Tensor(batch["attention_mask"]))
        last = mask_embeds[-1]  # (B, N, D)
        size = batch["image"].shape[-1]
        proposals = ops.interpolate(proposal_logits(last, pixel_embed), size=(size, size), mode="bilinear",
                                    align_corners=False).asnumpy()  # (B, N, S, S), as tools/decompose.py scores them
        head = model.proposal_classes(last).asnumpy().argmax(-1)  # (B, N)
        last = last.asnumpy()
        content = mask_content(last, pixel_embed.asnumpy())  # (B, N, D)
        for row, (index, bad) in enumerate(zip(batch["index"].tolist(), batch["bad"].tolist())):
            if index < 0 or bad:
                continue
            sample = refer.sample(index)
            best = int(proposal_ious(proposals[row] > 0, batch["mask"][row] > 0.5).argmax())
            head_pred.append(int(head[row, best]))
            truth.append(classes[refer.annotations[sample.ann_id]["category_id"]])
            embeds.append(last[row, best])
            contents.append(content[row, best])
    return np.array(head_pred), np.array(truth), np.array(embeds), np.array(contents)


def main(argv=None) -> int:
    from src.data.base import build_dataset
    from src.data.dataset import category_classes, create_refer_dataset
    from src.engine.inference import build_trained_model, build_trained_tokenizer, load_inference_config
    from src.utils.cli import split_options
    from src.utils.runtime import setup_context

    args = list(sys.argv[1:] if argv is None else argv)
    options = {"batches": "50", "out": ""}
    cfg = load_inference_config(split_options(args, options))
    setup_context(cfg)
    num_classes = cfg.model.mask_generator.num_classes
    if not num_classes:
        raise SystemExit("the checkpoint's model has no category head (model.mask_generator.num_classes = 0)")
    tokenizer = build_trained_tokenizer(cfg, "proposal_categories.py")
    model = build_trained_model(cfg, "proposal_categories.py")
    model.set_train(False)
    found = {}
    for split in ("train", "val"):
        refer = build_dataset(cfg, split)
        classes = category_classes(refer, num_classes)
        dataset = create_refer_dataset(refer, tokenizer, cfg.model.image_size, cfg.eval.batch_size, train=False,
                                       num_workers=cfg.data.num_workers)
        found[split] = describe_split(model, refer, dataset, classes, int(options["batches"]))
    head_pred, truth, _, _ = found["val"]
    result = {"checkpoint": cfg.checkpoint_path, "train_samples": len(found["train"][1]), "val_samples": len(truth),
              "val_majority_rate": float(np.bincount(truth).max() / len(truth)),
              "head_accuracy_val": float((head_pred == truth).mean()),
              "head_says_no_object_val": float((head_pred == num_classes).mean()),
              "head_accuracy_train": float((found["train"][0] == found["train"][1]).mean())}
    for name, column in (("mask_embedding", 2), ("mask_content", 3)):
        train_acc, val_acc = softmax_probe(found["train"][column], found["train"][1], found["val"][column], truth,
                                           num_classes)
        result[f"probe_{name}_train"], result[f"probe_{name}_val"] = train_acc, val_acc
    print(json.dumps(result, indent=1))
    if options["out"]:
        with open(options["out"], "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
