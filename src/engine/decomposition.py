"""Error decomposition (issue #21, item 1): when the output misses the referent, is it because no proposal
covers the object (the mask generator), because SMA weighted the wrong proposal (the selection), or because
the output loses what the chosen proposal had (the mixture's blur, the coupled head's pixel path)?

Per evaluation sample, from the final decoder stage, at the network's input resolution S x S: every map's
logits are upsampled bilinearly from the stride-4 grid exactly as `CoupAlign.predict` upsamples the output,
and the ground truth is the pipeline's (nearest-resized) mask, so ``iou_output`` is eval.py's ``iou_input``
and can be set against another model's per_sample.csv sample by sample. A mask is ``logits > 0``
(sigmoid > 0.5) everywhere.

| column | what |
|---|---|
| ``iou_output`` | IoU of the model's output mask (with ``intersection_output`` / ``union_output``, for oIoU) |
| ``leakage`` | share of the output's pixels that lie on other annotated objects of the image and not on the referent; 0 when nothing is predicted |
| ``top`` / ``iou_top`` | the proposal with the highest SMA weight, and the IoU of its mask ``Q_n . P > 0`` |
| ``best`` / ``iou_best`` | the proposal with the highest IoU (the oracle selection), and that IoU |
| ``selection_correct`` | 1 when ``iou_top >= iou_best - 0.05`` (the top proposal is the best one or as good), else 0 |
| ``weight_on_best`` | SMA's weight of the best proposal |
| ``iou_pixel_path`` | coupled head only: ``M_pix > 0``, the output with the gate forced to 0 |
| ``iou_sma_map`` | coupled head only: ``M_sma > 0``, SMA's selected masks alone |
| ``compare_iou`` | with a comparison: another model's IoU on the same sample (`attach_comparison`) |

The proposal columns are NaN for a model without proposals (``model.sma.enabled: false``, the LAVT-style
row), the coupled ones for the mixture head. The gate ``alpha`` of the coupled head is one parameter, so it is
reported once per run (`Decomposition.gate`), not per sample. The N proposal maps of a batch come to the
host at S x S, (B, N, S, S) float32: 0.74 GB for B = 8, N = 100, S = 480; lower eval.batch_size if that is
too much.

Reading a group of samples: a low mean ``iou_best`` blames the mask generator; a high ``iou_best`` with a low
selection accuracy blames SMA; ``iou_output`` well below ``iou_top`` with a correct selection blames how the
output is formed from the selection. `summarise` gives these means (in percent) per group: overall, the
same-category subset (`same_category_indices`) and each kind of expression (src/data/expression_kinds.py;
tools/decompose.py builds the groups).
"""
from __future__ import annotations

import logging
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Set, Tuple

import numpy as np

from mindspore import nn, ops

from src.data.refer import SAMPLE_ERRORS
from src.data.transforms import resize_mask
from src.errors import DataError
from src.metrics import intersection_union
from src.models.coupled_head import CoupledSentenceMaskHead
from src.models.transformer_decoder import proposal_logits

logger = logging.getLogger(__name__)

# The top proposal counts as the right choice when its IoU is within this of the best proposal's: two
# proposals of one object differ by a few boundary pixels, and choosing either is not a selection error.
SELECTION_TOLERANCE = 0.05
PROPOSAL_COLUMNS = ("top", "best", "iou_top", "iou_best", "selection_correct", "weight_on_best")
COUPLED_COLUMNS = ("iou_pixel_path", "intersection_pixel_path", "union_pixel_path", "iou_sma_map")
METRIC_COLUMNS = (("iou_output", "intersection_output", "union_output", "leakage") + PROPOSAL_COLUMNS
                  + COUPLED_COLUMNS)
CSV_COLUMNS = ("ref_id", "sent_id", "sentence") + METRIC_COLUMNS + ("compare_iou",)
SampleKey = Tuple[int, int]  # (ref_id, sent_id): how per_sample.csv files name a sample


# ----------------------------------------------------------------------------------------------------------
# Per sample, NumPy


def proposal_ious(proposal_masks: np.ndarray, target: np.ndarray) -> np.ndarray:
    """IoU of each proposal mask with the target: ``(N, H, W)`` bool, ``(H, W)`` bool -> ``(N,)``; 0 where the
    union is empty (src/metrics.py's rule)."""
    flat = proposal_masks.reshape(len(proposal_masks), -1)  # (N, HW)
    goal = target.reshape(1, -1)  # (1, HW)
    inter = np.count_nonzero(flat & goal, axis=1)  # (N,)
    union = np.count_nonzero(flat | goal, axis=1)  # (N,)
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def proposal_selection(weights: np.ndarray, ious: np.ndarray) -> Dict[str, float]:
    """The top-weighted against the best proposal, from SMA's weights ``(N,)`` and the proposals' IoUs ``(N,)``
    -> the `PROPOSAL_COLUMNS`. Ties go to the lower index (numpy's argmax)."""
    top, best = int(np.argmax(weights)), int(np.argmax(ious))
    iou_top, iou_best = float(ious[top]), float(ious[best])
    return {"top": top, "best": best, "iou_top": iou_top, "iou_best": iou_best,
            "selection_correct": float(iou_best - iou_top <= SELECTION_TOLERANCE),
            "weight_on_best": float(weights[best])}


def leakage(pred: np.ndarray, target: np.ndarray, others: np.ndarray) -> float:
    """Share of the predicted pixels on other objects (``others``, the union of the image's other annotations)
    and not on the referent: where the two overlap, the pixel is right. 0 for an empty prediction."""
    predicted = np.count_nonzero(pred)
    if predicted == 0:
        return 0.0
    return np.count_nonzero(pred & others & ~target) / predicted


def decompose_sample(output: np.ndarray, target: np.ndarray, others: np.ndarray,
                     proposals: Optional[np.ndarray] = None, weights: Optional[np.ndarray] = None,
                     pixel: Optional[np.ndarray] = None, sma: Optional[np.ndarray] = None) -> Dict[str, float]:
    """Every `METRIC_COLUMNS` value of one sample (NaN where the model has no such map).

    Args:
        output: ``(H, W)`` output logits; target, others: ``(H, W)`` bool, the referent and the union of the
            image's other annotated objects, on the same grid.
        proposals: ``(N, H, W)`` proposal logits ``Q_n . P`` and weights ``(N,)`` SMA's weights; None without SMA.
        pixel, sma: ``(H, W)`` the coupled head's ``M_pix`` and ``M_sma``; None for other heads.
    """
    pred = output > 0
    inter, union = intersection_union(pred, target)
    row = {column: math.nan for column in METRIC_COLUMNS}
    row.update(iou_output=inter / union if union else 0.0, intersection_output=inter, union_output=union,
               leakage=leakage(pred, target, others))
    if proposals is not None:
        row.update(proposal_selection(weights, proposal_ious(proposals > 0, target)))
    if pixel is not None:
        pixel_inter, pixel_union = intersection_union(pixel > 0, target)
        row.update(iou_pixel_path=pixel_inter / pixel_union if pixel_union else 0.0,
                   intersection_pixel_path=pixel_inter, union_pixel_path=pixel_union)
        row["iou_sma_map"] = float(proposal_ious((sma > 0)[None], target)[0])
    return row


class OtherObjects:
    """The union of a sample's other annotated objects at S x S (the pipeline's nearest resize), every
    annotation of the image except the referent's, crowd regions included (their pixels are other objects'
    too). Keeps the masks of the last few images: an image's samples are mostly consecutive."""

    CACHE_SIZE = 4

    def __init__(self, refer, image_size: int):
        self.refer = refer
        self.image_size = int(image_size)
        self._masks: "OrderedDict[int, Dict[int, np.ndarray]]" = OrderedDict()

    def _image_masks(self, image_id: int) -> Dict[int, np.ndarray]:
        if image_id in self._masks:
            self._masks.move_to_end(image_id)
            return self._masks[image_id]
        masks = {}
        for ann_id in self.refer.image_annotations(image_id):
            try:
                masks[ann_id] = resize_mask(self.refer.load_mask(ann_id), self.image_size) > 0
            except SAMPLE_ERRORS as e:  # an unreadable distractor only leaves its pixels out of the leakage
                logger.warning("image %d: object %d left out of the leakage: %s", image_id, ann_id, e)
        self._masks[image_id] = masks
        if len(self._masks) > self.CACHE_SIZE:
            self._masks.popitem(last=False)
        return masks

    def __call__(self, sample) -> np.ndarray:
        """(S, S) bool for `sample` (its ``image_id`` and ``ann_id``)."""
        union = np.zeros((self.image_size, self.image_size), bool)
        for ann_id, mask in self._image_masks(sample.image_id).items():
            if ann_id != sample.ann_id:
                union |= mask
        return union


# ----------------------------------------------------------------------------------------------------------
# The model's maps


def head_kind(model) -> str:
    """"none" (no proposals), "coupled" (CoupledSentenceMaskHead) or "mixture" (every other SMA head)."""
    if model.transformer_decoder is None:
        return "none"
    return "coupled" if isinstance(model.head, CoupledSentenceMaskHead) else "mixture"


class FinalStageMaps(nn.Cell):
    """(image (B, 3, S, S), input_ids (B, T), attention_mask (B, T)) -> the final stage's maps at S x S: the
    output logits (B, 1, S, S) as `CoupAlign.predict` makes them; with proposals also their logits
    (B, N, S, S) and SMA's weights (B, N); with the coupled head also M_pix and M_sma (B, 1, S, S) each.

    A Cell of its own so that graph mode compiles the whole pass once: on the 2-core CPU machine a batch of
    the tiny test model took ~7 s in PyNative and 35 ms compiled (after ~17 s of compiling). The weights come from `forward_with_scores` with the class head's
    logits, as the head sees them at inference.
    """

    def __init__(self, model):
        super().__init__(auto_prefix=False)
        self.model = model
        self.kind = head_kind(model)

    def _upsample(self, logits, height, width):
        return ops.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)

    def construct(self, image, input_ids, attention_mask):
        height, width = image.shape[2], image.shape[3]
        sentence, pixel_embed, mask_embeds, words = self.model.forward_features(image, input_ids, attention_mask)
        output = self.model.predict(sentence, pixel_embed, mask_embeds, words, attention_mask, height,
                                    width)  # (B, 1, S, S)
        if self.kind == "none":
            return (output,)
        head = self.model.head
        last = mask_embeds[-1]  # (B, N, D)
        class_logits = self.model.proposal_classes(last)  # (B, N, C + 1) or None
        proposals = self._upsample(proposal_logits(last, pixel_embed), height, width)  # (B, N, S, S)
        _, weights, _, _ = head.forward_with_scores(last, pixel_embed, sentence, words, attention_mask,
                                                    class_logits)  # (B, N)
        if self.kind == "mixture":
            return output, proposals, weights
        pixel_logits = head.pixel_logits(pixel_embed, sentence)  # M_pix (B, 1, h, w); the pixel agreement reads it
        sma, _, _, _ = head.sma_map(last, pixel_embed, sentence, words, attention_mask, class_logits, pixel_logits)
        return (output, proposals, weights, self._upsample(pixel_logits, height, width),
                self._upsample(sma, height, width))  # M_pix, M_sma (B, 1, S, S)


# ----------------------------------------------------------------------------------------------------------
# A split


@dataclass
class Decomposition:
    kind: str  # head_kind of the model
    rows: List[Dict] = field(default_factory=list)  # per sample: index, ref_id, sent_id, sentence, METRIC_COLUMNS
    gate: Optional[float] = None  # the coupled head's alpha
    num_skipped: int = 0  # unreadable samples left out (eval.skip_bad_samples)


def decompose(model, refer, dataset, skip_bad_samples: bool = False, progress: bool = False) -> Decomposition:
    """Every sample of `dataset` (an evaluation pipeline of `refer` from `create_refer_dataset(train=False)`,
    as `src.engine.evaluator.evaluate` takes it) -> a `Decomposition`, rows in sample order.

    An unreadable sample raises a DataError naming its file, or with `skip_bad_samples` is left out and counted.
    """
    from mindspore import Tensor

    from src.engine.evaluator import _load_error

    net = FinalStageMaps(model)
    net.set_train(False)
    result = Decomposition(net.kind)
    if net.kind == "coupled":
        result.gate = float(model.head.gate.asnumpy())
    others_of = None
    iterator = dataset.create_dict_iterator(num_epochs=1, output_numpy=True)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, total=dataset.get_dataset_size(), desc="decompose", unit="batch")
    for batch in iterator:
        maps = [m.asnumpy() for m in net(Tensor(batch["image"]), Tensor(batch["input_ids"]),
                                         Tensor(batch["attention_mask"]))]
        if others_of is None:
            others_of = OtherObjects(refer, batch["mask"].shape[-1])
        for row, (index, bad) in enumerate(zip(batch["index"].tolist(), batch["bad"].tolist())):
            if index < 0:  # padding of the last batch
                continue
            sample = refer.sample(index)
            if bad:
                if not skip_bad_samples:
                    raise DataError(f"sample {index} (ref_id {sample.ref_id}, sent_id {sample.sent_id}) cannot be "
                                    f"loaded: {_load_error(refer, index)}. Fix the file, or pass "
                                    f"--skip_bad_samples true to leave such samples out")
                result.num_skipped += 1
                continue
            extra = {}
            if net.kind != "none":
                extra.update(proposals=maps[1][row], weights=maps[2][row])
            if net.kind == "coupled":
                extra.update(pixel=maps[3][row, 0], sma=maps[4][row, 0])
            values = decompose_sample(maps[0][row, 0], batch["mask"][row] > 0.5, others_of(sample), **extra)
            result.rows.append({"index": index, "ref_id": sample.ref_id, "sent_id": sample.sent_id,
                                "sentence": sample.text, **values})
    return result


# ----------------------------------------------------------------------------------------------------------
# Another model's IoUs on the same samples


def read_per_sample_ious(path: str) -> Dict[SampleKey, float]:
    """{(ref_id, sent_id): IoU} from eval.py's per_sample.csv (``iou_input``) or this module's
    (``iou_output``); a DataError naming the file when it lacks the columns or names a sample twice."""
    import csv
    import os

    if not os.path.isfile(path):
        raise FileNotFoundError(f"per-sample file not found: {path} (eval.py writes <output_dir>/per_sample.csv)")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        column = next((c for c in ("iou_input", "iou_output") if c in fields), None)
        if not {"ref_id", "sent_id"} <= set(fields) or column is None:
            raise DataError(f"{path}: expected the columns ref_id, sent_id and iou_input (eval.py's per_sample.csv), "
                            f"found {fields}")
        ious: Dict[SampleKey, float] = {}
        for line, row in enumerate(reader, start=2):
            try:
                key, iou = (int(row["ref_id"]), int(row["sent_id"])), float(row[column])
            except (TypeError, ValueError):
                raise DataError(f"{path}, line {line}: ref_id, sent_id and {column} must be numbers, got "
                                f"{row.get('ref_id')!r}, {row.get('sent_id')!r}, {row.get(column)!r}") from None
            if key in ious:
                raise DataError(f"{path}, line {line}: sample (ref_id {key[0]}, sent_id {key[1]}) appears twice")
            ious[key] = iou
    return ious


def _examples(keys) -> str:
    return ", ".join(f"(ref_id {r}, sent_id {s})" for r, s in sorted(keys)[:3])


def check_comparison_split(ious: Mapping[SampleKey, float], split_keys: Set[SampleKey], source: str,
                           split: str) -> None:
    """Before the run: every sample of the comparison must be one of the split's (else it was scored on
    another split or dataset); a DataError naming `source` otherwise."""
    unknown = set(ious) - split_keys
    if unknown:
        raise DataError(f"{source}: {len(unknown)} of its {len(ious)} samples are not in {split} (e.g. "
                        f"{_examples(unknown)}): it was scored on another split or dataset")


def attach_comparison(rows: Sequence[Dict], ious: Mapping[SampleKey, float], source: str) -> None:
    """Sets ``compare_iou`` of every row from `ious`; a DataError naming `source` when a row's sample is
    missing there (compared on different samples, the means would not be comparable)."""
    missing = [(r["ref_id"], r["sent_id"]) for r in rows if (r["ref_id"], r["sent_id"]) not in ious]
    if missing:
        raise DataError(f"{source}: {len(missing)} of the {len(rows)} samples decomposed are missing there (e.g. "
                        f"{_examples(missing)}): the two runs do not cover the same samples")
    for row in rows:
        row["compare_iou"] = ious[(row["ref_id"], row["sent_id"])]


# ----------------------------------------------------------------------------------------------------------
# Summary


def _mean_percent(rows: Sequence[Dict], column: str) -> Optional[float]:
    values = np.array([r.get(column, math.nan) for r in rows], np.float64)
    values = values[~np.isnan(values)]
    return 100.0 * float(values.mean()) if len(values) else None


def group_summary(rows: Sequence[Dict]) -> Dict[str, Optional[float]]:
    """Means of a group's samples, in percent (None where no sample has the value): ``n``, ``oiou_output``
    (sum I / sum U), ``selection_accuracy`` (mean of selection_correct), the mean of every IoU column,
    ``weight_on_best`` and ``leakage``; with a comparison ``compare_iou`` and ``diff_vs_compare`` (the mean
    of iou_output - compare_iou over the same samples)."""
    union = sum(r["union_output"] for r in rows)
    out: Dict[str, Optional[float]] = {
        "n": len(rows),
        "oiou_output": 100.0 * sum(r["intersection_output"] for r in rows) / union if union else None,
    }
    pixel_rows = [r for r in rows if not math.isnan(r.get("union_pixel_path", math.nan))]
    pixel_union = sum(r["union_pixel_path"] for r in pixel_rows)
    out["oiou_pixel_path"] = (100.0 * sum(r["intersection_pixel_path"] for r in pixel_rows) / pixel_union
                              if pixel_union else None)  # the oIoU with the gate forced to 0
    for column in ("iou_output", "iou_top", "iou_best", "iou_pixel_path", "iou_sma_map", "weight_on_best",
                   "leakage", "compare_iou"):
        out[column] = _mean_percent(rows, column)
    out["selection_accuracy"] = _mean_percent(rows, "selection_correct")
    if out["compare_iou"] is not None:
        out["diff_vs_compare"] = 100.0 * float(np.mean([r["iou_output"] - r["compare_iou"] for r in rows]))
    return out


def same_category_indices(refer) -> Set[SampleKey]:
    """(ref_id, sent_id) of the samples whose image holds another annotated object of the referent's category:
    the "same category" group of `summarise` (tools/decompose.py) and of the ablation table."""
    keys = set()
    for ref in refer.refs:
        category = refer.annotations[ref.ann_id].get("category_id")
        peers = [a for a in refer.image_annotations(ref.image_id)
                 if a != ref.ann_id and refer.annotations[a].get("category_id") == category]
        if peers:
            keys.update((ref.ref_id, s.sent_id) for s in ref.sentences)
    return keys


def summarise(rows: Sequence[Dict], groups: Mapping[str, Set[SampleKey]]) -> Dict[str, Dict]:
    """{"overall": group_summary(rows), name: group_summary(its rows) for each of `groups` (name ->
    (ref_id, sent_id) keys) that holds a decomposed sample}."""
    out = {"overall": group_summary(rows)}
    for name, keys in groups.items():
        members = [r for r in rows if (r["ref_id"], r["sent_id"]) in keys]
        if members:
            out[name] = group_summary(members)
    return out


# (summary key, column title, shown for these head kinds)
TABLE_COLUMNS = (
    ("oiou_output", "oIoU", ("none", "mixture", "coupled")),
    ("iou_output", "mIoU", ("none", "mixture", "coupled")),
    ("iou_top", "top proposal mIoU", ("mixture", "coupled")),
    ("iou_best", "best proposal mIoU (oracle)", ("mixture", "coupled")),
    ("selection_accuracy", "selection acc.", ("mixture", "coupled")),
    ("weight_on_best", "weight on best", ("mixture", "coupled")),
    ("oiou_pixel_path", "oIoU at gate 0", ("coupled",)),
    ("iou_pixel_path", "pixel path mIoU", ("coupled",)),
    ("iou_sma_map", "SMA map mIoU", ("coupled",)),
    ("leakage", "leakage", ("none", "mixture", "coupled")),
)


def format_table(summary: Mapping[str, Dict], kind: str) -> str:
    """The summary as a Markdown table: one row per group, every value in percent; the comparison columns
    when the summary has them."""
    columns = [(key, title) for key, title, kinds in TABLE_COLUMNS if kind in kinds]
    if summary["overall"].get("compare_iou") is not None:
        columns += [("compare_iou", "other model mIoU"), ("diff_vs_compare", "mIoU - other")]
    lines = ["| group | n | " + " | ".join(title for _, title in columns) + " |",
             "|---" * (len(columns) + 2) + "|"]
    for name, values in summary.items():
        cells = ["-" if values.get(key) is None else f"{values[key]:.1f}" for key, _ in columns]
        lines.append(f"| {name} | {values['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_reports(result: Decomposition, summary: Mapping[str, Dict], out_dir: str, header: Dict) -> Tuple[str, str]:
    """OUT/per_sample.csv (`CSV_COLUMNS`, IoUs as fractions, empty where NaN) and OUT/summary.json (`header`,
    the head kind, gate, skipped count and `summary`) -> their paths."""
    import csv
    import json
    import os

    os.makedirs(out_dir, exist_ok=True)
    csv_path = os.path.join(out_dir, "per_sample.csv")
    with open(csv_path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for row in result.rows:
            writer.writerow([_cell(row.get(column, math.nan)) for column in CSV_COLUMNS])
    json_path = os.path.join(out_dir, "summary.json")
    with open(json_path, "w", encoding="utf-8") as f:
        json.dump({**header, "head": result.kind, "gate": result.gate, "num_samples": len(result.rows),
                   "num_skipped": result.num_skipped, "groups": summary}, f, indent=2)
    return csv_path, json_path


def _cell(value) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6f}"
    return str(value)
