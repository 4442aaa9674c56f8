"""Device smoke test: what to run the first time an Ascend or GPU device is at hand, in one command.

    python tools/device_smoke.py [--device auto|Ascend|GPU|CPU] [--out DIR] [--quick] [--steps K]
        [--timeout S] [--msrun_port P]
    (or bash scripts/run_device_smoke.sh [same options])

Writes DIR/device_smoke.json (default DIR outputs/device_smoke) and prints a table. Each check runs in a
process of its own (compile time and peak memory are per process; a crash is recorded, not fatal):

* ``train_O0``, ``train_O2``: a small CoupAlign (the tiny smoke config: Swin 1-1-1-1, a 4-layer BERT, the
  msdeform pixel decoder, 64x64) compiled and trained for K steps on the device at amp_level O0 and at O2
  with a dynamic loss scale of 1024 (the model-zoo recipe): compile time (first step minus a steady one),
  median step time, peak memory (device allocator on Ascend/GPU, process RSS on CPU), the losses (finite?),
  and O2's first loss against O0's (same seed, weights and batch).
* ``paper_O0_b4``, ``paper_O2_b4``: the same for the paper configuration (default_config.yaml: Swin-B at
  480, BERT-base, 100 queries) at batch 4 per device, random weights. Device only.
* ``forward_device`` + ``forward_cpu``: the tiny model's logits on two samples (seeded random weights and
  inputs) on the device and on the CPU, in two processes; ``logits_device_vs_cpu`` compares them (largest
  and mean absolute difference, agreement of the masks logits > 0). On a device the paper configuration's
  logits are compared too. On a CPU machine both sides run on the CPU: the comparison must be exact.
* ``mindir``: export.py on the smoke checkpoint (the config says device_target Ascend, as a training
  config does: export must still run on the CPU), loaded back with MindSpore, logits against the CPU model.
* ``converter_lite``: the MINDIR through scripts/convert_mindir_ascend.sh (converter_lite
  --optimize=ascend_oriented); Ascend hosts with converter_lite only (MS_LITE_HOME, CONVERTER_LITE or PATH).
* ``msrun_2ranks``: scripts/run_distribute_train.sh with 2 workers on the tiny config and a tiny synthetic
  split, 2 steps then validation; the job must finish and log a validation record. Needs 2 devices.

``--quick`` (the CPU test's mode) leaves out the paper configuration and msrun. Whatever needs a device on
a CPU machine is skipped with its reason. Exit status: 0 when nothing failed, 1 otherwise (the report says
what), 2 on a usage error.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from collections import OrderedDict
from typing import Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

REPORT_NAME = "device_smoke.json"
DEVICES = ("Ascend", "GPU", "CPU")
O2_LOSS_SCALE = 1024.0  # the official Swin recipe's dynamic loss scale
COMPARE_SAMPLES = 2
# Device vs CPU: float32 on both sides, but other kernels (and on Ascend possibly HF32 matmuls); beyond this
# share of the largest logit the difference is a finding, not rounding.
DEVICE_RTOL = 1e-2
MINDIR_ATOL = 1e-5  # the same CPU kernels on both sides (tests/test_entry_scripts.py holds it to this)


# ================================================================================================
# Configs and data
# ================================================================================================
def tiny_config(data_root: str, output_dir: str, vocab_path: str, vocab_size: int) -> Dict:
    """The smoke test's small model: every part of the paper's (msdeform pixel decoder included: its
    sampling-location arithmetic is what float16 endangers) at toy width, 64x64, trainable in seconds."""
    return {
        # What a training config for the device says; the smoke's own processes take the device from --device,
        # and export.py must export this config on the CPU (a 310 host has no MindSpore for its card).
        "device_target": "Ascend", "seed": 0, "output_dir": output_dir,
        "model": {
            "image_size": 64, "max_tokens": 12,
            "swin": {"preset": "", "embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 2, 4, 8],
                     "window_size": 4, "drop_path_rate": 0.0, "pretrained": ""},
            "bert": {"pretrained": "", "vocab_path": vocab_path, "vocab_size": vocab_size, "hidden_size": 32,
                     "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 64,
                     "max_position_embeddings": 32},
            "wpa": {"word_heads": 4},
            "mask_generator": {"pixel_decoder": "msdeform", "msdeform": {"encoder_layers": 1}, "conv_dim": 32,
                               "mask_dim": 32, "num_queries": 4, "decoder_layers": 2, "decoder_heads": 4,
                               "decoder_ffn_dim": 64},
        },
        "loss": {"aux_num_fg": 16, "aux_num_bg": 32},
        "data": {"data_root": data_root, "num_workers": 1},
        "train": {"batch_size": 2, "epochs": 1, "max_steps": 2, "lr": 1e-3, "log_every": 1, "keep_last": 1,
                  "diagnostics_pairs": 0},
        "eval": {"batch_size": 2},
    }


def prepare_workdir(out: str) -> Dict[str, str]:
    """Synthetic refer data (16 images), a vocabulary of its words and the tiny config, under `out`."""
    import yaml

    from src.data.refer import ReferDataset
    from src.data.synthetic import generate_synthetic_refer

    data_root = os.path.join(out, "data")
    if not os.path.isfile(os.path.join(data_root, "refcoco", "instances.json")):
        generate_synthetic_refer(data_root, num_images=16, seed=3)
    words = set()
    for split in ("train", "val"):
        for sample in ReferDataset(data_root, "refcoco", "unc", split).samples():
            words.update("".join(ch if ch.isalnum() else " " for ch in sample.text.lower()).split())
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(words)
    vocab = os.path.join(out, "vocab.txt")
    with open(vocab, "w", encoding="utf-8") as f:
        f.write("\n".join(tokens) + "\n")
    config = os.path.join(out, "tiny.yaml")
    with open(config, "w", encoding="utf-8") as f:
        yaml.safe_dump(tiny_config(data_root, os.path.join(out, "runs"), vocab, len(tokens)), f)
    return {"data_root": data_root, "config": config}


def detect_device() -> str:
    """Ascend when the driver's device nodes or npu-smi exist, GPU when nvidia-smi or /dev/nvidia0 does, else CPU."""
    if glob.glob("/dev/davinci[0-9]*") or shutil.which("npu-smi"):
        return "Ascend"
    if os.path.exists("/dev/nvidia0") or shutil.which("nvidia-smi"):
        return "GPU"
    return "CPU"


# ================================================================================================
# Workers: one check per process
# ================================================================================================
def _worker_setup(spec: Dict):
    """MindSpore on spec["device"] in graph mode, seeded, and the config with its overrides."""
    import dataclasses

    from src.config import load_config
    from src.utils.runtime import setup_context

    cfg = load_config(spec["config"], spec.get("overrides", []))
    cfg = dataclasses.replace(cfg, device_target=spec["device"], distribute=False, device_id=None)
    setup_context(cfg)
    return cfg


def _peak_memory() -> Dict[str, float]:
    import resource

    import mindspore as ms

    out = {"host_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    if ms.get_context("device_target") != "CPU":
        out["device_peak_allocated_mb"] = ms.runtime.max_memory_allocated() / 2 ** 20
        out["device_peak_reserved_mb"] = ms.runtime.max_memory_reserved() / 2 ** 20
    return out


def worker_train(spec: Dict) -> Dict:
    """Compile + `steps` training steps of spec's config at its amp level: times, losses, peak memory."""
    import numpy as np
    from mindspore import Tensor

    from src.config import num_other_objects, num_proposal_classes
    from src.models.factory import create_model
    from src.models.bert import bert_config_from
    from tools.benchmark import build_train_step, random_batch, without_missing_checkpoints

    cfg = _worker_setup(spec)
    notes = without_missing_checkpoints(cfg)  # timing and memory do not depend on the weights' values
    model = create_model(cfg, load_pretrained=False)
    model.set_train(True)
    step = build_train_step(cfg, model)
    size, batch = cfg.model.image_size, cfg.train.batch_size
    vocab_size = bert_config_from(cfg.model.bert).vocab_size
    inputs = [Tensor(x) for x in random_batch(batch, size, cfg.model.max_tokens, vocab_size, seed=cfg.seed,
                                              other_objects=num_other_objects(cfg),
                                              num_classes=num_proposal_classes(cfg))]
    losses, finite, times = [], [], []
    for _ in range(1 + spec["steps"]):
        start = time.perf_counter()
        *values, ok = step(*inputs, update=True)
        loss = float(values[0].asnumpy())  # reading the loss back waits for the step
        times.append(time.perf_counter() - start)
        losses.append(loss)
        finite.append(bool(ok.asnumpy()))
    steady = sorted(times[1:])[len(times[1:]) // 2] if len(times) > 1 else times[0]
    return {"amp_level": cfg.train.amp_level, "loss_scale": cfg.train.loss_scale, "batch_size": batch,
            "image_size": size, "first_step_s": times[0], "step_s": steady, "compile_s": times[0] - steady,
            "steps": len(times), "losses": losses, "finite": finite,
            "losses_finite": bool(np.all(np.isfinite(losses))), **_peak_memory(), "notes": notes}


def _compare_inputs(cfg, path: str):
    """The two samples' inputs (seeded random image and sentence), written once and read by every side."""
    import numpy as np

    from src.models.bert import bert_config_from
    from tools.benchmark import random_batch

    if not os.path.isfile(path):
        image, ids, mask = random_batch(COMPARE_SAMPLES, cfg.model.image_size, cfg.model.max_tokens,
                                        bert_config_from(cfg.model.bert).vocab_size, seed=cfg.seed + 1)[:3]
        np.savez(path, image=image, input_ids=ids, attention_mask=mask)
    data = np.load(path)
    return data["image"], data["input_ids"], data["attention_mask"]


def _logits(call, inputs):
    """Logits of each sample alone (batch 1, the exported MINDIR's shape), stacked."""
    import numpy as np
    from mindspore import Tensor

    image, ids, mask = inputs
    return np.concatenate([call(Tensor(image[i:i + 1]), Tensor(ids[i:i + 1]), Tensor(mask[i:i + 1])).asnumpy()
                           for i in range(image.shape[0])])


def worker_forward(spec: Dict) -> Dict:
    """The config's model under seed on spec's device: writes the checkpoint (first caller) and the logits."""
    import numpy as np
    import mindspore as ms

    from src.engine.checkpoint import load_model_weights
    from src.models.factory import create_model
    from tools.benchmark import without_missing_checkpoints

    cfg = _worker_setup(spec)
    notes = without_missing_checkpoints(cfg)
    model = create_model(cfg, load_pretrained=False)
    if os.path.isfile(spec["checkpoint"]):
        load_model_weights(model, spec["checkpoint"])
    else:
        # With the config stored in it, as train.py writes it: export.py reads checkpoints so.
        with open(spec["config"], encoding="utf-8") as f:
            config_yaml = f.read()
        ms.save_checkpoint(model, spec["checkpoint"], append_dict={"config_yaml": config_yaml})
    model.set_train(False)
    inputs = _compare_inputs(cfg, spec["inputs"])
    start = time.perf_counter()
    logits = _logits(model, inputs)
    seconds = time.perf_counter() - start
    np.save(spec["logits"], logits)
    out = {"logits": spec["logits"], "shape": list(logits.shape), "seconds_with_compile": seconds, "notes": notes,
           **_peak_memory()}
    if spec.get("count_devices"):
        out["device_count"] = _device_count(spec["device"])
    return out


def _device_count(device: str) -> Optional[int]:
    try:
        import mindspore.device_context as dc

        return int({"Ascend": dc.ascend, "GPU": dc.gpu, "CPU": dc.cpu}[device].device_count())
    except Exception:  # noqa: BLE001 - unknown is an answer here: msrun then tries
        return None


def worker_mindir(spec: Dict) -> Dict:
    """export.py on the smoke checkpoint, in this (CPU) process, then the MINDIR's logits on the CPU."""
    import numpy as np
    import mindspore as ms
    from mindspore import nn

    import export

    args = ["--config_path", spec["config"], "--checkpoint_path", spec["checkpoint"], "--file_name", spec["stem"]]
    start = time.perf_counter()
    export.main(args)
    seconds = time.perf_counter() - start
    path = spec["stem"] + ".mindir"
    graph = nn.GraphCell(ms.load(path))
    from src.config import load_config

    cfg = load_config(spec["config"])
    logits = _logits(graph, _compare_inputs(cfg, spec["inputs"]))
    np.save(spec["logits"], logits)
    return {"mindir": path, "export_s": seconds, "size_mb": os.path.getsize(path) / 2 ** 20,
            "exported_on": ms.get_context("device_target"), "logits": spec["logits"]}


WORKERS = {"train": worker_train, "forward": worker_forward, "mindir": worker_mindir}


def run_worker(spec_path: str) -> int:
    with open(spec_path, encoding="utf-8") as f:
        spec = json.load(f)
    result = WORKERS[spec["kind"]](spec)
    with open(spec["result"], "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    return 0


# ================================================================================================
# The orchestrator
# ================================================================================================
class Report:
    def __init__(self, path: str, meta: Dict):
        self.path = path
        self.data = OrderedDict(meta)
        self.data["checks"] = OrderedDict()

    def add(self, name: str, status: str, **fields) -> Dict:
        entry = OrderedDict(status=status, **fields)
        self.data["checks"][name] = entry
        self.save()
        line = fields.get("reason") or fields.get("error") or ""
        print(f"[device_smoke] {name}: {status}{' - ' + line.splitlines()[0] if line else ''}", flush=True)
        return entry

    def save(self) -> None:
        with open(self.path, "w", encoding="utf-8") as f:
            json.dump(self.data, f, indent=1)

    def failed(self) -> List[str]:
        return [name for name, entry in self.data["checks"].items() if entry["status"] == "failed"]


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def spawn(kind: str, spec: Dict, workdir: str, timeout: float, device: str) -> Dict:
    """Runs one worker process; returns {"ok": bool, "result" or "error", "wall_s"}."""
    name = spec.pop("name")
    spec_path = os.path.join(workdir, f"{name}.spec.json")
    spec.update(kind=kind, device=spec.get("device", device), result=os.path.join(workdir, f"{name}.result.json"))
    with open(spec_path, "w", encoding="utf-8") as f:
        json.dump(spec, f, indent=1)
    if os.path.exists(spec["result"]):
        os.remove(spec["result"])
    # GLOG_v=3: MindSpore's own errors only; the worker's traceback is what the report keeps.
    env = dict(os.environ, GLOG_v=os.environ.get("GLOG_v", "3"))
    command = [sys.executable, os.path.abspath(__file__), "--_worker", spec_path, "--device_target", spec["device"]]
    start = time.perf_counter()
    try:
        proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout:.0f} s", "wall_s": time.perf_counter() - start}
    wall = time.perf_counter() - start
    with open(os.path.join(workdir, f"{name}.log"), "w", encoding="utf-8") as f:
        f.write(proc.stdout + "\n--- stderr\n" + proc.stderr)
    if proc.returncode != 0 or not os.path.isfile(spec["result"]):
        return {"ok": False, "error": f"exit status {proc.returncode}: {_tail(proc.stderr or proc.stdout)}",
                "wall_s": wall, "log": os.path.join(workdir, f"{name}.log")}
    with open(spec["result"], encoding="utf-8") as f:
        return {"ok": True, "result": json.load(f), "wall_s": wall}


def compare_logits(a_path: str, b_path: str) -> Dict:
    import numpy as np

    a, b = np.load(a_path).astype(np.float64), np.load(b_path).astype(np.float64)
    if a.shape != b.shape:
        return {"shape_a": list(a.shape), "shape_b": list(b.shape), "max_abs_diff": float("inf")}
    diff = np.abs(a - b)
    agree = float(np.mean((a > 0) == (b > 0)))
    return {"samples": int(a.shape[0]), "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
            "max_abs_logit": float(np.abs(b).max()), "mask_agreement": agree}


class LogitsCheck:
    """One model's logits on two samples, on the device and on the CPU (two processes), compared. The device
    side writes the seeded checkpoint and inputs that the CPU side (and the MINDIR check) read."""

    def __init__(self, tag: str, config: str, work: str):
        self.tag, self.config, self.work = tag, config, work
        self.suffix = "" if tag == "tiny" else f"_{tag}"
        self.checkpoint = os.path.join(work, f"{tag}.ckpt")
        self.inputs = os.path.join(work, f"{tag}_inputs.npz")
        self.device_outcome = {"ok": False}
        for stale in (self.checkpoint, self.inputs):  # a previous run's weights would make the comparison stale
            if os.path.exists(stale):
                os.chmod(stale, 0o600)
                os.remove(stale)

    def _spawn(self, side: str, device: str, timeout: float, **extra) -> Dict:
        return spawn("forward", {"name": f"forward_{side}{self.suffix}", "config": self.config,
                                 "checkpoint": self.checkpoint, "inputs": self.inputs,
                                 "logits": os.path.join(self.work, f"{self.tag}_logits_{side}.npy"), **extra},
                     self.work, timeout, device)

    def device_side(self, report: Report, device: str, timeout: float) -> Dict:
        self.device_outcome = self._spawn("device", device, timeout, count_devices=True)
        _add_worker(report, f"forward_device{self.suffix}", self.device_outcome)
        return self.device_outcome

    def cpu_side(self, report: Report, on_device: bool, timeout: float) -> Dict:
        cpu = self._spawn("cpu", "CPU", timeout)
        _add_worker(report, f"forward_cpu{self.suffix}", cpu)
        name = f"logits_device_vs_cpu{self.suffix}"
        if not (self.device_outcome["ok"] and cpu["ok"]):
            report.add(name, "skipped", reason=f"a forward run failed (forward_device{self.suffix}, "
                                               f"forward_cpu{self.suffix})")
            return cpu
        cmp = compare_logits(self.device_outcome["result"]["logits"], cpu["result"]["logits"])
        # Off the CPU other kernels (and on Ascend possibly HF32 matmuls) compute the same float32 graph; on a
        # CPU machine both sides are the same kernels and must agree exactly.
        tol = DEVICE_RTOL * max(1.0, cmp["max_abs_logit"]) if on_device else MINDIR_ATOL
        if cmp["max_abs_diff"] <= tol:
            report.add(name, "ok", tolerance=tol, **cmp)
        else:
            report.add(name, "failed", tolerance=tol, error=f"largest difference {cmp['max_abs_diff']:.3g} > {tol:.3g}",
                       **cmp)
        return cpu


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_msrun(report: Report, device: str, paths: Dict[str, str], out: str, timeout: float,
              port: Optional[int]) -> None:
    """2 workers through the project's launcher, 2 steps, then validation on the synthetic val split."""
    run_dir = os.path.join(out, "msrun")
    shutil.rmtree(run_dir, ignore_errors=True)
    env = dict(os.environ, PYTHON_BIN=sys.executable, MASTER_PORT=str(port or free_port()),
               LOG_DIR=os.path.join(run_dir, "logs"), GLOG_v=os.environ.get("GLOG_v", "3"))
    env.pop("COUPALIGN_ARGS_CWD", None)
    command = ["bash", os.path.join(ROOT, "scripts", "run_distribute_train.sh"), "2", paths["config"],
               f"--device_target={device}", f"--output_dir={run_dir}", "--train.max_steps=2", "--train.validate=true",
               "--train.save_every_steps=0"]
    start = time.perf_counter()
    try:
        proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        report.add("msrun_2ranks", "failed", error=f"timed out after {timeout:.0f} s", logs=env["LOG_DIR"])
        return
    wall = time.perf_counter() - start
    log_path = os.path.join(run_dir, "train_log.jsonl")
    records = []
    if os.path.isfile(log_path):
        with open(log_path, encoding="utf-8") as f:
            records = [json.loads(line) for line in f if line.strip()]
    val = [r for r in records if r.get("type") == "val"]
    train = [r for r in records if r.get("type") == "train"]
    fields = {"wall_s": wall, "logs": env["LOG_DIR"], "command": " ".join(command)}
    if proc.returncode != 0:
        report.add("msrun_2ranks", "failed", error=f"exit status {proc.returncode}: {_tail(proc.stderr)}", **fields)
    elif not val or not train:
        report.add("msrun_2ranks", "failed", error=f"{log_path} has {len(train)} train and {len(val)} val records; "
                   "expected both", **fields)
    else:
        report.add("msrun_2ranks", "ok", devices=train[-1].get("devices") or 2, steps=train[-1]["step"],
                   val_overall_iou=val[-1].get("overall_iou"), **fields)


def find_converter() -> Optional[str]:
    if os.environ.get("CONVERTER_LITE"):
        return os.environ["CONVERTER_LITE"]
    home = os.environ.get("MS_LITE_HOME", "")
    candidate = os.path.join(home, "tools", "converter", "converter", "converter_lite")
    if home and os.access(candidate, os.X_OK):
        return candidate
    return shutil.which("converter_lite")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", choices=("auto",) + DEVICES)
    parser.add_argument("--out", default=os.path.join(ROOT, "outputs", "device_smoke"))
    parser.add_argument("--quick", action="store_true", help="leave out the paper configuration and msrun")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps after the compiling one")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per check process")
    parser.add_argument("--msrun_port", type=int, default=None, help="msrun's master port (default: a free one)")
    parser.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--device_target", default=None, help=argparse.SUPPRESS)  # read by apply_cpu_env_defaults
    args = parser.parse_args(argv)
    if args._worker:
        from src.utils.runtime import apply_cpu_env_defaults

        apply_cpu_env_defaults()  # before MindSpore loads; a no-op off the CPU where runtime.py knows the device
        return run_worker(args._worker)
    if args.steps < 1:
        parser.error("--steps must be >= 1")

    device = detect_device() if args.device == "auto" else args.device
    out = os.path.abspath(args.out)
    work = os.path.join(out, "work")
    os.makedirs(work, exist_ok=True)
    report = Report(os.path.join(out, REPORT_NAME), meta={
        "device": device, "device_chosen_by": "--device" if args.device != "auto" else "detected",
        "quick": args.quick, "steps": args.steps, "python": platform.python_version(), "host": platform.node(),
        "machine": platform.machine(), "cpus": os.cpu_count(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "commit": _git_commit(), "mindspore": _mindspore_version()})
    start = time.perf_counter()
    paths = prepare_workdir(out)
    on_device = device != "CPU"

    # 1. The tiny model's logits on the device (this also writes the checkpoint every later step reads).
    tiny = LogitsCheck("tiny", paths["config"], work)
    forward = tiny.device_side(report, device, args.timeout)

    # 2. Training steps at O0 and O2 (O2's first loss against O0's: same seed, weights and batch).
    train_results = {}
    for amp, scale in (("O0", 1.0), ("O2", O2_LOSS_SCALE)):
        name = f"train_{amp}"
        result = spawn("train", {"name": name, "config": paths["config"], "steps": args.steps,
                                 "overrides": [f"--train.amp_level={amp}", f"--train.loss_scale={scale}"]},
                       work, args.timeout, device)
        train_results[amp] = result
        extra = {}
        if amp == "O2" and result["ok"] and train_results["O0"]["ok"]:
            first32, first16 = train_results["O0"]["result"]["losses"][0], result["result"]["losses"][0]
            extra["first_loss_rel_diff_vs_O0"] = abs(first16 - first32) / max(abs(first32), 1e-12)
        _add_worker(report, name, result, require=lambda r: (r["losses_finite"], "a loss is not finite"), **extra)

    # 3. The paper configuration at batch 4 (device only: hours per step on a CPU).
    paper_config = os.path.join(ROOT, "default_config.yaml")
    for amp, scale in (("O0", 1.0), ("O2", O2_LOSS_SCALE)):
        name = f"paper_{amp}_b4"
        if not on_device:
            report.add(name, "skipped", reason="needs an Ascend or GPU device (Swin-B at 480, batch 4)")
        elif args.quick:
            report.add(name, "skipped", reason="--quick")
        else:
            result = spawn("train", {"name": name, "config": paper_config, "steps": args.steps,
                                     "overrides": [f"--train.amp_level={amp}", f"--train.loss_scale={scale}",
                                                   "--train.batch_size=4"]}, work, args.timeout, device)
            _add_worker(report, name, result, require=lambda r: (r["losses_finite"], "a loss is not finite"))

    # 4. The CPU side of the logits, and the MINDIR exported (on the CPU) and run.
    cpu = tiny.cpu_side(report, on_device, args.timeout)
    mindir = {"ok": False}
    if cpu["ok"]:
        mindir = spawn("mindir", {"name": "mindir", "config": paths["config"], "checkpoint": tiny.checkpoint,
                                  "inputs": tiny.inputs,
                                  "stem": os.path.join(work, "tiny"),
                                  "logits": os.path.join(work, "tiny_logits_mindir.npy")}, work, args.timeout, "CPU")
        extra = compare_logits(mindir["result"]["logits"], cpu["result"]["logits"]) if mindir["ok"] else {}
        def mindir_ok(r):
            if r["exported_on"] != "CPU":
                return False, f"export.py ran on {r['exported_on']}, not on the CPU"
            return (extra["max_abs_diff"] <= MINDIR_ATOL,
                    f"MINDIR logits differ from the model's by {extra['max_abs_diff']:.3g} > {MINDIR_ATOL}")

        _add_worker(report, "mindir", mindir, require=mindir_ok, **extra)
    else:
        report.add("mindir", "skipped", reason="forward_cpu failed")

    # 5. The paper configuration's logits, device against CPU (device only: random weights, 480x480).
    if not on_device or args.quick:
        reason = "--quick" if on_device else "the tiny model's comparison stands for it on a CPU machine"
        for name in ("forward_device_paper", "forward_cpu_paper", "logits_device_vs_cpu_paper"):
            report.add(name, "skipped", reason=reason)
    else:
        paper = LogitsCheck("paper", paper_config, work)
        paper.device_side(report, device, args.timeout)
        paper.cpu_side(report, on_device, args.timeout)

    # 6. converter_lite (Ascend hosts).
    converter = find_converter()
    if device != "Ascend":
        report.add("converter_lite", "skipped", reason="--optimize=ascend_oriented compiles for an Ascend device "
                   f"(CANN); this run's device is {device}")
    elif not converter:
        report.add("converter_lite", "skipped", reason="converter_lite not found (set MS_LITE_HOME to the Lite "
                   "2.10 tarball, or CONVERTER_LITE)")
    elif not mindir["ok"]:
        report.add("converter_lite", "skipped", reason="no MINDIR (the mindir check failed)")
    else:
        proc = subprocess.run(["bash", os.path.join(ROOT, "scripts", "convert_mindir_ascend.sh"),
                               mindir["result"]["mindir"], "preferred_fp32"], cwd=ROOT, capture_output=True, text=True,
                              env=dict(os.environ, CONVERTER_LITE=converter, CACHE_DIR=os.path.join(work, "converted")),
                              timeout=args.timeout)
        if proc.returncode == 0:
            report.add("converter_lite", "ok", converted=proc.stdout.strip().splitlines()[-1], converter=converter)
        else:
            report.add("converter_lite", "failed", error=_tail(proc.stderr), converter=converter)

    # 7. A 2-rank msrun with validation.
    devices = forward["result"].get("device_count") if forward["ok"] else None
    if args.quick:
        report.add("msrun_2ranks", "skipped", reason="--quick")
    elif on_device and devices is not None and devices < 2:
        report.add("msrun_2ranks", "skipped", reason=f"{devices} {device} device(s) visible; 2 ranks need 2")
    else:
        run_msrun(report, device, paths, out, args.timeout, args.msrun_port)

    report.data["wall_s"] = time.perf_counter() - start
    report.save()
    print(format_table(report.data))
    print(f"report: {report.path}")
    failed = report.failed()
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def _add_worker(report: Report, name: str, outcome: Dict, require=None, **extra) -> None:
    """Records a worker's outcome: failed when the process failed or `require(result)` says (False, why)."""
    if not outcome["ok"]:
        report.add(name, "failed", error=outcome["error"], wall_s=outcome.get("wall_s"),
                   **({"log": outcome["log"]} if "log" in outcome else {}), **extra)
        return
    result = outcome["result"]
    if require is not None:
        passed, why = require(result)
        if not passed:
            report.add(name, "failed", error=why, wall_s=outcome["wall_s"], **result, **extra)
            return
    report.add(name, "ok", wall_s=outcome["wall_s"], **result, **extra)


def _git_commit() -> Optional[str]:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _mindspore_version() -> Optional[str]:
    try:
        from importlib.metadata import version

        return version("mindspore")
    except Exception:  # noqa: BLE001 - reported as unknown
        return None


def _fmt(value, digits: int = 3) -> str:
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def format_table(data: Dict) -> str:
    """One line per check: status, its key numbers, and the reason or error."""
    rows = [("check", "status", "numbers", "reason / error")]
    for name, entry in data["checks"].items():
        numbers = []
        for key, label in (("compile_s", "compile s"), ("step_s", "step s"), ("device_peak_allocated_mb", "dev MB"),
                           ("host_peak_rss_mb", "rss MB"), ("first_loss_rel_diff_vs_O0", "loss vs O0"),
                           ("max_abs_diff", "max |diff|"), ("mask_agreement", "mask agree"),
                           ("export_s", "export s"), ("val_overall_iou", "val oIoU"), ("wall_s", "wall s")):
            if entry.get(key) is not None:
                numbers.append(f"{label} {_fmt(entry[key])}")
        note = (entry.get("reason") or entry.get("error") or "").strip().splitlines()
        rows.append((name, entry["status"], ", ".join(numbers), note[0][:100] if note else ""))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [f"device smoke test on {data['device']} (MindSpore {data.get('mindspore')}, commit {data.get('commit')})"]
    for row in rows:
        lines.append("  ".join(cell.ljust(widths[i]) if i < 3 else cell for i, cell in enumerate(row)).rstrip())
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
