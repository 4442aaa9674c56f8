"""Image and mask preprocessing with the semantics of LAVT's torchvision-on-PIL pipeline.

LAVT resizes the PIL image with ``T.Resize((480, 480))`` (PIL bilinear, which *antialiases* when
shrinking: its triangle filter widens by the scale factor) and the PIL mask with nearest neighbour,
then applies ImageNet normalisation. We reproduce those semantics in NumPy, without Pillow:

* `resize_image`: PIL's separable bilinear filter (same support, same sample centres, same
  normalised weights), computed in float32 without PIL's intermediate rounding to uint8. The result
  differs from Pillow's by at most about one grey level. OpenCV's INTER_LINEAR does not antialias
  and differs visibly when shrinking a COCO-sized image to 480 or a synthetic one to 128.
* `resize_mask`: Pillow nearest, bit for bit: output pixel i takes input pixel floor((i + 0.5) * in
  / out) (pixel centres; Pillow's float accumulation decides exact ties). That is PyTorch's
  ``mode="nearest-exact"`` and OpenCV's INTER_NEAREST_EXACT up to those ties, and *not* PyTorch's
  ``mode="nearest"`` / OpenCV's INTER_NEAREST (floor(i * in / out)), which shifts masks by up to
  half an input pixel.
* `normalize`: (x / 255 - mean) / std with ImageNet statistics, HWC -> CHW.

The aspect ratio is not kept (LAVT resizes straight to a square); no flips (expressions say
"left" and "right").
"""
from __future__ import annotations

from functools import lru_cache
from typing import Tuple, Union

import numpy as np

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)

SizeLike = Union[int, Tuple[int, int]]


def _hw(size: SizeLike) -> Tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    height, width = size
    return int(height), int(width)


@lru_cache(maxsize=64)
def _bilinear_taps(in_size: int, out_size: int) -> Tuple[np.ndarray, np.ndarray]:
    """Pillow's bilinear resampling taps along one axis: (out, K) source indices and (out, K) weights.

    Output pixel i is centred at (i + 0.5) * scale in input coordinates; the triangle filter has
    support 1 (widened to `scale` when shrinking) and its weights are normalised to sum to one.
    Unused taps point at pixel 0 with weight 0.
    """
    scale = in_size / out_size
    filter_scale = max(scale, 1.0)
    support = 1.0 * filter_scale
    taps = int(np.ceil(support)) * 2 + 1
    index = np.zeros((out_size, taps), np.int64)
    weight = np.zeros((out_size, taps), np.float64)
    for i in range(out_size):
        centre = (i + 0.5) * scale
        lo = max(int(centre - support + 0.5), 0)  # int() truncates, as C does
        hi = min(int(centre + support + 0.5), in_size)
        src = np.arange(lo, hi)
        w = np.clip(1.0 - np.abs((src - centre + 0.5) / filter_scale), 0.0, None)
        total = w.sum()
        if total != 0:
            w = w / total
        index[i, :len(src)] = src
        weight[i, :len(src)] = w
    return index, weight.astype(np.float32)


def _resample_rows(x: np.ndarray, out_size: int) -> np.ndarray:
    """One separable pass along axis 0 of an (N, ...) float32 array -> (out_size, ...).

    Gathering whole rows (contiguous memory) is several times faster than gathering along an
    inner axis, so both passes run along axis 0 with a transpose in between.
    """
    if x.shape[0] == out_size:
        return x
    index, weight = _bilinear_taps(x.shape[0], out_size)
    shape = (out_size,) + (1,) * (x.ndim - 1)
    out = x[index[:, 0]]
    out *= weight[:, 0].reshape(shape)
    for k in range(1, index.shape[1]):
        tap = x[index[:, k]]
        tap *= weight[:, k].reshape(shape)
        out += tap
    return out


def _resize_transposed(img: np.ndarray, size: SizeLike) -> np.ndarray:
    """(H, W[, C]) -> (w, h[, C]) float32: vertical pass, transpose, horizontal pass.

    The passes are linear and commute; Pillow runs the horizontal one first, which changes results
    only by float32 rounding (~1e-6 of the value range).
    """
    out_h, out_w = _hw(size)
    x = _resample_rows(np.asarray(img, dtype=np.float32), out_h)  # (h, W[, C])
    x = np.ascontiguousarray(np.swapaxes(x, 0, 1))  # (W, h[, C])
    return _resample_rows(x, out_w)  # (w, h[, C])


def resize_image(img: np.ndarray, size: SizeLike) -> np.ndarray:
    """(H, W[, C]) image -> (h, w[, C]) float32, Pillow-style antialiased bilinear; values stay in the input's range."""
    return np.ascontiguousarray(np.swapaxes(_resize_transposed(img, size), 0, 1))


@lru_cache(maxsize=64)
def nearest_indices(in_size: int, out_size: int) -> np.ndarray:
    """Pillow's nearest-neighbour source index of every output pixel.

    Mathematically floor((i + 0.5) * in / out); Pillow accumulates the position by repeated double
    additions, which decides exact ties (e.g. 640 -> 480 at i = 1, 1.5 * 4/3 = 2) differently from
    the closed form, so we accumulate the same way and get Pillow's indices bit for bit.
    """
    step = in_size / out_size
    position = step * 0.5
    src = np.empty(out_size, np.int64)
    for i in range(out_size):
        src[i] = int(position)
        position += step
    src = np.minimum(src, in_size - 1)
    src.setflags(write=False)
    return src


def resize_mask(mask: np.ndarray, size: SizeLike) -> np.ndarray:
    """(H, W) mask -> (h, w), same dtype, nearest neighbour with Pillow's pixel-centre rule."""
    out_h, out_w = _hw(size)
    rows = nearest_indices(mask.shape[0], out_h)
    cols = nearest_indices(mask.shape[1], out_w)
    return np.ascontiguousarray(mask[rows[:, None], cols[None, :]])


def normalize(img: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB in [0, 255] -> (3, H, W) float32, ImageNet mean/std."""
    x = np.asarray(img, dtype=np.float32) * np.float32(1.0 / 255.0)
    x = (x - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def preprocess_image(img: np.ndarray, size: SizeLike) -> np.ndarray:
    """uint8 (H, W, 3) RGB -> network input (3, h, w) float32; equals normalize(resize_image(img, size))."""
    x = _resize_transposed(img, size)  # (w, h, 3)
    x *= np.float32(1.0 / 255.0)
    x -= IMAGENET_MEAN
    x /= IMAGENET_STD
    return np.ascontiguousarray(x.transpose(2, 1, 0))  # (3, h, w)
