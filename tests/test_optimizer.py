"""Our AdamW + polynomial schedule against torch.optim.AdamW + LambdaLR, step by step."""
import numpy as np
import pytest
import torch

import mindspore as ms
from mindspore import Parameter, Tensor, nn

from src.engine.optimizer import AdamW, PolyLR, param_groups, uses_weight_decay


class _Toy(nn.Cell):
    def __init__(self, w, b, table):
        super().__init__()
        self.w = Parameter(Tensor(w), name="layer.weight")
        self.b = Parameter(Tensor(b), name="layer.bias")
        self.table = Parameter(Tensor(table), name="attn.relative_position_bias_table")


def _torch_reference(w, b, table, grads, lr, wd, total, power):
    tw, tb, tt = (torch.nn.Parameter(torch.tensor(a)) for a in (w, b, table))
    opt = torch.optim.AdamW([{"params": [tw], "weight_decay": wd}, {"params": [tb, tt], "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.999), eps=1e-8)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (1 - s / total) ** power)
    for gw, gb, gt in grads:
        tw.grad, tb.grad, tt.grad = torch.tensor(gw), torch.tensor(gb), torch.tensor(gt)
        opt.step()
        sched.step()
    return tw.detach().numpy(), tb.detach().numpy(), tt.detach().numpy()


def _toy_problem(seed, steps):
    """Weights of `_Toy` (w, b, table) and `steps` gradient triples, drawn from `seed`."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((4, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    table = rng.standard_normal((5, 2)).astype(np.float32)
    grads = [tuple(rng.standard_normal(a.shape).astype(np.float32) for a in (w, b, table)) for _ in range(steps)]
    return w, b, table, grads


def test_adamw_matches_torch_with_groups_and_poly_schedule():
    w, b, table, grads = _toy_problem(seed=0, steps=6)
    lr, wd, total, power = 0.05, 0.1, 10, 0.9

    net = _Toy(w, b, table)
    groups = param_groups(net.trainable_params(), wd)
    assert [len(g["params"]) for g in groups] == [1, 2]  # bias and relative table are not decayed
    opt = AdamW(groups, learning_rate=PolyLR(lr, total, power))

    @ms.jit
    def apply(gw, gb, gt):
        return opt((gw, gb, gt))

    for gw, gb, gt in grads:
        apply(Tensor(gw), Tensor(gb), Tensor(gt))
    ref = _torch_reference(w, b, table, grads, lr, wd, total, power)
    for ours, theirs in zip((net.w, net.b, net.table), ref):
        np.testing.assert_allclose(ours.asnumpy(), theirs, rtol=1e-5, atol=1e-6)
    assert not np.allclose(net.w.asnumpy(), w)  # it really moved


def test_poly_schedule_values_and_warmup():
    sched = PolyLR(1.0, total_steps=100, power=0.9)
    for step in (0, 1, 50, 99, 100, 150):
        got = float(sched(Tensor(step, ms.int32)).asnumpy())
        expect = (1 - min(step, 100) / 100) ** 0.9
        assert got == pytest.approx(expect, rel=1e-5, abs=1e-7)
        assert sched.value(step) == pytest.approx(expect, rel=1e-6, abs=1e-9)
    warm = PolyLR(1.0, total_steps=100, power=1.0, warmup_steps=10, warmup_init=0.1)
    assert float(warm(Tensor(0, ms.int32)).asnumpy()) == pytest.approx(0.1)
    assert float(warm(Tensor(5, ms.int32)).asnumpy()) == pytest.approx((0.1 + 0.9 * 0.5) * 0.95, rel=1e-5)
    with pytest.raises(ValueError, match="total_steps"):
        PolyLR(1.0, 0)


def test_no_decay_rule():
    def p(name, shape):
        return Parameter(Tensor(np.zeros(shape, np.float32)), name=name)
    assert uses_weight_decay(p("layers.0.blocks.0.attn.qkv.weight", (6, 2)))
    for name, shape in [("norm0.weight", (2,)), ("x.bias", (2,)), ("embeddings.position_embeddings.weight", (5, 2)),
                        ("layers.0.blocks.0.attn.relative_position_bias_table", (9, 2))]:
        assert not uses_weight_decay(p(name, shape)), name


def test_lr_scale_per_group_matches_torch_group_lrs():
    """A group with lr_scale 0.1 moves exactly like a torch group with lr 0.1 * base under the same schedule."""
    w, b, table, grads = _toy_problem(seed=1, steps=5)
    lr, wd, total, power, scale = 0.05, 0.1, 10, 0.9, 0.1

    net = _Toy(w, b, table)
    groups = param_groups(net.trainable_params(), wd, lr_scales={"layer.": scale})
    assert [(len(g["params"]), g.get("lr_scale", 1.0)) for g in groups] == [(1, 1.0), (1, scale), (1, scale)]
    opt = AdamW(groups, learning_rate=PolyLR(lr, total, power))

    assert [p.name for p in opt.parameters] == ["attn.relative_position_bias_table", "layer.weight", "layer.bias"]

    @ms.jit
    def apply(gt, gw, gb):  # gradients come in the optimizer's parameter order (as in TrainStep)
        return opt((gt, gw, gb))

    for gw, gb, gt in grads:
        apply(Tensor(gt), Tensor(gw), Tensor(gb))

    tw, tb, tt = (torch.nn.Parameter(torch.tensor(a)) for a in (w, b, table))
    reference = torch.optim.AdamW([{"params": [tw], "weight_decay": wd, "lr": lr * scale},
                                   {"params": [tb], "weight_decay": 0.0, "lr": lr * scale},
                                   {"params": [tt], "weight_decay": 0.0, "lr": lr}], lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(reference, lambda s: (1 - s / total) ** power)
    for gw, gb, gt in grads:
        tw.grad, tb.grad, tt.grad = torch.tensor(gw), torch.tensor(gb), torch.tensor(gt)
        reference.step()
        schedule.step()
    for ours, theirs in zip((net.w, net.b, net.table), (tw, tb, tt)):
        np.testing.assert_allclose(ours.asnumpy(), theirs.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_plain_parameter_list_and_schedule_reaching_zero_match_torch():
    """Without groups (one weight decay for all) and with the schedule's last step at lr = 0, where the
    fused update's folded weight decay must not divide by the learning rate."""
    w, b, table, grads = _toy_problem(seed=2, steps=6)
    lr, wd, total, power = 0.05, 0.1, len(grads) - 1, 0.9  # the last update runs at step == total: lr 0

    net = _Toy(w, b, table)
    opt = AdamW(net.trainable_params(), learning_rate=PolyLR(lr, total, power), weight_decay=wd)

    @ms.jit
    def apply(gw, gb, gt):
        return opt((gw, gb, gt))

    before_last = None
    for i, (gw, gb, gt) in enumerate(grads):
        if i == len(grads) - 1:
            before_last = [p.asnumpy().copy() for p in (net.w, net.b, net.table)]
        apply(Tensor(gw), Tensor(gb), Tensor(gt))
    assert int(opt.num_updates.asnumpy()) == len(grads) and int(opt.global_step.asnumpy()[0]) == len(grads)

    tw, tb, tt = (torch.nn.Parameter(torch.tensor(a)) for a in (w, b, table))
    reference = torch.optim.AdamW([tw, tb, tt], lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=wd)
    schedule = torch.optim.lr_scheduler.LambdaLR(reference, lambda s: (1 - s / total) ** power)
    for gw, gb, gt in grads:
        tw.grad, tb.grad, tt.grad = torch.tensor(gw), torch.tensor(gb), torch.tensor(gt)
        reference.step()
        schedule.step()
    for ours, theirs, prev in zip((net.w, net.b, net.table), (tw, tb, tt), before_last):
        np.testing.assert_allclose(ours.asnumpy(), theirs.detach().numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(ours.asnumpy(), prev)  # lr 0: no move (and no NaN)
