"""Reader of the refer format used by RefCOCO, RefCOCO+ and RefCOCOg (and by our synthetic data).

On-disk layout (docs/method.md, "Data: the refer format")::

    <data_root>/images/train2014/COCO_train2014_<12-digit image id>.jpg
    <data_root>/<dataset>/instances.json          COCO-style images / annotations / categories
    <data_root>/<dataset>/refs(<split_by>).p      pickled list of refs

A *ref* is one referred object (one COCO annotation) with one or more sentences. A *sample* is one
(ref, sentence) pair: evaluation runs every sample, training draws one sentence per ref and epoch
(see `src/data/dataset.py`).

Design decisions:

* Masks are the **union** of all polygons of an annotation (or its RLE), decoded with pycocotools.
  LAVT keeps only pixels covered by exactly one polygon, which turns overlapping polygons into
  background; we do not reproduce that.
* Images are decoded with OpenCV (`cv2.IMREAD_UNCHANGED`), a declared runtime dependency, rather
  than Pillow (only present as a dependency of matplotlib). IMREAD_UNCHANGED ignores the EXIF
  orientation tag, as Pillow's `Image.open` does and as COCO's annotations assume (they are drawn
  on the stored pixel grid); OpenCV's default IMREAD_COLOR would rotate a few COCO images and
  misalign their masks. Every mode is converted to RGB uint8 here: grayscale (COCO has grayscale
  JPEGs), gray+alpha, BGRA (alpha dropped, as PIL's ``convert("RGB")`` does) and 16-bit (scaled by
  1/257, i.e. 65535 -> 255; Pillow would clip instead).
* The sentence fed to the tokenizer is the ref's ``raw`` text (as LAVT does), falling back to
  ``sent`` when ``raw`` is missing or empty.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import pickle
from collections import Counter
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from src.errors import ConfigError, DataError

from .base import DATASETS

logger = logging.getLogger(__name__)

# dataset -> split_by -> splits. docs/method.md lists "google: train, val"; that is RefCOCOg's google
# split. RefCOCO's google split file also holds a "test" split (TFDS: refcoco_google train/val/test),
# so it is accepted here; a split that turns out to hold no refs raises a DataError listing the
# splits the file does hold.
VALID_SPLITS: Dict[str, Dict[str, Tuple[str, ...]]] = {
    "refcoco": {"unc": ("train", "val", "testA", "testB"), "google": ("train", "val", "test")},
    "refcoco+": {"unc": ("train", "val", "testA", "testB")},
    "refcocog": {"umd": ("train", "val", "test"), "google": ("train", "val")},
}

IMAGE_SUBDIR = os.path.join("images", "train2014")

# What loading one sample can raise when its files are bad (missing or corrupt image, a size that
# differs from instances.json, an empty or malformed segmentation); the pipeline skips or reports these.
# ValueError, not only our DataError: pycocotools and numpy raise it on a malformed field of the file.
SAMPLE_ERRORS = (OSError, ValueError, cv2.error)


@dataclass(frozen=True)
class Sentence:
    """One referring expression of a ref."""

    sent_id: int
    raw: str  # as typed by the annotator
    sent: str  # lower-cased, punctuation removed (by the dataset authors)

    @property
    def text(self) -> str:
        """What the tokenizer reads: `raw` (as LAVT), or `sent` when `raw` is empty."""
        return self.raw or self.sent


@dataclass(frozen=True)
class Ref:
    """One referred object: a COCO annotation and its sentences."""

    ref_id: int
    ann_id: int
    image_id: int
    category_id: int
    split: str
    sentences: Tuple[Sentence, ...]


@dataclass(frozen=True)
class ReferSample:
    """One (ref, sentence) pair, the unit of evaluation."""

    index: int  # position in `ReferDataset.samples()`
    ref_index: int  # position of the ref in `ReferDataset.refs`
    ref_id: int
    ann_id: int
    image_id: int
    sent_id: int
    text: str


def _load_pickle(path: str):
    """Loads a pickle written by Python 2 or 3.

    The official refs files were pickled by Python 2: their byte strings fail to decode as ASCII
    (Python 3's default) when a sentence holds a non-ASCII byte; latin-1 maps every byte and is
    the usual fallback.
    """
    with open(path, "rb") as f:
        payload = f.read()
    try:
        return pickle.loads(payload)
    except UnicodeDecodeError:
        return pickle.loads(payload, encoding="latin1")


def _require(record: dict, key: str, where: str):
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a dict, got {type(record).__name__}")
    if key not in record:
        raise DataError(f"{where}: missing field '{key}'")
    return record[key]


def _to_rgb_uint8(img: np.ndarray, path: str) -> np.ndarray:
    """Converts an OpenCV IMREAD_UNCHANGED array (any depth and channel count, BGR order) to RGB uint8."""
    if img.dtype == np.uint16:
        img = ((img.astype(np.uint32) + 128) // 257).astype(np.uint8)  # round(x / 257): 65535 -> 255
    elif img.dtype != np.uint8:
        raise DataError(f"{path}: unsupported pixel type {img.dtype} (expected 8- or 16-bit)")
    if img.ndim == 2:
        return np.ascontiguousarray(np.repeat(img[:, :, None], 3, axis=2))
    channels = img.shape[2]
    if channels == 1 or channels == 2:  # gray, gray + alpha
        return np.ascontiguousarray(np.repeat(img[:, :, :1], 3, axis=2))
    if channels == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if channels == 4:  # alpha dropped, not composited (as PIL's convert("RGB"))
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    raise DataError(f"{path}: unsupported channel count {channels}")


def read_image_rgb(path: str) -> np.ndarray:
    """Decodes an image file to an (H, W, 3) uint8 RGB array, whatever its mode; EXIF orientation ignored."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file not found: {path}")
    data = np.fromfile(path, dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if img is None:
        raise DataError(f"cannot decode image file (corrupt or unsupported format): {path}")
    return _to_rgb_uint8(img, path)


def decode_segmentation(segmentation, height: int, width: int, where: str = "segmentation") -> np.ndarray:
    """Decodes a COCO segmentation (polygon list, uncompressed or compressed RLE) to an (H, W) uint8 {0, 1} mask.

    Polygons are unioned. Polygons with fewer than 3 points enclose no area and are skipped; they
    must be, because pycocotools' `frPyObjects` reads a list whose first item has 4 numbers as
    bounding boxes, not polygons.
    """
    if isinstance(segmentation, list):
        polygons = [list(map(float, p)) for p in segmentation if len(p) >= 6 and len(p) % 2 == 0]
        if len(polygons) != len(segmentation):
            logger.debug("%s: skipped %d degenerate polygon(s)", where, len(segmentation) - len(polygons))
        if not polygons:
            return np.zeros((height, width), np.uint8)
        rles = mask_utils.frPyObjects(polygons, height, width)
        rle = mask_utils.merge(rles)  # union of the polygons
    elif isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        size = [int(s) for s in segmentation["size"]]
        if size != [height, width]:
            raise DataError(f"{where}: RLE size {size} differs from the image size {[height, width]}")
        if isinstance(segmentation["counts"], list):  # uncompressed RLE
            rle = mask_utils.frPyObjects(segmentation, height, width)
        else:  # compressed RLE; pycocotools wants bytes
            counts = segmentation["counts"]
            rle = {"size": size, "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    else:
        raise DataError(f"{where}: unsupported segmentation of type {type(segmentation).__name__}")
    mask = mask_utils.decode(rle)
    if mask.ndim == 3:  # decode() of a list of RLEs; never reached after merge(), kept for safety
        mask = mask.max(axis=2)
    return np.ascontiguousarray(mask.astype(np.uint8))


# One reader for the three refer-format datasets: the name chosen in data.dataset is passed on as `dataset`.
@DATASETS.register("refcocog")
@DATASETS.register("refcoco+")
@DATASETS.register("refcoco")
class ReferDataset:
    """One split of a refer-format dataset: refs, samples, images and masks (a `src.data.base.ReferringDataset`).

    Args:
        data_root: directory holding `images/train2014/` and `<dataset>/`.
        dataset: "refcoco" | "refcoco+" | "refcocog".
        split_by: "unc" | "umd" | "google" (see `VALID_SPLITS` for the valid pairs).
        split: "train" | "val" | "test" | "testA" | "testB".
    """

    def __init__(self, data_root: str, dataset: str = "refcoco", split_by: str = "unc", split: str = "train"):
        if dataset not in VALID_SPLITS:
            raise ConfigError(f"unknown dataset '{dataset}' (data.dataset); valid: {sorted(VALID_SPLITS)}")
        if split_by not in VALID_SPLITS[dataset]:
            raise ConfigError(f"unknown split_by '{split_by}' (data.split_by) for {dataset}; "
                              f"valid: {sorted(VALID_SPLITS[dataset])}")
        if split not in VALID_SPLITS[dataset][split_by]:
            raise ConfigError(f"unknown split '{split}' for {dataset}({split_by}); "
                              f"valid: {list(VALID_SPLITS[dataset][split_by])}")
        self.data_root = data_root
        self.dataset = dataset
        self.split_by = split_by
        self.split = split
        self.image_dir = os.path.join(data_root, IMAGE_SUBDIR)
        self.refs_path = os.path.join(data_root, dataset, f"refs({split_by}).p")
        self.instances_path = os.path.join(data_root, dataset, "instances.json")
        for path in (self.refs_path, self.instances_path):
            if not os.path.isfile(path):
                raise FileNotFoundError(
                    f"{path} not found; expected the refer layout <data_root>/{dataset}/"
                    f"{{instances.json, refs({split_by}).p}} under data_root={data_root}")

        all_refs = self._read_refs()
        self._read_instances()
        self.refs: List[Ref] = [self._parse_ref(r, i) for i, r in enumerate(all_refs)
                                if r["split"] == split]
        if not self.refs:
            present = sorted({str(r["split"]) for r in all_refs})
            raise DataError(f"{self.refs_path}: no refs with split '{split}'; the file holds splits {present}")

        self._index_samples()
        self._log_counts(all_refs)

    @classmethod
    def from_config(cls, cfg, split: str) -> "ReferDataset":
        """Split `split` of cfg.data.dataset under cfg.data.data_root, by cfg.data.split_by (for `build_dataset`)."""
        return cls(cfg.data.data_root, cfg.data.dataset, cfg.data.split_by, split)

    # ------------------------------------------------------------------------------------------
    # Loading and validation
    # ------------------------------------------------------------------------------------------
    def _read_refs(self) -> list:
        try:
            refs = _load_pickle(self.refs_path)
        except Exception as exc:  # a truncated or foreign file: say which one
            raise DataError(f"{self.refs_path}: cannot unpickle refs ({exc})") from exc
        if not isinstance(refs, list):
            raise DataError(f"{self.refs_path}: expected a pickled list of refs, got {type(refs).__name__}")
        for position, ref in enumerate(refs):
            if not isinstance(ref, dict):
                raise DataError(f"{self.refs_path}: ref #{position} is a {type(ref).__name__}, expected a dict")
            _require(ref, "split", f"{self.refs_path}: ref #{position}")
        return refs

    def _read_instances(self) -> None:
        path = self.instances_path
        try:
            with open(path, "r", encoding="utf-8") as f:
                instances = json.load(f)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: invalid JSON ({exc})") from exc
        if not isinstance(instances, dict):
            raise DataError(f"{path}: expected a JSON object, got {type(instances).__name__}")
        for key in ("images", "annotations"):
            if not isinstance(instances.get(key), list):
                raise DataError(f"{path}: missing or non-list field '{key}'")
        self.images: Dict[int, dict] = {}
        for k, image in enumerate(instances["images"]):
            where = f"{path}: images[{k}]"
            image_id = int(_require(image, "id", where))
            self.images[image_id] = {
                "id": image_id,
                "height": int(_require(image, "height", where)),
                "width": int(_require(image, "width", where)),
                "file_name": image.get("file_name") or f"COCO_train2014_{image_id:012d}.jpg",
            }
        self.annotations: Dict[int, dict] = {}
        self._annotations_by_image: Dict[int, List[int]] = {}
        for k, ann in enumerate(instances["annotations"]):
            where = f"{path}: annotations[{k}]"
            ann_id = int(_require(ann, "id", where))
            _require(ann, "segmentation", where)
            ann = dict(ann)
            ann["image_id"] = int(_require(ann, "image_id", where))
            if ann_id not in self.annotations:  # a repeated id replaces the entry, as in the dict
                self._annotations_by_image.setdefault(ann["image_id"], []).append(ann_id)
            self.annotations[ann_id] = ann
        self.categories: Dict[int, str] = {int(c["id"]): str(c.get("name", c["id"]))
                                           for c in instances.get("categories", []) if isinstance(c, dict)}

    def _parse_ref(self, raw: dict, position: int) -> Ref:
        where = f"{self.refs_path}: ref #{position}"
        ref_id = int(_require(raw, "ref_id", where))
        where = f"{self.refs_path}: ref_id {ref_id}"
        ann_id = int(_require(raw, "ann_id", where))
        image_id = int(_require(raw, "image_id", where))
        if ann_id not in self.annotations:
            raise DataError(f"{where}: ann_id {ann_id} is absent from {self.instances_path} (annotations)")
        if image_id not in self.images:
            raise DataError(f"{where}: image_id {image_id} is absent from {self.instances_path} (images)")
        ann_image = self.annotations[ann_id]["image_id"]
        if ann_image != image_id:
            raise DataError(f"{where}: image_id {image_id} differs from annotation {ann_id}'s image_id {ann_image}")
        sentences_raw = _require(raw, "sentences", where)
        if not isinstance(sentences_raw, (list, tuple)) or not sentences_raw:
            raise DataError(f"{where}: field 'sentences' must be a non-empty list")
        sent_ids = raw.get("sent_ids") or []
        sentences = []
        for k, s in enumerate(sentences_raw):
            s_where = f"{where}: sentences[{k}]"
            if not isinstance(s, dict):
                raise DataError(f"{s_where}: expected a dict, got {type(s).__name__}")
            if "sent_id" in s:
                sent_id = int(s["sent_id"])
            elif k < len(sent_ids):
                sent_id = int(sent_ids[k])
            else:
                raise DataError(f"{s_where}: missing field 'sent_id' (and no sent_ids[{k}])")
            raw_text, sent_text = s.get("raw") or "", s.get("sent") or ""
            if not isinstance(raw_text, str) or not isinstance(sent_text, str):
                raise DataError(f"{s_where}: fields 'raw' and 'sent' must be strings")
            if not (raw_text.strip() or sent_text.strip()):
                raise DataError(f"{s_where}: missing or empty fields 'raw' and 'sent'")
            sentences.append(Sentence(sent_id, raw_text, sent_text))
        category_id = int(raw.get("category_id", self.annotations[ann_id].get("category_id", -1)))
        return Ref(ref_id, ann_id, image_id, category_id, str(raw["split"]), tuple(sentences))

    def _log_counts(self, all_refs: list) -> None:
        per_split_refs: Counter = Counter()
        per_split_sents: Counter = Counter()
        per_split_images: Dict[str, set] = {}
        for r in all_refs:
            name = str(r["split"])
            per_split_refs[name] += 1
            per_split_sents[name] += len(r.get("sentences") or [])
            per_split_images.setdefault(name, set()).add(r.get("image_id"))
        for name in sorted(per_split_refs):
            logger.info("%s(%s) %s: %d refs, %d sentences, %d images%s", self.dataset, self.split_by, name,
                        per_split_refs[name], per_split_sents[name], len(per_split_images[name]),
                        "  <- loaded" if name == self.split else "")

    # ------------------------------------------------------------------------------------------
    # Public interface
    # ------------------------------------------------------------------------------------------
    def _index_samples(self) -> None:
        """(Re)builds the flat (ref, sentence) sample list and each ref's range in it."""
        self._samples: List[ReferSample] = []
        self._ref_sample_ranges: List[Tuple[int, int]] = []
        for ref_index, ref in enumerate(self.refs):
            start = len(self._samples)
            for sentence in ref.sentences:
                self._samples.append(ReferSample(len(self._samples), ref_index, ref.ref_id, ref.ann_id,
                                                 ref.image_id, sentence.sent_id, sentence.text))
            self._ref_sample_ranges.append((start, len(self._samples)))

    def with_swapped_sentences(self, seed: int = 0) -> "ReferDataset":
        """The grounding control: a copy in which every sentence is replaced by a sentence of a
        *different* object in the same image (drawn with `seed`). Refs alone in their image have no
        such sentence and are left out. A model that reads the sentence should score far lower on
        this copy than on the original; one that ignores it scores about the same."""
        rng = np.random.default_rng(seed)
        by_image: Dict[int, List[Ref]] = {}
        for ref in self.refs:
            by_image.setdefault(ref.image_id, []).append(ref)
        swapped = []
        for ref in self.refs:
            others = [s for r in by_image[ref.image_id] if r.ref_id != ref.ref_id for s in r.sentences]
            if not others:
                continue
            picks = rng.integers(0, len(others), len(ref.sentences))
            sentences = tuple(Sentence(own.sent_id, others[k].raw, others[k].sent)
                              for own, k in zip(ref.sentences, picks))
            swapped.append(dataclasses.replace(ref, sentences=sentences))
        control = copy.copy(self)
        control.refs = swapped
        control._index_samples()
        return control

    def __len__(self) -> int:
        """Number of refs (referred objects) in the split."""
        return len(self.refs)

    def samples(self) -> List[ReferSample]:
        """Every (ref, sentence) pair of the split, refs in file order, sentences in ref order."""
        return self._samples

    def sample(self, index: int) -> ReferSample:
        return self._samples[index]

    def ref_sample_range(self, ref_index: int) -> Tuple[int, int]:
        """[start, stop) of ref `ref_index`'s sentences in `samples()`."""
        return self._ref_sample_ranges[ref_index]

    @property
    def ref_sample_ranges(self) -> Sequence[Tuple[int, int]]:
        return self._ref_sample_ranges

    @property
    def image_ids(self) -> List[int]:
        """Images of the split (sorted ids)."""
        return sorted({r.image_id for r in self.refs})

    def image_size(self, image_id: int) -> Tuple[int, int]:
        """(height, width) recorded in instances.json."""
        info = self.images[image_id]
        return info["height"], info["width"]

    def image_path(self, image_id: int) -> str:
        return os.path.join(self.image_dir, self.images[image_id]["file_name"])

    def load_image(self, image_id: int) -> np.ndarray:
        """(H, W, 3) uint8 RGB; raises if the decoded size differs from instances.json (masks would not align)."""
        path = self.image_path(image_id)
        img = read_image_rgb(path)
        expected = self.image_size(image_id)
        if img.shape[:2] != expected:
            raise DataError(f"{path}: decoded size {img.shape[:2]} differs from instances.json "
                            f"height/width {expected} of image_id {image_id}")
        return img

    def load_mask(self, ann_id: int) -> np.ndarray:
        """(H, W) uint8 {0, 1}: the union of the annotation's polygons, or its RLE; a DataError naming
        the annotation when it is empty."""
        ann = self.annotations[ann_id]
        height, width = self.image_size(ann["image_id"])
        where = f"{self.instances_path}: annotation {ann_id} segmentation"
        mask = decode_segmentation(ann["segmentation"], height, width, where=where)
        if not mask.any():  # a referred object without pixels cannot be learned or scored
            raise DataError(f"{where}: empty (no polygon with 3 or more points, or an RLE without foreground)")
        return mask

    def image_annotations(self, image_id: int) -> List[int]:
        """Ids of every annotation of the image in instances.json (referred or not), in file order."""
        return self._annotations_by_image.get(image_id, [])

    def category_name(self, category_id: int) -> Optional[str]:
        return self.categories.get(category_id)

    def __repr__(self) -> str:
        return (f"ReferDataset({self.dataset}({self.split_by}) {self.split}: {len(self.refs)} refs, "
                f"{len(self._samples)} sentences, {len(self.image_ids)} images)")
