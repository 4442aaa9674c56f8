"""The refer-format reader: on synthetic data and on small hand-written trees."""
import io
import json
import logging
import os
import pickle

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from src.data.refer import VALID_SPLITS, ReferDataset, decode_segmentation, read_image_rgb
from src.data.synthetic import generate_synthetic_refer

SPLITS = ("train", "val", "testA", "testB")


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("refer_synth"))
    generate_synthetic_refer(root, num_images=20, seed=11)
    return root


@pytest.fixture(scope="module")
def raw_refs(synthetic_root):
    with open(os.path.join(synthetic_root, "refcoco", "refs(unc).p"), "rb") as f:
        refs = pickle.load(f)
    with open(os.path.join(synthetic_root, "refcoco", "instances.json")) as f:
        instances = json.load(f)
    return refs, instances


def test_every_split_every_field(synthetic_root, raw_refs, caplog):
    refs, instances = raw_refs
    images = {im["id"]: im for im in instances["images"]}
    total_refs = total_samples = 0
    for split in SPLITS:
        with caplog.at_level(logging.INFO, logger="src.data.refer"):
            caplog.clear()
            data = ReferDataset(synthetic_root, "refcoco", "unc", split)
        expected = [r for r in refs if r["split"] == split]
        assert [r.ref_id for r in data.refs] == [r["ref_id"] for r in expected]  # file order
        for ref, raw in zip(data.refs, expected):
            assert (ref.ann_id, ref.image_id, ref.category_id, ref.split) == \
                   (raw["ann_id"], raw["image_id"], raw["category_id"], split)
            assert [s.sent_id for s in ref.sentences] == raw["sent_ids"]
            assert [s.text for s in ref.sentences] == [s["raw"] for s in raw["sentences"]]
            assert [s.sent for s in ref.sentences] == [s["sent"] for s in raw["sentences"]]
        samples = data.samples()
        assert len(samples) == sum(len(r["sentences"]) for r in expected)
        assert [s.index for s in samples] == list(range(len(samples)))
        flat = [(r["ref_id"], s["sent_id"], s["raw"]) for r in expected for s in r["sentences"]]
        assert [(s.ref_id, s.sent_id, s.text) for s in samples] == flat
        for k, ref in enumerate(data.refs):
            start, stop = data.ref_sample_range(k)
            assert {samples[i].ref_id for i in range(start, stop)} == {ref.ref_id}
            assert all(samples[i].ref_index == k for i in range(start, stop))
        assert data.image_ids == sorted({r["image_id"] for r in expected})
        for image_id in data.image_ids:
            assert data.image_path(image_id) == os.path.join(synthetic_root, "images", "train2014",
                                                             f"COCO_train2014_{image_id:012d}.jpg")
            assert data.image_size(image_id) == (images[image_id]["height"], images[image_id]["width"])
        line = f"refcoco(unc) {split}: {len(expected)} refs, {len(samples)} sentences, {len(data.image_ids)} images"
        assert any(line in rec.getMessage() for rec in caplog.records), caplog.text
        total_refs += len(data)
        total_samples += len(samples)
    assert total_refs == len(refs)
    assert total_samples == sum(len(r["sentences"]) for r in refs)


def test_images_rgb_and_masks(synthetic_root, raw_refs):
    refs, instances = raw_refs
    anns = {a["id"]: a for a in instances["annotations"]}
    data = ReferDataset(synthetic_root, "refcoco", "unc", "train")
    saw_gray = False
    for image_id in data.image_ids:
        img = data.load_image(image_id)
        assert img.dtype == np.uint8 and img.shape == data.image_size(image_id) + (3,)
        stored = cv2.imread(data.image_path(image_id), cv2.IMREAD_UNCHANGED)
        if stored.ndim == 2:  # single-channel JPEG -> three equal channels
            saw_gray = True
            assert (img[..., 0] == stored).all() and (img[..., 1] == stored).all() and (img[..., 2] == stored).all()
        else:
            assert (img == stored[..., ::-1]).all()  # BGR on disk -> RGB
    assert saw_gray
    for ref in data.refs:
        mask = data.load_mask(ref.ann_id)
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
        assert mask.shape == data.image_size(ref.image_id)
        assert mask.sum() == anns[ref.ann_id]["area"]


def test_invalid_combinations_list_valid_values(synthetic_root):
    with pytest.raises(ValueError, match=r"refcoco\+.*refcocog"):
        ReferDataset(synthetic_root, "refclef", "unc", "train")
    with pytest.raises(ValueError, match=r"\['unc'\]"):
        ReferDataset(synthetic_root, "refcoco+", "google", "train")
    with pytest.raises(ValueError, match=r"\['train', 'val', 'testA', 'testB'\]"):
        ReferDataset(synthetic_root, "refcoco", "unc", "test")
    with pytest.raises(ValueError, match=r"\['train', 'val', 'test'\]"):
        ReferDataset(synthetic_root, "refcocog", "umd", "testA")
    assert VALID_SPLITS["refcocog"]["google"] == ("train", "val")


# ----------------------------------------------------------------------------------------------
# Hand-written trees
# ----------------------------------------------------------------------------------------------
H, W = 8, 12
RECT_A = [2, 1, 8, 1, 8, 5, 2, 5]  # pixels x 2..7, y 1..4
RECT_B = [5, 3, 11, 3, 11, 7, 5, 7]  # pixels x 5..10, y 3..6; overlaps A at x 5..7, y 3..4


def rect(x0, y0, x1, y1):
    m = np.zeros((H, W), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def write_tree(root, images, annotations, refs, dataset="refcoco", split_by="unc", refs_bytes=None):
    os.makedirs(os.path.join(root, "images", "train2014"), exist_ok=True)
    os.makedirs(os.path.join(root, dataset), exist_ok=True)
    info = []
    for image_id, pixels in images.items():
        name = f"COCO_train2014_{image_id:012d}.jpg"  # PNG bytes under a .jpg name: decoded by content
        ok, buf = cv2.imencode(".png", pixels)
        assert ok
        with open(os.path.join(root, "images", "train2014", name), "wb") as f:
            f.write(buf.tobytes())
        info.append({"id": image_id, "file_name": name, "height": pixels.shape[0], "width": pixels.shape[1]})
    with open(os.path.join(root, dataset, "instances.json"), "w") as f:
        json.dump({"images": info, "annotations": annotations, "categories": [{"id": 1, "name": "thing"}]}, f)
    with open(os.path.join(root, dataset, f"refs({split_by}).p"), "wb") as f:
        f.write(refs_bytes if refs_bytes is not None else pickle.dumps(refs))


def ref(ref_id, ann_id, image_id=1, split="train", text="the thing"):
    return {"ref_id": ref_id, "ann_id": ann_id, "image_id": image_id, "category_id": 1, "split": split,
            "sent_ids": [ref_id * 10], "file_name": "ignored.jpg",
            "sentences": [{"sent_id": ref_id * 10, "raw": text, "sent": text.lower(), "tokens": text.split()}]}


@pytest.fixture()
def hand_tree(tmp_path):
    union = rect(2, 1, 8, 5) | rect(5, 3, 11, 7)
    compressed = mask_utils.encode(np.asfortranarray(rect(0, 0, 3, 8)))
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "segmentation": [RECT_A, RECT_B], "area": 0, "bbox": [],
         "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 0, "bbox": [],
         "segmentation": {"size": [H, W], "counts": compressed["counts"].decode("ascii")}},
        # uncompressed RLE, column-major runs: 2 columns of background (16), then 1 column of 3 zeros +
        # 5 ones: pixels (y 3..7, x 2)
        {"id": 3, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 0, "bbox": [],
         "segmentation": {"size": [H, W], "counts": [19, 5, H * W - 24]}},
    ]
    image = np.zeros((H, W, 3), np.uint8)
    image[..., 2] = 200  # red in BGR
    write_tree(str(tmp_path), {1: image}, anns, [ref(1, 1), ref(2, 2), ref(3, 3, text="Caf\u00e9 sign")])
    return str(tmp_path), union


def test_mask_is_union_of_polygons_not_lavt_rule(hand_tree):
    root, union = hand_tree
    data = ReferDataset(root, "refcoco", "unc", "train")
    mask = data.load_mask(1)
    np.testing.assert_array_equal(mask, union)
    assert mask.sum() == 24 + 24 - 6  # |A| + |B| - |A and B|
    # LAVT keeps pixels covered by exactly one polygon: the 3 x 2 overlap becomes background
    per_polygon = mask_utils.decode(mask_utils.frPyObjects([RECT_A, RECT_B], H, W))  # (H, W, 2)
    lavt = (per_polygon.sum(axis=2) == 1).astype(np.uint8)
    assert lavt.sum() == mask.sum() - 6
    assert (mask[3:5, 5:8] == 1).all() and (lavt[3:5, 5:8] == 0).all()
    np.testing.assert_array_equal(data.load_mask(2), rect(0, 0, 3, 8))  # compressed RLE
    expected = np.zeros((H, W), np.uint8)
    expected[3:8, 2] = 1
    np.testing.assert_array_equal(data.load_mask(3), expected)  # uncompressed RLE
    img = data.load_image(1)
    assert img.shape == (H, W, 3) and (img[..., 0] == 200).all() and (img[..., 1:] == 0).all()
    assert data.samples()[2].text == "Caf\u00e9 sign"


def test_degenerate_polygons_are_skipped():
    # a 4-number first "polygon" would make pycocotools read the list as boxes
    seg = [[1, 1, 3, 3], RECT_A]
    np.testing.assert_array_equal(decode_segmentation(seg, H, W), rect(2, 1, 8, 5))
    assert decode_segmentation([[1, 2, 3, 4]], H, W).sum() == 0
    with pytest.raises(ValueError, match="RLE size"):
        decode_segmentation({"size": [H + 1, W], "counts": [0]}, H, W)


def py2_pickle(obj) -> bytes:
    """A protocol-2 pickle whose strings are Python-2 byte strings (SHORT_BINSTRING), as in the official files."""

    class Py2Pickler(pickle._Pickler):
        def save_str(self, s):
            data = s.encode("latin1")
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
            self.memoize(s)

        dispatch = dict(pickle._Pickler.dispatch)
        dispatch[str] = save_str

    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def test_python2_pickle_with_latin1_bytes(tmp_path):
    payload = py2_pickle([ref(1, 1, text="caf\u00e9 on the left")])
    with pytest.raises(UnicodeDecodeError):
        pickle.loads(payload)  # Python 3's default (ASCII) fails on the 0xe9 byte
    image = np.zeros((H, W), np.uint8)
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": [RECT_A], "area": 0, "bbox": [],
             "iscrowd": 0}]
    write_tree(str(tmp_path), {1: image}, anns, None, refs_bytes=payload)
    data = ReferDataset(str(tmp_path), "refcoco", "unc", "train")
    assert data.samples()[0].text == "caf\u00e9 on the left"
    assert data.load_image(1).shape == (H, W, 3)


@pytest.mark.parametrize("case", ["gray", "rgba", "palette", "16bit", "gray_alpha"])
def test_read_image_any_mode_to_rgb_uint8(tmp_path, case):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    path = str(tmp_path / "x.png")
    if case == "gray":
        cv2.imwrite(path, rgb[..., 0])
        expected = np.repeat(rgb[..., :1], 3, axis=2)
    elif case == "rgba":
        cv2.imwrite(path, np.concatenate([rgb[..., ::-1], np.full((5, 7, 1), 7, np.uint8)], axis=2))
        expected = rgb  # alpha dropped
    elif case == "palette":
        Image = pytest.importorskip("PIL.Image")
        palette_img = Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=16)
        palette_img.save(path)
        expected = np.asarray(palette_img.convert("RGB"))
    elif case == "16bit":
        cv2.imwrite(path, rgb[..., ::-1].astype(np.uint16) * 257)  # 0..65535
        expected = rgb
    else:
        Image = pytest.importorskip("PIL.Image")
        Image.fromarray(np.stack([rgb[..., 0], rgb[..., 1]], axis=2), mode="LA").save(path)
        expected = np.repeat(rgb[..., :1], 3, axis=2)
    img = read_image_rgb(path)
    assert img.dtype == np.uint8 and img.shape == (5, 7, 3)
    np.testing.assert_array_equal(img, expected)


def test_clear_errors(tmp_path):
    image = np.zeros((H, W, 3), np.uint8)
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": [RECT_A], "area": 0, "bbox": [],
             "iscrowd": 0}]
    root = str(tmp_path / "a")
    write_tree(root, {1: image}, anns, [ref(1, 1)])
    os.remove(os.path.join(root, "refcoco", "refs(unc).p"))
    with pytest.raises(FileNotFoundError, match=r"refs\(unc\)\.p"):
        ReferDataset(root, "refcoco", "unc", "train")

    root = str(tmp_path / "b")
    write_tree(root, {1: image}, anns, {"not": "a list"})
    with pytest.raises(ValueError, match=r"refs\(unc\)\.p.*list"):
        ReferDataset(root, "refcoco", "unc", "train")

    root = str(tmp_path / "c")
    write_tree(root, {1: image}, anns, [ref(1, 1), ref(7, 99)])
    with pytest.raises(ValueError, match=r"ref_id 7.*ann_id 99.*instances\.json"):
        ReferDataset(root, "refcoco", "unc", "train")

    root = str(tmp_path / "d")
    write_tree(root, {1: image}, anns, [ref(5, 1, image_id=42)])
    with pytest.raises(ValueError, match=r"ref_id 5.*image_id 42.*instances\.json"):
        ReferDataset(root, "refcoco", "unc", "train")

    root = str(tmp_path / "e")
    bad = ref(3, 1)
    del bad["sentences"]
    write_tree(root, {1: image}, anns, [bad])
    with pytest.raises(ValueError, match=r"ref_id 3.*'sentences'"):
        ReferDataset(root, "refcoco", "unc", "train")

    root = str(tmp_path / "e2")
    bad = ref(4, 1)
    bad["sentences"][0]["raw"] = bad["sentences"][0]["sent"] = ""
    write_tree(root, {1: image}, anns, [bad])
    with pytest.raises(ValueError, match=r"ref_id 4: sentences\[0\].*empty"):
        ReferDataset(root, "refcoco", "unc", "train")
    root = str(tmp_path / "e3")
    only_sent = ref(4, 1)
    only_sent["sentences"][0]["raw"] = ""
    write_tree(root, {1: image}, anns, [only_sent])
    assert ReferDataset(root, "refcoco", "unc", "train").samples()[0].text == "the thing"  # falls back to sent

    root = str(tmp_path / "f")
    write_tree(root, {1: image}, anns, [ref(1, 1, split="val")])
    with pytest.raises(ValueError, match=r"no refs with split 'train'.*\['val'\]"):
        ReferDataset(root, "refcoco", "unc", "train")

    root = str(tmp_path / "g")
    write_tree(root, {1: image}, anns, [ref(1, 1)])
    os.remove(os.path.join(root, "images", "train2014", "COCO_train2014_000000000001.jpg"))
    data = ReferDataset(root, "refcoco", "unc", "train")
    with pytest.raises(FileNotFoundError, match="COCO_train2014_000000000001.jpg"):
        data.load_image(1)
    write_tree(root, {1: np.zeros((H + 1, W, 3), np.uint8)}, anns, [ref(1, 1)])
    with pytest.raises(ValueError, match=r"differs from instances\.json"):
        data.load_image(1)


def test_swapped_sentences_come_from_another_object_of_the_same_image(tmp_path_factory):
    from src.data.refer import ReferDataset
    from src.data.synthetic import generate_synthetic_refer

    root = str(tmp_path_factory.mktemp("swap"))
    generate_synthetic_refer(root, num_images=12, seed=5)
    refer = ReferDataset(root, "refcoco", "unc", "train")
    control = refer.with_swapped_sentences(seed=0)
    by_image = {}
    for ref in refer.refs:
        by_image.setdefault(ref.image_id, []).append(ref)
    own_texts = {ref.ref_id: {s.text for s in ref.sentences} for ref in refer.refs}
    assert 0 < len(control.refs) <= len(refer.refs)
    assert len(control.samples()) == sum(len(r.sentences) for r in control.refs)
    for sample in control.samples():
        others = {s.text for r in by_image[sample.image_id] if r.ref_id != sample.ref_id for s in r.sentences}
        assert sample.text in others
        assert sample.ann_id == next(r.ann_id for r in refer.refs if r.ref_id == sample.ref_id)
    # Refs alone in their image are the only ones dropped.
    kept = {r.ref_id for r in control.refs}
    for ref in refer.refs:
        assert (ref.ref_id in kept) == (len(by_image[ref.image_id]) > 1)
    # Most swapped sentences differ from every sentence of the object itself.
    assert np.mean([s.text not in own_texts[s.ref_id] for s in control.samples()]) > 0.8
