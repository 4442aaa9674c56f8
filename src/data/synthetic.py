"""A synthetic referring-segmentation dataset written in the exact refer format of RefCOCO.

Why: the real datasets (COCO images + refer annotations) are large downloads; tests, the quick
start and CPU smoke runs need a small dataset that exercises every code path of the real format and
that a small model can actually learn. `generate_synthetic_refer(out_dir, num_images, seed)` writes::

    <out>/images/train2014/COCO_train2014_<12-digit id>.jpg
    <out>/refcoco/instances.json
    <out>/refcoco/refs(unc).p          (pickle protocol 2, like the Python-2 originals)

Scenes. Each image holds 2-5 shapes (categories: circle, ring, square, triangle, star, cross) on a
textured, noisy background. Most images repeat a category two or three times, so the category word
alone rarely identifies the target: expressions use colour (red, green, blue, yellow, purple,
orange, white, black), position (left/right/top/bottom/middle, as superlatives among the objects the
rest of the phrase allows, or as absolute image halves when only one object qualifies), size
(big/small: the larger/smaller with an area ratio of at least 1.5) and relations to a landmark
("the red circle left of the blue square", "the star next to the ring"). Every expression is
generated from a small semantic description (`Description`) and emitted only if `evaluate` says it
is true of exactly one object of the image, i.e. it identifies its target uniquely. Objects get
2-3 expressions in varied wording. 15% of the images are grayscale (saved as single-channel JPEG);
their expressions never use colour words. Image sizes vary from 160 to 640 pixels per side with
aspect ratios up to 1.6; JPEG quality 70-95.

Masks (choice). Shapes are defined as polygons and *drawn* by rasterising those polygons with
pycocotools, so an unoccluded object's pixels equal its decoded annotation exactly. Later objects
occlude earlier ones (at most 30% of any object is hidden); an annotation is always the object's
*visible* pixels. Unoccluded shapes store their polygons (a cross stores its two overlapping bars as
two polygons, the case where LAVT's "exactly one polygon" rule loses the overlap); rings (they
have a hole) and occluded objects store the visible mask as RLE, compressed or, for some,
uncompressed. `area` is the visible pixel count, so decoding any annotation reproduces it exactly.

Splits (like RefCOCO unc). 70% train, 10% val, 10% testA, 10% testB of the images. As RefCOCO's
testA holds people and testB other objects, here testA images refer only to *round* shapes
(circle, ring) and testB images only to *angular* ones (square, triangle, star, cross); their
scenes repeat a category of that family, and objects of the other family appear only as
distractors and landmarks. train and val mix both families.

Determinism: every image draws from its own generator seeded by (seed, image index); no set or
hash order is involved, so the same seed and arguments give byte-identical files (for one
OpenCV/libjpeg build).
"""
from __future__ import annotations

import json
import math
import os
import pickle
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from src.errors import ConfigError

DATASET_NAME = "refcoco"
SPLIT_BY = "unc"

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

NOUNS = {  # first word is the usual one; synonyms are drawn now and then
    "circle": ("circle", "circle", "circle", "disc"),
    "ring": ("ring", "ring", "ring", "donut"),
    "square": ("square", "square", "square", "box"),
    "triangle": ("triangle",),
    "star": ("star",),
    "cross": ("cross", "cross", "cross", "plus sign"),
}
GENERIC_NOUNS = ("shape", "object", "one")
POSITION_ADJECTIVES = {
    "left": ("left", "leftmost"), "right": ("right", "rightmost"), "top": ("top", "upper", "topmost"),
    "bottom": ("bottom", "lower", "bottommost"), "middle": ("middle", "center"),
}
POSITION_PHRASES = {
    "left": ("on the left", "to the left", "at the left"), "right": ("on the right", "to the right", "at the right"),
    "top": ("at the top", "on top", "up top"), "bottom": ("at the bottom", "on the bottom", "down below"),
    "middle": ("in the middle", "in the center"),
}
SIZE_ADJECTIVES = {"big": ("big", "large", "bigger", "biggest", "larger"),
                   "small": ("small", "smaller", "smallest", "little", "tiny")}
RELATION_PHRASES = {
    "left_of": ("left of", "to the left of", "on the left of"),
    "right_of": ("right of", "to the right of", "on the right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath", "underneath"),
    "next_to": ("next to", "closest to", "nearest to", "near"),
}
POSITIONS = ("left", "right", "top", "bottom", "middle")
SIZES = ("big", "small")
RELATIONS = ("left_of", "right_of", "above", "below", "next_to")

# Geometry of the language: thresholds that keep every emitted expression clearly true.
POSITION_MARGIN = 0.08  # superlative position: best beats the runner-up by this share of the image side
ABSOLUTE_BAND = 0.36  # a lone object is "on the left" if its centre lies in the left 36% of the image
SIZE_RATIO = 1.5  # "big": area at least 1.5x the runner-up's
RELATION_MARGIN = 0.06  # directional relation: centre offset of at least 6% of the side ...
RELATION_SLOPE = 0.8  # ... and mostly along that axis (|cross offset| < 0.8 * offset)
NEXT_TO_RATIO = 1.4  # "next to": closest candidate, the runner-up at least 1.4x farther ...
NEXT_TO_MAX_DISTANCE = 0.45  # ... and its centre within 45% of the long image side
MIN_VISIBLE = 0.7  # no object more than 30% hidden

SPLIT_SHARES = (("train", 0.7), ("val", 0.1), ("testA", 0.1), ("testB", 0.1))


# ----------------------------------------------------------------------------------------------
# Language: descriptions, their meaning on a scene, their wording
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Description:
    """The meaning of an expression: a filter (category, colour), then at most one of a superlative
    selection (("position", "left") / ("size", "big")) or a relation to a landmark object."""

    category: Optional[str] = None
    colour: Optional[str] = None
    select: Optional[Tuple[str, str]] = None
    relation: Optional[Tuple[str, "Description"]] = None


@dataclass(frozen=True)
class ObjectFacts:
    """What the language may talk about. `colour` is None in grayscale images."""

    category: str
    colour: Optional[str]
    cx: float  # centroid of the visible mask, pixels
    cy: float
    area: float  # visible pixels


def _superlative(candidates: List[int], values: Sequence[float], largest: bool, margin: float,
                 ratio: bool = False) -> List[int]:
    ordered = sorted(candidates, key=lambda i: values[i], reverse=largest)
    best, second = values[ordered[0]], values[ordered[1]]
    if ratio:
        clear = best >= SIZE_RATIO * second if largest else second >= SIZE_RATIO * best
    else:
        clear = abs(best - second) >= margin
    return [ordered[0]] if clear else []


def _position_select(candidates: List[int], objects: Sequence[ObjectFacts], where: str,
                     width: int, height: int) -> List[int]:
    xs = [o.cx for o in objects]
    ys = [o.cy for o in objects]
    if len(candidates) == 1:  # a lone candidate: the word must be true of the image itself
        o = objects[candidates[0]]
        fx, fy = o.cx / width, o.cy / height
        ok = {"left": fx < ABSOLUTE_BAND, "right": fx > 1 - ABSOLUTE_BAND, "top": fy < ABSOLUTE_BAND,
              "bottom": fy > 1 - ABSOLUTE_BAND,
              "middle": abs(fx - 0.5) < 0.12 and abs(fy - 0.5) < 0.12}[where]
        return list(candidates) if ok else []
    if where == "middle":  # the horizontal middle one of exactly three
        if len(candidates) != 3:
            return []
        ordered = sorted(candidates, key=lambda i: xs[i])
        gaps_ok = (xs[ordered[1]] - xs[ordered[0]] >= POSITION_MARGIN * width and
                   xs[ordered[2]] - xs[ordered[1]] >= POSITION_MARGIN * width)
        return [ordered[1]] if gaps_ok else []
    if where in ("left", "right"):
        return _superlative(candidates, xs, where == "right", POSITION_MARGIN * width)
    return _superlative(candidates, ys, where == "bottom", POSITION_MARGIN * height)


def _related(o: ObjectFacts, landmark: ObjectFacts, relation: str, width: int, height: int) -> bool:
    dx, dy = landmark.cx - o.cx, landmark.cy - o.cy  # > 0: o is left of / above the landmark
    if relation == "left_of":
        return dx >= RELATION_MARGIN * width and abs(dy) < RELATION_SLOPE * dx
    if relation == "right_of":
        return -dx >= RELATION_MARGIN * width and abs(dy) < RELATION_SLOPE * -dx
    if relation == "above":
        return dy >= RELATION_MARGIN * height and abs(dx) < RELATION_SLOPE * dy
    if relation == "below":
        return -dy >= RELATION_MARGIN * height and abs(dx) < RELATION_SLOPE * -dy
    raise ValueError(relation)


def evaluate(desc: Description, objects: Sequence[ObjectFacts], width: int, height: int) -> List[int]:
    """Indices of the objects the description is true of (an expression is emitted iff this is [target])."""
    candidates = [i for i, o in enumerate(objects)
                  if (desc.category is None or o.category == desc.category)
                  and (desc.colour is None or o.colour == desc.colour)]
    if not candidates:
        return []
    if desc.relation is not None:
        relation, landmark_desc = desc.relation
        landmarks = evaluate(landmark_desc, objects, width, height)
        if len(landmarks) != 1:
            return []
        lm = landmarks[0]
        candidates = [i for i in candidates if i != lm]
        if not candidates:
            return []
        if relation == "next_to":
            dist = [math.hypot(o.cx - objects[lm].cx, o.cy - objects[lm].cy) for o in objects]
            ordered = sorted(candidates, key=lambda i: dist[i])
            if dist[ordered[0]] > NEXT_TO_MAX_DISTANCE * max(width, height):
                return []
            if len(ordered) > 1 and dist[ordered[1]] < NEXT_TO_RATIO * dist[ordered[0]]:
                return []
            return [ordered[0]]
        return [i for i in candidates if _related(objects[i], objects[lm], relation, width, height)]
    if desc.select is not None:
        kind, value = desc.select
        if kind == "position":
            return _position_select(candidates, objects, value, width, height)
        if len(candidates) < 2:  # size words compare; a lone object is neither big nor small
            return []
        return _superlative(candidates, [o.area for o in objects], value == "big", 0.0, ratio=True)
    return candidates


def _noun_phrase(desc: Description, rng: np.random.Generator) -> str:
    noun = str(rng.choice(NOUNS[desc.category])) if desc.category else str(rng.choice(GENERIC_NOUNS))
    return f"{desc.colour} {noun}" if desc.colour else noun


def realise(desc: Description, rng: np.random.Generator) -> str:
    """Words for a description (lower case, no punctuation)."""
    det = "the " if rng.random() < 0.6 else ""
    noun_phrase = _noun_phrase(desc, rng)
    if desc.relation is not None:
        relation, landmark = desc.relation
        det2 = "the " if rng.random() < 0.75 else ""
        return f"{det}{noun_phrase} {rng.choice(RELATION_PHRASES[relation])} {det2}{_noun_phrase(landmark, rng)}"
    if desc.select is not None:
        kind, value = desc.select
        if kind == "size":
            return f"{det}{rng.choice(SIZE_ADJECTIVES[value])} {noun_phrase}"
        if rng.random() < 0.5:
            return f"{det}{rng.choice(POSITION_ADJECTIVES[value])} {noun_phrase}"
        return f"{det}{noun_phrase} {rng.choice(POSITION_PHRASES[value])}"
    if desc.category and desc.colour and rng.random() < 0.25:
        noun = rng.choice(NOUNS[desc.category])
        return f"{det}{noun} that is {desc.colour}" if rng.random() < 0.5 else f"{det}{desc.colour} colored {noun}"
    if desc.category is None and rng.random() < 0.5:
        return f"{det}{desc.colour} one"
    return f"{det}{noun_phrase}"


def candidate_descriptions(target: int, objects: Sequence[ObjectFacts], width: int,
                           height: int) -> Dict[str, List[Description]]:
    """Every description of our grammar that picks out `target` alone, grouped by kind."""
    t = objects[target]
    colours = [t.colour, None] if t.colour is not None else [None]
    found: Dict[str, List[Description]] = {"attribute": [], "position": [], "size": [], "relation": []}

    def keep(kind: str, desc: Description) -> None:
        if evaluate(desc, objects, width, height) == [target]:
            found[kind].append(desc)

    for category in (t.category, None):
        for colour in colours:
            if category is not None or colour is not None:
                keep("attribute", Description(category, colour))
            for where in POSITIONS:
                keep("position", Description(category, colour, select=("position", where)))
            for size in SIZES:
                keep("size", Description(category, colour, select=("size", size)))
            if category is None:
                continue  # relations name the target's category
            for lm, o in enumerate(objects):
                if lm == target:
                    continue
                landmark_descs = [Description(o.category, o.colour)] if o.colour is not None else []
                landmark_descs.append(Description(o.category, None))
                for landmark in landmark_descs:
                    if evaluate(landmark, objects, width, height) != [lm]:
                        continue
                    for relation in RELATIONS:
                        keep("relation", Description(category, colour, relation=(relation, landmark)))
    return found


def choose_expressions(found: Dict[str, List[Description]], rng: np.random.Generator,
                       count: int) -> List[Tuple[str, Description]]:
    """Up to `count` expressions of distinct wording, drawn round-robin over kinds so that one
    object's expressions use different cues; position and relation kinds come first more often."""
    kinds = [k for k in ("relation", "position", "size", "attribute") if found[k]]
    weights = np.array([{"relation": 3.0, "position": 3.0, "size": 2.0, "attribute": 1.5}[k] for k in kinds])
    if not kinds:
        return []
    order = list(rng.choice(len(kinds), size=len(kinds), replace=False, p=weights / weights.sum()))
    pools = {k: [found[k][j] for j in rng.permutation(len(found[k]))] for k in kinds}
    chosen: List[Tuple[str, Description]] = []
    texts: List[str] = []
    attempts = 0
    while len(chosen) < count and attempts < 4 * count + 8 and any(pools.values()):
        kind = kinds[order[attempts % len(order)]]
        attempts += 1
        if not pools[kind]:
            continue
        desc = pools[kind].pop()
        text = realise(desc, rng)
        if text not in texts:
            texts.append(text)
            chosen.append((text, desc))
    return chosen


def dress_sentence(text: str, rng: np.random.Generator) -> Tuple[str, str, List[str]]:
    """(raw, sent, tokens) like the refer files: `raw` as typed, `sent` lower-cased without punctuation."""
    raw = text
    if rng.random() < 0.3:
        raw = raw[0].upper() + raw[1:]
    if rng.random() < 0.2:
        raw += "."
    sent = text.lower()
    return raw, sent, sent.split()


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


@dataclass
class Scene:
    """One generated image, kept in memory for tests and inspection."""

    index: int
    image_id: int
    split: str
    width: int
    height: int
    gray: bool
    objects: List[ObjectFacts]
    # one entry per ref: (object index, ann_id, [(sentence text, its Description)])
    refs: List[Tuple[int, int, List[Tuple[str, Description]]]]


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
        x0, y0, x1, y1 = _box(s.drawn)
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


def _box(mask: np.ndarray) -> Tuple[int, int, int, int]:
    """(x0, y0, x1, y1), exclusive ends, of a non-empty mask."""
    cols = np.flatnonzero(mask.any(axis=0))
    rows = np.flatnonzero(mask.any(axis=1))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _mask_facts(mask: np.ndarray, category: str, colour: Optional[str]) -> ObjectFacts:
    x0, y0, x1, y1 = _box(mask)
    ys, xs = np.nonzero(mask[y0:y1, x0:x1])
    return ObjectFacts(category, colour, float(xs.mean() + x0), float(ys.mean() + y0), float(len(xs)))


def mask_facts(mask: np.ndarray, category: str, colour: Optional[str]) -> ObjectFacts:
    """The language-relevant facts of an object from its (visible) mask; tests rebuild scenes with it."""
    return _mask_facts(mask.astype(bool), category, colour)


def _image_split_plan(num_images: int, seed: int) -> List[str]:
    if num_images < 4:
        raise ConfigError(f"num_images (--images) must be >= 4 (one image per split at least), got {num_images}")
    counts = {name: max(1, int(math.floor(share * num_images))) for name, share in SPLIT_SHARES}
    counts["train"] = num_images - sum(v for k, v in counts.items() if k != "train")
    plan = [name for name, _ in SPLIT_SHARES for _ in range(counts[name])]
    order = np.random.default_rng([seed, 2**31 - 1]).permutation(num_images)
    return [plan[i] for i in order]


def _image_id(index: int) -> int:
    return 100_000 + 7 * index  # not contiguous, like COCO's ids


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


def generate_synthetic_refer(out_dir: str, num_images: int = 600, seed: int = 0,
                             gray_fraction: float = 0.15) -> List[Scene]:
    """Writes the dataset under `out_dir` (see the module docstring) and returns its scenes."""
    image_dir = os.path.join(out_dir, "images", "train2014")
    ann_dir = os.path.join(out_dir, DATASET_NAME)
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(ann_dir, exist_ok=True)
    splits = _image_split_plan(num_images, seed)
    noise_tile = make_noise_tile(seed)

    images, annotations, refs, scenes = [], [], [], []
    next_ann_id, next_ref_id, next_sent_id = 1, 0, 0
    for index in range(num_images):
        split = splits[index]
        image, shapes, gray, quality, rng = generate_scene(index, split, seed, noise_tile, gray_fraction)
        height, width = image.shape[:2]
        image_id = _image_id(index)
        file_name = f"COCO_train2014_{image_id:012d}.jpg"
        if gray:
            pixels = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)  # (H, W): a single-channel JPEG
        else:
            pixels = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        ok, encoded = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise RuntimeError(f"JPEG encoding failed for image {index}")
        with open(os.path.join(image_dir, file_name), "wb") as f:
            f.write(encoded.tobytes())
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})

        facts = [_mask_facts(s.visible, s.category, None if gray else s.colour) for s in shapes]
        ann_ids = []
        for s in shapes:
            occluded = bool((s.drawn & ~s.visible).any())
            if s.holes or occluded:
                segmentation = uncompressed_rle(s.visible) if rng.random() < 0.3 else compressed_rle(s.visible)
            else:
                segmentation = [p.ravel().tolist() for p in s.polys]
            x0, y0, x1, y1 = _box(s.visible)
            annotations.append({
                "id": next_ann_id, "image_id": image_id, "category_id": CATEGORY_ID[s.category],
                "segmentation": segmentation, "area": float(s.visible.sum()),
                "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                "iscrowd": 0, "color": s.colour,  # "color": synthetic-only extra field, readers ignore it
            })
            ann_ids.append(next_ann_id)
            next_ann_id += 1

        family = SPLIT_FAMILY.get(split)
        scene_refs = []
        for k, s in enumerate(shapes):
            if family is not None and CATEGORY_FAMILY[s.category] != family:
                continue  # testA/testB refer to their family only
            found = candidate_descriptions(k, facts, width, height)
            chosen = choose_expressions(found, rng, count=int(rng.choice([2, 3], p=[0.4, 0.6])))
            if not chosen:
                continue
            sentences, sent_ids = [], []
            for text, _desc in chosen:
                raw, sent, tokens = dress_sentence(text, rng)
                sentences.append({"tokens": tokens, "raw": raw, "sent_id": next_sent_id, "sent": sent})
                sent_ids.append(next_sent_id)
                next_sent_id += 1
            refs.append({
                "sent_ids": sent_ids, "file_name": f"COCO_train2014_{image_id:012d}_{ann_ids[k]}.jpg",
                "ann_id": ann_ids[k], "ref_id": next_ref_id, "image_id": image_id, "split": split,
                "sentences": sentences, "category_id": CATEGORY_ID[s.category],
            })
            next_ref_id += 1
            scene_refs.append((k, ann_ids[k], chosen))
        scenes.append(Scene(index, image_id, split, width, height, gray, facts, scene_refs))

    instances = {
        "info": {"description": f"synthetic refer-format dataset, seed {seed}, {num_images} images"},
        "images": images, "annotations": annotations,
        "categories": [{"id": cid, "name": name, "supercategory": fam} for cid, name, fam in CATEGORIES],
    }
    with open(os.path.join(ann_dir, "instances.json"), "w", encoding="utf-8") as f:
        json.dump(instances, f, separators=(",", ":"))
    with open(os.path.join(ann_dir, f"refs({SPLIT_BY}).p"), "wb") as f:
        pickle.dump(refs, f, protocol=2)
    return scenes
