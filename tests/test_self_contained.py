"""A trained checkpoint is enough to use the model: eval.py, infer.py, export.py and preprocess.py run
from it alone, in a directory with no pretrained/ and no config file, when the files its training config
names are on another machine; best.ckpt carries no optimizer state; tools/strip_checkpoint.py releases
the weights alone."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

import mindspore as ms

from test_entry_scripts import ROOT


def _run(args, cwd, expect=0):
    proc = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, GLOG_v="3"))
    assert proc.returncode == expect, f"{args[0]} exited {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def _as_if_trained_elsewhere(src, dst):
    """A copy of checkpoint `src` whose stored config names the files of another machine (vocabulary,
    pretrained BERT, data): what a user gets with a checkpoint trained on a cluster."""
    entries = ms.load_checkpoint(src)
    cfg = yaml.safe_load(entries.pop("config_yaml"))
    cfg["model"]["bert"].update(vocab_path="/cluster/pretrained/vocab.txt", pretrained="/cluster/pretrained/bert.ckpt")
    cfg["data"]["data_root"] = "/cluster/data/refer"
    meta = {k: entries.pop(k) for k in list(entries) if isinstance(entries[k], str)}
    meta["config_yaml"] = yaml.safe_dump(cfg)
    params = [{"name": k, "data": v} for k, v in entries.items()]
    ms.save_checkpoint(params, dst, append_dict=meta)
    return dst


@pytest.fixture(scope="module")
def run(trained, tmp_path_factory):
    """The shared tiny model (tests/conftest.py), evaluated once with its config; then moved "elsewhere":
    every later call has only the checkpoint, in a directory with no pretrained/ and no config."""
    base = tmp_path_factory.mktemp("self_contained")
    ckpt_dir = os.path.join(trained["out"], "checkpoints")
    best = os.path.join(ckpt_dir, "best.ckpt")
    step = os.path.join(ckpt_dir, sorted(f for f in os.listdir(ckpt_dir) if f.startswith("step_"))[-1])
    _run(["eval.py", "--config_path", trained["config"], f"--checkpoint_path={best}",
          f"--eval.output_dir={base / 'ref'}"], ROOT)
    empty = base / "elsewhere"
    empty.mkdir()
    return {"base": base, "data": trained["data"], "cwd": str(empty),
            "ckpt": _as_if_trained_elsewhere(best, str(base / "best.ckpt")),
            "step": _as_if_trained_elsewhere(step, str(base / "step.ckpt")),
            "original_step": step, "ref": json.load(open(base / "ref" / "metrics.json"))}


def _script(name):
    return os.path.join(ROOT, name)


def _metrics(path):
    return {k: v for k, v in json.load(open(path)).items() if k in ("input_resolution", "original_resolution")}


def test_best_checkpoint_holds_no_optimizer_state(run):
    names = ms.load_checkpoint(run["ckpt"]).keys()
    assert not [n for n in names if n.startswith(("adam_", "accum_grad"))]
    assert {"config_yaml", "bert_config_json", "vocab_txt"} <= set(names)
    # the step checkpoint carries AdamW's two moments per weight: about 3x the model
    assert os.path.getsize(run["ckpt"]) < 0.5 * os.path.getsize(run["original_step"])


def test_eval_from_the_checkpoint_alone(run):
    out = run["base"] / "alone"
    _run([_script("eval.py"), f"--ckpt_file={run['ckpt']}", f"--data_root={run['data']}", f"--eval.output_dir={out}"],
         run["cwd"])
    assert _metrics(out / "metrics.json") == {k: run["ref"][k] for k in ("input_resolution", "original_resolution")}
    assert not os.path.exists(os.path.join(run["cwd"], "pretrained"))


def test_infer_and_export_from_the_checkpoint_alone(run):
    image = sorted(os.listdir(os.path.join(run["data"], "images", "train2014")))[0]
    mask = run["base"] / "infer" / "mask.png"
    _run([_script("infer.py"), f"--checkpoint_path={run['ckpt']}", "--image",
          os.path.join(run["data"], "images", "train2014", image), "--text", "the red circle", "--output", str(mask)],
         run["cwd"])
    assert mask.is_file()
    name = str(run["base"] / "export" / "model")
    _run([_script("export.py"), f"--checkpoint_path={run['ckpt']}", f"--file_name={name}"], run["cwd"])
    assert os.path.getsize(name + ".mindir") > 0


def test_preprocess_from_the_checkpoint_alone(run):
    out = run["base"] / "pre"
    _run([_script("preprocess.py"), f"--checkpoint_path={run['ckpt']}", f"--data_root={run['data']}",
          "--output_path", str(out)], run["cwd"])
    meta = json.load(open(out / "samples.json"))
    assert meta["num_images"] > 0 and len(meta["samples"]) == run["ref"]["num_samples"]


def test_strip_checkpoint(run):
    """Both variants strip the same step checkpoint: fp32 evaluates to exactly best.ckpt's numbers (the
    last step is the validated one here), fp16 holds the same weights rounded to half precision."""
    step = run["step"]
    released = {}
    for fp16 in (False, True):
        dst = run["base"] / f"release_{fp16}.ckpt"
        proc = _run([_script("tools/strip_checkpoint.py"), "--src", step, "--dst", str(dst),
                     *(["--fp16"] if fp16 else [])], run["cwd"])
        assert "optimizer/step entries dropped" in proc.stdout
        entries = ms.load_checkpoint(str(dst))
        assert not [n for n in entries if n.startswith(("adam_", "accum_grad"))]
        weights = {k: v.asnumpy() for k, v in entries.items() if hasattr(v, "dtype") and len(v.shape) > 1}
        assert weights and all(v.dtype == (np.float16 if fp16 else np.float32) for v in weights.values())
        # AdamW's moments are 2/3 of a step checkpoint; fp16 halves the rest (the vocabulary, ~0.2 MB, stays)
        assert os.path.getsize(dst) < (0.25 if fp16 else 0.4) * os.path.getsize(step)
        released[fp16] = (dst, weights)
    for name, value in released[False][1].items():
        np.testing.assert_allclose(released[True][1][name].astype(np.float32), value, rtol=1e-3, atol=1e-4,
                                   err_msg=name)
    out = run["base"] / "strip_eval"
    _run([_script("eval.py"), f"--checkpoint_path={released[False][0]}", f"--data_root={run['data']}",
          f"--eval.output_dir={out}"], run["cwd"])
    assert _metrics(out / "metrics.json") == {k: run["ref"][k] for k in ("input_resolution", "original_resolution")}


def test_diagnose_from_the_checkpoint_alone(run):
    """tools/diagnose.py takes the same path: it once read default_config.yaml (device Ascend) when no
    --config_path was given and died inside MindSpore on a CPU machine."""
    out = run["base"] / "diagnostics.json"
    _run([_script(os.path.join("tools", "diagnose.py")), f"--checkpoint_path={run['ckpt']}",
          f"--data_root={run['data']}", "--split", "train", "--pairs", "4", "--output", str(out)], run["cwd"])
    metrics = json.load(open(out))["metrics"]
    assert 0.0 <= metrics["sma_entropy"] <= 1.0 and "token_self_similarity_0" in metrics
