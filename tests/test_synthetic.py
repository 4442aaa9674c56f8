"""The synthetic refer-format generator: determinism, format validity, language properties."""
import json
import os
import pickle
import re
import subprocess
import sys
from collections import Counter

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from src.data import synthetic as syn
from src.data import synthetic_language as syn_language
from src.data import synthetic_scenes as syn_scenes

NUM_IMAGES = 24
SEED = 5
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def all_files(root):
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synthetic"))
    scenes = syn.generate_synthetic_refer(root, NUM_IMAGES, SEED)
    with open(os.path.join(root, "refcoco", "instances.json")) as f:
        instances = json.load(f)
    with open(os.path.join(root, "refcoco", "refs(unc).p"), "rb") as f:
        refs = pickle.load(f)
    return root, scenes, instances, refs


def decode(segmentation, h, w):
    if isinstance(segmentation, list):
        return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(segmentation, h, w)))
    if isinstance(segmentation["counts"], list):
        return mask_utils.decode(mask_utils.frPyObjects(segmentation, h, w))
    return mask_utils.decode({"size": segmentation["size"], "counts": segmentation["counts"].encode()})


def test_same_seed_identical_bytes_different_seed_differs(generated, tmp_path):
    root, _, _, _ = generated
    reference = all_files(root)
    # Second run through the CLI in a fresh interpreter with another hash seed: no hash-order dependence.
    again = tmp_path / "again"
    env = dict(os.environ, PYTHONHASHSEED="12345")
    subprocess.run([sys.executable, os.path.join(ROOT, "tools", "make_synthetic_refer.py"), "--out", str(again),
                    "--images", str(NUM_IMAGES), "--seed", str(SEED)], check=True, env=env, capture_output=True)
    assert all_files(str(again)) == reference
    other = tmp_path / "other"
    syn.generate_synthetic_refer(str(other), NUM_IMAGES, SEED + 1)
    other_files = all_files(str(other))
    assert other_files.keys() == reference.keys()  # same names (ids depend on the index only) ...
    differing = [k for k in reference if other_files[k] != reference[k]]
    assert len(differing) == len(reference)  # ... but every image and both annotation files differ


def test_layout_and_instances_fields(generated):
    root, scenes, instances, _ = generated
    assert sorted(os.listdir(os.path.join(root, "refcoco"))) == ["instances.json", "refs(unc).p"]
    image_dir = os.path.join(root, "images", "train2014")
    assert len(instances["images"]) == NUM_IMAGES == len(os.listdir(image_dir))
    sizes = set()
    for image in instances["images"]:
        assert image["file_name"] == f"COCO_train2014_{image['id']:012d}.jpg"
        raw = cv2.imread(os.path.join(image_dir, image["file_name"]), cv2.IMREAD_UNCHANGED)
        assert raw.shape[:2] == (image["height"], image["width"])
        assert 160 <= image["height"] <= 640 and 160 <= image["width"] <= 640
        sizes.add((image["height"], image["width"]))
    assert len(sizes) > NUM_IMAGES // 2  # varied sizes and aspect ratios
    names = {c["id"]: c["name"] for c in instances["categories"]}
    assert sorted(names.values()) == sorted(n for _, n, _ in syn_scenes.CATEGORIES)
    image_ids = {im["id"] for im in instances["images"]}
    assert len({a["id"] for a in instances["annotations"]}) == len(instances["annotations"])
    for ann in instances["annotations"]:
        assert ann["image_id"] in image_ids and ann["category_id"] in names and ann["iscrowd"] == 0
        assert set(ann) >= {"id", "image_id", "category_id", "segmentation", "area", "bbox", "iscrowd"}


def test_every_annotation_decodes_to_its_area_and_bbox(generated):
    _, scenes, instances, _ = generated
    sizes = {im["id"]: (im["height"], im["width"]) for im in instances["images"]}
    kinds = Counter()
    for ann in instances["annotations"]:
        h, w = sizes[ann["image_id"]]
        seg = ann["segmentation"]
        kinds["polygons" if isinstance(seg, list) else "rle-list" if isinstance(seg["counts"], list) else "rle"] += 1
        mask = decode(seg, h, w)
        assert mask.shape == (h, w)
        # masks are drawn from the stored geometry: decoding reproduces the visible pixel count exactly
        assert mask.sum() == ann["area"]
        ys, xs = np.nonzero(mask)
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        extent = max(ann["bbox"][2], ann["bbox"][3]) / min(h, w)
        assert 0.08 < extent < 0.45  # reasonably large objects (drawn at 12-40% of the short side)
    assert kinds["polygons"] > 0 and kinds["rle"] > 0 and kinds["rle-list"] > 0, kinds
    # a cross stores two overlapping bars: their union is the mask (the overlap is not lost)
    crosses = [a for a in instances["annotations"]
               if a["category_id"] == syn_scenes.CATEGORY_ID["cross"] and isinstance(a["segmentation"], list)]
    assert crosses and all(len(a["segmentation"]) == 2 for a in crosses)


def test_refs_fields_and_splits(generated):
    _, scenes, instances, refs = generated
    anns = {a["id"]: a for a in instances["annotations"]}
    assert isinstance(refs, list) and refs
    assert Counter(s.split for s in scenes) == {"train": 18, "val": 2, "testA": 2, "testB": 2}
    sent_ids = []
    for ref in refs:
        assert set(ref) == {"ref_id", "ann_id", "image_id", "category_id", "split", "sent_ids", "sentences",
                            "file_name"}
        ann = anns[ref["ann_id"]]  # the referred object exists
        assert ann["image_id"] == ref["image_id"] and ann["category_id"] == ref["category_id"]
        assert ref["file_name"] == f"COCO_train2014_{ref['image_id']:012d}_{ref['ann_id']}.jpg"
        assert ref["split"] in ("train", "val", "testA", "testB")
        assert 1 <= len(ref["sentences"]) <= 3
        assert ref["sent_ids"] == [s["sent_id"] for s in ref["sentences"]]
        for s in ref["sentences"]:
            assert set(s) == {"sent_id", "raw", "sent", "tokens"}
            assert s["sent"] == s["raw"].lower().rstrip(".") and s["tokens"] == s["sent"].split()
            sent_ids.append(s["sent_id"])
        family = syn_scenes.SPLIT_FAMILY.get(ref["split"])
        if family:  # testA: round shapes only, testB: angular only
            name = [n for i, n, _ in syn_scenes.CATEGORIES if i == ref["category_id"]][0]
            assert syn_scenes.CATEGORY_FAMILY[name] == family
    assert len(set(sent_ids)) == len(sent_ids)
    assert {r["split"] for r in refs} == {"train", "val", "testA", "testB"}


def test_expressions_identify_their_target_on_the_written_data(generated):
    """Rebuild every scene from the files alone and re-check each expression's meaning."""
    root, scenes, instances, refs = generated
    names = {c["id"]: c["name"] for c in instances["categories"]}
    by_image = {}
    for ann in instances["annotations"]:  # annotation order = drawing order
        by_image.setdefault(ann["image_id"], []).append(ann)
    image_info = {im["id"]: im for im in instances["images"]}
    refs_by_ann = {r["ann_id"]: r for r in refs}
    checked = 0
    for scene in scenes:
        info = image_info[scene.image_id]
        raw = cv2.imread(os.path.join(root, "images", "train2014", info["file_name"]), cv2.IMREAD_UNCHANGED)
        gray = raw.ndim == 2
        assert gray == scene.gray
        anns = by_image[scene.image_id]
        facts = [syn.mask_facts(decode(a["segmentation"], info["height"], info["width"]), names[a["category_id"]],
                                None if gray else a["color"]) for a in anns]
        ann_index = {a["id"]: k for k, a in enumerate(anns)}
        texts_in_image = []
        for target, ann_id, chosen in scene.refs:
            assert ann_index[ann_id] == target
            ref = refs_by_ann[ann_id]
            assert [s["sent"] for s in ref["sentences"]] == [t for t, _ in chosen]
            for text, desc in chosen:
                assert syn_language.evaluate(desc, facts, info["width"], info["height"]) == [target], text
                checked += 1
                words = set(text.split())
                if gray:
                    assert not words & set(syn_scenes.COLOUR_WORDS), text
                texts_in_image.append(text)
        # an expression used for two objects of one image could not be unique
        assert len(texts_in_image) == len(set(texts_in_image))
    assert checked > 3 * NUM_IMAGES
    assert any(s.gray for s in scenes)


def test_scenes_need_language(generated):
    _, scenes, _, _ = generated
    repeated = [s for s in scenes if max(Counter(o.category for o in s.objects).values()) >= 2]
    assert len(repeated) >= 0.6 * len(scenes)
    kinds = Counter()
    for s in scenes:
        for _, _, chosen in s.refs:
            for _, d in chosen:
                kinds["relation" if d.relation else d.select[0] if d.select else "attribute"] += 1
    assert set(kinds) == {"relation", "position", "size", "attribute"}
    assert kinds["relation"] + kinds["position"] + kinds["size"] > kinds["attribute"]


def test_evaluate_semantics_by_hand():
    F = syn_language.ObjectFacts
    objs = [F("circle", "red", 20, 50, 400), F("circle", "red", 80, 50, 900), F("square", "blue", 50, 90, 500)]
    W = H = 100
    D = syn_language.Description
    assert syn_language.evaluate(D("circle"), objs, W, H) == [0, 1]
    assert syn_language.evaluate(D("circle", select=("position", "left")), objs, W, H) == [0]
    assert syn_language.evaluate(D("circle", select=("size", "big")), objs, W, H) == [1]  # 900 >= 1.5 * 400
    assert syn_language.evaluate(D(None, "blue"), objs, W, H) == [2]
    assert syn_language.evaluate(D("square", select=("position", "bottom")), objs, W, H) == [2]  # lone: bottom band
    assert syn_language.evaluate(D("square", select=("position", "top")), objs, W, H) == []
    above = D("circle", relation=("above", D("square")))
    assert syn_language.evaluate(above, objs, W, H) == [0, 1]  # both are above it: never emitted for either
    assert syn_language.evaluate(D("circle", "red", relation=("right_of", D("circle", select=("position", "left")))),
                        objs, W, H) == [1]
    beside = [F("circle", "red", 10, 80, 400), F("circle", "red", 45, 40, 900), F("square", "blue", 50, 90, 500)]
    assert syn_language.evaluate(above, beside, W, H) == [1]  # circle 0 is more beside than above the square
    left = D("circle", relation=("left_of", D("circle", "red")))
    assert syn_language.evaluate(left, objs, W, H) == []  # the landmark is ambiguous
    close = [F("star", None, 10, 10, 100), F("star", None, 30, 10, 100), F("ring", None, 50, 10, 100)]
    assert syn_language.evaluate(D("star", relation=("next_to", D("ring"))), close, W, H) == [1]
    text = syn_language.realise(D("circle", "red", select=("position", "left")), np.random.default_rng(0))
    assert "red" in text and ("circle" in text or "disc" in text)
    assert re.search(r"left", text)


@pytest.mark.parametrize("sentence,kind", [
    ("the red circle to the left of the blue square", "relation"), ("Star next to the ring.", "relation"),
    ("the leftmost square", "position"), ("circle at the top", "position"), ("the big triangle", "size"),
    ("the square that is green", "colour"), ("the ring", "category"), ("the red one", "colour only"),
])
def test_kinds_of_handwritten_expressions(sentence, kind):
    """src/data/expression_kinds.py reads the kind of a synthetic expression back from its words."""
    from src.data.expression_kinds import expression_kind

    assert expression_kind(sentence) == kind


def test_a_sentence_the_generator_does_not_write_has_no_kind():
    from src.data.expression_kinds import expression_kind
    from src.errors import DataError

    with pytest.raises(DataError, match=r"val.csv: sentence 'a man in a hat' is not one the synthetic generator"):
        expression_kind("a man in a hat", "val.csv")
