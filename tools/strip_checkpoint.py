"""Release weights: a train.py checkpoint without its optimizer state, optionally in float16.

    python tools/strip_checkpoint.py --src outputs/run/checkpoints/step_00100000.ckpt --dst coupalign.ckpt [--fp16]

A step checkpoint holds the whole train step: the model, AdamW's two moments per weight (2x the model)
and counters. The stripped file keeps exactly the model's parameters (found by rebuilding the model the
checkpoint describes, so nothing is guessed from names) and what eval.py / infer.py / export.py need to
rebuild it: the config, the text encoder's architecture and vocabulary. `--fp16` halves it again;
loading casts the weights back to the model's float32 (fp16 rounding: ~1e-3 relative). Checkpoints
written before they carried a config need `--config_path` (and the pretrained files it names).
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from src.utils.runtime import apply_cpu_env_defaults  # noqa: E402

apply_cpu_env_defaults()  # before MindSpore is imported


def main(argv=None) -> int:
    import numpy as np
    import mindspore as ms

    from src.engine.checkpoint import ARTIFACT_KEYS, META_KEYS, _write_atomic, read_checkpoint
    from src.engine.inference import build_trained_model, load_inference_config
    from src.errors import ConfigError

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", required=True, help="a train.py checkpoint (step_<N>.ckpt or best.ckpt)")
    parser.add_argument("--dst", required=True, help="the stripped checkpoint to write")
    parser.add_argument("--fp16", action="store_true", help="store float32 weights as float16")
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if os.path.abspath(args.src) == os.path.abspath(args.dst):
        raise ConfigError("--dst must differ from --src (the source checkpoint is kept)")
    cfg = load_inference_config([*rest, f"--checkpoint_path={args.src}"])
    ms.set_device("CPU")
    model = build_trained_model(cfg, "strip_checkpoint.py")  # also proves the weights fit the model
    own = {p.name for p in model.get_parameters()}
    entries = read_checkpoint(args.src)
    kept = []
    for name in sorted(own):
        value = entries[name].asnumpy()
        if args.fp16 and value.dtype == np.float32:
            value = value.astype(np.float16)
        kept.append({"name": name, "data": ms.Tensor(value)})
    meta = {k: entries[k] for k in ARTIFACT_KEYS if isinstance(entries.get(k), str)}
    meta.setdefault("config_yaml", cfg.to_yaml())
    for key in ("step", "epoch"):
        if key in entries:
            meta[key] = int(entries[key].asnumpy().item())
    os.makedirs(os.path.dirname(os.path.abspath(args.dst)) or ".", exist_ok=True)
    _write_atomic(kept, args.dst, meta)
    dropped = [k for k, v in entries.items() if k not in own and k not in META_KEYS and hasattr(v, "asnumpy")]
    before, after = os.path.getsize(args.src), os.path.getsize(args.dst)
    print(f"wrote {args.dst}: {len(kept)} model tensors{' (float16)' if args.fp16 else ''}, {len(dropped)} "
          f"optimizer/step entries dropped; {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    from src.utils.cli import run_main

    run_main(main)
