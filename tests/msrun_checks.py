"""Run by tests/test_distributed.py as an msrun worker (2 CPU workers, one job for several checks):

1. evaluation shards gathered through fixed-size numeric arrays (`evaluator.gather_shards`) equal the merge of
   the same shards in one process, with an empty shard, skipped samples and non-ASCII sentences;
2. per-rank randomness: the ranks build identical parameters, but their dropout masks and the auxiliary loss's
   pixel keys differ (and the keys differ between two calls of the compiled graph);
3. resume without a shared file system: rank 0 finds a checkpoint under its output_dir, rank 1 none under its
   own; building the Trainer must stop on every rank with the error that names both.

Usage: msrun ... tests/msrun_checks.py CONFIG OUT_DIR. Writes OUT_DIR/rank_<r>.json, then exits with the
resume error's exit code (as train.py would), or 0 when no error came.
"""
import hashlib
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from src.utils.runtime import apply_cpu_env_defaults  # noqa: E402

apply_cpu_env_defaults()


def _shard(rank):
    """The evaluation shard rank `rank` contributes: rank 0 three samples, rank 1 none but a skipped one."""
    from src.engine.evaluator import EvalResult, SampleResult, SkippedSample

    if rank == 0:
        samples = [SampleResult(4, 40, 400, "the left zebra", 0.5, 0.25, 10, 20, 30, 120),
                   SampleResult(0, 41, 401, "man in the café, ünicode", 1.0, 0.0, 7, 7, 0, 9),
                   SampleResult(2, 42, 402, "", 0.0, 1.0 / 3.0, 0, 0, 5, 15)]
        return EvalResult.from_samples(samples)
    return EvalResult.from_samples([], [SkippedSample(3, 43, 403, "image 3.jpg: not a JPEG (field file_name)")])


def _as_dict(result):
    return {"input": result.input_resolution, "original": result.original_resolution,
            "samples": [vars(s) for s in result.samples], "skipped": [vars(k) for k in result.skipped]}


def _gather_bits(array, ctx):
    """Every rank's float32/bool array, as lists (through the same int64 all-gather)."""
    import numpy as np

    from src.utils.runtime import all_gather_rows

    flat = np.ascontiguousarray(array, np.float32).reshape(-1).view(np.int32).astype(np.int64)  # (n,)
    return [block[:, 0].astype(np.int32).view(np.float32).tolist() for block in all_gather_rows(flat, ctx, 1)]


def main(config_path, out_dir):
    import numpy as np
    import mindspore as ms
    from mindspore import nn, ops

    from src.config import load_config
    from src.engine.checkpoint import CheckpointManager, TrainState
    from src.engine.evaluator import gather_shards, merge_shards
    from src.engine.trainer import Trainer
    from src.utils.cli import USER_ERRORS, exit_code
    from src.utils.runtime import all_gather_rows, setup_context

    cfg = load_config(config_path, ["--distribute=true"])
    ctx = setup_context(cfg)
    report = {"rank": ctx.rank, "group_size": ctx.group_size}

    # 1. evaluation gather
    gathered = gather_shards(_shard(ctx.rank), ctx)
    report["gather_equal"] = _as_dict(gathered) == _as_dict(merge_shards([_shard(0), _shard(1)]))
    report["gathered_samples"] = gathered.num_samples

    # 2. per-rank randomness, on the Trainer's own model and criterion
    trainer = Trainer(cfg, ctx)
    values = np.concatenate([p.asnumpy().ravel() for p in trainer.model.get_parameters()])
    digest = int.from_bytes(hashlib.blake2b(values.tobytes(), digest_size=7).digest(), "big")
    report["param_digests"] = [int(block[0, 0]) for block in all_gather_rows(np.array([digest]), ctx, 1)]
    dropout = next(c for _, c in trainer.model.cells_and_names() if isinstance(c, nn.Dropout) and c.p > 0)
    dropout.set_train(True)
    mask = dropout(ops.ones((512,), ms.float32)).asnumpy() > 0  # compiled alone, with the primitive's own seeds
    report["dropout_masks"] = _gather_bits(mask, ctx)

    class Keys(nn.Cell):
        def __init__(self, aux):
            super().__init__()
            self.aux = aux

        def construct(self):
            return self.aux.random_keys(2, 64)  # (2, 64)

    keys = Keys(trainer.net_with_loss.criterion.term("aux_contrast"))
    first, second = keys().asnumpy(), keys().asnumpy()
    report["keys_change_between_calls"] = bool((first != second).any())
    report["aux_keys"] = _gather_bits(first, ctx)

    # 3. resume with the checkpoint on rank 0's node only (output_dir differs per rank, as on two nodes)
    node_dir = os.path.join(out_dir, f"node{ctx.rank}")
    if ctx.rank == 0:
        CheckpointManager(os.path.join(node_dir, "checkpoints")).save(trainer.step_cell, TrainState(step=3), cfg.seed,
                                                                      cfg.to_yaml())
    resume_cfg = load_config(config_path, ["--distribute=true", "--train.resume=true", f"--output_dir={node_dir}"])
    code = 0
    try:
        Trainer(resume_cfg, ctx)
        report["resume_error"] = None
    except USER_ERRORS as e:
        report["resume_error"] = f"{type(e).__name__}: {e}"
        code = exit_code(e)
    with open(os.path.join(out_dir, f"rank_{ctx.rank}.json"), "w", encoding="utf-8") as f:
        json.dump(report, f)
    if code:
        print(f"error: {report['resume_error']}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
