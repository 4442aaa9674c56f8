"""Peak memory of one real training step of a configuration, next to the analytic lower bound.

    python tools/memory_probe.py --config_path CONFIG [--steps N] [--json OUT] [--key=value ...]

Builds the model and the Trainer's compiled step (src/engine/train_step.py) for the config's device and runs it
on a random batch of `train.batch_size` at `model.image_size` (missing pretrained files: random weights, the
same architecture and memory), then prints:

* on Ascend / GPU: `mindspore.runtime.max_memory_allocated()` (the most MindSpore's memory pool had handed out
  at once) and `max_memory_reserved()` (what the pool took from the device), peaks reset just before the
  first step, so they cover the compiled step's execution (and its compilation's device buffers);
* on the CPU: the process's peak resident memory (ru_maxrss) before the first step and after the last, and
  the difference; on the CPU MindSpore's pool statistics do not cover graph-mode kernels' memory;
* the analytic lower bound of `tools/benchmark.py --memory_estimate` for the same configuration (Swin
  encoders only).

Use it to choose a per-device batch: when a step does not fit, lower `train.batch_size` and raise
`train.accumulate_steps` by the same factor (same global batch), and/or turn on the recompute options
(`model.swin.recompute_stages=[2]`, `model.mask_generator.msdeform.recompute_sampling=true`);
docs/performance.md, "Training memory". `--steps` (default 1) runs more steps after the first, for a
steady-state figure.
"""
from __future__ import annotations

import json
import os
import resource
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from src.utils.cli import split_options  # noqa: E402
from src.utils.runtime import apply_cpu_env_defaults  # noqa: E402


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def probe(cfg, steps: int = 1) -> dict:
    """Runs 1 + `steps` training steps of `cfg` on a random batch; returns the measurements (bytes, seconds)."""
    import numpy as np
    import mindspore as ms

    from src.config import num_other_objects, num_proposal_classes
    from src.engine.optimizer import PolyLR
    from src.engine.train_step import build_train_step
    from src.models.factory import create_model
    from src.utils.runtime import resolve_device_id
    from tools.benchmark import random_batch, training_memory_estimate, without_missing_checkpoints

    notes = without_missing_checkpoints(cfg)
    ms.set_device(cfg.device_target, resolve_device_id(cfg.device_id))
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(cfg.seed)
    tc = cfg.train
    model = create_model(cfg)
    step = build_train_step(cfg, model, PolyLR(tc.lr, 10 ** 6, tc.lr_power, tc.warmup_steps))
    bert_config = model.bert.config
    inputs = [ms.Tensor(x) for x in random_batch(tc.batch_size, cfg.model.image_size, cfg.model.max_tokens,
                                                  bert_config.vocab_size, seed=cfg.seed,
                                                  other_objects=num_other_objects(cfg),
                                                  num_classes=num_proposal_classes(cfg))]
    on_device = cfg.device_target != "CPU"
    result = {"device_target": cfg.device_target, "batch_size": tc.batch_size, "image_size": cfg.model.image_size,
              "amp_level": tc.amp_level, "swin_recompute_stages": list(cfg.model.swin.recompute_stages),
              "recompute_sampling": cfg.model.mask_generator.msdeform.recompute_sampling, "notes": notes}
    result["rss_before_bytes"] = _peak_rss_bytes()
    if on_device:
        ms.runtime.reset_peak_memory_stats()
    start = time.perf_counter()
    losses = step(*inputs)
    float(losses[0].asnumpy())  # waits for the step
    result["first_step_s"] = time.perf_counter() - start  # compilation included
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        losses = step(*inputs)
        float(losses[0].asnumpy())
        times.append(time.perf_counter() - start)
    result["step_s"] = sorted(times)[len(times) // 2] if times else None
    result["loss"] = float(losses[0].asnumpy())
    result["rss_peak_bytes"] = _peak_rss_bytes()
    result["rss_growth_bytes"] = result["rss_peak_bytes"] - result["rss_before_bytes"]
    if on_device:
        result["max_memory_allocated_bytes"] = int(ms.runtime.max_memory_allocated())
        result["max_memory_reserved_bytes"] = int(ms.runtime.max_memory_reserved())
    if cfg.model.image_encoder == "swin":
        estimate = training_memory_estimate(cfg, bert_config, tc.batch_size)
        result["analytic_lower_bound_bytes"] = int(estimate["total"])
    return result


def format_result(result: dict) -> str:
    gib = 2 ** 30
    lines = [f"one training step: {result['device_target']}, batch {result['batch_size']} at "
             f"{result['image_size']} x {result['image_size']}, amp {result['amp_level']}, Swin recompute stages "
             f"{result['swin_recompute_stages']}, recompute_sampling {result['recompute_sampling']}",
             f"  first step (compiles) {result['first_step_s']:.1f} s" +
             (f", then {result['step_s']:.2f} s/step" if result["step_s"] else "") + f"; loss {result['loss']:.4f}"]
    if "max_memory_allocated_bytes" in result:
        lines.append(f"  device peak allocated   {result['max_memory_allocated_bytes'] / gib:8.2f} GiB "
                     f"(mindspore.runtime.max_memory_allocated)")
        lines.append(f"  device peak reserved    {result['max_memory_reserved_bytes'] / gib:8.2f} GiB "
                     f"(mindspore.runtime.max_memory_reserved)")
    lines.append(f"  host peak RSS           {result['rss_peak_bytes'] / gib:8.2f} GiB (before the first step "
                 f"{result['rss_before_bytes'] / gib:.2f}, growth {result['rss_growth_bytes'] / gib:.2f})")
    if "analytic_lower_bound_bytes" in result:
        lines.append(f"  analytic lower bound    {result['analytic_lower_bound_bytes'] / gib:8.2f} GiB "
                     f"(tools/benchmark.py --memory_estimate)")
    lines.extend(f"  note: {note}" for note in result["notes"])
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    options = {"steps": "1", "json": ""}
    rest = split_options(argv, options)
    apply_cpu_env_defaults(rest)  # before MindSpore loads
    from src.config import load_config

    cfg = load_config(None, rest)
    result = probe(cfg, steps=int(options["steps"]))
    print(format_result(result), flush=True)
    if options["json"]:
        with open(options["json"], "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    from src.utils.cli import run_main

    run_main(main)
