"""Data-parallel training under msrun on CPU (2 workers): the job exits 0, both ranks end with the same
parameters, and those equal a single-process run over the same global batches - the gradients really
are averaged across ranks."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import yaml

import mindspore as ms

from test_entry_scripts import ROOT, tiny_config

STEPS = 3


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _deterministic(cfg):
    """No randomness inside the step (dropout, drop path, aux sampling), a plain-mean CE and no proposal
    matching, so that the mean of two half-batch gradients equals the full-batch gradient. (Matching is
    an argmin: where two proposals fit about equally, as at initialisation, fp32 rounding in another
    batch composition can flip the match. The matched loss itself is a per-sample mean, exact under data
    parallelism: tests/test_proposal_losses.py.)"""
    cfg["model"]["bert"].update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    cfg["model"]["swin"]["drop_path_rate"] = 0.0
    cfg["loss"].update(terms=["referring"], ce_weight_bg=1.0, ce_weight_fg=1.0)
    cfg["train"].update(max_steps=STEPS, validate=False, log_every=1, save_all_ranks=True, save_every_steps=1,
                        keep_last=STEPS)
    return cfg


def _params(path):
    from src.engine.checkpoint import META_KEYS  # step, best validation score, ...: not parameters

    return {k: v.asnumpy() for k, v in ms.load_checkpoint(path).items()
            if hasattr(v, "asnumpy") and k not in META_KEYS
            and not k.startswith(("adam_", "accum_grad", "global_step", "learning_rate"))}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from src.data.synthetic import generate_synthetic_refer

    base = tmp_path_factory.mktemp("dist")
    data_root = str(base / "data")
    generate_synthetic_refer(data_root, num_images=16, seed=3)
    out_dist, out_single = str(base / "dist"), str(base / "single")
    cfg = _deterministic(tiny_config(data_root, out_dist))
    cfg["train"].update(validate=True, diagnostics_pairs=0)  # validation distributed: each rank scores a shard
    cfg["eval"]["batch_size"] = 1  # batch composition then cannot change a sample's logits (exact comparison)
    cfg_path = str(base / "dist.yaml")
    yaml.safe_dump(cfg, open(cfg_path, "w"))
    single = _deterministic(tiny_config(data_root, out_single))
    single["train"]["batch_size"] = 2 * cfg["train"]["batch_size"]  # the same global batch in one process
    single_path = str(base / "single.yaml")
    yaml.safe_dump(single, open(single_path, "w"))

    env = dict(os.environ, GLOG_v="3", MASTER_PORT=str(_free_port()), LOG_DIR=str(base / "msrun_logs"),
               PYTHON_BIN=sys.executable)
    dist = subprocess.run(["bash", "scripts/run_distribute_train.sh", "2", cfg_path], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    single_run = subprocess.run([sys.executable, "train.py", "--config_path", single_path], cwd=ROOT,
                                env=dict(os.environ, GLOG_v="3"), capture_output=True, text=True, timeout=600)
    # The trained weights evaluated on 2 msrun workers and in one process (val: 11 samples, odd on purpose).
    ckpt = os.path.join(out_dist, "checkpoints", "best.ckpt")
    eval_dist = subprocess.run(["bash", "scripts/run_distribute_eval.sh", "2", cfg_path, ckpt,
                                f"--eval.output_dir={base / 'eval_dist'}"],
                               cwd=ROOT, env=dict(env, MASTER_PORT=str(_free_port()), LOG_DIR=str(base / "eval_logs")),
                               capture_output=True, text=True, timeout=600)
    eval_single = subprocess.run([sys.executable, "eval.py", "--config_path", cfg_path, f"--checkpoint_path={ckpt}",
                                  f"--eval.output_dir={base / 'eval_single'}"], cwd=ROOT,
                                 env=dict(os.environ, GLOG_v="3"), capture_output=True, text=True, timeout=600)
    return {"dist": dist, "single": single_run, "out_dist": out_dist, "out_single": out_single,
            "logs": str(base / "msrun_logs"), "data": data_root, "eval_dist": eval_dist, "eval_single": eval_single,
            "eval_dist_dir": str(base / "eval_dist"), "eval_single_dir": str(base / "eval_single")}


def test_msrun_job_succeeds_and_logs_per_rank(runs):
    assert runs["dist"].returncode == 0, runs["dist"].stdout[-3000:] + runs["dist"].stderr[-3000:]
    assert os.path.isfile(os.path.join(runs["out_dist"], "train.log"))
    assert os.path.isfile(os.path.join(runs["out_dist"], "logs", "train_rank_1.log"))
    assert "rank 0 of 2" in open(os.path.join(runs["out_dist"], "train.log")).read()


@pytest.mark.parametrize("step", range(1, STEPS + 1))
def test_ranks_stay_identical_and_equal_single_process(runs, step):
    assert runs["dist"].returncode == 0 and runs["single"].returncode == 0, runs["single"].stderr[-3000:]
    name = f"step_{step:08d}.ckpt"
    rank0 = _params(os.path.join(runs["out_dist"], "checkpoints", name))
    rank1 = _params(os.path.join(runs["out_dist"], "checkpoints", "rank_1", name))
    single = _params(os.path.join(runs["out_single"], "checkpoints", name))
    assert rank0.keys() == rank1.keys() == single.keys()
    lr = tiny_config("", "")["train"]["lr"]
    total = off = 0
    for key in rank0:
        np.testing.assert_array_equal(rank0[key], rank1[key], err_msg=key)
        # AdamW moves each weight by about lr * sign(gradient); where a gradient is within fp32 rounding
        # of zero, summing it in another order (allreduce of two halves vs one batch) may flip that sign.
        # So: nearly every element agrees tightly, and none is further apart than 2 lr per step.
        diff = np.abs(rank0[key] - single[key])
        assert diff.max() <= 2 * lr * step + 1e-6, key
        total += diff.size
        off += int(np.count_nonzero(diff > 2e-5 + 1e-4 * np.abs(single[key])))
    assert off <= 1e-3 * total, f"{off} of {total} elements differ"  # without the reduction: most differ
    if step > 1:  # the parameters really move from step to step, so the equalities above say something
        before = _params(os.path.join(runs["out_single"], "checkpoints", f"step_{step - 1:08d}.ckpt"))
        assert sum(not np.array_equal(before[k], single[k]) for k in single) > 0.9 * len(single)


def _val_samples(data_root):
    from src.data.refer import ReferDataset

    return len(ReferDataset(data_root, "refcoco", "unc", "val").samples())


def test_validation_runs_distributed_and_counts_every_sample_once(runs):
    assert runs["dist"].returncode == 0, runs["dist"].stderr[-3000:]
    records = [json.loads(line) for line in open(os.path.join(runs["out_dist"], "train_log.jsonl"))]
    val = [r for r in records if r["type"] == "val"]
    assert val and val[-1]["num_samples"] == _val_samples(runs["data"]) == 11
    assert "evaluation shards: [6, 5] samples per rank" in open(os.path.join(runs["out_dist"], "train.log")).read()
    assert os.path.isfile(os.path.join(runs["out_dist"], "checkpoints", "best.ckpt"))


def test_distributed_eval_equals_one_process(runs):
    for key in ("eval_dist", "eval_single"):
        assert runs[key].returncode == 0, runs[key].stdout[-2000:] + runs[key].stderr[-3000:]
    dist = json.load(open(os.path.join(runs["eval_dist_dir"], "metrics.json")))
    single = json.load(open(os.path.join(runs["eval_single_dir"], "metrics.json")))
    assert dist["num_samples"] == single["num_samples"] == _val_samples(runs["data"])
    assert "evaluation shards: [6, 5] samples per rank" in open(os.path.join(runs["eval_dist_dir"], "eval.log")).read()
    for resolution in ("input_resolution", "original_resolution"):
        assert dist[resolution] == single[resolution], resolution
    rows = [open(os.path.join(runs[d], "per_sample.csv")).read() for d in ("eval_dist_dir", "eval_single_dir")]
    assert rows[0] == rows[1]  # the same samples, once each, in the same order, with the same I and U


def test_failing_workers_fail_the_job_and_are_named(tmp_path):
    """Every worker stops on a missing dataset: msrun exits non-zero and the script names the ranks."""
    cfg = _deterministic(tiny_config(str(tmp_path / "no_such_data"), str(tmp_path / "out")))
    cfg_path = str(tmp_path / "bad.yaml")
    yaml.safe_dump(cfg, open(cfg_path, "w"))
    env = dict(os.environ, GLOG_v="3", MASTER_PORT=str(_free_port()), LOG_DIR=str(tmp_path / "logs"),
               PYTHON_BIN=sys.executable)
    proc = subprocess.run(["bash", "scripts/run_distribute_train.sh", "2", cfg_path], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    for rank in (0, 1):
        assert f"rank {rank} FAILED" in proc.stderr and "no_such_data" in proc.stderr, proc.stderr[-2000:]


@pytest.fixture(scope="module")
def checks(tmp_path_factory):
    """One 2-worker msrun job of tests/msrun_checks.py (gather, per-rank randomness, resume agreement)."""
    from src.data.synthetic import generate_synthetic_refer

    base = tmp_path_factory.mktemp("checks")
    data_root = str(base / "data")
    generate_synthetic_refer(data_root, num_images=8, seed=3)
    cfg = tiny_config(data_root, str(base / "run"))
    cfg["train"]["validate"] = False  # dropout (BERT's 0.1) and the auxiliary loss stay on
    cfg_path = str(base / "checks.yaml")
    yaml.safe_dump(cfg, open(cfg_path, "w"))
    out = base / "out"
    out.mkdir()
    env = dict(os.environ, GLOG_v="3", PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    msrun = os.path.join(os.path.dirname(sys.executable), "msrun")
    proc = subprocess.run([msrun, "--worker_num=2", "--local_worker_num=2", f"--master_port={_free_port()}",
                           f"--log_dir={base / 'logs'}", "--join=True", os.path.join(ROOT, "tests", "msrun_checks.py"),
                           cfg_path, str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    logs = "".join(p.read_text() for p in sorted((base / "logs").glob("worker_*.log")))
    reports = [json.load(open(out / f"rank_{r}.json")) if (out / f"rank_{r}.json").exists() else None for r in (0, 1)]
    return {"proc": proc, "logs": logs, "reports": reports, "out": str(out)}


def _reports(checks):
    assert all(checks["reports"]), checks["logs"][-4000:]
    return checks["reports"]


def test_eval_gather_through_numeric_arrays_equals_one_process(checks):
    """Finding 6 of issue 22: the shards travel as int64 arrays (all_gather_object is Ascend-only)."""
    for report in _reports(checks):
        assert report["gather_equal"] and report["gathered_samples"] == 3


def test_ranks_share_parameters_but_not_random_draws(checks):
    rank0, rank1 = _reports(checks)
    assert rank0["param_digests"][0] == rank0["param_digests"][1]  # the same initialisation on both ranks
    assert rank0["dropout_masks"][0] != rank0["dropout_masks"][1]  # each rank its own dropout mask
    assert rank0["aux_keys"][0] != rank0["aux_keys"][1]  # and its own auxiliary-loss pixels
    assert rank0["keys_change_between_calls"] and rank1["keys_change_between_calls"]


def test_resume_stops_when_ranks_find_different_checkpoints(checks):
    """Rank 0's node holds a checkpoint, rank 1's none (no shared file system): the run stops on both ranks with
    an error naming each rank's path, instead of rank 1 training from scratch next to a resumed rank 0."""
    for report in _reports(checks):
        error = report["resume_error"]
        assert error and error.startswith("ResumeMismatchError"), error
        assert f"rank 0: {os.path.join(checks['out'], 'node0', 'checkpoints', 'step_00000003.ckpt')} (step 3" in error
        assert f"rank 1: no checkpoint in {os.path.join(checks['out'], 'node1', 'checkpoints')}" in error
    assert checks["proc"].returncode != 0
