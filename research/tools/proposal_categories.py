"""Does a trained CoupAlign know what its proposals are? (issue #21; research/NOTEBOOK.md, "Ablation").

    python research/tools/proposal_categories.py --checkpoint_path CK --data_root D [--batches 50] [--out F.json]

For every sample of the train split (the first `--batches` batches) and of the val split, the final stage's best
proposal (the highest IoU with the referent, as tools/decompose.py picks it) is described by
1. the category head's answer (argmax over the categories + "no object"), against the referent's category;
2. what a softmax regression fitted on the train samples and scored on val reads off: its mask embedding Q_n, its
   mask-pooled pixel embedding ``sum_hw m_n P / (sum_hw m_n + 1)`` (``m_n = sigmoid(Q_n . P)``), and the first
   stage map S_o[0] pooled under its soft mask, under its 0/1 mask and under the referent's true mask (the
   ceiling; a category head on the first of these was tried, research/NOTEBOOK.md "Ablation");
3. the share of its soft mask's mass that lies outside the referent.
The head's accuracy well below the probes' means the head does not learn what its input holds; a probe at the
majority rate means that input does not hold the category.
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


def soft_masks(mask_embed, pixel_embed):
    """``m_n = sigmoid(Q_n . P)``: mask_embed (B, N, D), pixel_embed P (B, D, h, w) -> (B, N, hw)."""
    pixels = pixel_embed.reshape(pixel_embed.shape[0], pixel_embed.shape[1], -1)  # (B, D, hw)
    return 1.0 / (1.0 + np.exp(-np.einsum("bnd,bdk->bnk", mask_embed, pixels)))


def pool_under(masks, feature):
    """``sum_hw m_n F / (sum_hw m_n + 1)``: masks (B, N, hw), feature F (B, C, h, w) -> (B, N, C)."""
    values = feature.reshape(feature.shape[0], feature.shape[1], -1)  # (B, C, hw)
    return np.einsum("bnk,bck->bnc", masks, values) / (masks.sum(-1, keepdims=True) + 1.0)


def mask_content(mask_embed, pixel_embed, feature=None, hard=False):
    """`pool_under` the proposals' soft masks (or with ``hard`` their 0/1 version, sigmoid >= 0.5, the masked
    attention's) of the feature F (B, C, h, w), P itself by default -> (B, N, C)."""
    masks = soft_masks(mask_embed, pixel_embed)
    if hard:
        masks = (masks >= 0.5).astype(masks.dtype)
    return pool_under(masks, pixel_embed if feature is None else feature)


def describe_split(model, refer, dataset, classes, max_batches):
    """-> per best proposal, a dict of arrays: the category head's class ("head"), the referent's class ("truth"),
    and the descriptions the probes read: its mask embedding, the mask-pooled P, the first stage map S_o[0] pooled
    under its soft mask, under its 0/1 mask and under the referent's true mask; plus the share
    of its soft mask's mass outside the referent ("outside_mass")."""
    from mindspore import Tensor, ops

    from src.engine.decomposition import proposal_ious
    from src.models.transformer_decoder import proposal_logits

    found = {}
    add = lambda key, value: found.setdefault(key, []).append(value)  # noqa: E731
    # take(), not a break out of the loop: a probe that broke out of the iterator kept running after writing its output
    for batch in dataset.take(max_batches).create_dict_iterator(num_epochs=1, output_numpy=True):
        ids, attention = Tensor(batch["input_ids"]), Tensor(batch["attention_mask"])
        features, words = model.encode(Tensor(batch["image"]), ids, attention)
        _, pixel_embed, mask_embeds = model.decode(features, words, attention)
        last = mask_embeds[-1]  # (B, N, D)
        size = batch["image"].shape[-1]
        proposals = ops.interpolate(proposal_logits(last, pixel_embed), size=(size, size), mode="bilinear",
                                    align_corners=False).asnumpy()  # (B, N, S, S), as tools/decompose.py scores them
        head = model.proposal_classes(last).asnumpy().argmax(-1)  # (B, N)
        last, pixels, stage0 = last.asnumpy(), pixel_embed.asnumpy(), features[0].asnumpy()
        height, width = pixels.shape[2:]
        soft = soft_masks(last, pixels)  # (B, N, hw)
        content = pool_under(soft, pixels)  # (B, N, D)
        soft0 = pool_under(soft, stage0)  # (B, N, C_0)
        hard0 = pool_under((soft >= 0.5).astype(soft.dtype), stage0)
        for row, (index, bad) in enumerate(zip(batch["index"].tolist(), batch["bad"].tolist())):
            if index < 0 or bad:
                continue
            sample = refer.sample(index)
            target = batch["mask"][row] > 0.5  # (S, S)
            best = int(proposal_ious(proposals[row] > 0, target).argmax())
            inside = target.reshape(height, size // height, width, size // width).mean(axis=(1, 3)).reshape(-1)
            add("head", int(head[row, best]))
            add("truth", classes[refer.annotations[sample.ann_id]["category_id"]])
            add("mask_embedding", last[row, best])
            add("mask_content", content[row, best])
            add("stage0_soft", soft0[row, best])
            add("stage0_hard", hard0[row, best])
            add("stage0_true_mask", pool_under(inside.reshape(1, 1, -1), stage0[row:row + 1])[0, 0])
            add("outside_mass", float((soft[row, best] * (1.0 - inside)).sum() / soft[row, best].sum()))
    return {key: np.array(value) for key, value in found.items()}


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
    val, train = found["val"], found["train"]
    truth = val["truth"]
    result = {"checkpoint": cfg.checkpoint_path, "train_samples": len(train["truth"]), "val_samples": len(truth),
              "val_majority_rate": float(np.bincount(truth).max() / len(truth)),
              "head_accuracy_val": float((val["head"] == truth).mean()),
              "head_says_no_object_val": float((val["head"] == num_classes).mean()),
              "head_accuracy_train": float((train["head"] == train["truth"]).mean()),
              "outside_mass_val_median": float(np.median(val["outside_mass"]))}
    for name in ("mask_embedding", "mask_content", "stage0_soft", "stage0_hard", "stage0_true_mask"):
        train_acc, val_acc = softmax_probe(train[name], train["truth"], val[name], truth, num_classes)
        result[f"probe_{name}_train"], result[f"probe_{name}_val"] = train_acc, val_acc
    print(json.dumps(result, indent=1))
    if options["out"]:
        with open(options["out"], "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
