"""Prepare and check the RefCOCO / RefCOCO+ / RefCOCOg data and the pretrained weights.

    python tools/prepare_data.py [check] --data_root DATA [--expect published|none] [--all_images]
    python tools/prepare_data.py link --lavt_root LAVT-RIS --data_root DATA
    python tools/prepare_data.py weights [--swin swin_base_patch4_window12_384_22k.pth] [--bert bert-base-uncased/]

check (the default): reads every refs(<split_by>).p and instances.json of the refer layout
(docs/method.md) that is present under DATA, counts refs and sentences per split through the
project's loader (src/data/refer.py), compares them with the published numbers, checks that every
ref's ann_id/image_id is in instances.json and that the referenced images are present and decode
with OpenCV (a sample; --all_images decodes all). Exit status: 0 all good, 1 broken or missing
files, 2 bad arguments, 3 the files are sound but their counts differ from the published ones
(a synthetic tree: use --expect none).

link: makes DATA point into an existing LAVT-style tree (LAVT-RIS/refer/data/...) with symlinks.

weights: converts the official Swin and HF BERT weights into the paths default_config.yaml reads.

Where things are published:
  COCO train2014 images   http://images.cocodataset.org/zips/train2014.zip (13 GB)
  refer annotations       https://github.com/lichengunc/refer (refcoco.zip, refcoco+.zip, refcocog.zip)
  Swin-B 22k, window 12   https://github.com/SwinTransformer/storage/releases/download/v1.0.0/swin_base_patch4_window12_384_22k.pth
  BERT-base uncased       https://huggingface.co/google-bert/bert-base-uncased (formerly bert-base-uncased)
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Set, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # `python tools/prepare_data.py` from anywhere
    sys.path.insert(0, ROOT)

from src.data.refer import (IMAGE_SUBDIR, SAMPLE_ERRORS, VALID_SPLITS, ReferDataset, _load_pickle,  # noqa: E402
                            read_image_rgb)
from src.errors import ConfigError, CoupAlignError, DataError  # noqa: E402

COCO_IMAGES_URL = "http://images.cocodataset.org/zips/train2014.zip"
REFER_URL = "https://github.com/lichengunc/refer"
SWIN_URL = ("https://github.com/SwinTransformer/storage/releases/download/v1.0.0/"
            "swin_base_patch4_window12_384_22k.pth")
BERT_URL = "https://huggingface.co/google-bert/bert-base-uncased"

DISPLAY_NAMES = {"refcoco": "RefCOCO", "refcoco+": "RefCOCO+", "refcocog": "RefCOCOg"}

# Published (refs, sentences) per split; None = no published number found. Sources, looked up for
# this tool (2026-12) with the project's search tool:
# * refs, every split listed: the Hugging Face dataset cards jxu124/refcoco, jxu124/refcocoplus and
#   jxu124/refcocog (one row per ref; those cards call testA "test"); RefCOCO unc train/val and
#   RefCOCO google train/val/test also in the TensorFlow Datasets catalog page "ref_coco". Each
#   dataset's refs add up to its published object count (50,000 RefCOCO, 49,856 RefCOCO+).
# * RefCOCO (unc) sentences per split: FlagEval's RefCOCO page (train 120624, validation 10834,
#   testA 5657, testB 5095).
# * RefCOCO+ (unc) sentences: NOT verified per split. Only their sum, 141,564, is confirmed: it is
#   the published number of RefCOCO+ expressions (Yu et al., ECCV 2016).
# * RefCOCOg (umd) sentences: NOT verified per split. Only their sum, 95,010, is confirmed: the
#   train+val+test total of the umd partition quoted in luogen1996/MCN issue #7.
# * RefCOCO google sentences and everything of RefCOCOg google: no published per-split numbers
#   found, so those splits are counted but not compared.
PUBLISHED: Dict[Tuple[str, str], Dict[str, Tuple[int, Optional[int]]]] = {
    ("refcoco", "unc"): {"train": (42404, 120624), "val": (3811, 10834),
                         "testA": (1975, 5657), "testB": (1810, 5095)},
    ("refcoco", "google"): {"train": (40000, None), "val": (5000, None), "test": (5000, None)},
    ("refcoco+", "unc"): {"train": (42278, 120191), "val": (3805, 10758),
                          "testA": (1975, 5726), "testB": (1798, 4889)},
    ("refcocog", "umd"): {"train": (42226, 80512), "val": (2573, 4896), "test": (5023, 9602)},
}

EXIT_OK, EXIT_BROKEN, EXIT_USAGE, EXIT_COUNTS_DIFFER = 0, 1, 2, 3

# image path -> (image_id, (height, width) in instances.json). Only this is kept of each loaded split:
# a ReferDataset holds all of instances.json (~200k annotations for RefCOCO), one copy per split.
ImageIndex = Dict[str, Tuple[int, Tuple[int, int]]]
MAX_LISTED = 3  # examples quoted per problem; the count says how many there are


# ----------------------------------------------------------------------------------------------
# check
# ----------------------------------------------------------------------------------------------
@dataclass
class Row:
    """One line of the summary table."""

    dataset: str
    split_by: str
    split: str = "-"
    refs: Optional[int] = None
    sentences: Optional[int] = None
    expected: str = "-"
    status: str = "ok"


@dataclass
class Report:
    data_root: str
    rows: List[Row] = field(default_factory=list)
    errors: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    images_line: str = ""
    counts_differ: bool = False
    unchecked_images: List[str] = field(default_factory=list)  # refs files whose images were not checked

    @property
    def exit_code(self) -> int:
        if self.errors:
            return EXIT_BROKEN
        return EXIT_COUNTS_DIFFER if self.counts_differ else EXIT_OK


def _examples(items: Sequence[str]) -> str:
    shown = "; ".join(items[:MAX_LISTED])
    return shown + (f"; ... ({len(items) - MAX_LISTED} more)" if len(items) > MAX_LISTED else "")


def _as_int(value) -> Optional[int]:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _read_instance_index(path: str) -> Tuple[Set[int], Dict[int, int], bool]:
    """(image ids, ann_id -> image_id, whether the file calls itself synthetic) of an instances.json.

    Only the ids: the full parse (segmentations, sizes) is left to ReferDataset, which the check
    runs afterwards so that what passes here is exactly what training reads."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            instances = json.load(f)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: invalid JSON ({exc})") from exc
    if not isinstance(instances, dict) or not all(isinstance(instances.get(k), list)
                                                  for k in ("images", "annotations")):
        raise DataError(f"{path}: expected a COCO-style JSON object with 'images' and 'annotations' lists")
    image_ids = {_as_int(im.get("id")) for im in instances["images"] if isinstance(im, dict)}
    ann_image = {_as_int(a.get("id")): _as_int(a.get("image_id"))
                 for a in instances["annotations"] if isinstance(a, dict)}
    info = instances.get("info")
    synthetic = isinstance(info, dict) and str(info.get("description", "")).startswith("synthetic")
    return image_ids, ann_image, synthetic


def _compare(dataset: str, split_by: str, split: str, refs: int, sentences: int,
             expect: str) -> Tuple[str, str, bool]:
    """(expected column, status column, counts differ) for one split."""
    if expect == "none":
        return "-", "ok", False
    published = PUBLISHED.get((dataset, split_by), {}).get(split)
    if published is None:
        return "n/a", "ok (no published count)", False
    want_refs, want_sentences = published
    expected = f"{want_refs:,} / " + (f"{want_sentences:,}" if want_sentences is not None else "?")
    if refs == want_refs and want_sentences in (None, sentences):
        return expected, "ok", False
    return expected, f"WARN counts differ from the published {DISPLAY_NAMES[dataset]} numbers", True


def _check_refs_file(report: Report, data_root: str, dataset: str, split_by: str, refs_path: str,
                     instances_path: str, index: Tuple[Set[int], Dict[int, int], bool],
                     expect: str) -> ImageIndex:
    """Checks one refs(<split_by>).p against its instances.json; returns the images of the splits the
    loader read."""
    image_ids, ann_image, synthetic = index
    splits = VALID_SPLITS[dataset][split_by]

    def fail_all(message: str) -> ImageIndex:
        report.errors.append(message)
        report.unchecked_images.append(refs_path)
        report.rows.extend(Row(dataset, split_by, s, status="FAIL (see below)") for s in splits)
        return {}

    try:
        refs = _load_pickle(refs_path)
    except Exception as exc:  # a truncated or foreign file: name it, whatever the unpickler raised
        return fail_all(f"{refs_path}: cannot unpickle refs ({type(exc).__name__}: {exc})")
    if not isinstance(refs, list):
        return fail_all(f"{refs_path}: expected a pickled list of refs, got {type(refs).__name__}")

    # One pass over every ref of every split: the loader stops at the first bad ref, this lists them all.
    in_file: Counter = Counter()
    bad: List[str] = []
    for position, ref in enumerate(refs):
        if not isinstance(ref, dict) or "split" not in ref:
            bad.append(f"ref #{position} is not a dict with a 'split' field")
            continue
        in_file[str(ref["split"])] += 1
        ann_id, image_id = _as_int(ref.get("ann_id")), _as_int(ref.get("image_id"))
        where = f"ref_id {ref.get('ref_id')}"
        if ann_id not in ann_image:
            bad.append(f"{where}: ann_id {ref.get('ann_id')} is absent from annotations")
        elif image_id not in image_ids:
            bad.append(f"{where}: image_id {ref.get('image_id')} is absent from images")
        elif ann_image[ann_id] != image_id:
            bad.append(f"{where}: image_id {image_id} differs from annotation {ann_id}'s image_id {ann_image[ann_id]}")
    if bad:
        return fail_all(f"{refs_path}: {len(bad)} of {len(refs)} refs do not match {instances_path}: {_examples(bad)}")

    images: ImageIndex = {}
    differing = []
    for split in splits:
        try:
            refer = ReferDataset(data_root, dataset, split_by, split)
        except (ValueError, FileNotFoundError) as exc:  # the loader's own message names file and field
            report.errors.append(str(exc))
            report.rows.append(Row(dataset, split_by, split, status="FAIL (see below)"))
            report.unchecked_images.append(f"{refs_path} ({split})")
            continue
        n_refs, n_sentences = len(refer), len(refer.samples())
        expected, status, differs = _compare(dataset, split_by, split, n_refs, n_sentences, expect)
        report.rows.append(Row(dataset, split_by, split, n_refs, n_sentences, expected, status))
        if differs:
            differing.append(split)
        for image_id in refer.image_ids:
            images[refer.image_path(image_id)] = (image_id, refer.image_size(image_id))
    if differing:
        report.counts_differ = True
        hint = (f"; {instances_path} describes itself as synthetic: use --expect none" if synthetic
                else "; a different release of the annotations, or a partial download?")
        report.warnings.append(f"{refs_path}: refs/sentences of {', '.join(differing)} differ from the published "
                               f"{DISPLAY_NAMES[dataset]} ({split_by}) numbers in the table{hint}")
    for split in sorted(set(in_file) - set(splits)):
        report.rows.append(Row(dataset, split_by, split, in_file[split], None, "-", "WARN not read by the loader"))
        report.warnings.append(f"{refs_path}: {in_file[split]} refs have split '{split}', which the loader "
                               f"does not read (valid for {dataset}({split_by}): {list(splits)})")
    return images


def _check_dataset(report: Report, data_root: str, dataset: str, expect: str,
                   required: Set[Tuple[str, str]]) -> ImageIndex:
    """Checks <data_root>/<dataset>/: which refs files are there, and each one that is."""
    ann_dir = os.path.join(data_root, dataset)
    refs_paths = {sb: os.path.join(ann_dir, f"refs({sb}).p") for sb in VALID_SPLITS[dataset]}
    present = [sb for sb, path in refs_paths.items() if os.path.isfile(path)]

    def absent(split_by: str, why: str) -> None:
        if (dataset, split_by) in required:
            report.errors.append(f"{refs_paths[split_by]} not found, and --require {dataset}/{split_by} asks for it")
            report.rows.append(Row(dataset, split_by, status="FAIL missing (required)"))
        else:
            report.rows.append(Row(dataset, split_by, status=f"absent ({why})"))

    if not os.path.isdir(ann_dir):
        for split_by in refs_paths:
            absent(split_by, f"no {dataset}/ directory")
        return {}
    if not present:  # a dataset directory without any refs file is a broken download, not an absent dataset
        report.errors.append(f"{ann_dir}/ holds no refs file: expected " + " or ".join(refs_paths.values()))
        report.rows.extend(Row(dataset, sb, status="FAIL missing") for sb in refs_paths)
        return {}
    instances_path = os.path.join(ann_dir, "instances.json")
    if not os.path.isfile(instances_path):
        report.errors.append(f"{instances_path} not found; expected it beside {refs_paths[present[0]]}")
        report.rows.extend(Row(dataset, sb, status="FAIL (see below)") for sb in present)
        return {}
    try:
        index = _read_instance_index(instances_path)
    except (ValueError, OSError) as exc:
        report.errors.append(str(exc))
        report.rows.extend(Row(dataset, sb, status="FAIL (see below)") for sb in present)
        return {}

    images: ImageIndex = {}
    for split_by, refs_path in refs_paths.items():
        if split_by in present:
            images.update(_check_refs_file(report, data_root, dataset, split_by, refs_path, instances_path,
                                           index, expect))
        else:
            absent(split_by, f"no refs({split_by}).p; needed only for --split_by {split_by}")
    return images


def _image_problem(path: str, image_id: int, size: Tuple[int, int]) -> Optional[str]:
    """None when the image decodes as the loader decodes it, at its instances.json size, else why not
    (the test of ReferDataset.load_image, without holding a ReferDataset)."""
    try:
        decoded = read_image_rgb(path).shape[:2]
    except SAMPLE_ERRORS as exc:
        return str(exc)
    if decoded != size:
        return f"{path}: decoded size {decoded} differs from instances.json height/width {size} of image_id {image_id}"
    return None


def _check_images(report: Report, data_root: str, wanted: ImageIndex, all_images: bool, sample: int,
                  workers: int) -> None:
    image_dir = os.path.join(data_root, IMAGE_SUBDIR)
    if not os.path.isdir(image_dir):
        report.errors.append(f"{image_dir} not found; expected the COCO train2014 images "
                             f"(COCO_train2014_<12-digit id>.jpg, from {COCO_IMAGES_URL}) there")
        report.images_line = "images: not checked (no image directory)"
        return
    paths = sorted(wanted)  # keyed by path: images shared by RefCOCO, RefCOCO+ and RefCOCOg are checked once
    # Presence is a stat per file (cheap for all ~25k); decoding is the slow part, hence the sample.
    exists = {p: os.path.isfile(p) for p in paths}
    missing = [p for p in paths if not exists[p]]
    present = [p for p in paths if exists[p]]
    chosen = present if all_images else sorted(random.Random(0).sample(present, min(sample, len(present))))
    with ThreadPoolExecutor(max(1, workers)) as pool:  # OpenCV decodes without holding the GIL
        problems = list(pool.map(lambda p: _image_problem(p, *wanted[p]), chosen))
    unreadable = [problem for problem in problems if problem is not None]

    if missing:
        report.errors.append(f"{len(missing)} of {len(paths)} images referenced by the refs are missing from "
                             f"{image_dir}: {_examples(missing)}")
    if unreadable:
        report.errors.append(f"{len(unreadable)} of {len(chosen)} decoded images cannot be used: "
                             f"{_examples(unreadable)}")
    scope = "all" if all_images or len(chosen) == len(present) else f"a sample of {len(chosen)} (--all_images: all)"
    report.images_line = (f"images: {len(paths)} referenced, {len(present)} present, {len(chosen)} decoded with "
                          f"OpenCV [{scope}], {len(unreadable)} unreadable")
    if report.unchecked_images:  # the images come from the loader, which did not read these
        report.images_line += (f"; not checked: the images of {', '.join(report.unchecked_images)} "
                               f"(fix the errors below first)")


def check_tree(data_root: str, expect: str = "published", all_images: bool = False, sample: int = 256,
               require: Sequence[str] = (), workers: int = 4) -> Report:
    """Checks a refer tree; returns the report (rows, errors, warnings) without printing it."""
    required = set()
    for item in require:
        dataset, _, split_by = item.partition("/")
        if dataset not in VALID_SPLITS or split_by not in VALID_SPLITS[dataset]:
            valid = [f"{d}/{s}" for d in VALID_SPLITS for s in VALID_SPLITS[d]]
            raise ConfigError(f"--require {item!r}: expected DATASET/SPLIT_BY, one of {valid}")
        required.add((dataset, split_by))
    if not os.path.isdir(data_root):
        raise FileNotFoundError(f"--data_root {data_root}: directory not found")

    report = Report(data_root)
    images: ImageIndex = {}
    for dataset in VALID_SPLITS:
        images.update(_check_dataset(report, data_root, dataset, expect, required))
    if not any(os.path.isdir(os.path.join(data_root, d)) for d in VALID_SPLITS):
        report.errors.append(f"{data_root}: no refer annotations; expected at least one of "
                             + ", ".join(f"{data_root}/{d}/" for d in VALID_SPLITS)
                             + " (see the layout in docs/method.md)")
    _check_images(report, data_root, images, all_images, sample, workers)
    return report


def format_report(report: Report) -> str:
    header = ("dataset", "split_by", "split", "refs", "sentences", "expected (refs / sentences)", "status")

    def number(value: Optional[int]) -> str:
        return "-" if value is None else f"{value:,}"

    table = [header] + [(DISPLAY_NAMES[r.dataset], r.split_by, r.split, number(r.refs), number(r.sentences),
                         r.expected, r.status) for r in report.rows]
    widths = [max(len(line[k]) for line in table) for k in range(len(header) - 1)]
    lines = [f"refer tree: {os.path.abspath(report.data_root)}"]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(line[:-1], widths)) + "  " + line[-1] for line in table]
    lines.append(report.images_line)
    lines += [f"warning: {w}" for w in report.warnings]
    lines += [f"error: {e}" for e in report.errors]
    if report.errors:
        lines.append(f"result: FAILED ({len(report.errors)} error(s))")
    elif report.counts_differ:
        lines.append("result: the files are readable, but counts differ from the published numbers "
                     "(--expect none skips the comparison)")
    else:
        lines.append("result: OK")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# link
# ----------------------------------------------------------------------------------------------
LAVT_IMAGES = os.path.join("images", "mscoco", "images", "train2014")  # inside LAVT-RIS/refer/data


def _find_refer_data(lavt_root: str) -> str:
    """LAVT-RIS/refer/data, given the repository root or that directory itself."""
    for candidate in (os.path.join(lavt_root, "refer", "data"), lavt_root):
        if os.path.isdir(os.path.join(candidate, LAVT_IMAGES)) or any(
                os.path.isdir(os.path.join(candidate, d)) for d in VALID_SPLITS):
            return candidate
    raise FileNotFoundError(
        f"--lavt_root {lavt_root}: no LAVT refer tree; expected {os.path.join(lavt_root, 'refer', 'data', LAVT_IMAGES)}"
        f"/ and {os.path.join(lavt_root, 'refer', 'data', 'refcoco')}/ (the layout of LAVT-RIS's README)")


def _link_needed(src: str, dst: str) -> bool:
    """False when dst already is src (our link, or the same file); raises when dst is something else."""
    parent = os.path.dirname(dst)
    if os.path.islink(parent) and not os.path.samefile(parent, os.path.dirname(src)):
        # A symlinked <data_root>/<dataset>/ pointing elsewhere: a link made here would land in that tree.
        raise FileExistsError(f"{parent} is a link to {os.readlink(parent)}, not {os.path.dirname(src)}; "
                              f"move it away or choose another --data_root (nothing was changed)")
    if not os.path.lexists(dst):
        return True
    if os.path.exists(dst) and os.path.samefile(src, dst):
        return False
    if os.path.islink(dst):
        what = f"a link to {os.readlink(dst)}"
    else:
        what = "a different directory" if os.path.isdir(dst) else "a different file"
    raise FileExistsError(f"{dst} already exists and is {what}, not {src}; move it away or choose another "
                          f"--data_root (nothing was changed)")


def link_tree(lavt_root: str, data_root: str) -> List[str]:
    """Symlinks data_root's layout into an LAVT tree; returns one line per link (made or already there)."""
    refer_data = _find_refer_data(lavt_root)
    images = os.path.join(refer_data, LAVT_IMAGES)
    if not os.path.isdir(images):
        raise FileNotFoundError(f"{images}/ not found; expected the COCO train2014 images there "
                                f"(LAVT's README: extract train2014.zip into refer/data/images/mscoco/images)")
    plan = [(images, os.path.join(data_root, IMAGE_SUBDIR))]
    for dataset, split_bys in VALID_SPLITS.items():
        # One link per file rather than per dataset directory, so a <data_root>/<dataset>/ that already
        # holds other files is kept.
        for name in ["instances.json"] + [f"refs({sb}).p" for sb in split_bys]:
            src = os.path.join(refer_data, dataset, name)
            if os.path.isfile(src):
                plan.append((src, os.path.join(data_root, dataset, name)))
    if len(plan) == 1:
        raise FileNotFoundError(f"{refer_data}: no refer annotations; expected e.g. "
                                f"{os.path.join(refer_data, 'refcoco', 'instances.json')} and refs(unc).p beside it")

    todo = [(src, dst) for src, dst in plan if _link_needed(src, dst)]  # all refusals before any change
    for src, dst in todo:
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        os.symlink(os.path.abspath(src), dst, target_is_directory=os.path.isdir(src))
    made = set(todo)
    return [f"{'linked' if (src, dst) in made else 'already linked'}  {dst} -> {os.path.abspath(src)}"
            for src, dst in plan]


# ----------------------------------------------------------------------------------------------
# weights
# ----------------------------------------------------------------------------------------------
def weight_destinations(config_path: str):
    """(swin section, swin checkpoint path, bert checkpoint path) that `config_path` trains from.

    Relative paths in a config file are relative to the repository root, where every launcher runs
    (src/config/, PATH_KEYS)."""
    from src.config import load_config  # no MindSpore import

    cfg = load_config(config_path)

    def resolve(path: str, key: str) -> str:
        if not path:
            raise ConfigError(f"{config_path}: {key} is empty; set it to the checkpoint path to write, "
                              f"or pass the destination explicitly")
        return path if os.path.isabs(path) else os.path.join(ROOT, path)

    return (cfg.model.swin, resolve(cfg.model.swin.pretrained, "model.swin.pretrained"),
            resolve(cfg.model.bert.pretrained, "model.bert.pretrained"))


def convert_weights(config_path: str, swin: Optional[str], bert: Optional[str],
                    swin_dst: Optional[str] = None, bert_dst: Optional[str] = None) -> int:
    if not swin and not bert:
        raise ConfigError(f"nothing to convert: pass --swin (official release: {SWIN_URL}) and/or --bert "
                          f"(an HF directory, e.g. a download of {BERT_URL})")
    for flag, path in (("--swin", swin), ("--bert", bert)):
        if path and not os.path.exists(path):
            raise FileNotFoundError(f"{flag} {path}: not found")
    section, config_swin, config_bert = weight_destinations(config_path)
    code = EXIT_OK
    # The converters import MindSpore (seconds): only when weights are actually converted.
    if swin:
        from tools import convert_swin

        dst = swin_dst or config_swin
        os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
        argv = ["--src", swin, "--dst", dst, "--preset", section.preset, "--window_size", str(section.window_size)]
        for name in ("embed_dim", "depths", "num_heads"):  # explicit architecture fields override the preset
            value = getattr(section, name)
            if value is not None:
                argv += [f"--{name}", ",".join(map(str, value)) if isinstance(value, list) else str(value)]
        print(f"[weights] Swin: {swin} -> {dst}")
        code = max(code, convert_swin.main(argv))
    if bert:
        from tools import convert_bert

        dst = bert_dst or config_bert
        print(f"[weights] BERT: {bert} -> {dst}")
        code = max(code, convert_bert.main(["--src", bert, "--dst", dst]))
    if code == EXIT_OK:
        for given, default, key in ((swin_dst, config_swin, "model.swin.pretrained"),
                                    (bert_dst, config_bert, "model.bert.pretrained")):
            if given and os.path.abspath(given) != os.path.abspath(default):
                print(f"[weights] note: {config_path} reads {key}={default}; pass --{key}={given} to train.py")
    return code


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------
COMMANDS = ("check", "link", "weights")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tools/prepare_data.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", metavar="{check,link,weights}")

    check = commands.add_parser("check", help="check a refer tree (the default command)",
                                description=__doc__.split("\n\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    check.add_argument("--data_root", required=True, help="holds images/train2014/ and refcoco/, refcoco+/, refcocog/")
    check.add_argument("--expect", choices=("published", "none"), default="published",
                       help="compare the counts with the published numbers (default) or not (synthetic data)")
    check.add_argument("--all_images", action="store_true", help="decode every referenced image, not a sample")
    check.add_argument("--sample", type=int, default=256, help="images decoded without --all_images (default 256)")
    check.add_argument("--require", action="append", default=[], metavar="DATASET/SPLIT_BY",
                       help="fail when this refs file is absent, e.g. refcoco/unc (repeatable)")
    check.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="decoding threads")

    link = commands.add_parser("link", help="symlink our layout into an LAVT-style tree",
                               description="Creates <data_root>/images/train2014 -> <lavt>/refer/data/images/mscoco/"
                                           "images/train2014 and <data_root>/<dataset>/<file> -> <lavt>/refer/data/"
                                           "<dataset>/<file> for instances.json and every refs(<split_by>).p. "
                                           "Idempotent; refuses to replace a different existing file.")
    link.add_argument("--lavt_root", required=True, help="the LAVT-RIS checkout (or its refer/data directory)")
    link.add_argument("--data_root", required=True, help="our data root to create or complete")

    weights = commands.add_parser(
        "weights", help="convert the pretrained Swin / BERT weights into the paths the config reads",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=("Runs tools/convert_swin.py and tools/convert_bert.py into model.swin.pretrained and\n"
                     "model.bert.pretrained of --config_path (relative paths: from the repository root).\n\n"
                     f"  Swin-B (ImageNet-22k, window 12, 384): {SWIN_URL}\n"
                     f"  BERT-base uncased (config.json, weights, vocab.txt): {BERT_URL}"))
    weights.add_argument("--swin", help="official Swin .pth (or timm .pth/.safetensors) to convert")
    weights.add_argument("--bert", help="HF BERT directory (config.json + model.safetensors/pytorch_model.bin + vocab.txt)")
    weights.add_argument("--config_path", default=os.path.join(ROOT, "default_config.yaml"),
                         help="config whose model.swin/model.bert sections give the architecture and destinations")
    weights.add_argument("--swin_dst", help="write the Swin checkpoint here instead of model.swin.pretrained")
    weights.add_argument("--bert_dst", help="write the BERT checkpoint here instead of model.bert.pretrained")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help")):
        argv = ["check"] + argv  # check is the default command
    args = _parser().parse_args(argv)
    try:
        if args.command == "check":
            report = check_tree(args.data_root, args.expect, args.all_images, args.sample, args.require, args.workers)
            print(format_report(report))
            return report.exit_code
        if args.command == "link":
            for line in link_tree(args.lavt_root, args.data_root):
                print(line)
            print(f"next: python tools/prepare_data.py check --data_root {args.data_root}")
            return EXIT_OK
        return convert_weights(args.config_path, args.swin, args.bert, args.swin_dst, args.bert_dst)
    except (CoupAlignError, OSError) as exc:  # user errors: one line naming the file; a bug keeps its traceback
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    from src.utils.cli import run_main

    run_main(main)
