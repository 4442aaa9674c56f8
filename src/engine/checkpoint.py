"""Training checkpoints: written atomically, the last K kept, the latest found again on resume.

A step checkpoint holds every Parameter of the train step (model, optimizer moments and step counters,
accumulation buffers, loss scale) plus metadata: the global step, the epoch, the number of batches
of that epoch already consumed, the seed, the best validation score so far, the config, and the text
encoder's architecture and vocabulary. `best.ckpt` (the best validation score) and `final.ckpt` (the end of
training) hold the model's weights and the same metadata only (a third of the size: no AdamW moments), which is
all eval, infer and export need.
It is written into `<dir>/.incomplete/` and renamed into place, so a kill or a full disk never leaves a
half-written file under a checkpoint's name and the previous checkpoint stays intact.
"""
from __future__ import annotations

import glob
import logging
import os
import re
from dataclasses import dataclass
from typing import Dict, List, Optional

logger = logging.getLogger(__name__)

CKPT_PATTERN = re.compile(r"^step_(\d+)\.ckpt$")
# What a checkpoint needs to rebuild the model on a machine with no pretrained/ (src/engine/inference.py):
# the run's config, the text encoder's architecture (BertConfig JSON) and its WordPiece vocabulary.
ARTIFACT_KEYS = ("config_yaml", "bert_config_json", "vocab_txt")
META_KEYS = ("step", "epoch", "batch_in_epoch", "seed", "best_score", "bad_samples") + ARTIFACT_KEYS


from src.errors import CheckpointError  # noqa: E402,F401  (re-exported)


class CheckpointMismatchError(CheckpointError):
    """A readable checkpoint whose parameters do not fit the configured model (missing names, other shapes)."""


class CheckpointIOError(CheckpointError):
    """A checkpoint file that cannot be read (truncated, not a MindSpore checkpoint) or written (disk full).
    Entry scripts exit with 1 for it (src/utils/cli.py), the code these failures had before CheckpointError
    was a user error of its own."""

    exit_code = 1


@dataclass
class TrainState:
    step: int = 0  # optimizer updates done
    epoch: int = 0  # the epoch in progress (or the next one when batch_in_epoch == 0)
    batch_in_epoch: int = 0  # batches of `epoch` already consumed
    best_score: float = -1.0  # best validation overall IoU so far (-1: none yet)
    bad_samples: int = 0  # unreadable training samples skipped so far (data.max_bad_samples)


STAGING_DIR = ".incomplete"  # inside the checkpoint directory: same filesystem, so rename is atomic


def _clear_staging(staging: str) -> None:
    for name in os.listdir(staging) if os.path.isdir(staging) else ():
        try:
            os.remove(os.path.join(staging, name))
        except OSError:
            pass


def _write_atomic(params, path: str, meta: Dict) -> None:
    """Writes into `<dir>/.incomplete/` and renames into place. MindSpore itself writes through a
    temporary of its own (`<name>.tmp`) that it leaves behind when a write fails, so the whole staging
    directory is cleared on failure rather than one known file name."""
    import mindspore as ms

    staging = os.path.join(os.path.dirname(path) or ".", STAGING_DIR)
    os.makedirs(staging, exist_ok=True)
    # ms.save_checkpoint appends ".ckpt" to names without it, so the staged name keeps that suffix.
    staged = os.path.join(staging, os.path.basename(path) if path.endswith(".ckpt") else os.path.basename(path) + ".ckpt")
    try:
        ms.save_checkpoint(params, staged, append_dict=meta)
        os.replace(staged, path)
    except BaseException as e:  # includes KeyboardInterrupt: never leave a partial file behind
        _clear_staging(staging)
        if isinstance(e, (OSError, RuntimeError, ValueError)):
            raise CheckpointIOError(f"could not write checkpoint {path}: {e} "
                                    "(the previous checkpoint is intact)") from e
        raise


def list_checkpoints(directory: str) -> List[str]:
    """The step_<N>.ckpt files in `directory`, oldest first."""
    found = []
    for path in glob.glob(os.path.join(directory, "step_*.ckpt")):
        m = CKPT_PATTERN.match(os.path.basename(path))
        if m:
            found.append((int(m.group(1)), path))
    return [p for _, p in sorted(found)]


class CheckpointManager:
    """Saves `cell`'s parameters under `directory` as step_<N>.ckpt, keeping the last `keep_last`,
    and the model alone as `best.ckpt` and `final.ckpt`."""

    def __init__(self, directory: str, keep_last: int = 3, artifacts: Optional[Dict[str, str]] = None):
        self.directory = directory
        self.keep_last = max(1, int(keep_last))
        self.artifacts = dict(artifacts or {})  # bert_config_json, vocab_txt: stored in every checkpoint
        os.makedirs(directory, exist_ok=True)
        _clear_staging(os.path.join(directory, STAGING_DIR))  # left by a process killed while writing

    def path_for(self, step: int) -> str:
        return os.path.join(self.directory, f"step_{step:08d}.ckpt")

    def list(self) -> List[str]:
        return list_checkpoints(self.directory)

    def latest(self) -> Optional[str]:
        paths = self.list()
        return paths[-1] if paths else None

    def save(self, cell, state: TrainState, seed: int, config_yaml: str) -> str:
        path = self.path_for(state.step)
        _write_atomic(cell, path, self._meta(state, seed, config_yaml))
        for old in self.list()[:-self.keep_last]:
            os.remove(old)
        return path

    def save_model(self, name: str, model, state: TrainState, seed: int, config_yaml: str) -> str:
        """`model`: the network alone (not the train step), so no optimizer state is written, as `name`
        ("best.ckpt", "final.ckpt")."""
        path = os.path.join(self.directory, name)
        _write_atomic(model, path, self._meta(state, seed, config_yaml))
        return path

    def _meta(self, state: TrainState, seed: int, config_yaml: str) -> Dict:
        return {"step": int(state.step), "epoch": int(state.epoch), "batch_in_epoch": int(state.batch_in_epoch),
                "seed": int(seed), "best_score": float(state.best_score), "bad_samples": int(state.bad_samples),
                **self.artifacts, "config_yaml": config_yaml}


def read_checkpoint(path: str) -> Dict:
    """All entries of a checkpoint (parameters and metadata); a clear error for missing/corrupt files."""
    import mindspore as ms

    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return ms.load_checkpoint(path)
    except Exception as e:  # MindSpore raises ValueError/RuntimeError with internal detail
        if "empty after filter" in str(e):  # a readable checkpoint with none of the keys (bare weights)
            return {}
        raise CheckpointIOError(f"checkpoint {path} cannot be read (truncated or not a MindSpore checkpoint): "
                                f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def read_artifacts(path: str) -> Dict[str, str]:
    """The ARTIFACT_KEYS a checkpoint holds (possibly none: older checkpoints and bare weights), read
    without loading the weights."""
    import mindspore as ms

    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        entries = ms.load_checkpoint(path, choice_func=lambda name: name in ARTIFACT_KEYS)
    except Exception as e:  # MindSpore raises ValueError/RuntimeError with internal detail
        if "empty after filter" in str(e):  # a readable checkpoint with none of the keys (bare weights)
            return {}
        raise CheckpointIOError(f"checkpoint {path} cannot be read (truncated or not a MindSpore checkpoint): "
                                f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return {k: v for k, v in entries.items() if isinstance(v, str)}


def split_meta(entries: Dict):
    """(parameters, TrainState, seed) from checkpoint entries."""
    meta = {k: entries.pop(k) for k in list(entries) if k in META_KEYS}

    def scalar(key, default):
        value = meta.get(key, default)
        return value.asnumpy().item() if hasattr(value, "asnumpy") else value

    state = TrainState(step=int(scalar("step", 0)), epoch=int(scalar("epoch", 0)),
                       batch_in_epoch=int(scalar("batch_in_epoch", 0)), best_score=float(scalar("best_score", -1.0)),
                       bad_samples=int(scalar("bad_samples", 0)))
    return entries, state, scalar("seed", None)


def check_shapes(cell, params: Dict, path: str) -> None:
    """Refuses checkpoint `path` when an entry of `params` has another shape than the parameter of `cell` of
    that name, naming each one. Checked here, not left to `load_into` or MindSpore: a checkpoint of another
    configuration is the user's error (CheckpointMismatchError), while their ValueErrors stay bugs."""
    shapes = {p.name: tuple(p.shape) for p in cell.get_parameters()}
    mismatched = [f"{k}: checkpoint {tuple(v.shape)} vs model {shapes[k]}" for k, v in sorted(params.items())
                  if k in shapes and tuple(v.shape) != shapes[k]]
    if mismatched:
        raise CheckpointMismatchError(f"{path}: shapes do not match the configured model (was it trained with "
                                      f"another config?):\n  " + "\n  ".join(mismatched))


def load_train_step(step_cell, params: Dict, path: str) -> None:
    """Loads a step checkpoint's `params` into the train step `step_cell` (model, optimizer state, counters and,
    with loss scaling, the dynamic loss scale). A checkpoint written before the loss scale was saved resumes
    with the configured initial scale, with a warning; any other missing parameter refuses the checkpoint."""
    import mindspore as ms

    from src.engine.train_step import LOSS_SCALE_PARAMS

    check_shapes(step_cell, params, path)
    # Exact names: MindSpore's non-strict loading fills a missing parameter from any entry whose name ends like it
    # (a missing "dense.weight" from "accum.dense.weight"), so nothing would ever be reported missing.
    not_loaded = [p.name for p in step_cell.get_parameters() if p.name not in params]
    scale_missing = [name for name in not_loaded if name in LOSS_SCALE_PARAMS]
    not_loaded = [name for name in not_loaded if name not in LOSS_SCALE_PARAMS]
    if not_loaded:
        raise CheckpointMismatchError(f"{path} does not fit this configuration: {len(not_loaded)} parameters "
                                      f"missing (e.g. {', '.join(not_loaded[:8])})")
    ms.load_param_into_net(step_cell, params, strict_load=True)
    if scale_missing:
        logger.warning("%s holds no dynamic loss scale (written before it was saved): resuming with the initial "
                       "train.loss_scale", path)


class ResumeMismatchError(CheckpointError):
    """The ranks of a distributed run found different checkpoints (or some found none) to resume from."""


def _fingerprint(path: Optional[str]):
    """(step, digest) of a checkpoint file without loading it: the step from its name, the digest over its size
    and its first and last MiB (seconds for a multi-GB file would be too slow for every resume; two checkpoints
    of the same step differ there). (-1, 0) for no checkpoint."""
    import hashlib

    if path is None:
        return -1, 0
    step = int(CKPT_PATTERN.match(os.path.basename(path)).group(1))
    size = os.path.getsize(path)
    digest = hashlib.blake2b(str(size).encode(), digest_size=7)
    with open(path, "rb") as f:
        digest.update(f.read(1 << 20))
        f.seek(max(0, size - (1 << 20)))
        digest.update(f.read(1 << 20))
    return step, int.from_bytes(digest.digest(), "big")  # < 2**56: fits int64


def check_ranks_agree_on_resume(path: Optional[str], directory: str, ctx) -> None:
    """Every rank passes the checkpoint it found in `directory` (None: none); raises ResumeMismatchError on every
    rank, naming each rank's path, step and digest, unless all found the same one (or all found none).

    Stopping, rather than broadcasting rank 0's parameters, because a step checkpoint is more than parameters
    (AdamW's moments, the step, the data position, the loss scale), and because the rank that lacks the file may
    be rank 0 itself, which would restart every rank from scratch: a wrong file-system set-up must be fixed, not
    papered over. Not distributed: nothing to check."""
    if ctx.group_size == 1:
        return
    import numpy as np

    from src.utils.runtime import all_gather_rows, all_gather_texts

    mine = np.array([_fingerprint(path)], np.int64)  # (1, 2): step, digest
    found = np.concatenate(all_gather_rows(mine, ctx, 2))  # (R, 2)
    paths = [texts[0] for texts in all_gather_texts([path or ""], ctx)]
    dirs = [texts[0] for texts in all_gather_texts([directory], ctx)]
    if (found == found[0]).all():
        return
    lines = [f"rank {r}: " + (f"{paths[r]} (step {int(found[r, 0])}, digest {int(found[r, 1]):014x})" if paths[r]
                              else f"no checkpoint in {dirs[r]}") for r in range(ctx.group_size)]
    raise ResumeMismatchError("train.resume=true but the ranks found different checkpoints to resume from:\n  "
                              + "\n  ".join(lines) + "\nEvery rank must read the same <output_dir>/checkpoints: "
                              "put it on a file system all nodes share, or copy rank 0's latest step_<N>.ckpt to "
                              "the same path on every node, then start again (nothing was loaded or changed).")


def load_model_weights(model, path: str) -> None:
    """Loads a training or best checkpoint (or a bare model checkpoint) into `model`. A checkpoint from
    another configuration is refused with the mismatched or missing parameter names and shapes."""
    from src.models.weights import load_into

    params, _, _ = split_meta(read_checkpoint(path))
    own = {p.name for p in model.get_parameters()}
    model_params = {k: v for k, v in params.items() if k in own}
    missing = sorted(own - set(model_params))
    if missing:
        raise CheckpointMismatchError(f"{path} does not fit this model configuration: {len(missing)} parameters "
                                      f"missing (e.g. {', '.join(missing[:8])}); was it trained with another config?")
    check_shapes(model, model_params, path)
    load_into(model, model_params, path, strict=True)
