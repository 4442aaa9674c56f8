"""Times the update path of the training step alone, on the gradients' real shapes: the overflow check
(`ms.amp.all_finite`, the whole-tensor sums `grads_finite` first used, and today's `grads_finite`) and the AdamW
update, each compiled as its own graph and fed fixed random gradients (research/NOTEBOOK.md, seventh and eighth
sessions).

    python research/tools/update_path_timing.py [--config_path configs/quickstart_cpu.yaml] [--steps 15] [--json OUT]

Prints one line per variant (median ms over --steps calls after one untimed call), twice in alternation, so that
drift of the machine shows as a difference between the two rounds.
"""
import argparse
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from src.utils.runtime import apply_cpu_env_defaults, cpu_model  # noqa: E402

apply_cpu_env_defaults()  # before MindSpore is imported


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config_path", default="configs/quickstart_cpu.yaml")
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)

    import numpy as np
    import mindspore as ms
    from mindspore import Tensor, nn, ops

    from src.config import load_config
    from src.engine.optimizer import AdamW, PolyLR, param_groups
    from src.engine.train_step import grads_finite
    from src.models.factory import create_model
    from tools.benchmark import time_calls  # one untimed call, then the median of `steps` timed ones

    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    cfg = load_config(os.path.join(REPO, args.config_path))
    model = create_model(cfg, load_pretrained=False)  # shapes only: the values do not change the time
    groups = param_groups(model.trainable_params(), cfg.train.weight_decay,
                          lr_scales={"bert.": cfg.train.text_encoder_lr_scale,
                                     "swin.": cfg.train.image_encoder_lr_scale})

    class AllFinite(nn.Cell):
        def construct(self, grads):
            return ms.amp.all_finite(grads)

    class GradsFinite(nn.Cell):
        def construct(self, grads):
            return grads_finite(grads)

    whole_sum = ops.MultitypeFuncGraph("whole_sum")

    @whole_sum.register("Tensor")
    def _whole_sum(grad):
        return grad.astype(ms.float32).sum()

    class WholeTensorSums(nn.Cell):
        """grads_finite as first committed (d19e5fd): one whole-tensor sum per gradient."""

        def construct(self, grads):
            return ops.isfinite(ops.addn(ops.HyperMap()(whole_sum, grads)))

    class Update(nn.Cell):
        def __init__(self):
            super().__init__()
            self.optimizer = AdamW(groups, learning_rate=PolyLR(cfg.train.lr, 10 ** 6))

        def construct(self, grads):
            return self.optimizer(grads)

    update = Update()
    rng = np.random.default_rng(0)
    # mutable: a plain tuple argument is a compile-time constant, and the graph of a pure function of it is folded away
    # (the record of 2026-12-07's seventh session timed grads_finite at 3 ms that way; inside the step it is not).
    grads = ms.mutable(tuple(Tensor((1e-3 * rng.standard_normal(p.shape)).astype(np.float32))
                             for p in update.optimizer.parameters))
    first = update.optimizer.parameters[0]

    def median_ms(cell, read):
        return 1e3 * time_calls(lambda: read(cell(grads)), args.steps, warmup=0)["median_s"]

    variants = [("ms.amp.all_finite", AllFinite(), lambda out: out.asnumpy()),
                ("whole-tensor sums", WholeTensorSums(), lambda out: out.asnumpy()),
                ("grads_finite", GradsFinite(), lambda out: out.asnumpy()),
                ("AdamW update", update, lambda out: first.asnumpy())]
    result = {"config": args.config_path, "gradients": len(grads), "elements": int(sum(g.size for g in grads)),
              "cpu": cpu_model(), "cores": os.cpu_count(), "steps": args.steps, "rounds": []}
    print(f"{len(grads)} gradients, {result['elements']:,} elements")
    for round_index in range(2):
        row = {}
        for name, cell, read in variants:
            row[name] = round(median_ms(cell, read), 1)
            print(f"round {round_index + 1}  {name:18s} {row[name]:8.1f} ms", flush=True)
        result["rounds"].append(row)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
