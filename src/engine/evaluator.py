"""Evaluation of a referring-segmentation model over one split, by the LAVT protocol.

Every (object, sentence) pair is one sample. Two sets of metrics come out of one pass:
- "input_resolution": prediction at the network's input size (S x S) against the ground truth
  resized to S x S with nearest neighbour (what the paper's tables report);
- "original_resolution": logits resized back (bilinear) to the image's own size, against the
  original mask.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import numpy as np

from src.data.refer import SAMPLE_ERRORS
from src.data.transforms import resize_mask
from src.errors import DataError
from src.metrics import RefSegMetrics, logits_to_mask, resize_logits_to

logger = logging.getLogger(__name__)


@dataclass
class SampleResult:
    index: int
    ref_id: int
    sent_id: int
    sentence: str
    iou_input: float
    iou_original: float
    intersection_input: int = 0  # pixels, at input resolution: subsets' oIoU = sum I / sum U
    union_input: int = 0
    intersection_original: int = 0  # pixels, at the image's own size
    union_original: int = 0


@dataclass
class SkippedSample:
    index: int
    ref_id: int
    sent_id: int
    reason: str


@dataclass
class EvalResult:
    input_resolution: Dict[str, float]
    original_resolution: Dict[str, float]
    samples: List[SampleResult] = field(default_factory=list)
    skipped: List[SkippedSample] = field(default_factory=list)  # unreadable, with skip_bad_samples

    @property
    def num_samples(self) -> int:
        return len(self.samples)

    @classmethod
    def from_samples(cls, samples: List[SampleResult], skipped: List[SkippedSample] = ()) -> "EvalResult":
        """Metrics recomputed from per-sample intersections and unions, in sample-index order, so a
        split scored in shards gives exactly the numbers of one pass over it."""
        samples = sorted(samples, key=lambda s: s.index)
        indices = [s.index for s in samples]
        if len(set(indices)) != len(indices):
            raise RuntimeError(f"evaluation counted {len(indices) - len(set(indices))} samples twice (shards overlap)")
        at_input, at_original = RefSegMetrics(), RefSegMetrics()
        for s in samples:
            at_input.add(s.intersection_input, s.union_input)
            at_original.add(s.intersection_original, s.union_original)
        return cls(at_input.compute(), at_original.compute(), samples, sorted(skipped, key=lambda k: k.index))


def merge_shards(shards: List[EvalResult]) -> EvalResult:
    """One result from the per-rank results of a sharded evaluation (see `evaluate`)."""
    if len(shards) == 1:
        return shards[0]
    return EvalResult.from_samples([s for r in shards for s in r.samples], [k for r in shards for k in r.skipped])


# A SampleResult as one int64 row: its integers, then its two IoUs as the bits of float64 (exact round trip).
_SAMPLE_INTS = ("index", "ref_id", "sent_id", "intersection_input", "union_input", "intersection_original",
                "union_original")
_SAMPLE_FLOATS = ("iou_input", "iou_original")
_SKIPPED_INTS = ("index", "ref_id", "sent_id")


def _pack(items, int_fields, float_fields=()) -> np.ndarray:
    n = len(items)
    ints = np.array([[getattr(x, f) for f in int_fields] for x in items], np.int64).reshape(n, len(int_fields))
    floats = np.array([[getattr(x, f) for f in float_fields] for x in items], np.float64)
    floats = floats.reshape(n, len(float_fields)).view(np.int64)  # (n, F) bit patterns
    return np.concatenate([ints, floats], axis=1)  # (n, I + F)


def gather_shards(result: EvalResult, ctx) -> EvalResult:
    """The whole split's result on every rank from each rank's shard (`ctx`: a runtime.RunContext).

    Per-sample numbers travel as fixed-size int64 arrays and the sentences and skip reasons as UTF-8 bytes
    (`runtime.all_gather_rows` / `all_gather_texts`: one all-gather that runs on Ascend, GPU and CPU)."""
    from src.utils.runtime import all_gather_rows, all_gather_texts

    if ctx.group_size == 1:
        return result
    columns = len(_SAMPLE_INTS) + len(_SAMPLE_FLOATS)
    sample_rows = all_gather_rows(_pack(result.samples, _SAMPLE_INTS, _SAMPLE_FLOATS), ctx, columns)
    sentences = all_gather_texts([s.sentence for s in result.samples], ctx)
    skipped_rows = all_gather_rows(_pack(result.skipped, _SKIPPED_INTS), ctx, len(_SKIPPED_INTS))
    reasons = all_gather_texts([k.reason for k in result.skipped], ctx)
    shards = []
    for rows, texts, skip_rows, skip_texts in zip(sample_rows, sentences, skipped_rows, reasons):
        if len(rows) != len(texts) or len(skip_rows) != len(skip_texts):
            raise RuntimeError(f"evaluation gather: {len(rows)} samples but {len(texts)} sentences, {len(skip_rows)} "
                               f"skipped samples but {len(skip_texts)} reasons arrived from one rank")
        ious = rows[:, len(_SAMPLE_INTS):].copy().view(np.float64)  # (n, 2)
        samples = [SampleResult(sentence=text, **dict(zip(_SAMPLE_INTS, map(int, row[:len(_SAMPLE_INTS)]))),
                                **dict(zip(_SAMPLE_FLOATS, map(float, iou))))
                   for row, iou, text in zip(rows, ious, texts)]
        skipped = [SkippedSample(*map(int, row), reason=text) for row, text in zip(skip_rows, skip_texts)]
        shards.append(EvalResult({}, {}, samples, skipped))
    logger.info("evaluation shards: %s samples per rank", [s.num_samples for s in shards])
    return merge_shards(shards)


class Scorer:
    """Accumulates per-sample results at both resolutions from (sample index, logits S x S).

    Shared by `evaluate` (in-process model) and postprocess.py (logits written by the Ascend 310
    program), so both produce the same metrics from the same logits.
    """

    def __init__(self, refer, on_prediction: Optional[Callable] = None):
        self.refer = refer
        self.on_prediction = on_prediction
        self.input_metrics, self.original_metrics = RefSegMetrics(), RefSegMetrics()
        self.samples: List[SampleResult] = []

    def add(self, index: int, logits: np.ndarray, gt_input: Optional[np.ndarray] = None) -> None:
        """`logits` (S, S) at input resolution; `gt_input` the ground truth resized to S x S (computed
        here with the pipeline's nearest rule when not given)."""
        sample = self.refer.sample(index)
        gt = self.refer.load_mask(sample.ann_id)  # original resolution
        if gt_input is None:
            gt_input = resize_mask(gt, logits.shape)
        iou_in = self.input_metrics.update(logits_to_mask(logits), gt_input > 0.5)
        original_logits = resize_logits_to(logits, gt.shape)
        iou_orig = self.original_metrics.update(logits_to_mask(original_logits), gt > 0)
        self.samples.append(SampleResult(index, sample.ref_id, sample.sent_id, sample.text, iou_in, iou_orig,
                                         self.input_metrics.intersections[-1], self.input_metrics.unions[-1],
                                         self.original_metrics.intersections[-1], self.original_metrics.unions[-1]))
        if self.on_prediction is not None:
            self.on_prediction(sample, original_logits, len(self.samples) - 1)

    def result(self) -> EvalResult:
        return EvalResult.from_samples(self.samples)


def _load_error(refer, index: int) -> str:
    """Why sample `index` cannot be loaded (the pipeline worker only flags it): the reader's message,
    which names the file and field."""
    sample = refer.sample(index)
    try:
        refer.load_image(sample.image_id)
        refer.load_mask(sample.ann_id)
    except SAMPLE_ERRORS as e:
        return str(e)
    return "it failed to load in a pipeline worker but loads now (a file changed during evaluation?)"


def evaluate(predict: Callable, refer, dataset, max_batches: Optional[int] = None,
             on_prediction: Optional[Callable] = None, progress: bool = False,
             skip_bad_samples: bool = False) -> EvalResult:
    """Runs `predict(image, input_ids, attention_mask) -> logits (B, 1, S, S) numpy` over `dataset`
    (an evaluation pipeline from `create_refer_dataset(train=False)`, which carries an `index` column
    into `refer.samples()`; rows with index -1 are padding and skipped).

    With a sharded pipeline (`create_refer_dataset(num_shards=..., shard_id=...)`) the result covers this
    rank's shard; `gather_shards(result, ctx)` gives the split's result on every rank.

    A sample whose image or mask cannot be loaded raises a DataError naming the file and field, or,
    with `skip_bad_samples`, is left out of the metrics and listed in `EvalResult.skipped`.

    `on_prediction(sample, original_logits, position)` is called for each sample (for saving masks
    and overlays) with the logits at the original image size.
    """
    scorer = Scorer(refer, on_prediction)
    skipped: List[SkippedSample] = []
    iterator = dataset.create_dict_iterator(num_epochs=1, output_numpy=True)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, total=dataset.get_dataset_size(), desc="eval", unit="batch")
    for batch_id, batch in enumerate(iterator):
        if max_batches is not None and batch_id >= max_batches:
            break
        bad_rows = [row for row, (index, bad) in enumerate(zip(batch["index"].tolist(), batch["bad"].tolist()))
                    if index >= 0 and bad]
        for row in bad_rows:
            index = int(batch["index"][row])
            sample, reason = refer.sample(index), _load_error(refer, index)
            if not skip_bad_samples:
                raise DataError(f"evaluation sample {index} (ref_id {sample.ref_id}, sent_id {sample.sent_id}) cannot "
                                f"be loaded: {reason}. Fix the file, or pass --skip_bad_samples true to leave such "
                                f"samples out of the metrics (they are counted and listed in metrics.json)")
            logger.warning("skipped evaluation sample %d (ref_id %d, sent_id %d): %s", index, sample.ref_id,
                           sample.sent_id, reason)
            skipped.append(SkippedSample(index, sample.ref_id, sample.sent_id, reason))
        logits = np.asarray(predict(batch["image"], batch["input_ids"], batch["attention_mask"]))[:, 0]  # (B, S, S)
        for row, index in enumerate(batch["index"].tolist()):
            if index >= 0 and row not in bad_rows:
                scorer.add(index, logits[row], batch["mask"][row])
    result = scorer.result()
    result.skipped = skipped
    return result


def write_reports(result: EvalResult, out_dir: str, header: Dict) -> str:
    """OUT/metrics.json (`header` + metrics at both resolutions, in percent) and OUT/per_sample.csv."""
    import csv
    import json
    import os

    os.makedirs(out_dir, exist_ok=True)
    metrics = dict(header)
    metrics["num_samples"] = result.num_samples
    metrics["num_skipped"] = len(result.skipped)
    metrics["skipped"] = [dict(ref_id=k.ref_id, sent_id=k.sent_id, reason=k.reason) for k in result.skipped]
    for name, values in (("input_resolution", result.input_resolution),
                         ("original_resolution", result.original_resolution)):
        metrics[name] = {k: v for k, v in values.items() if k != "num_samples"}
    path = os.path.join(out_dir, "metrics.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(metrics, f, indent=2)
    with open(os.path.join(out_dir, "per_sample.csv"), "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["ref_id", "sent_id", "sentence", "iou_input", "iou_original", "intersection_input",
                         "union_input"])
        for s in result.samples:
            writer.writerow([s.ref_id, s.sent_id, s.sentence, f"{s.iou_input:.6f}", f"{s.iou_original:.6f}",
                             s.intersection_input, s.union_input])
    return path


def format_table(split: str, result: EvalResult) -> str:
    """The paper's table layout: split, P@0.5..P@0.9, oIoU, mIoU, at both resolutions."""
    head = f"{'split':<10}{'resolution':<12}" + "".join(f"{'P@' + t:>8}" for t in ("0.5", "0.6", "0.7", "0.8", "0.9"))
    head += f"{'oIoU':>8}{'mIoU':>8}{'N':>8}"
    lines = [head, "-" * len(head)]
    for name, m in (("input", result.input_resolution), ("original", result.original_resolution)):
        row = f"{split:<10}{name:<12}" + "".join(f"{m[f'precision@{t}']:>8.2f}" for t in (0.5, 0.6, 0.7, 0.8, 0.9))
        row += f"{m['overall_iou']:>8.2f}{m['mean_iou']:>8.2f}{m['num_samples']:>8d}"
        lines.append(row)
    if result.skipped:
        lines.append(f"({len(result.skipped)} unreadable samples skipped and left out of these numbers)")
    return "\n".join(lines)


def evaluate_split(cfg, ctx, model, tokenizer, out_dir: str, refer=None):
    """eval.py's work for one split (cfg.eval.split), shared by eval.py and tools/eval_all.py: score it (this
    rank's shard when distributed), write OUT/metrics.json and per_sample.csv (rank 0), masks and overlays
    when asked. `refer`: the split already read (eval.py scores it twice with its grounding control), else it is
    read here. Returns (EvalResult of the whole split, metrics.json path or None on other ranks)."""
    import os

    from mindspore import Tensor

    from src.data.base import build_dataset
    from src.data.dataset import create_refer_dataset
    from src.utils.visualize import overlay, write_png

    if refer is None:
        refer = build_dataset(cfg, cfg.eval.split)
    if cfg.eval.swap_sentences:
        refer = refer.with_swapped_sentences(seed=cfg.seed)
    shard = dict(num_shards=ctx.group_size, shard_id=ctx.rank) if ctx.group_size > 1 else {}
    dataset = create_refer_dataset(refer, tokenizer, cfg.model.image_size, cfg.eval.batch_size, train=False,
                                   num_workers=cfg.data.num_workers, **shard)

    def predict(image, input_ids, attention_mask):
        return model(Tensor(image), Tensor(input_ids), Tensor(attention_mask)).asnumpy()

    if cfg.eval.save_masks:
        os.makedirs(os.path.join(out_dir, "masks"), exist_ok=True)
    if cfg.eval.visualize:
        os.makedirs(os.path.join(out_dir, "visualize"), exist_ok=True)

    def on_prediction(sample, original_logits, position):
        mask = original_logits > 0
        if cfg.eval.save_masks:
            write_png(os.path.join(out_dir, "masks", f"{sample.ref_id}_{sample.sent_id}.png"), mask.astype("uint8") * 255)
        if ctx.is_main and position < cfg.eval.visualize:
            picture = overlay(refer.load_image(sample.image_id), mask, sample.text)
            write_png(os.path.join(out_dir, "visualize", f"{position:04d}_{sample.ref_id}_{sample.sent_id}.png"), picture)

    shard_result = evaluate(predict, refer, dataset, on_prediction=on_prediction, progress=ctx.is_main,
                            skip_bad_samples=cfg.eval.skip_bad_samples)
    result = gather_shards(shard_result, ctx)
    if not ctx.is_main:
        return result, None
    path = write_reports(result, out_dir, {"dataset": cfg.data.dataset, "split_by": cfg.data.split_by,
                                           "split": cfg.eval.split, "checkpoint": cfg.checkpoint_path,
                                           "swap_sentences": cfg.eval.swap_sentences})
    return result, path

