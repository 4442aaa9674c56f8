"""MindSpore input pipeline over a `ReferDataset` (any `src.data.base.ReferringDataset`).

`create_refer_dataset(...)` builds ``GeneratorDataset(ReferSource, sampler=ReferSampler) -> batch``:

* `ReferSource` is a random-access source over `refer.samples()` (every (ref, sentence) pair):
  item i = the sample's image (resized to S x S, ImageNet-normalised, CHW), its tokens, its mask
  (resized with Pillow-nearest) and, for evaluation, i itself. Preprocessing is NumPy/OpenCV
  (`src/data/transforms.py`), run in `num_workers` worker processes or threads.
* `ReferSampler` decides, each epoch, which samples are drawn and in which order:
  - training (``epoch_sampling="one_per_ref"``, the LAVT recipe): every referred object once per
    epoch with one of its sentences drawn at random; ``"all_sentences"``: every sentence once per
    epoch. Order and sentence choice come from ``numpy.random.default_rng([seed, epoch])``, so
    they change every epoch and are reproducible. All shards draw the same permutation and each
    takes every `num_shards`-th entry of it, cut to the same length (the < num_shards left-over
    refs of an epoch are skipped), so shards never overlap and run the same number of steps.
  - evaluation: every sample once, in `samples()` order; shard k takes samples k, k + num_shards,
    ... (a partition). With ``pad_last_batch`` (default) the shard's list is padded to a whole
    number of batches with copies of sample 0 whose ``index`` is -1, so every batch has the same
    static shape (graph mode would otherwise compile the network again for the last batch). The
    evaluation loop must skip rows whose index is -1.

Columns (batched): ``image`` float32 (B, 3, S, S), ``input_ids`` int32 (B, T), ``attention_mask``
int32 (B, T), ``mask`` float32 (B, S, S) in {0, 1}, ``bad`` int32 (B,) (0, or: this row's sample could
not be loaded; see `ReferSource`), ``others`` uint8 (B, K, S, S) and ``categories`` int32 (B, 1 + K) (see
`create_refer_dataset`; zero-size when the configuration uses none), and in evaluation ``index`` int32 (B,) into
`refer.samples()` (the original-resolution metric fetches the original mask and size through it:
``refer.load_mask(refer.sample(i).ann_id)``). Training drops the last incomplete batch.

Epochs: MindSpore calls the sampler once per epoch of *one* iterator (``Model.train`` and
``create_tuple_iterator(num_epochs=E)`` do this), on its own copy of the sampler. To resume at
epoch e, pass ``start_epoch=e``. If you build a new iterator every epoch instead, call
``dataset.refer_sampler.set_epoch(e)`` before creating each one.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Optional, Sequence, Tuple

import numpy as np
import mindspore.dataset as ds

from src.errors import ConfigError, DataError
from src.utils.runtime import available_cpus

from .base import ReferringDataset
from .refer import SAMPLE_ERRORS
from .transforms import preprocess_image, resize_mask

logger = logging.getLogger(__name__)

# Every dataset has these columns, whatever the configuration: a column the configuration does not use is zero-size
# (`others` (B, 0, S, S) without SMA, `categories` (B, 0) without a category head), so the train step's inputs are
# fixed (src/models/outputs.py, `BATCH`).
TRAIN_COLUMNS = ["image", "input_ids", "attention_mask", "mask", "bad", "others", "categories"]
EVAL_COLUMNS = TRAIN_COLUMNS + ["index"]
EPOCH_SAMPLING = ("one_per_ref", "all_sentences")
PAD_INDEX = -1


class ReferSampler(ds.Sampler):
    """Sample indices (into `refer.samples()`) for one epoch; see the module docstring.

    Indices >= `num_source_samples` denote padding rows (evaluation only).
    """

    def __init__(self, ref_sample_ranges: Sequence[Tuple[int, int]], train: bool, seed: int = 0,
                 epoch_sampling: str = "one_per_ref", num_shards: int = 1, shard_id: int = 0,
                 batch_size: int = 1, pad_last_batch: bool = True, start_epoch: int = 0):
        if epoch_sampling not in EPOCH_SAMPLING:
            raise ValueError(f"unknown epoch_sampling '{epoch_sampling}'; valid: {list(EPOCH_SAMPLING)}")
        self.ref_starts = np.array([r[0] for r in ref_sample_ranges], np.int64)
        self.ref_counts = np.array([r[1] - r[0] for r in ref_sample_ranges], np.int64)
        self.num_source_samples = int(self.ref_counts.sum())
        self.train = bool(train)
        self.seed = int(seed)
        self.epoch_sampling = epoch_sampling
        self.num_shards = int(num_shards)
        self.shard_id = int(shard_id)
        self.batch_size = int(batch_size)
        self.pad_last_batch = bool(pad_last_batch) and not self.train
        self.epoch = int(start_epoch)
        self._length = len(self.indices_for_epoch(self.epoch))
        super().__init__(num_samples=None)  # reads len(self)

    def _shard(self, order: np.ndarray) -> np.ndarray:
        per_shard = len(order) // self.num_shards
        return order[self.shard_id::self.num_shards][:per_shard]

    def indices_for_epoch(self, epoch: int) -> np.ndarray:
        """The int64 sample indices this shard visits in `epoch`, in order."""
        if self.train:
            rng = np.random.default_rng([self.seed, epoch])
            if self.epoch_sampling == "one_per_ref":
                offsets = np.floor(rng.random(len(self.ref_counts)) * self.ref_counts).astype(np.int64)
                pool = self.ref_starts + offsets  # one sentence of every ref
            else:
                pool = np.arange(self.num_source_samples, dtype=np.int64)
            return self._shard(pool[rng.permutation(len(pool))])
        indices = np.arange(self.shard_id, self.num_source_samples, self.num_shards, dtype=np.int64)
        if self.pad_last_batch and len(indices) % self.batch_size:
            pad = self.batch_size - len(indices) % self.batch_size
            indices = np.concatenate([indices, np.full(pad, self.num_source_samples, np.int64)])
        return indices

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next `__iter__` (the next iterator's first epoch) draws."""
        self.epoch = int(epoch)

    def __iter__(self):
        indices = self.indices_for_epoch(self.epoch)
        self.epoch += 1
        return iter(indices.tolist())

    def __len__(self) -> int:
        return self._length


def category_classes(refer: ReferringDataset, num_classes: int) -> dict:
    """{category_id: class index}: the categories of the dataset's instances.json in increasing id order
    (COCO's 80 ids 1..90 with gaps -> 0..79), checked against the category head's size."""
    ids = sorted(refer.categories)
    if not ids:
        raise DataError(f"{refer.instances_path}: no 'categories' to classify the proposals into "
                        f"(model.mask_generator.num_classes={num_classes}); set num_classes=0")
    if len(ids) > num_classes:
        raise ConfigError(f"{refer.instances_path} has {len(ids)} categories but model.mask_generator.num_classes="
                          f"{num_classes}: set it to {len(ids)}")
    return {cid: k for k, cid in enumerate(ids)}


class ReferSource:
    """Random-access source: item i -> (image, input_ids, attention_mask, mask, bad[, index]) of `refer.samples()[i]`.

    Item `len(refer.samples())` is a padding row (index -1).
    Keeps the last few preprocessed images/masks: consecutive evaluation samples are sentences of
    the same object.

    A sample whose image or mask cannot be loaded (`SAMPLE_ERRORS`: missing or corrupt image, size
    differing from instances.json, empty or malformed segmentation) never raises here, because an
    exception inside a pipeline worker reaches the user as a MindSpore traceback. Instead:
    * training: the next samples i+1, i+2, ... are tried and the first good one is returned with
      ``bad = REPLACED`` (the trainer counts such rows and aborts past ``data.max_bad_samples``);
      when `MAX_ATTEMPTS` samples in a row are bad the row is a zero placeholder with
      ``bad = UNREPLACEABLE`` and the trainer aborts;
    * evaluation: the row is a zero placeholder with ``bad = 1``; the evaluator raises a clear error
      naming the file and field, or skips and counts it (``eval.skip_bad_samples``).
    """

    CACHE_SIZE = 4
    MAX_ATTEMPTS = 32
    REPLACED, UNREPLACEABLE = 1, 2  # values of the `bad` column (0: the sample itself)

    def __init__(self, refer: ReferringDataset, tokenizer, image_size: int, train: bool, max_other_objects: int = 0,
                 num_classes: int = 0):
        self.refer = refer
        self.max_other_objects = int(max_other_objects)
        self.num_classes = int(num_classes)
        self.class_index = category_classes(refer, self.num_classes) if self.num_classes else {}
        self._objects: "OrderedDict[int, list]" = OrderedDict()
        self.tokenizer = tokenizer
        self.image_size = int(image_size)
        self.train = bool(train)
        self.num_samples = len(refer.samples())
        self._images: "OrderedDict[int, np.ndarray]" = OrderedDict()
        self._masks: "OrderedDict[int, np.ndarray]" = OrderedDict()

    def __len__(self) -> int:
        return self.num_samples + 1  # + the padding row

    def _cached(self, cache: OrderedDict, key: int, make):
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
        value = make()
        cache[key] = value
        if len(cache) > self.CACHE_SIZE:
            cache.popitem(last=False)
        return value

    def _pixels(self, sample):
        """(image (3, S, S) float32, mask (S, S) float32) of `sample`; raises one of SAMPLE_ERRORS."""
        size = self.image_size
        image = self._cached(self._images, sample.image_id,
                             lambda: preprocess_image(self.refer.load_image(sample.image_id), size))
        mask = self._cached(self._masks, sample.ann_id,
                            lambda: resize_mask(self.refer.load_mask(sample.ann_id), size).astype(np.float32))
        return image, mask

    def _image_objects(self, image_id: int):
        """[(ann_id, area, mask (S, S) uint8)] of every decodable annotation of the image, largest first."""
        objects = []
        for ann_id in self.refer.image_annotations(image_id):
            if self.refer.annotations[ann_id].get("iscrowd"):  # crowd regions are not one object (as Mask2Former)
                continue
            try:
                mask = resize_mask(self.refer.load_mask(ann_id), self.image_size).astype(np.uint8)
            except SAMPLE_ERRORS as e:  # an unusable distractor only loses that object's proposal target
                logger.warning("image %d: other object %d left out of the proposal targets: %s", image_id, ann_id, e)
                continue
            objects.append((ann_id, int(mask.sum()), mask))
        objects.sort(key=lambda o: -o[1])
        return objects

    def _other_objects(self, sample):
        """[(ann_id, area, mask)] of up to K other objects of the sample's image, largest first: the order of
        both the `others` and the `categories` columns."""
        objects = self._cached(self._objects, sample.image_id, lambda: self._image_objects(sample.image_id))
        return [o for o in objects if o[0] != sample.ann_id and o[1] > 0][:self.max_other_objects]

    def _others(self, sample):
        """(K, S, S) uint8: the masks of up to K other objects of the sample's image, zero-padded."""
        size, limit = self.image_size, self.max_other_objects
        others = np.zeros((limit, size, size), np.uint8)
        for k, (_, _, mask) in enumerate(self._other_objects(sample)):
            others[k] = mask
        return others

    def _categories(self, sample):
        """(1 + K,) int32: the class of the referent, then of each object of `_others` in the same order;
        `num_classes` ("no object") in the padding slots."""
        labels = np.full((1 + self.max_other_objects,), self.num_classes, np.int32)
        labels[0] = self._class_of(sample.ann_id)
        for k, (ann_id, _, _) in enumerate(self._other_objects(sample)):
            labels[1 + k] = self._class_of(ann_id)
        return labels

    def _class_of(self, ann_id: int) -> int:
        category = self.refer.annotations[ann_id].get("category_id")
        if category not in self.class_index:  # a DataError is one of SAMPLE_ERRORS: the sample is skipped, named
            raise DataError(f"{self.refer.instances_path}: annotation {ann_id} has category_id {category!r}, which is "
                            f"not among the file's categories")
        return self.class_index[category]

    def _placeholder(self):
        size = self.image_size
        return np.zeros((3, size, size), np.float32), np.zeros((size, size), np.float32)

    def _row(self, sample, pixels, bad: int, index: int):
        image, mask = pixels
        input_ids, attention_mask = self.tokenizer.encode(sample.text)  # (T,), (T,)
        row = (image, input_ids.astype(np.int32, copy=False), attention_mask.astype(np.int32, copy=False), mask,
               np.array(bad, np.int32))
        size = self.image_size
        others = np.zeros((self.max_other_objects, size, size), np.uint8)  # (K, S, S); K = 0: not used
        if self.max_other_objects and bad != self.UNREPLACEABLE:
            others = self._others(sample)
        labels = np.zeros((0,), np.int32)  # (1 + K,) with a category head, else (0,)
        if self.num_classes:
            labels = (self._categories(sample) if bad != self.UNREPLACEABLE
                      else np.full((1 + self.max_other_objects,), self.num_classes, np.int32))
        row = row + (others, labels)
        return row if self.train else row + (np.array(index, np.int32),)

    def __getitem__(self, i):
        i = int(i)
        if i >= self.num_samples:  # padding row: never scored
            return self._row(self.refer.sample(0), self._placeholder(), 0, PAD_INDEX)
        attempts = self.MAX_ATTEMPTS if self.train else 1
        for attempt in range(attempts):
            j = (i + attempt) % self.num_samples
            sample = self.refer.sample(j)
            try:
                return self._row(sample, self._pixels(sample), self.REPLACED if attempt else 0, i)
            except SAMPLE_ERRORS as e:
                logger.warning("bad sample %d (ref_id %d, sent_id %d)%s: %s", j, sample.ref_id, sample.sent_id,
                               ", trying the next one in its place" if self.train else "", e)
        return self._row(self.refer.sample(i), self._placeholder(), self.UNREPLACEABLE if self.train else 1, i)


def create_refer_dataset(refer: ReferringDataset, tokenizer, image_size: int, batch_size: int, train: bool,
                         num_workers: int = 2, num_shards: Optional[int] = None, shard_id: Optional[int] = None,
                         seed: int = 0, epoch_sampling: str = "one_per_ref", start_epoch: int = 0,
                         pad_last_batch: bool = True, python_multiprocessing: bool = True,
                         max_other_objects: int = 0, num_classes: int = 0) -> ds.Dataset:
    """The batched MindSpore dataset of one split; see the module docstring for columns and sampling.

    Args:
        refer: the split to read.
        tokenizer: an object with ``encode(text) -> (input_ids int32 (T,), attention_mask int32 (T,))``.
        image_size: S, the square input side.
        batch_size: per-device batch.
        train: training sampling, drop_remainder; otherwise evaluation (all sentences, `index` column).
        num_workers: parallel preprocessing workers; capped (with a warning) at the cores this process
            may use, because MindSpore refuses more parallel workers than cores.
        num_shards / shard_id: data-parallel sharding (both or neither).
        seed, epoch_sampling, start_epoch: training sampling (see `ReferSampler`).
        pad_last_batch: evaluation only; pad the last batch with index -1 rows (static shapes).
        max_other_objects: K, the size of the column ``others`` (B, K, S, S) uint8: the masks of up to K other
            annotated objects of the sample's image (largest first, zero-padded), which the proposals are matched
            to beside the referent; 0 (zero-size) without SMA.
        num_classes: C > 0 fills the column ``categories`` (B, 1 + K) int32: the class (see `category_classes`) of
            the referent, then of each of the K other objects, C in empty slots; (B, 0) when C = 0.
        python_multiprocessing: workers are processes (default) or threads. Measured on the 2-core
            CPU machine, synthetic data at 320x320 (~12 ms of CPU per sample): 2 processes gave
            104-169 images/s, 2 threads 98-114, 1 worker 94-98 (the machine was shared, hence ranges).

    The returned dataset carries the sampler as ``dataset.refer_sampler`` (for `set_epoch`).
    """
    if (num_shards is None) != (shard_id is None):
        raise ValueError("num_shards and shard_id must be given together")
    num_shards = 1 if num_shards is None else int(num_shards)
    shard_id = 0 if shard_id is None else int(shard_id)
    if num_shards < 1 or not 0 <= shard_id < num_shards:
        raise ValueError(f"invalid shard {shard_id} of {num_shards}")
    if batch_size < 1:
        raise ConfigError(f"batch_size (train.batch_size / eval.batch_size) must be >= 1, got {batch_size}")
    sampler = ReferSampler(refer.ref_sample_ranges, train=train, seed=seed, epoch_sampling=epoch_sampling,
                           num_shards=num_shards, shard_id=shard_id, batch_size=batch_size,
                           pad_last_batch=pad_last_batch, start_epoch=start_epoch)
    per_epoch = len(sampler)
    if train and per_epoch < batch_size:
        raise ConfigError(f"{refer!r}: shard {shard_id}/{num_shards} holds {per_epoch} samples per epoch, "
                          f"fewer than one batch of {batch_size}: lower train.batch_size")
    columns = TRAIN_COLUMNS if train else EVAL_COLUMNS
    source = ReferSource(refer, tokenizer, image_size, train=train, max_other_objects=max_other_objects,
                         num_classes=num_classes)
    workers, cores = max(1, int(num_workers)), available_cpus()
    if workers > cores:
        logger.warning("data.num_workers=%d capped at the %d CPU cores available", workers, cores)
        workers = cores
    dataset = ds.GeneratorDataset(source, column_names=columns, sampler=sampler, num_parallel_workers=workers,
                                  python_multiprocessing=python_multiprocessing and workers > 1)
    dataset = dataset.batch(batch_size, drop_remainder=train)
    dataset.refer_sampler = sampler
    logger.info("%r -> %s dataset: %d samples per epoch on shard %d/%d, %d batches of %d",
                refer, "train" if train else "eval", per_epoch, shard_id, num_shards,
                dataset.get_dataset_size(), batch_size)
    return dataset
