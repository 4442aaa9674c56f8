"""The training loop behind train.py: data, model, compiled train step, logging, checkpoints,
validation and resume. One `Trainer(cfg, ctx).fit()` call is one run."""
from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Dict, List, Optional


from mindspore import Tensor

from src.config import Config, ConfigError, num_other_objects, num_proposal_classes
from src.data.dataset import ReferSource, create_refer_dataset
from src.data.base import build_dataset
from src.engine import diagnostics
from src.engine.checkpoint import (CheckpointManager, TrainState, check_ranks_agree_on_resume, list_checkpoints,
                                   load_train_step, read_checkpoint, split_meta)
from src.engine.evaluator import evaluate, format_table, gather_shards
from src.engine.grad_shares import gradient_shares, summary_line
from src.engine.inference import build_tokenizer
from src.engine.optimizer import PolyLR
from src.engine.train_step import build_train_step
from src.models.factory import create_model
from src.errors import DataError, TrainingError
from src.utils.runtime import RunContext, seed_rank_randomness

logger = logging.getLogger(__name__)

# Samples of the run's first training batch on which each loss term's share of the trunk gradient is measured
# (src/engine/grad_shares.py), at the start, the middle and the end of the run.
GRAD_SHARE_SAMPLES = 4


class TrainingDiverged(TrainingError):
    """The loss became NaN or Inf."""


class TooManyBadSamples(TrainingError):
    """More training samples were unreadable than data.max_bad_samples allows."""


class JsonLog:
    """Appends one JSON object per line to `path` and keeps the records for the final plot."""

    def __init__(self, path: Optional[str]):
        self.path = path
        self.records: List[Dict] = []
        if path and os.path.isfile(path):  # resumed run: keep the history
            with open(path, "r", encoding="utf-8") as f:
                self.records = [json.loads(line) for line in f if line.strip()]

    def write(self, record: Dict) -> None:
        self.records.append(record)
        if self.path:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")


def plot_curves(records: List[Dict], path: str) -> None:
    """Loss components against step, and validation oIoU/mIoU against step, into one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if r.get("type") == "train"]
    val = [r for r in records if r.get("type") == "val"]
    health = [r for r in records if r.get("type") == "diagnostics"]
    fig, axes = plt.subplots(1, 3 if health else 2, figsize=(16.5 if health else 11, 4))
    # The total and each loss term, by the names the run logged (its "run" record; older logs: the *_loss keys).
    names = next((r["loss_names"] for r in records if r.get("type") == "run" and "loss_names" in r), None)
    loss_keys = [k for k in (train[0] if train else {}) if (k in names if names else k == "loss" or k.endswith("_loss"))]
    for key in loss_keys:
        axes[0].plot([r["step"] for r in train], [max(r[key], 1e-8) for r in train], label=key)
    axes[0].set_xlabel("step"), axes[0].set_ylabel("loss"), axes[0].set_yscale("log"), axes[0].legend()
    axes[0].set_title("training loss")
    for key in ("overall_iou", "mean_iou"):
        axes[1].plot([r["step"] for r in val], [r[key] for r in val], marker="o", label=key)
    axes[1].set_xlabel("step"), axes[1].set_ylabel("%"), axes[1].legend(), axes[1].set_title("validation")
    if health:
        series = {key: key for key in ("sma_entropy", "mask_embed_cosine", "top_proposal_changes",
                                       "sentence_cross_cosine", "aux_chance_ratio") if key in health[0]}
        token_keys = [k for k in health[0] if k.startswith("token_self_similarity_")]
        for key in series:
            axes[2].plot([r["step"] for r in health], [r[key] for r in health], marker="o", label=key)
        if token_keys:
            axes[2].plot([r["step"] for r in health], [max(r[k] for k in token_keys) for r in health], marker="o",
                         label="max token_self_similarity")
        axes[2].set_xlabel("step"), axes[2].legend(fontsize=7), axes[2].set_title("training health (diagnostics.py)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def diagnostics_wanted(cfg: Config) -> bool:
    """Whether the training-health diagnostics (and the gradient shares) run after each validation: with
    train.diagnostics_pairs > 0, always on the CPU, on Ascend/GPU only with train.diagnostics_on_device. There rank 0
    alone would run them in PyNative, at train.diagnostics_batch_size, on top of the training memory, while the
    other ranks wait in the collective."""
    if not cfg.train.diagnostics_pairs:
        return False
    if cfg.device_target != "CPU" and not cfg.train.diagnostics_on_device:
        logger.info("training-health diagnostics off on %s (train.diagnostics_on_device=true runs them)",
                    cfg.device_target)
        return False
    return True


def validation_due(train_cfg, epoch: int, finished_epoch: bool, finished_run: bool) -> bool:
    """Whether to validate now, at the end of a pass over the data: with train.validate, at the end of the run and
    after every train.validate_every-th epoch (`epoch` = epochs finished so far)."""
    if not train_cfg.validate:
        return False
    return finished_run or (finished_epoch and epoch % train_cfg.validate_every == 0)


class Trainer:
    def __init__(self, cfg: Config, ctx: RunContext):
        self.cfg = cfg
        self.ctx = ctx
        tc = cfg.train
        self.tokenizer = build_tokenizer(cfg)
        shard = dict(num_shards=ctx.group_size, shard_id=ctx.rank) if ctx.group_size > 1 else {}
        self.train_refer = build_dataset(cfg, cfg.data.train_split)
        self.train_data = create_refer_dataset(self.train_refer, self.tokenizer, cfg.model.image_size, tc.batch_size,
                                               train=True, num_workers=cfg.data.num_workers, seed=cfg.seed,
                                               max_other_objects=num_other_objects(cfg),
                                               num_classes=num_proposal_classes(cfg),
                                               **shard)
        self.val_refer = self.val_data = self.probe = None
        if tc.validate:
            # Every rank scores its shard of the split and rank 0 merges them: a RefCOCO val pass at batch 1
            # on rank 0 alone (~10,800 samples) outlasted HCCL's timeout while the others waited.
            self.val_refer = build_dataset(cfg, cfg.data.val_split)
            self.val_data = create_refer_dataset(self.val_refer, self.tokenizer, cfg.model.image_size,
                                                 cfg.eval.batch_size, train=False, num_workers=cfg.data.num_workers,
                                                 **shard)
        if tc.validate and ctx.is_main:
            if diagnostics_wanted(cfg):
                try:
                    self.probe = diagnostics.ProbeSet.from_refer(self.val_refer, self.tokenizer, cfg.model.image_size,
                                                                 tc.diagnostics_pairs)
                except DataError as e:  # e.g. no image with two referred objects: train without them
                    logger.warning("training-health diagnostics off: %s", e)

        self.batches_per_epoch = self.train_data.get_dataset_size()
        updates_per_epoch = self.batches_per_epoch // tc.accumulate_steps
        if updates_per_epoch < 1:
            raise ConfigError(f"train.accumulate_steps={tc.accumulate_steps} exceeds the {self.batches_per_epoch} "
                              f"batches of an epoch")
        self.total_updates = tc.max_steps or tc.epochs * updates_per_epoch
        model = create_model(cfg)  # under cfg.seed: the same parameters on every rank
        # Dropout, drop path and the auxiliary loss's pixels then draw from a seed of this rank's own: its samples
        # are others than the other ranks', and so must its masks be (src/utils/runtime.py).
        seed_rank_randomness(model, cfg.seed, ctx.rank)
        artifacts = self._artifacts(model)
        self.schedule = PolyLR(tc.lr, self.total_updates, tc.lr_power, tc.warmup_steps)
        self.step_cell = build_train_step(cfg, model, self.schedule, distributed=ctx.group_size > 1)
        self.net_with_loss = self.step_cell.net_with_loss
        self.model = self.net_with_loss.model  # the model itself: mixed precision is set in place (src/models/amp.py)
        self.loss_names = self.net_with_loss.loss_names
        self.main_ckpt_dir = os.path.join(cfg.output_dir, "checkpoints")
        ckpt_dir = self.main_ckpt_dir if ctx.is_main else os.path.join(self.main_ckpt_dir, f"rank_{ctx.rank}")
        self.ckpt = CheckpointManager(ckpt_dir, tc.keep_last, artifacts=artifacts)
        self.log = JsonLog(os.path.join(cfg.output_dir, "train_log.jsonl") if ctx.is_main else None)
        self.state = TrainState()
        # The gradient shares go with the diagnostics (no switch of their own): on when the probe set was built
        # (validating, diagnostics_pairs > 0, a split with same-image pairs, rank 0; the other ranks wait at the
        # next step's gradient reduction, seconds). Each costs a forward and backward per loss term.
        self.grad_shares_on = self.probe is not None
        self.grad_batch = None  # the fixed batch they are measured on, kept from the first step of the run
        if tc.resume:
            self._resume()

    def _artifacts(self, model) -> Dict[str, str]:
        """What eval/infer/export need besides the weights (src/engine/inference.py): the text
        encoder's architecture and vocabulary, so that no pretrained/ file is needed after training."""
        with open(self.tokenizer.vocab_path, "r", encoding="utf-8") as f:
            vocab = f.read()
        return {"bert_config_json": model.bert.config.to_json_string(), "vocab_txt": vocab}

    # ------------------------------------------------------------------------------------------
    def _resume(self) -> None:
        # Every rank resumes from rank 0's checkpoint: data-parallel ranks hold identical parameters.
        found = list_checkpoints(self.main_ckpt_dir)
        path = found[-1] if found else None
        # Before anything is loaded: a rank that finds another checkpoint than rank 0 (or none: a node without the
        # shared file system) would train from other weights and another step, silently.
        check_ranks_agree_on_resume(path, self.main_ckpt_dir, self.ctx)
        if path is None:
            logger.warning("train.resume=true but %s holds no checkpoint: starting from scratch", self.main_ckpt_dir)
            return
        params, self.state, seed = split_meta(read_checkpoint(path))
        if seed is not None and int(seed) != self.cfg.seed:
            logger.warning("resuming with seed %s, the checkpoint was written with seed %s", self.cfg.seed, seed)
        load_train_step(self.step_cell, params, path)
        logger.info("resumed from %s: step %d, epoch %d, %d batches into the epoch", path, self.state.step,
                    self.state.epoch, self.state.batch_in_epoch)

    def _save(self) -> None:
        if self.ctx.is_main or self.cfg.train.save_all_ranks:
            path = self.ckpt.save(self.step_cell, self.state, self.cfg.seed, self.cfg.to_yaml())
            logger.info("saved %s", path)

    def _validate(self) -> Optional[Dict[str, float]]:
        if self.val_data is None:
            return None
        self.model.set_train(False)

        def predict(image, input_ids, attention_mask):
            return self.model(Tensor(image), Tensor(input_ids), Tensor(attention_mask)).asnumpy()

        # A bad validation file must not end a long run at an epoch boundary: skip it, with a warning.
        shard_result = evaluate(predict, self.val_refer, self.val_data, skip_bad_samples=True)
        result = gather_shards(shard_result, self.ctx)
        self.model.set_train(True)
        if not self.ctx.is_main:
            return None
        logger.info("validation after epoch %d:\n%s", self.state.epoch, format_table(self.cfg.data.val_split, result))
        metrics = result.input_resolution
        self.log.write({"type": "val", "step": self.state.step, "epoch": self.state.epoch, **metrics})
        if self.probe is not None:
            health = diagnostics.collect(self.model, self.probe, self.net_with_loss.criterion,
                                         batch_size=self.cfg.train.diagnostics_batch_size)
            self.log.write({"type": "diagnostics", "step": self.state.step, "epoch": self.state.epoch, **health})
            logger.info("training health after epoch %d:\n%s", self.state.epoch, diagnostics.format_report(health))
        if metrics["overall_iou"] > self.state.best_score:
            self.state.best_score = metrics["overall_iou"]
            path = self.ckpt.save_model("best.ckpt", self.model, self.state, self.cfg.seed, self.cfg.to_yaml())
            logger.info("new best val oIoU %.2f -> %s", metrics["overall_iou"], path)
        return metrics

    def _log_grad_shares(self, when: str) -> None:
        """Each loss term's share of the gradient on the shared trunk, on `grad_batch` (forward and backward
        only, the parameters unchanged), into train_log.jsonl and one log line. A failure here is logged, not
        raised: it must not end the run."""
        if self.grad_batch is None:
            return
        try:
            shares = gradient_shares(self.net_with_loss, self.grad_batch)
        except (RuntimeError, ValueError, MemoryError) as e:
            logger.warning("gradient shares at step %d (%s) skipped: %s", self.state.step, when, e, exc_info=True)
            return
        self.log.write({"type": "grad_shares", "step": self.state.step, "epoch": self.state.epoch, "when": when,
                        "grad_shares": shares})
        logger.info("gradient shares on the shared trunk at step %d (%s): %s", self.state.step, when,
                    summary_line(shares))

    def _check_finite(self, losses: Dict[str, float], finite: bool) -> None:
        if all(math.isfinite(v) for v in losses.values()) and finite:
            return
        parts = ", ".join(f"{name}={value}" for name, value in losses.items())
        message = f"non-finite loss at step {self.state.step + 1} (epoch {self.state.epoch}): {parts}"
        if self.cfg.train.loss_scale > 1.0:
            logger.warning("%s; loss scaling is on, so the update was skipped and the scale lowered", message)
            return
        raise TrainingDiverged(message + "; lower train.lr, enable train.grad_clip_norm, or check the data")

    def _count_bad_samples(self, bad) -> None:
        """`bad` (B,): nonzero where the drawn sample could not be loaded (see ReferSource)."""
        new = int((bad > 0).sum())
        if not new:
            return
        self.state.bad_samples += new
        limit = self.cfg.data.max_bad_samples
        logger.warning("skipped %d unreadable training sample(s) in epoch %d (%d so far, limit data.max_bad_samples"
                       "=%d); the files and fields are named in the warnings above", new, self.state.epoch,
                       self.state.bad_samples, limit)
        if self.state.bad_samples > limit or (bad == ReferSource.UNREPLACEABLE).any():
            raise TooManyBadSamples(
                f"{self.state.bad_samples} training samples of {self.train_refer!r} could not be loaded (limit "
                f"data.max_bad_samples={limit}); the first files and fields are named in the warnings above. "
                f"Fix or remove them, or raise data.max_bad_samples")

    # ------------------------------------------------------------------------------------------
    def fit(self) -> Dict:
        cfg, tc = self.cfg, self.cfg.train
        accumulate = tc.accumulate_steps
        global_batch = tc.batch_size * self.ctx.group_size * accumulate
        logger.info("training: %d updates (%d batches/epoch/device, per-device batch %d x %d devices x %d "
                    "accumulation = global batch %d)", self.total_updates, self.batches_per_epoch, tc.batch_size,
                    self.ctx.group_size, accumulate, global_batch)
        logger.info("seed %d; data order, sentence choice and initialisation follow from it", cfg.seed)
        self.log.write({"type": "run", "seed": cfg.seed, "start_step": self.state.step, "total_steps": self.total_updates,
                        "global_batch": global_batch, "devices": self.ctx.group_size,
                        "loss_names": list(self.loss_names)})
        start_time = time.time()
        window_start, window_steps = time.time(), 0
        last_metrics = None
        middle_logged = False
        sampler = self.train_data.refer_sampler
        max_epochs = tc.epochs if not tc.max_steps else 10**9  # max_steps, when set, decides alone
        while self.state.step < self.total_updates and self.state.epoch < max_epochs:
            sampler.set_epoch(self.state.epoch)
            skip = self.state.batch_in_epoch
            for batch_id, (image, input_ids, attention_mask, target, bad, others, categories) in enumerate(
                    self.train_data.create_tuple_iterator(num_epochs=1)):
                if batch_id < skip:  # resumed mid-epoch: these batches were consumed before the stop
                    continue
                self._count_bad_samples(bad.asnumpy())
                inputs = (image, input_ids, attention_mask, target, others, categories)  # CoupAlignWithLoss's
                if self.grad_shares_on and self.grad_batch is None:  # before the run's first step
                    self.grad_batch = tuple(x.asnumpy()[:GRAD_SHARE_SAMPLES] for x in inputs)
                    self._log_grad_shares("start")
                update = (batch_id + 1) % accumulate == 0
                *values, finite = self.step_cell(*inputs, update=update)
                losses = {name: float(v.asnumpy()) for name, v in zip(self.loss_names, values)}
                self._check_finite(losses, bool(finite.asnumpy()))
                self.state.batch_in_epoch = batch_id + 1
                if not update:
                    continue
                self.state.step += 1
                window_steps += 1
                if self.state.step % tc.log_every == 0 or self.state.step == self.total_updates:
                    elapsed = time.time() - window_start
                    sec_per_step = elapsed / window_steps
                    record = {"type": "train", "step": self.state.step, "epoch": self.state.epoch,
                              **losses,
                              "bad_samples": self.state.bad_samples,
                              "lr": self.schedule.value(self.state.step - 1), "sec_per_step": sec_per_step,
                              "images_per_sec": global_batch / sec_per_step,
                              "eta_sec": sec_per_step * (self.total_updates - self.state.step)}
                    self.log.write(record)
                    parts = " ".join(f"{k} {v:.4f}" for k, v in losses.items() if k != "loss")
                    logger.info("step %d/%d epoch %d | loss %.4f (%s) | lr %.3g | %.2f s/step "
                                "%.1f img/s | ETA %s", self.state.step, self.total_updates, self.state.epoch,
                                losses["loss"], parts, record["lr"], sec_per_step,
                                record["images_per_sec"], _hms(record["eta_sec"]))
                    window_start, window_steps = time.time(), 0
                if tc.save_every_steps and self.state.step % tc.save_every_steps == 0:
                    self._save()
                if self.state.step >= self.total_updates:
                    break
            finished_epoch = self.state.batch_in_epoch >= self.batches_per_epoch
            if finished_epoch:
                self.state.epoch += 1
                self.state.batch_in_epoch = 0
            finished_run = self.state.step >= self.total_updates or self.state.epoch >= max_epochs
            if validation_due(tc, self.state.epoch, finished_epoch, finished_run):
                last_metrics = self._validate()
                if not middle_logged and 2 * self.state.step >= self.total_updates > self.state.step:
                    self._log_grad_shares("middle")  # at the first validation past half the steps
                    middle_logged = True
            self._save()
            if self.state.step >= self.total_updates:
                break
        self._log_grad_shares("end")
        if self.ctx.is_main:  # the model as trained, for eval/infer/export with or without validation
            path = self.ckpt.save_model("final.ckpt", self.model, self.state, cfg.seed, cfg.to_yaml())
            logger.info("saved the final model -> %s", path)
        if self.ctx.is_main and self.log.records:
            plot_curves(self.log.records, os.path.join(cfg.output_dir, "curves.png"))
        return {"steps": self.state.step, "epochs": self.state.epoch, "seconds": time.time() - start_time,
                "best_val_overall_iou": self.state.best_score, "last_val": last_metrics}


def _hms(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
