"""What a dataset must offer the rest of the code, the registry of datasets, and `build_dataset(cfg, split)`.

Everything that reads a split (the MindSpore pipeline in `src/data/dataset.py`, the evaluator, the
training-health probe set, preprocess.py / postprocess.py, research/tools/ablate.py, tools/benchmark.py,
tools/diagnose.py) goes through `ReferringDataset` below and nothing else, and gets its dataset from
`build_dataset(cfg, split)`, which looks ``cfg.data.dataset`` up in `DATASETS`. Adding a dataset
(ReferIt, gRefCOCO) is therefore one new module in src/data/::

    @DATASETS.register("referit")
    class ReferItDataset:
        @classmethod
        def from_config(cls, cfg, split): ...
        ...  # the members of ReferringDataset

and nothing else: before its first look-up the registry imports the modules of src/data that register a
dataset (those that mention ``DATASETS.register``; src/registry.py, "Discovery", the same mechanism as the
model parts'), and `data.dataset: <name>` then chooses it (the registry, not a fixed list in src/config/,
says which names exist).

No MindSpore (nor OpenCV) import here, and discovery imports only the modules that register a dataset: the
registry can be listed cheaply, and src/data/refer.py can import `DATASETS` without a cycle.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, List, Mapping, Protocol, Sequence, Tuple, runtime_checkable

import numpy as np

from src.registry import Registry

if TYPE_CHECKING:  # annotations only: src.config stays out of this module's imports
    from src.config import Config

DATASETS: "Registry[type]" = Registry("dataset", "data.dataset", "src.data", "DATASETS")


class DatasetSample(Protocol):
    """One (referred object, sentence) pair, the unit of evaluation (`src.data.refer.ReferSample` is one)."""

    index: int  # position in `samples()`
    ref_id: int  # the referred object, as numbered by the dataset's files
    ann_id: int  # its mask: `load_mask(ann_id)`
    image_id: int  # its image: `load_image(image_id)`
    sent_id: int  # the sentence, as numbered by the dataset's files
    text: str  # what the tokenizer reads


class DatasetRef(Protocol):
    """One referred object (`src.data.refer.Ref` is one); the code reads only these two fields."""

    ann_id: int
    image_id: int


@runtime_checkable
class ReferringDataset(Protocol):
    """One split of a referring-segmentation dataset, as the rest of the code uses it.

    A `typing.Protocol`, not an abstract base class, because the contract is structural: the existing
    ReferDataset, a dataset written elsewhere or a few in-memory samples in a test satisfy it without
    inheriting from us, and several members are plain data attributes (`refs`, `annotations`, ...),
    which an ABC can only demand as abstract properties that the implementation's ``self.refs = ...``
    would then collide with. It is runtime-checkable, so `isinstance(d, ReferringDataset)` (and
    `missing_members(d)`, which names what is absent) checks that every member exists; it does not check
    signatures, so the one-line contracts below are the specification.

    Loading errors: `load_image` and `load_mask` raise one of `src.data.refer.SAMPLE_ERRORS` (OSError,
    ValueError, cv2.error) for a sample whose files are bad; the pipeline skips or reports those samples
    and lets every other exception through. ``repr(d)`` names the dataset and split in messages.
    """

    # Per-ref structure -------------------------------------------------------------------------
    refs: Sequence[DatasetRef]  # the referred objects of the split, in a fixed order (ref_index = position)
    ref_sample_ranges: Sequence[Tuple[int, int]]  # [start, stop) of each ref's sentences in samples(), by ref_index
    # Annotation records by ann_id: "category_id" (int; read with num_classes > 0 and by research/tools/ablate.py) and
    # optionally "iscrowd" (truthy: not an object, left out of the other-object targets).
    annotations: Mapping[int, Mapping[str, Any]]
    categories: Mapping[int, str]  # category_id -> name; its sorted ids are the proposal classes
    instances_path: str  # the file named in errors about annotations and categories

    @classmethod
    def from_config(cls, cfg: "Config", split: str) -> "ReferringDataset":
        """The split `split` of this dataset as `cfg.data` describes it (what `build_dataset` calls)."""
        ...

    def __len__(self) -> int:
        """Number of refs (referred objects) in the split."""
        ...

    def samples(self) -> Sequence[DatasetSample]:
        """Every (ref, sentence) pair: refs in `refs` order, a ref's sentences contiguous, samples()[i].index == i."""
        ...

    def sample(self, index: int) -> DatasetSample:
        """samples()[index]."""
        ...

    def ref_sample_range(self, ref_index: int) -> Tuple[int, int]:
        """ref_sample_ranges[ref_index]: [start, stop) of that ref's sentences in samples()."""
        ...

    def load_image(self, image_id: int) -> np.ndarray:
        """(H, W, 3) uint8 RGB image at its original size."""
        ...

    def load_mask(self, ann_id: int) -> np.ndarray:
        """(H, W) uint8 {0, 1} mask of the annotation, on its image's (H, W) grid; raises if empty."""
        ...

    def image_annotations(self, image_id: int) -> Sequence[int]:
        """ann_ids of every annotated object of the image (referred or not): the other objects of a sample."""
        ...

    def with_swapped_sentences(self, seed: int = 0) -> "ReferringDataset":
        """The grounding control (eval.swap_sentences): a copy whose sentences are other objects' of the same image."""
        ...


def _protocol_members() -> List[str]:
    """The names `isinstance(x, ReferringDataset)` looks up: annotated attributes, then methods."""
    names = list(ReferringDataset.__annotations__)
    names += [n for n, v in vars(ReferringDataset).items()
              if (callable(v) or isinstance(v, classmethod)) and (not n.startswith("_") or n == "__len__")]
    return names


def missing_members(dataset: Any) -> List[str]:
    """The members of `ReferringDataset` that `dataset` lacks (empty: it conforms)."""
    return [name for name in _protocol_members() if not hasattr(dataset, name)]


def dataset_names() -> List[str]:
    """The registered dataset names (the values `data.dataset` may take), built-in readers included."""
    return DATASETS.keys()


def build_dataset(cfg: "Config", split: str) -> ReferringDataset:
    """Split `split` of the dataset named by ``cfg.data.dataset``, built by its class's ``from_config(cfg, split)``.

    An unregistered name is a ConfigError naming the key and the nearest registered names; a registered
    class whose objects lack members of `ReferringDataset` is a TypeError naming them (a bug in that class,
    caught here rather than deep inside a pipeline worker).
    """
    cls = DATASETS.get(cfg.data.dataset)
    if not hasattr(cls, "from_config"):  # checked first: without it there is nothing to build the object with
        dataset, missing = None, ["from_config"]
    else:
        dataset = cls.from_config(cfg, split)
        missing = missing_members(dataset)
    if missing:
        raise TypeError(f"dataset {cfg.data.dataset!r} ({cls.__module__}.{cls.__qualname__}) does not implement "
                        f"{', '.join(missing)} of src.data.base.ReferringDataset")
    return dataset
