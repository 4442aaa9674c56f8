"""A synthetic referring-segmentation dataset written in the exact refer format of RefCOCO.

Why: the real datasets (COCO images + refer annotations) are large downloads; tests, the quick
start and CPU smoke runs need a small dataset that exercises every code path of the real format and
that a small model can actually learn. `generate_synthetic_refer(out_dir, num_images, seed)` writes::

    <out>/images/train2014/COCO_train2014_<12-digit id>.jpg
    <out>/refcoco/instances.json
    <out>/refcoco/refs(unc).p          (pickle protocol 2, like the Python-2 originals)

This module writes the refer files (`generate_synthetic_refer`: the splits, the ids, the JPEGs, the
annotations); the pictures are drawn by src/data/synthetic_scenes.py and the expressions worded by
src/data/synthetic_language.py.

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
from typing import List, Optional, Tuple

import cv2
import numpy as np

from src.data.synthetic_language import (Description, ObjectFacts, candidate_descriptions, choose_expressions,
                                         dress_sentence)
from src.data.synthetic_scenes import (CATEGORIES, CATEGORY_FAMILY, CATEGORY_ID, SPLIT_FAMILY, compressed_rle,
                                       generate_scene, make_noise_tile, mask_box, uncompressed_rle)
from src.errors import ConfigError

DATASET_NAME = "refcoco"
SPLIT_BY = "unc"

SPLIT_SHARES = (("train", 0.7), ("val", 0.1), ("testA", 0.1), ("testB", 0.1))


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


def _mask_facts(mask: np.ndarray, category: str, colour: Optional[str]) -> ObjectFacts:
    x0, y0, x1, y1 = mask_box(mask)
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
            x0, y0, x1, y1 = mask_box(s.visible)
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
