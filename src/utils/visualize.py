"""Overlay pictures: the image, the predicted mask tinted on it, and the sentence written above."""
from __future__ import annotations

import textwrap

import cv2
import numpy as np

MASK_COLOUR = np.array([255, 60, 60], np.float32)  # RGB


def overlay(image_rgb: np.ndarray, mask: np.ndarray, sentence: str, alpha: float = 0.5,
            max_side: int = 2048) -> np.ndarray:
    """(H, W, 3) uint8 RGB + (H, W) bool mask -> RGB picture with a caption band on top, shrunk so its
    longer side is at most `max_side` (a 10000 x 10000 photo gives a 2048 x 2048 overlay)."""
    scale = max_side / max(image_rgb.shape[:2])
    if scale < 1:
        size = (max(1, round(image_rgb.shape[1] * scale)), max(1, round(image_rgb.shape[0] * scale)))
        image_rgb = cv2.resize(image_rgb, size, interpolation=cv2.INTER_AREA)
        mask = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
    picture = image_rgb.astype(np.float32)
    m = mask.astype(bool)
    picture[m] = (1 - alpha) * picture[m] + alpha * MASK_COLOUR
    picture = picture.astype(np.uint8)
    contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(picture, contours, -1, (255, 255, 255), max(1, picture.shape[1] // 300))
    width = picture.shape[1]
    scale = max(0.4, min(1.2, width / 800))
    # Hershey fonts draw ASCII only: other characters become '?', the sentence stays readable.
    text = sentence.encode("ascii", "replace").decode("ascii")
    chars = max(10, int(width / (scale * 20)))
    lines = textwrap.wrap(text, chars) or [""]
    line_h = int(30 * scale)
    band = np.full((line_h * len(lines) + 10, width, 3), 255, np.uint8)
    for i, line in enumerate(lines):
        cv2.putText(band, line, (5, line_h * (i + 1)), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([band, picture], axis=0)


def write_png(path: str, rgb_or_gray: np.ndarray) -> None:
    image = rgb_or_gray if rgb_or_gray.ndim == 2 else cv2.cvtColor(rgb_or_gray, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(path, image):
        raise OSError(f"could not write {path}")
