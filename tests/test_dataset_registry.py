"""The dataset interface, the registry and `build_dataset`: the built-in refer reader is found by the names
data.dataset accepts, an unknown name is a ConfigError with a suggestion, and a dataset defined in one file
(the toy below, registered here as a newcomer would register ReferIt) runs through the MindSpore pipeline."""
import dataclasses
import os
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest

from src.config import Config, config_from_dict, load_config
from src.data.base import DATASETS, ReferringDataset, build_dataset, dataset_names, missing_members
from src.data.refer import ReferDataset
from src.data.synthetic import generate_synthetic_refer
from src.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
S = 16  # toy image side
T = 8  # toy sentence length

# What the code reads on a dataset (see src/data/base.py); pinned here so that a change to the interface
# is a deliberate one.
MEMBERS = ["refs", "ref_sample_ranges", "annotations", "categories", "instances_path", "from_config", "__len__",
           "samples", "sample", "ref_sample_range", "load_image", "load_mask", "image_annotations",
           "with_swapped_sentences"]


# ----------------------------------------------------------------------------------------------
# A dataset in one file: two 16 x 16 images, two objects (a square and a bar) in each, one ref per object
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ToyRef:
    ref_id: int
    ann_id: int
    image_id: int
    sentences: tuple


@dataclass(frozen=True)
class ToySample:
    index: int
    ref_id: int
    ann_id: int
    image_id: int
    sent_id: int
    text: str


@DATASETS.register("toy-registry-test")
class ToyDataset:
    """In-memory: what a newcomer writes for a new dataset, with no base class and no files."""

    def __init__(self, split: str):
        self.split = split
        self.instances_path = "<toy annotations>"
        self.categories = {1: "square", 2: "bar"}
        self.annotations, self._by_image = {}, {}
        self.refs = []
        for image_id in (10, 11):
            for kind, category in (("square", 1), ("bar", 2)):
                ann_id = 100 * image_id + category
                self.annotations[ann_id] = {"image_id": image_id, "category_id": category, "iscrowd": 0}
                self._by_image.setdefault(image_id, []).append(ann_id)
                sentences = (f"the {kind}", f"{kind} in image {image_id}")
                self.refs.append(ToyRef(len(self.refs), ann_id, image_id, sentences))
        self._index()

    def _index(self):
        self._samples, self.ref_sample_ranges = [], []
        for ref in self.refs:
            start = len(self._samples)
            for k, text in enumerate(ref.sentences):
                self._samples.append(ToySample(len(self._samples), ref.ref_id, ref.ann_id, ref.image_id,
                                               10 * ref.ref_id + k, text))
            self.ref_sample_ranges.append((start, len(self._samples)))

    @classmethod
    def from_config(cls, cfg, split):
        return cls(split)

    def __len__(self):
        return len(self.refs)

    def samples(self):
        return self._samples

    def sample(self, index):
        return self._samples[index]

    def ref_sample_range(self, ref_index):
        return self.ref_sample_ranges[ref_index]

    def load_image(self, image_id):
        image = np.full((S, S, 3), image_id, np.uint8)  # (S, S, 3) RGB
        return image

    def load_mask(self, ann_id):
        mask = np.zeros((S, S), np.uint8)  # (S, S) {0, 1}
        if ann_id % 100 == 1:
            mask[2:8, 2:8] = 1  # the square
        else:
            mask[10:12, :] = 1  # the bar
        return mask

    def image_annotations(self, image_id):
        return self._by_image.get(image_id, [])

    def with_swapped_sentences(self, seed=0):
        # Two objects per image: each ref takes the other one's sentences.
        control = ToyDataset(self.split)
        control.refs = [dataclasses.replace(r, sentences=self.refs[i ^ 1].sentences) for i, r in enumerate(self.refs)]
        control._index()
        return control

    def __repr__(self):
        return f"ToyDataset({self.split}: {len(self.refs)} refs)"


class ToyTokenizer:
    """`encode(text) -> (input_ids int32 (T,), attention_mask int32 (T,))`, as create_refer_dataset wants."""

    def encode(self, text):
        words = text.split()[:T]
        ids = np.zeros(T, np.int32)
        ids[:len(words)] = [1 + sum(map(ord, w)) % 97 for w in words]
        return ids, (ids > 0).astype(np.int32)


def toy_config() -> Config:
    # The one config line a new dataset needs: data.dataset names it (the registry, not a fixed list, decides).
    return config_from_dict({"data": {"dataset": "toy-registry-test"}})


def without(name: str) -> type:
    """ToyDataset's class less its member `name` (a method, or an attribute set in __init__)."""
    body = {k: v for k, v in vars(ToyDataset).items() if k not in (name, "__dict__", "__weakref__")}
    if name in ("refs", "ref_sample_ranges", "annotations", "categories", "instances_path"):
        init = ToyDataset.__init__

        def __init__(self, split):
            init(self, split)
            delattr(self, name)

        body["__init__"] = __init__
    return type(f"ToyWithout_{name.strip('_')}", (), body)


# ----------------------------------------------------------------------------------------------
# The built-in refer reader
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("registry_synth"))
    generate_synthetic_refer(root, num_images=12, seed=5)
    return root


def test_registry_lists_the_refer_datasets():
    names = dataset_names()
    assert {"refcoco", "refcoco+", "refcocog"} <= set(names)
    for name in ("refcoco", "refcoco+", "refcocog"):
        assert DATASETS.get(name) is ReferDataset


def test_listing_the_registry_imports_no_mindspore():
    code = ("import sys; from src.data.base import dataset_names; names = dataset_names(); "
            "assert 'mindspore' not in sys.modules, 'mindspore imported'; print(' '.join(names))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["refcoco", "refcoco+", "refcocog"]


@pytest.mark.parametrize("split", ["train", "val"])
def test_build_dataset_equals_the_constructor(synthetic_root, split):
    cfg = load_config(None, [f"--data_root={synthetic_root}", "--dataset=refcoco", "--split_by=unc"])
    built = build_dataset(cfg, split)
    direct = ReferDataset(synthetic_root, "refcoco", "unc", split)
    assert type(built) is ReferDataset and isinstance(built, ReferringDataset) and missing_members(built) == []
    assert (built.dataset, built.split_by, built.split) == ("refcoco", "unc", split)
    assert built.samples() == direct.samples() and len(built.samples()) > 0
    assert list(built.ref_sample_ranges) == list(direct.ref_sample_ranges) and built.refs == direct.refs
    # The grounding control keeps the interface (evaluator and preprocess.py swap before building the pipeline).
    assert isinstance(built.with_swapped_sentences(seed=1), ReferringDataset)


def test_unknown_dataset_is_a_config_error_with_a_suggestion():
    cfg = config_from_dict({"data": {"dataset": "refcocoo"}})  # accepted by the schema, refused by the registry
    with pytest.raises(ConfigError) as err:
        build_dataset(cfg, "train")
    message = str(err.value)
    assert "'data.dataset'" in message and "'refcocoo'" in message
    assert "did you mean 'refcoco'" in message


# ----------------------------------------------------------------------------------------------
# A new dataset: interface, build_dataset, the pipeline
# ----------------------------------------------------------------------------------------------
def test_the_interface_members_are_what_the_code_reads():
    assert missing_members(object()) == MEMBERS  # nothing has them by accident, and the list is pinned
    assert isinstance(ToyDataset("train"), ReferringDataset) and missing_members(ToyDataset("train")) == []


@pytest.mark.parametrize("name", MEMBERS)
def test_a_dataset_missing_a_member_does_not_conform(name, monkeypatch):
    partial_cls = without(name)
    partial = partial_cls("train")
    assert not isinstance(partial, ReferringDataset)
    assert missing_members(partial) == [name]
    # build_dataset refuses it by name, before a pipeline worker trips over the missing member (the registry
    # entry is swapped for this test only; Registry has no public way to replace one, on purpose).
    monkeypatch.setitem(DATASETS._entries, "toy-registry-test", partial_cls)
    with pytest.raises(TypeError, match=rf"does not implement {name} of src\.data\.base\.ReferringDataset"):
        build_dataset(toy_config(), "train")


def test_a_toy_dataset_goes_through_build_dataset_and_the_pipeline():
    from src.data.dataset import create_refer_dataset
    from src.engine.diagnostics import ProbeSet

    toy = build_dataset(toy_config(), "train")
    assert type(toy) is ToyDataset and isinstance(toy, ReferringDataset)
    # Training with the other objects' masks and the category labels: reads every member but with_swapped_sentences.
    data = create_refer_dataset(toy, ToyTokenizer(), S, batch_size=2, train=True, num_workers=1,
                                python_multiprocessing=False, max_other_objects=1, num_classes=2)
    batch = next(data.create_dict_iterator(num_epochs=1, output_numpy=True))
    assert batch["image"].shape == (2, 3, S, S) and batch["image"].dtype == np.float32
    assert batch["input_ids"].shape == (2, T) and batch["attention_mask"].shape == (2, T)
    assert batch["mask"].shape == (2, S, S) and set(np.unique(batch["mask"])) == {0.0, 1.0}
    assert batch["bad"].tolist() == [0, 0]
    assert batch["others"].shape == (2, 1, S, S) and batch["others"].reshape(2, -1).max(axis=1).tolist() == [1, 1]
    assert batch["categories"].shape == (2, 2) and sorted(batch["categories"][0].tolist()) == [0, 1]
    # Evaluation of the grounding control: every sample once, with its index.
    control = toy.with_swapped_sentences()
    indices = np.concatenate([b["index"] for b in create_refer_dataset(
        control, ToyTokenizer(), S, batch_size=3, train=False, num_workers=1,
        python_multiprocessing=False).create_dict_iterator(num_epochs=1, output_numpy=True)])
    assert sorted(i for i in indices.tolist() if i >= 0) == list(range(len(control.samples())))
    # The training-health probe set: two images with two referred objects each.
    assert len(ProbeSet.from_refer(toy, ToyTokenizer(), S, max_pairs=2)) == 4
