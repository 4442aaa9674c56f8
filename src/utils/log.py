"""Logging set-up for entry scripts: rank 0 logs to the console and `<output_dir>/<name>.log`;
other ranks log to `<output_dir>/logs/<name>_rank_<r>.log` only, so a cluster run prints one stream."""
from __future__ import annotations

import logging
import os
import sys

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(output_dir: str, name: str, rank: int = 0, level: int = logging.INFO) -> str:
    os.makedirs(output_dir, exist_ok=True)
    if rank == 0:
        path = os.path.join(output_dir, f"{name}.log")
    else:
        os.makedirs(os.path.join(output_dir, "logs"), exist_ok=True)
        path = os.path.join(output_dir, "logs", f"{name}_rank_{rank}.log")
    root = logging.getLogger()
    root.setLevel(level)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    file_handler = logging.FileHandler(path, encoding="utf-8")
    file_handler.setFormatter(logging.Formatter(f"[rank {rank}] " + FORMAT))
    root.addHandler(file_handler)
    if rank == 0:
        console = logging.StreamHandler(sys.stdout)
        console.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
        root.addHandler(console)
    return path
