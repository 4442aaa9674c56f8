"""Train CoupAlign.

    python train.py --config_path default_config.yaml [--key=value ...]
    python train.py --config_path configs/quickstart_cpu.yaml --train.epochs=2 --output_dir=outputs/try

Distributed: scripts/run_distribute_train.sh (msrun) or scripts/run_distribute_train_ranktable.sh set
--distribute=true. Resume an interrupted run with --train.resume=true (same output_dir).
"""
import json
import logging
import sys

from src.utils.runtime import apply_cpu_env_defaults

apply_cpu_env_defaults()  # before MindSpore is imported


def main(argv=None) -> int:
    from src.config import load_config
    from src.engine.trainer import Trainer
    from src.utils.log import setup_logging
    from src.utils.runtime import setup_context

    cfg = load_config("default_config.yaml", sys.argv[1:] if argv is None else argv)
    ctx = setup_context(cfg)
    setup_logging(cfg.output_dir, "train", ctx.rank)
    log = logging.getLogger("train")
    log.info("rank %d of %d, device %s:%s, %s mode, seed %d", ctx.rank, ctx.group_size, cfg.device_target,
             ctx.device_id, cfg.mode, cfg.seed)
    if ctx.is_main:
        with open(f"{cfg.output_dir}/config.yaml", "w", encoding="utf-8") as f:
            f.write(cfg.to_yaml())
    summary = Trainer(cfg, ctx).fit()
    log.info("done: %s", json.dumps(summary))
    return 0


if __name__ == "__main__":
    from src.utils.cli import run_main

    run_main(main)
