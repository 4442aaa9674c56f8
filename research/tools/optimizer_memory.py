"""Peak resident memory and seconds per step of the compiled TrainStep with a chosen optimizer.

    python research/tools/optimizer_memory.py --config default_config.yaml \
        --image_size 128 --batch_size 1 --steps 3 [--optimizer adamw|ms_adamweightdecay] [--key=value ...]

`adamw` is ours (src/engine/optimizer.py, as the Trainer builds it: LAVT groups, poly schedule);
`ms_adamweightdecay` is MindSpore's fused `nn.AdamWeightDecay` (no bias correction) on the same
groups, as the memory reference. Random weights and inputs (memory and time do not depend on them).

Peak memory is this process's own VmHWM (/proc/self/status), read at the end. A watchdog thread
reads VmRSS every 0.2 s and ends the process (exit code 3) once it passes --rss_limit_gb, so a
run that would exhaust a shared machine stops first; it then reports the RSS it reached.
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from src.utils.runtime import available_cpus  # noqa: E402  (imports MindSpore lazily)
from tools.benchmark import (build_train_step, random_batch, time_calls,  # noqa: E402  (no MindSpore import)
                             without_missing_checkpoints)


def proc_status_kib(field: str) -> int:
    """A memory field of /proc/self/status (VmRSS, VmHWM), in KiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def start_rss_guard(limit_gib: float, period_s: float = 0.2) -> None:
    """Ends the process as soon as its resident memory passes `limit_gib` (a daemon thread; MindSpore
    releases the GIL while a graph runs, so the thread gets to look during a step)."""
    limit_kib = int(limit_gib * 1024 * 1024)

    def watch():
        while True:
            rss = proc_status_kib("VmRSS")
            if rss > limit_kib:
                print(f"ABORTED: VmRSS {rss / 2 ** 20:.2f} GiB passed the {limit_gib} GiB limit "
                      f"(VmHWM {proc_status_kib('VmHWM') / 2 ** 20:.2f} GiB)", flush=True)
                os._exit(3)
            time.sleep(period_s)

    threading.Thread(target=watch, daemon=True).start()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=os.path.join(ROOT, "default_config.yaml"))
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3, help="timed steps after the first (compiling) one")
    parser.add_argument("--optimizer", choices=("adamw", "ms_adamweightdecay"), default="adamw")
    parser.add_argument("--rss_limit_gb", type=float, default=18.0)
    args, overrides = parser.parse_known_args()  # the rest: config overrides (--model.x=..)

    start_rss_guard(args.rss_limit_gb)
    from src.config import load_config, num_other_objects, num_proposal_classes
    from src.utils.runtime import apply_cpu_env_defaults

    apply_cpu_env_defaults()  # before MindSpore loads
    cfg = load_config(args.config, overrides)
    cfg.model.image_size, cfg.train.batch_size = args.image_size, args.batch_size
    notes = without_missing_checkpoints(cfg)

    import mindspore as ms
    from mindspore import Tensor

    from src.models.factory import create_model
    from src.models.bert import bert_config_from

    ms.set_device("CPU")
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.device_context.cpu.op_tuning.threads_num(available_cpus())
    ms.set_seed(cfg.seed)

    model = create_model(cfg, load_pretrained=False)
    model.set_train(True)
    step_cell = build_train_step(cfg, model, optimizer=args.optimizer)
    net_with_loss = step_cell.net_with_loss
    n_params = sum(int(p.size) for p in net_with_loss.trainable_params())
    inputs = [Tensor(x) for x in random_batch(args.batch_size, args.image_size, cfg.model.max_tokens,
                                              bert_config_from(cfg.model.bert).vocab_size, seed=cfg.seed,
                                              other_objects=num_other_objects(cfg),
                                              num_classes=num_proposal_classes(cfg))]
    print(f"{args.optimizer}: {n_params:,} parameters, image {args.image_size}, batch {args.batch_size}; "
          + "; ".join(notes), flush=True)
    timing = time_calls(lambda: step_cell(*inputs, update=True)[0].asnumpy(), args.steps, warmup=0)
    loss = float(step_cell(*inputs, update=True)[0].asnumpy())  # one more step: the loss must stay finite
    print(f"{args.optimizer}: first step (compile) {timing['first_s']:.1f} s, median {timing['median_s']:.2f} s/step "
          f"(min {timing['min_s']:.2f}, {timing['runs']} steps), loss {loss:.4f}, "
          f"peak RSS (VmHWM) {proc_status_kib('VmHWM') / 2 ** 20:.2f} GiB", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
