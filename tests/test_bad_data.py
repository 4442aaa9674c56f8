"""Bad files in a real refer-format tree: a missing image, a truncated JPEG and an empty segmentation.
Training skips and counts them (and aborts past data.max_bad_samples); evaluation stops with the file
named, or skips and lists them with --skip_bad_samples true. Never a MindSpore traceback."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

from test_entry_scripts import ROOT, tiny_config


def _corrupt(root):
    """Breaks three training images' worth of samples and one validation image; returns what was broken."""
    from src.data.refer import ReferDataset

    train = ReferDataset(root, "refcoco", "unc", "train")
    val = ReferDataset(root, "refcoco", "unc", "val")
    image_ids = train.image_ids
    missing, truncated = train.image_path(image_ids[1]), train.image_path(image_ids[3])
    os.remove(missing)
    data = open(truncated, "rb").read()
    open(truncated, "wb").write(data[:300])  # a real JPEG cut off after its headers
    empty_ref = next(r for r in train.refs if r.image_id not in (image_ids[1], image_ids[3]))
    instances_path = os.path.join(root, "refcoco", "instances.json")
    instances = json.load(open(instances_path))
    for ann in instances["annotations"]:
        if ann["id"] == empty_ref.ann_id:
            ann["segmentation"] = []
    json.dump(instances, open(instances_path, "w"))
    bad_val = val.image_path(val.image_ids[0])
    open(bad_val, "wb").write(open(bad_val, "rb").read()[:300])

    bad_images = {image_ids[1], image_ids[3]}
    bad_train_refs = [r for r in train.refs if r.image_id in bad_images or r.ann_id == empty_ref.ann_id]
    bad_val_samples = [s for s in val.samples() if s.image_id == val.image_ids[0]]
    return {"missing": missing, "truncated": truncated, "empty_ann": empty_ref.ann_id, "bad_val": bad_val,
            "bad_train_refs": bad_train_refs, "bad_val_samples": bad_val_samples, "num_train_refs": len(train.refs)}


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    from src.data.synthetic import generate_synthetic_refer

    base = tmp_path_factory.mktemp("bad_data")
    root = str(base / "data")
    generate_synthetic_refer(root, num_images=16, seed=3)
    facts = _corrupt(root)
    return {"root": root, "base": base, **facts}


def _tokenizer():
    from src.data.tokenizer import BertTokenizer
    from test_entry_scripts import _vocab_path

    return BertTokenizer(_vocab_path(), max_tokens=12)


def test_source_replaces_bad_training_samples_and_flags_bad_evaluation_samples(broken):
    from src.data.dataset import ReferSource
    from src.data.refer import ReferDataset

    refer = ReferDataset(broken["root"], "refcoco", "unc", "train")
    bad_ids = {r.ref_id for r in broken["bad_train_refs"]}
    bad = [i for i, s in enumerate(refer.samples()) if s.ref_id in bad_ids]
    good = [i for i, s in enumerate(refer.samples()) if s.ref_id not in bad_ids]
    assert bad and good
    train_source, eval_source = ReferSource(refer, _tokenizer(), 32, train=True), ReferSource(refer, _tokenizer(), 32, train=False)
    for i in bad:
        replacement = next(j for j in range(i, len(refer.samples())) if j not in bad)
        image, ids, att, mask, flag, _, _ = train_source[i]
        assert int(flag) == ReferSource.REPLACED
        expected = train_source[replacement]
        np.testing.assert_array_equal(image, expected[0])
        np.testing.assert_array_equal(mask, expected[3])
        np.testing.assert_array_equal(ids, expected[1])
        image, ids, att, mask, flag, _, _, index = eval_source[i]
        assert int(flag) == 1 and int(index) == i and not image.any() and not mask.any()
    for i in good[:5]:
        assert int(train_source[i][4]) == 0 and int(eval_source[i][4]) == 0
    # no good sample within reach: a zero placeholder the trainer aborts on, never an exception in a worker
    train_source.MAX_ATTEMPTS = 1
    image, _, _, mask, flag, _, _ = train_source[bad[0]]
    assert int(flag) == ReferSource.UNREPLACEABLE and not image.any() and not mask.any()


def _config(broken, name, batch_size=4, **data):
    cfg = tiny_config(broken["root"], str(broken["base"] / name))
    cfg["data"].update(data)
    # one epoch over every ref, so every broken training sample is met
    cfg["train"].update(max_steps=0, epochs=1, batch_size=batch_size, validate=False)
    path = str(broken["base"] / f"{name}.yaml")
    yaml.safe_dump(cfg, open(path, "w"))
    return path


def _run(script, *args):
    return subprocess.run([sys.executable, script, *args], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, GLOG_v="3"))


@pytest.fixture(scope="module")
def training_runs(broken):
    """Two train.py runs on the broken tree, side by side: a lenient one (limit 100) and a strict one (limit 0).
    The strict one takes every ref in its first batch, so it meets a broken sample, and must stop, before its
    first step: the limit is checked before a batch is trained on, and that step's graph compilation (most of a
    run of this size, ~1 CPU-minute) would test nothing. -> {name: (config path, CompletedProcess)}."""
    started = {}
    for name, limit, batch_size in (("skip", 100, 4), ("strict", 0, broken["num_train_refs"])):
        config = _config(broken, name, batch_size=batch_size, max_bad_samples=limit)
        started[name] = (config, subprocess.Popen([sys.executable, "train.py", "--config_path", config], cwd=ROOT,
                                                  env=dict(os.environ, GLOG_v="3"), stdout=subprocess.PIPE,
                                                  stderr=subprocess.PIPE, text=True))
    done = {}
    for name, (config, proc) in started.items():
        stdout, stderr = proc.communicate(timeout=600)
        done[name] = (config, subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
    return done


@pytest.fixture(scope="module")
def trained_on_broken_data(training_runs):
    return training_runs["skip"]


def test_training_skips_and_counts_bad_samples(broken, trained_on_broken_data):
    config, proc = trained_on_broken_data
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = broken["base"] / "skip"
    log = open(out / "train.log").read()
    for needle in (broken["missing"], broken["truncated"], f"annotation {broken['empty_ann']} segmentation: empty"):
        assert needle in log, needle
    assert "skipped" in log and "unreadable training sample" in log
    records = [json.loads(line) for line in open(out / "train_log.jsonl")]
    assert records[0]["type"] == "run" and records[0]["seed"] == 0
    counted = records[-1]["bad_samples"]
    # one sentence per ref and epoch: every broken ref is met once; the last incomplete batch is dropped
    dropped = broken["num_train_refs"] % 4
    assert len(broken["bad_train_refs"]) - dropped <= counted <= len(broken["bad_train_refs"])
    assert counted > 0


def test_training_aborts_past_the_bad_sample_limit(training_runs):
    _, proc = training_runs["strict"]
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "could not be loaded (limit data.max_bad_samples=0)" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_evaluation_names_the_bad_file_or_skips_it_on_request(broken, trained_on_broken_data, tmp_path):
    config, proc = trained_on_broken_data
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = str(broken["base"] / "skip" / "checkpoints" / "step_{:08d}.ckpt".format(broken["num_train_refs"] // 4))
    args = ("--config_path", config, "--checkpoint_path", ckpt, "--eval.split", "val")
    strict = _run("eval.py", *args, "--output_dir", str(tmp_path / "strict"))
    assert strict.returncode == 2, strict.stderr[-3000:]
    assert broken["bad_val"] in strict.stderr and "--skip_bad_samples true" in strict.stderr
    assert "Traceback" not in strict.stderr

    lenient = _run("eval.py", *args, "--skip_bad_samples", "true", "--output_dir", str(tmp_path / "lenient"))
    assert lenient.returncode == 0, lenient.stderr[-3000:]
    metrics = json.load(open(tmp_path / "lenient" / "metrics.json"))
    bad = broken["bad_val_samples"]
    assert metrics["num_skipped"] == len(bad) > 0
    assert {(s["ref_id"], s["sent_id"]) for s in metrics["skipped"]} == {(s.ref_id, s.sent_id) for s in bad}
    assert all(broken["bad_val"] in s["reason"] for s in metrics["skipped"])
    from src.data.refer import ReferDataset

    assert metrics["num_samples"] == len(ReferDataset(broken["root"], "refcoco", "unc", "val").samples()) - len(bad)
    assert "unreadable samples skipped" in lenient.stdout
