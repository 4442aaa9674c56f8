"""The pictures of the synthetic refer dataset (src/data/synthetic.py): the shape categories and colours, the
shapes as polygons, their rasterisation and RLE encodings, the textured backgrounds, where the shapes go (with
at most 30% of any object hidden) and how they are painted. `generate_scene(index, split, seed, ...)` draws one
image, deterministic in (seed, index); what is said about it is src/data/synthetic_language.py's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from pycocotools import mask as mask_utils


# (id, name, family). Family "round" -> testA, "angular" -> testB.
CATEGORIES: Tuple[Tuple[int, str, str], ...] = (
    (1, "circle", "round"),
    (2, "ring", "round"),
    (3, "square", "angular"),
    (4, "triangle", "angular"),
    (5, "star", "angular"),
    (6, "cross", "angular"),
)
CATEGORY_ID = {name: cid for cid, name, _ in CATEGORIES}
CATEGORY_FAMILY = {name: family for _, name, family in CATEGORIES}
SPLIT_FAMILY = {"testA": "round", "testB": "angular"}

COLOURS: Dict[str, Tuple[int, int, int]] = {  # RGB
    "red": (215, 35, 35),
    "green": (40, 165, 55),
    "blue": (35, 75, 215),
    "yellow": (235, 210, 35),
    "purple": (135, 55, 175),
    "orange": (240, 130, 25),
    "white": (242, 242, 242),
    "black": (22, 22, 22),
}
COLOUR_WORDS = tuple(COLOURS)

MIN_VISIBLE = 0.7  # no object more than 30% hidden


# ----------------------------------------------------------------------------------------------
# Pictures: shapes, backgrounds, rendering
# ----------------------------------------------------------------------------------------------
def _regular_polygon(cx: float, cy: float, radius: float, sides: int, angle: float) -> np.ndarray:
    t = angle + np.arange(sides) * (2 * np.pi / sides)
    return np.stack([cx + radius * np.cos(t), cy + radius * np.sin(t)], axis=1)


def _rectangle(cx: float, cy: float, half_w: float, half_h: float, angle: float) -> np.ndarray:
    corners = np.array([[-half_w, -half_h], [half_w, -half_h], [half_w, half_h], [-half_w, half_h]])
    c, s = np.cos(angle), np.sin(angle)
    return corners @ np.array([[c, s], [-s, c]]) + np.array([cx, cy])


def shape_polygons(category: str, cx: float, cy: float, size: float, rng: np.random.Generator):
    """(outer polygons, hole polygons) of a shape of about `size` pixels across; coordinates
    rounded to 0.01 so that what is drawn is exactly what instances.json stores."""
    r = size / 2
    holes: List[np.ndarray] = []
    if category == "circle":
        polys = [_regular_polygon(cx, cy, r, 48, 0.0)]
    elif category == "ring":
        polys = [_regular_polygon(cx, cy, r, 48, 0.0)]
        holes = [_regular_polygon(cx, cy, r * rng.uniform(0.45, 0.6), 40, 0.0)]
    elif category == "square":
        half = r * 0.82
        polys = [_rectangle(cx, cy, half, half, rng.uniform(-0.25, 0.25))]
    elif category == "triangle":  # pointing up, slightly rotated, shifted down to roughly centre its box
        polys = [_regular_polygon(cx, cy + r * 0.12, r * 1.05, 3, -np.pi / 2 + rng.uniform(-0.2, 0.2))]
    elif category == "star":
        outer = r * 1.02
        inner = outer * rng.uniform(0.42, 0.5)
        t = rng.uniform(-0.3, 0.3) - np.pi / 2 + np.arange(10) * (np.pi / 5)
        rad = np.where(np.arange(10) % 2 == 0, outer, inner)
        polys = [np.stack([cx + rad * np.cos(t), cy + rad * np.sin(t)], axis=1)]
    elif category == "cross":  # two overlapping bars
        angle = rng.uniform(-0.25, 0.25)
        thick = r * rng.uniform(0.3, 0.38)
        polys = [_rectangle(cx, cy, r * 0.95, thick, angle), _rectangle(cx, cy, thick, r * 0.95, angle)]
    else:
        raise ValueError(category)
    return [np.round(p, 2) for p in polys], [np.round(h, 2) for h in holes]


def rasterise(polys: List[np.ndarray], height: int, width: int) -> np.ndarray:
    """Union of polygons as a (H, W) bool mask, rasterised by pycocotools (as the reader decodes them)."""
    rles = mask_utils.frPyObjects([p.ravel().tolist() for p in polys], height, width)
    return mask_utils.decode(mask_utils.merge(rles)).astype(bool)


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE: run lengths over the column-major pixel order, starting with a 0-run."""
    flat = np.asarray(mask, dtype=np.uint8).ravel(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0] == 1:
        counts = [0] + counts
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(c) for c in counts]}


def compressed_rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _luma(rgb: Sequence[float]) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


NOISE_TILE = 704  # side of the shared Gaussian noise tile; images take a random crop of it


def make_noise_tile(seed: int) -> np.ndarray:
    """(704, 704, 3) float32 standard-normal noise, drawn once per dataset: cropping it is much
    cheaper than drawing fresh Gaussian noise for every pixel of every image."""
    return np.random.default_rng([seed, 2**31 - 2]).standard_normal((NOISE_TILE, NOISE_TILE, 3), dtype=np.float32)


def _noise(tile: np.ndarray, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    y = int(rng.integers(0, tile.shape[0] - height + 1))
    x = int(rng.integers(0, tile.shape[1] - width + 1))
    return tile[y:y + height, x:x + width]


def make_background(height: int, width: int, rng: np.random.Generator,
                    noise_tile: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """A muted, textured, noisy (H, W, 3) float32 background and its base colour."""
    hsv = np.array([[[rng.uniform(0, 180), rng.uniform(0, 90), rng.uniform(90, 215)]]], np.float32)
    base = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)
    img = np.broadcast_to(base, (height, width, 3)).astype(np.float32)
    kind = int(rng.integers(0, 5))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32) if kind in (1, 2, 3) else (None, None)
    if kind == 0:  # low-frequency blotches
        cell = int(rng.integers(16, 64))
        small = rng.standard_normal((height // cell + 2, width // cell + 2, 3), dtype=np.float32)
        img += rng.uniform(8, 22) * cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    elif kind == 1:  # linear gradient
        theta = rng.uniform(0, 2 * np.pi)
        ramp = (xx * np.cos(theta) + yy * np.sin(theta)) / max(height, width)
        img += (rng.uniform(25, 50) * (ramp - ramp.mean()))[..., None]
    elif kind == 2:  # stripes
        theta = rng.uniform(0, np.pi)
        period = rng.uniform(6, 30)
        img += (rng.uniform(6, 16) * np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period))[..., None]
    elif kind == 3:  # checkerboard
        cell = int(rng.integers(8, 40))
        img += (rng.uniform(6, 16) * (((xx // cell + yy // cell) % 2) * 2 - 1))[..., None]
    # kind 4: plain; every kind gets pixel noise
    img += np.float32(rng.uniform(2, 8)) * _noise(noise_tile, height, width, rng)
    return img, base


def _pick_colour(rng: np.random.Generator, background: np.ndarray, gray: bool) -> str:
    """A colour that stands out from the background (by luminance in grayscale images)."""
    names = list(COLOUR_WORDS)
    if gray:
        ok = [c for c in names if abs(_luma(COLOURS[c]) - _luma(background)) >= 55]
    else:
        ok = [c for c in names if np.linalg.norm(np.array(COLOURS[c], np.float32) - background) >= 95]
    return str(rng.choice(ok or names))


@dataclass
class _Shape:
    category: str
    colour: str
    polys: List[np.ndarray]
    holes: List[np.ndarray]
    drawn: np.ndarray  # (H, W) bool, the full shape
    visible: Optional[np.ndarray] = None  # (H, W) bool, what later shapes leave uncovered

def _compose_categories(rng: np.random.Generator, split: str) -> List[str]:
    family = SPLIT_FAMILY.get(split)
    pool = [name for _, name, fam in CATEGORIES if family is None or fam == family]
    n_objects = int(rng.choice([2, 3, 4, 5], p=[0.25, 0.35, 0.25, 0.15]))
    main = str(rng.choice(pool))
    if rng.random() < 0.85:  # most scenes repeat a category: the noun alone is not enough
        n_main = int(min(n_objects, rng.choice([2, 3], p=[0.6, 0.4])))
    else:
        n_main = 1
    others = [name for _, name, _ in CATEGORIES if name != main]
    cats = [main] * n_main + [str(rng.choice(others)) for _ in range(n_objects - n_main)]
    return [cats[i] for i in rng.permutation(len(cats))]


def _place_shapes(categories: List[str], height: int, width: int, background: np.ndarray, gray: bool,
                  rng: np.random.Generator) -> List[_Shape]:
    side = min(height, width)
    shapes: List[_Shape] = []
    same_colour_bias = rng.random() < 0.4  # repeated colours force position/size/relation words
    for category in categories:
        for _attempt in range(40):
            size = rng.uniform(0.12, 0.40) * side
            r = size / 2
            cx = rng.uniform(r + 1, width - r - 1)
            cy = rng.uniform(r + 1, height - r - 1)
            polys, holes = shape_polygons(category, cx, cy, size, rng)
            if min(p[:, 0].min() for p in polys) < 0 or max(p[:, 0].max() for p in polys) > width or \
                    min(p[:, 1].min() for p in polys) < 0 or max(p[:, 1].max() for p in polys) > height:
                continue
            drawn = rasterise(polys, height, width)
            if holes:
                drawn &= ~rasterise(holes, height, width)
            # the new shape goes on top: check what stays visible of everyone
            covered = drawn.copy()
            fine = True
            for s in reversed(shapes):
                vis = s.drawn & ~covered
                if vis.sum() < MIN_VISIBLE * s.drawn.sum():
                    fine = False
                    break
                covered |= s.drawn
            if not fine:
                continue
            same = [s.colour for s in shapes if s.category == category]
            if same and same_colour_bias and rng.random() < 0.6:
                colour = same[0]
            else:
                colour = _pick_colour(rng, background, gray)
            shapes.append(_Shape(category, colour, polys, holes, drawn))
            break
    covered = np.zeros((height, width), bool)
    for s in reversed(shapes):
        s.visible = s.drawn & ~covered
        covered |= s.drawn
    return shapes


def _render(background: np.ndarray, shapes: List[_Shape], rng: np.random.Generator) -> np.ndarray:
    img = background.copy()
    height, width = img.shape[:2]
    for s in shapes:  # drawing order = occlusion order; later shapes cover earlier ones
        x0, y0, x1, y1 = mask_box(s.drawn)
        ys, xs = np.nonzero(s.drawn[y0:y1, x0:x1])
        ys += y0
        xs += x0
        colour = np.array(COLOURS[s.colour], np.float32) + rng.uniform(-12, 12, 3).astype(np.float32)
        theta = rng.uniform(0, 2 * np.pi)
        span = max(xs.max() - xs.min(), ys.max() - ys.min(), 1)
        shade = rng.uniform(0, 24) * ((xs - xs.mean()) * np.cos(theta) + (ys - ys.mean()) * np.sin(theta)) / span
        noise = 4 * rng.standard_normal((len(xs), 3), dtype=np.float32)
        img[ys, xs] = colour + shade[:, None] + noise
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def mask_box(mask: np.ndarray) -> Tuple[int, int, int, int]:
    """(x0, y0, x1, y1), exclusive ends, of a non-empty mask."""
    cols = np.flatnonzero(mask.any(axis=0))
    rows = np.flatnonzero(mask.any(axis=1))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1



def generate_scene(index: int, split: str, seed: int, noise_tile: np.ndarray, gray_fraction: float = 0.15):
    """Generates image `index` (deterministic in (seed, index)).

    Returns (uint8 RGB image, shapes, gray, JPEG quality, the image's generator for what follows)."""
    rng = np.random.default_rng([seed, index])
    aspect = math.exp(rng.uniform(-math.log(1.6), math.log(1.6)))
    long_side = rng.uniform(200, 640)
    width, height = (long_side, long_side / aspect) if aspect >= 1 else (long_side * aspect, long_side)
    width, height = int(np.clip(round(width), 160, 640)), int(np.clip(round(height), 160, 640))
    gray = bool(rng.random() < gray_fraction)
    background, base = make_background(height, width, rng, noise_tile)
    categories = _compose_categories(rng, split)
    shapes = _place_shapes(categories, height, width, base, gray, rng)
    image = _render(background, shapes, rng)
    quality = int(rng.integers(70, 96))
    return image, shapes, gray, quality, rng
