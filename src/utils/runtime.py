"""The one place that sets up a run: CPU environment defaults, device, execution mode, seeds, and
(only when asked) the distributed communication group.

Entry scripts call `apply_cpu_env_defaults()` *before* the first `import mindspore`, then
`setup_context(cfg)`. This module imports MindSpore lazily so the first call can happen first.
"""
from __future__ import annotations

import logging
import os
import random
import sys
from dataclasses import dataclass
from typing import Optional

logger = logging.getLogger(__name__)

# oneDNN on AVX-512 CPUs picks a reference convolution kernel for MindSpore's Conv2d (about 100x
# slower than PyTorch on the same machine; docs/platform.md). Capping the ISA at AVX2 makes
# oneDNN choose its GEMM-based kernel. The default below was chosen by measuring the whole model both
# ways (docs/performance.md); a value the user already exported always wins.
CPU_ENV_DEFAULTS = {"ONEDNN_MAX_CPU_ISA": "AVX2"}


def available_cpus() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def apply_cpu_env_defaults() -> None:
    """Sets CPU environment defaults without overriding anything the user set. Call before importing MindSpore."""
    if "mindspore" in sys.modules:
        missing = [k for k in CPU_ENV_DEFAULTS if k not in os.environ]
        if missing:
            logger.warning("MindSpore was imported before apply_cpu_env_defaults(); %s will not take effect", missing)
    for key, value in CPU_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)


@dataclass
class RunContext:
    rank: int = 0
    group_size: int = 1
    device_id: Optional[int] = None  # the device this process runs on, as MindSpore reports it after init

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device_id(configured: Optional[int], environ=None) -> Optional[int]:
    """The device id to give `mindspore.set_device`.

    An explicit `device_id` is used as given. Unset (None), a rank-table launch names each process's
    device in DEVICE_ID (scripts/run_distribute_train_ranktable.sh sets it); otherwise None lets
    MindSpore choose: device 0 standalone, a free device negotiated per worker under msrun. Passing 0
    there, as this function's predecessor did, sent all eight msrun workers of a server to NPU 0.
    """
    environ = os.environ if environ is None else environ
    if configured is not None:
        return int(configured)
    if environ.get("RANK_TABLE_FILE") and environ.get("DEVICE_ID", "").isdigit():
        return int(environ["DEVICE_ID"])
    return None


def setup_context(cfg) -> RunContext:
    """Device, graph/PyNative mode, seeds and, with `cfg.distribute`, `init()` + data-parallel settings."""
    import numpy as np
    import mindspore as ms

    ms.set_device(cfg.device_target, resolve_device_id(cfg.device_id))
    ms.set_context(mode=ms.GRAPH_MODE if cfg.mode == "graph" else ms.PYNATIVE_MODE)
    ctx = RunContext()
    if cfg.distribute:
        from mindspore.communication import get_group_size, get_rank, init

        init()  # only here: init() without a launcher (msrun / rank table) raises
        ctx = RunContext(rank=get_rank(), group_size=get_group_size())
        ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True,
                                     device_num=ctx.group_size)
    try:
        ctx.device_id = int(ms.get_context("device_id"))  # after init(): msrun's negotiated id
    except (TypeError, ValueError, RuntimeError):
        pass
    ms.set_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    return ctx


def all_gather_object(obj, ctx: RunContext) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank (pickled through the job's communicator);
    [obj] when the run is not distributed."""
    if ctx.group_size == 1:
        return [obj]
    from mindspore.mint.distributed import all_gather_object as gather

    gathered = [None] * ctx.group_size
    gather(gathered, obj)
    return gathered

