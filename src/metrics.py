"""Referring-segmentation metrics (LAVT protocol, docs/method.md "Metrics").

One sample = one (object, sentence) pair. Per sample I = |pred AND gt|, U = |pred OR gt|,
IoU = I / U, and IoU = 0 when U = 0 (an empty prediction of an empty target scores 0, literally
as the spec says; RefCOCO has no empty targets, so this only matters for degenerate data).

* overall IoU (oIoU) = sum I / sum U over the split (the headline number; big objects weigh more);
* mean IoU (mIoU) = mean of the per-sample IoUs;
* precision@t = share of samples with IoU >= t, t in 0.5 .. 0.9.

`compute()` reports every value as a percentage (0-100), as the paper's tables do.

Helpers for evaluation at the original image size: `resize_logits_to` (bilinear, half-pixel
centres, no antialiasing: PyTorch ``F.interpolate(mode="bilinear", align_corners=False)``) and
`logits_to_mask` (logit > 0, i.e. probability > 0.5).
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np

PRECISION_THRESHOLDS: Tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9)


def intersection_union(pred_mask: np.ndarray, gt_mask: np.ndarray) -> Tuple[int, int]:
    """(I, U) pixel counts of two boolean masks of the same shape (non-zero = foreground)."""
    pred = np.asarray(pred_mask).astype(bool, copy=False)
    gt = np.asarray(gt_mask).astype(bool, copy=False)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground-truth shape {gt.shape}")
    return int(np.count_nonzero(pred & gt)), int(np.count_nonzero(pred | gt))


class RefSegMetrics:
    """Accumulates per-sample intersections and unions; `compute()` gives oIoU, mIoU and precision@t."""

    def __init__(self, thresholds: Sequence[float] = PRECISION_THRESHOLDS):
        self.thresholds = tuple(float(t) for t in thresholds)
        self.reset()

    def reset(self) -> None:
        self.intersections: List[int] = []
        self.unions: List[int] = []
        self.ious: List[float] = []  # per sample, in update order

    def update(self, pred_mask: np.ndarray, gt_mask: np.ndarray) -> float:
        """Adds one sample; returns its IoU (a fraction)."""
        inter, union = intersection_union(pred_mask, gt_mask)
        return self.add(inter, union)

    def add(self, intersection: int, union: int) -> float:
        """Adds one sample given its I and U (e.g. computed on device); returns its IoU."""
        if intersection < 0 or union < intersection:
            raise ValueError(f"invalid intersection/union {intersection}/{union}")
        iou = intersection / union if union > 0 else 0.0
        self.intersections.append(int(intersection))
        self.unions.append(int(union))
        self.ious.append(float(iou))
        return iou

    def merge(self, other: "RefSegMetrics") -> "RefSegMetrics":
        """Appends another accumulator's samples (e.g. another shard's); returns self."""
        self.intersections.extend(other.intersections)
        self.unions.extend(other.unions)
        self.ious.extend(other.ious)
        return self

    @property
    def num_samples(self) -> int:
        return len(self.ious)

    def compute(self) -> Dict[str, float]:
        """{"overall_iou", "mean_iou", "precision@0.5", ..., "precision@0.9"} in percent, and "num_samples"."""
        n = self.num_samples
        total_union = sum(self.unions)
        result: Dict[str, float] = {
            "overall_iou": 100.0 * sum(self.intersections) / total_union if total_union > 0 else 0.0,
            "mean_iou": 100.0 * float(np.mean(self.ious)) if n else 0.0,
        }
        ious = np.asarray(self.ious, np.float64)
        for t in self.thresholds:
            result[f"precision@{t:g}"] = 100.0 * float(np.mean(ious >= t)) if n else 0.0
        result["num_samples"] = n
        return result


def logits_to_mask(logits: np.ndarray, threshold: float = 0.0) -> np.ndarray:
    """Boolean mask of logits > threshold (0 = probability 0.5)."""
    return np.asarray(logits) > threshold


def _linear_taps(in_size: int, out_size: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lower index, upper index and upper weight of each output pixel (half-pixel centres, clamped)."""
    scale = in_size / out_size
    src = np.maximum((np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5, 0.0)
    lower = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    upper = np.minimum(lower + 1, in_size - 1)
    return lower, upper, (src - lower).astype(np.float32)


def resize_logits_to(logits: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """(h, w) logits -> (H, W) float32, bilinear with half-pixel centres and no antialiasing.

    Same as PyTorch ``F.interpolate(x, size, mode="bilinear", align_corners=False)`` (source
    coordinates clamped at the border), which is what LAVT uses to bring logits to a target size.
    Source positions are computed in float64; PyTorch computes them in float32, so the two agree
    to ~1e-4 on logits of magnitude ~10 (ours is the exact one).
    """
    height, width = int(size[0]), int(size[1])
    x = np.asarray(logits, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"expected (h, w) logits, got shape {x.shape}")
    r0, r1, rw = _linear_taps(x.shape[0], height)
    c0, c1, cw = _linear_taps(x.shape[1], width)
    rows = x[r0] * (1 - rw)[:, None] + x[r1] * rw[:, None]  # (H, w)
    return np.ascontiguousarray(rows[:, c0] * (1 - cw)[None, :] + rows[:, c1] * cw[None, :])
