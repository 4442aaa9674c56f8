"""The one place that sets up a run: CPU environment defaults, device, execution mode, seeds, and
(only when asked) the distributed communication group.

Entry scripts call `apply_cpu_env_defaults()` *before* the first `import mindspore`, then
`setup_context(cfg)`. This module imports MindSpore lazily so the first call can happen first.
"""
from __future__ import annotations

import logging
import os
import platform
import random
import sys
from dataclasses import asdict, dataclass
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


def cpu_model() -> str:
    """The CPU's model name, for the records of timed runs (machines of one kind differ: say which one measured)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def _device_target_of(argv) -> Optional[str]:
    """The device_target the command line `argv` asks for (`--device_target`, else the `--config_path` file's,
    else the schema default), read without MindSpore and without parsing the other options (scripts have
    aliases of their own); None when the config file cannot be read (its own parse reports that later)."""
    values = {}
    args = list(argv)
    for i, arg in enumerate(args):
        for key in ("device_target", "config_path"):
            if arg.startswith(f"--{key}="):
                values[key] = arg.split("=", 1)[1]
            elif arg == f"--{key}" and i + 1 < len(args):
                values[key] = args[i + 1]
    if "device_target" in values:
        return values["device_target"]
    try:
        from src.config import Config, _from_args_cwd, read_yaml

        data = read_yaml(_from_args_cwd(values["config_path"])) if "config_path" in values else {}
        return str(data.get("device_target", Config.device_target))
    except Exception:  # noqa: BLE001 - an unreadable config: decide nothing here
        return None


def apply_cpu_env_defaults(argv=None) -> None:
    """Sets CPU environment defaults without overriding anything the user set, only when the run's device
    target (read from `argv`, default sys.argv[1:]) is the CPU and the machine is x86-64: the cap names an x86
    ISA and only the CPU backend's oneDNN kernels read it; on an Ascend or GPU host it would at best do nothing.
    Call before importing MindSpore."""
    target = _device_target_of(sys.argv[1:] if argv is None else argv)
    if target != "CPU" or platform.machine().lower() not in ("x86_64", "amd64"):
        return
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
    apply_backend_settings(cfg)  # before anything compiles
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
    ms.set_seed(cfg.seed)  # the same on every rank: the parameters are initialised from it
    ms.manual_seed(cfg.seed)  # the default generator, which set_seed leaves alone (mint's random ops)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    return ctx


def backend_settings(cfg) -> dict:
    """What `apply_backend_settings` does for `cfg.backend` (config section `backend`) on `cfg.device_target`:
    {"jit_level": "O0"|"O1", "precision_mode": str, "compile_cache_path": str}, only the keys that are set and that
    the device has. The CPU takes none (MindSpore's CPU backend has no Ascend precision mode, and the compile cache
    and jit levels are tuned for the devices); GPU takes all but the Ascend precision mode."""
    backend, device = cfg.backend, cfg.device_target
    wanted = {}
    if backend.jit_level:
        wanted["jit_level"] = backend.jit_level
    if backend.precision_mode:
        wanted["precision_mode"] = backend.precision_mode
    if backend.compile_cache:
        wanted["compile_cache_path"] = os.path.abspath(backend.compile_cache_path
                                                       or os.path.join(cfg.output_dir, "compile_cache"))
    if device == "CPU":
        return {}
    if device != "Ascend":
        wanted.pop("precision_mode", None)
    return wanted


def apply_backend_settings(cfg) -> dict:
    """Applies `backend_settings(cfg)` (called by `setup_context` before anything compiles) and logs what it set and
    what the device ignores; returns what was set."""
    import mindspore as ms

    settings = backend_settings(cfg)
    given = {k: v for k, v in asdict(cfg.backend).items() if v not in ("", False)}
    used = set(settings) | ({"compile_cache"} if "compile_cache_path" in settings else set())
    ignored = sorted(set(given) - used)
    if ignored:
        logger.info("backend settings not used on %s: %s", cfg.device_target,
                    ", ".join(f"backend.{k}={given[k]!r}" for k in ignored))
    if "jit_level" in settings:
        # The global form: it reaches every graph of the run (train step, evaluation, export). MindSpore 2.10 marks
        # set_context(jit_config=...) deprecated in favour of per-function jit(jit_level=...), which Cells compiled
        # in GRAPH_MODE do not go through.
        ms.set_context(jit_config={"jit_level": settings["jit_level"]})
    if "precision_mode" in settings:
        ms.device_context.ascend.op_precision.precision_mode(settings["precision_mode"])
    if "compile_cache_path" in settings:
        # MindSpore 2.10's replacement for set_context(enable_compile_cache=..., compile_cache_path=...); read when a
        # graph compiles, so setting them here (before the first compile) is enough. A value the user exported wins.
        os.makedirs(settings["compile_cache_path"], exist_ok=True)
        os.environ.setdefault("MS_COMPILER_CACHE_ENABLE", "1")
        os.environ.setdefault("MS_COMPILER_CACHE_PATH", settings["compile_cache_path"])
    if settings:
        logger.info("backend settings on %s: %s", cfg.device_target,
                    ", ".join(f"{k}={v!r}" for k, v in settings.items()))
    return settings


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank `rank`'s random draws inside the step (dropout, drop path, the auxiliary loss's
    pixels): `seed` itself on rank 0, so that a one-device run is unchanged, and a different one on every
    other rank, so that data-parallel ranks do not draw the same masks for their different samples."""
    return seed if rank == 0 else (seed + 1_000_003 * rank) % (2 ** 31 - 1)


def seed_rank_randomness(network, seed: int, rank: int) -> int:
    """Makes the random ops of `network` (built under `seed`, so its parameters are the same on every rank)
    draw from `rank_seed(seed, rank)` from now on; call after building the model and before building the
    training step. Returns that seed.

    MindSpore fixes an `nn.Dropout`'s seeds when the cell is constructed (from the global seed then), so on
    ranks other than 0 each one's primitive is rebuilt under the rank's seed; `ops.rand` (the auxiliary
    loss) takes the global seed when the step is compiled, and mint's random ops the default generator.
    Rank 0 is left exactly as it was built."""
    import mindspore as ms
    from mindspore import nn

    chosen = rank_seed(seed, rank)
    if rank == 0:
        return chosen
    ms.set_seed(chosen)
    ms.manual_seed(chosen)
    for _, cell in network.cells_and_names():
        if isinstance(cell, nn.Dropout):
            p = cell.p if cell.p is not None else 1.0 - cell.keep_prob
            cell.dropout = nn.Dropout(p=p).dropout  # the primitive, seeded now
    return chosen


def all_gather_rows(rows, ctx: RunContext, columns: int) -> list:
    """[rows of rank 0, rows of rank 1, ...] on every rank: each rank's int64 block (n_r, columns), n_r free
    to differ between ranks; [rows] when the run is not distributed.

    Only fixed-size numeric tensors cross the communicator, through `ops.AllGather`, which runs on Ascend
    (HCCL), GPU (NCCL) and CPU (msrun's mccl): MindSpore's object gather (pickles) is documented for Ascend
    alone. AllGather needs one shape on every rank, so the row counts go first and each block is
    zero-padded to the longest one. The int64 values travel as pairs of int32: measured on CPU, AllGather of
    int64 keeps only each value's low 32 bits (and AllReduce refuses int64), and int32 is gathered everywhere.
    """
    import numpy as np

    rows = np.ascontiguousarray(rows, dtype=np.int64).reshape(-1, columns)  # (n, columns)
    if ctx.group_size == 1:
        return [rows]
    from mindspore import Tensor, ops

    gather = ops.AllGather()
    shape = np.array([[rows.shape[0], columns]], np.int32)  # (1, 2)
    shapes = gather(Tensor(shape)).asnumpy()  # (R, 2)
    if (shapes[:, 1] != columns).any():
        raise RuntimeError(f"all_gather_rows: the ranks sent blocks of {shapes[:, 1].tolist()} columns (rank "
                           f"{ctx.rank}: {columns}); every rank must send the same number of columns")
    longest = max(1, int(shapes[:, 0].max()))  # AllGather refuses empty tensors
    padded = np.zeros((longest, columns), np.int64)
    padded[:rows.shape[0]] = rows
    halves = gather(Tensor(padded.view(np.int32))).asnumpy()  # (R * longest, 2 * C) int32
    everything = np.ascontiguousarray(halves).view(np.int64)  # (R * longest, C)
    everything = everything.reshape(ctx.group_size, longest, columns)  # (R, longest, C)
    return [everything[r, :int(shapes[r, 0])] for r in range(ctx.group_size)]


def all_gather_texts(texts, ctx: RunContext) -> list:
    """[texts of rank 0, texts of rank 1, ...] (lists of str) on every rank, sent as UTF-8 bytes through
    `all_gather_rows` (one byte per int64: the texts gathered here are a few sentences and error messages)."""
    import numpy as np

    if any("\0" in t for t in texts):
        raise ValueError("all_gather_texts: a text contains NUL, the separator")
    blob = "\0".join(texts).encode("utf-8")
    # One leading byte keeps an empty list apart from a list holding one empty string.
    data = np.frombuffer(bytes([len(texts) > 0]) + blob, dtype=np.uint8).astype(np.int64)  # (bytes,)
    out = []
    for block in all_gather_rows(data, ctx, columns=1):
        raw = bytes(block[:, 0].astype(np.uint8).tolist())
        out.append(raw[1:].decode("utf-8").split("\0") if raw[:1] == b"\x01" else [])
    return out
