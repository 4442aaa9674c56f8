"""Each loss term's share of the gradient on the shared trunk, for a trained checkpoint.

    python tools/grad_shares.py --checkpoint_path CK [--data_root D] [--split train] [--batches 2]
        [--batch_size 4] [--seed 0] [--output grad_shares.json] [config keys, e.g. --loss.weights.aux_contrast=0.5]

--config_path is optional with a checkpoint written by train.py: its config, text-encoder architecture and
vocabulary are stored in it (src/engine/inference.py). Config keys override the stored config, so the loss
weights of another run can be tried on the same weights.

For --batches batches of --batch_size samples (the first sentence of refs spread evenly over the split), every
weighted loss term is backpropagated on its own and the global L2 norm of its gradient on the shared trunk
(swin., bert., wpa., pixel_decoder.) is measured (src/engine/grad_shares.py). Prints per term: its weight, the
mean gradient norm over the batches, its share of the summed norms, and its share in each batch. Forward and
backward passes only; the weights are not changed.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from src.utils.runtime import apply_cpu_env_defaults  # noqa: E402

apply_cpu_env_defaults()  # before MindSpore is imported

import numpy as np  # noqa: E402


def spread_refs(num_refs: int, count: int) -> list:
    """`count` ref indices spread evenly over `num_refs` (all of them when there are fewer)."""
    if count >= num_refs:
        return list(range(num_refs))
    return sorted({int(round(x)) for x in np.linspace(0, num_refs - 1, count)})


def load_batches(cfg, refer, tokenizer, batches: int, batch_size: int) -> list:
    """[(image, input_ids, attention_mask, target, others, categories) numpy arrays] for the loss of `cfg`."""
    from src.config import num_other_objects, num_proposal_classes
    from src.data.dataset import ReferSource
    from src.errors import DataError

    source = ReferSource(refer, tokenizer, cfg.model.image_size, train=True, max_other_objects=num_other_objects(cfg),
                         num_classes=num_proposal_classes(cfg))
    refs = spread_refs(len(refer.refs), batches * batch_size)
    if not refs:
        raise DataError(f"{refer!r} has no referred objects")
    rows = []
    for ref_index in refs:
        row = source[refer.ref_sample_range(ref_index)[0]]
        if int(row[4]) == ReferSource.UNREPLACEABLE:
            raise DataError(f"{refer!r}: no readable sample near ref {ref_index} (see the warnings above)")
        rows.append(row[:4] + row[5:])  # without the `bad` column
    out = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        out.append(tuple(np.stack(column) for column in zip(*chunk)))
    return out


def main(argv=None) -> int:
    from src.config import ConfigError
    from src.data.base import build_dataset
    from src.engine import grad_shares
    from src.engine.inference import build_trained_model, build_trained_tokenizer, load_inference_config
    from src.models.coupalign import CoupAlignWithLoss
    from src.models.criterion import CoupAlignCriterion
    from src.utils.cli import split_options
    from src.utils.runtime import setup_context

    args = list(sys.argv[1:] if argv is None else argv)
    options = {"batches": "2", "batch_size": "4", "split": "", "seed": "0", "output": ""}
    rest = split_options(args, options)  # the tool's own options; the rest are config keys
    try:
        batches, batch_size, seed = int(options["batches"]), int(options["batch_size"]), int(options["seed"])
    except ValueError as e:
        raise ConfigError(f"--batches, --batch_size and --seed take integers: {e}") from None
    if batches < 1 or batch_size < 1:
        raise ConfigError(f"--batches and --batch_size must be >= 1, got {batches} and {batch_size}")
    cfg = load_inference_config(rest)
    if not cfg.checkpoint_path:
        raise ConfigError("tools/grad_shares.py needs --checkpoint_path=<a train.py checkpoint>")
    setup_context(cfg)
    split = options["split"] or cfg.data.train_split
    refer = build_dataset(cfg, split)
    tokenizer = build_trained_tokenizer(cfg, "tools/grad_shares.py")
    data = load_batches(cfg, refer, tokenizer, batches, batch_size)
    model = build_trained_model(cfg, "tools/grad_shares.py")
    net_with_loss = CoupAlignWithLoss(model, CoupAlignCriterion.from_config(cfg))
    per_batch = [grad_shares.gradient_shares(net_with_loss, batch, seed=seed) for batch in data]
    combined = grad_shares.combine(per_batch)
    weights = dict(zip(net_with_loss.loss_names[1:], net_with_loss.criterion.loss_weights))
    samples = sum(len(b[0]) for b in data)
    print(f"gradient shares on the shared trunk ({', '.join(grad_shares.TRUNK_PREFIXES)}) of {cfg.checkpoint_path}, "
          f"{len(data)} batch(es), {samples} samples of {refer!r}")
    print(grad_shares.format_table(combined, weights, per_batch if len(per_batch) > 1 else ()))
    if options["output"]:
        with open(options["output"], "w", encoding="utf-8") as f:
            json.dump({"checkpoint": cfg.checkpoint_path, "split": split, "samples": samples,
                       "loss_weights": weights, "combined": combined, "per_batch": per_batch}, f, indent=2)
        print(f"wrote {options['output']}")
    return 0


if __name__ == "__main__":
    from src.utils.cli import run_main

    run_main(main)
