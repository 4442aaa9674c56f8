"""Where the compiled training step's kernel time goes: MindSpore's profiler over a few steps of the step that
train.py runs (the config's model, fixed random batch of tools/benchmark.py), summed per kernel type.

    python research/tools/profile_train_step.py [--config configs/quickstart_cpu.yaml] [--steps 3] [--json OUT]
        [--key=value ...]

Prints the median wall time of 8 unprofiled steps, then one row per kernel type (kernels and milliseconds of kernel
time per step, share) and the slowest single kernels. Kernel time is not wall time: the runtime runs independent
kernels side by side, so a cut in kernel time shows in the step's wall time only where it lay on the critical path
(research/NOTEBOOK.md, eighth session). The weights are random (`load_pretrained=False`): they do not change the time.
"""
import argparse
import csv
import glob
import json
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from src.utils.runtime import apply_cpu_env_defaults, cpu_model  # noqa: E402

apply_cpu_env_defaults()  # before MindSpore is imported


def read_profile(directory: str, steps: int):
    """(per kernel type, per kernel) rows from the profiler's CPU csv files under `directory`, in ms per step."""
    framework = glob.glob(os.path.join(directory, "*", "FRAMEWORK"))
    if not framework:
        raise FileNotFoundError(f"no profiler FRAMEWORK folder under {directory}")
    with open(os.path.join(framework[0], "cpu_op_type_info_0.csv"), encoding="utf-8") as f:
        types = [{"type": r["op_type"], "kernels": int(r["type_occurrences"]) / steps,
                  "ms": float(r["total_compute_time"]) / steps} for r in csv.DictReader(f)]
    with open(os.path.join(framework[0], "cpu_op_detail_info_0.csv"), encoding="utf-8") as f:
        kernels = [{"name": r["full_op_name"], "type": r["op_type"], "ms": float(r["op_total_time(ms)"]) / steps}
                   for r in csv.DictReader(f)]
    return sorted(types, key=lambda r: -r["ms"]), sorted(kernels, key=lambda r: -r["ms"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/quickstart_cpu.yaml")
    parser.add_argument("--steps", type=int, default=3, help="profiled steps")
    parser.add_argument("--top", type=int, default=20, help="kernel types (and single kernels) printed")
    parser.add_argument("--json", default="")
    args, overrides = parser.parse_known_args(argv)

    import numpy as np
    import mindspore as ms
    from mindspore import Tensor

    from src.config import num_other_objects, num_proposal_classes
    from src.models.bert import bert_config_from
    from src.models.factory import create_model
    from tools.benchmark import build_train_step, load_benchmark_config, parse_args, random_batch, time_calls

    bench_args, _ = parse_args(["--config", args.config])
    cfg, _ = load_benchmark_config(bench_args, overrides)
    ms.set_device("CPU")
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(cfg.seed)
    model = create_model(cfg, load_pretrained=False)
    model.set_train(True)
    step = build_train_step(cfg, model)
    batch = random_batch(cfg.train.batch_size, cfg.model.image_size, cfg.model.max_tokens,
                         bert_config_from(cfg.model.bert).vocab_size, seed=cfg.seed,
                         other_objects=num_other_objects(cfg), num_classes=num_proposal_classes(cfg))
    inputs = [Tensor(x) for x in batch]

    def one_step():
        return step(*inputs, update=True)[0].asnumpy()

    start = time.perf_counter()
    one_step()
    compile_s = time.perf_counter() - start
    wall = time_calls(one_step, steps=8, warmup=2)
    print(f"first step (compile) {compile_s:.1f} s; median step {1e3 * wall['median_s']:.0f} ms over 8", flush=True)

    with tempfile.TemporaryDirectory(prefix="coupalign_profile_") as out:
        profiler = ms.Profiler(output_path=out)
        for _ in range(args.steps):
            one_step()
        profiler.stop()
        profiler.analyse()
        types, kernels = read_profile(out, args.steps)
    total = sum(r["ms"] for r in types)
    print(f"\nkernel time {total:.0f} ms per step in {sum(r['kernels'] for r in types):.0f} kernels "
          f"({args.config}, batch {cfg.train.batch_size}, {cpu_model()})")
    print(f"{'kernel type':28s} {'kernels':>8s} {'ms/step':>9s} {'share':>6s}")
    for r in types[:args.top]:
        print(f"{r['type']:28s} {r['kernels']:8.0f} {r['ms']:9.1f} {100 * r['ms'] / total:5.1f}%")
    print("\nslowest single kernels (ms per step):")
    for r in kernels[:args.top]:
        print(f"{r['ms']:8.1f}  {r['name'][-110:]}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"config": args.config, "overrides": overrides, "cpu": cpu_model(), "steps": args.steps,
                       "compile_s": compile_s, "median_step_s": wall["median_s"], "kernel_ms_per_step": total,
                       "types": types, "slowest_kernels": kernels[:args.top]}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
