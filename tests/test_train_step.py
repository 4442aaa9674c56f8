"""TrainStep: accumulation, clipping and loss scaling on a small net whose gradients we know."""
import numpy as np

import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

from src.engine.optimizer import AdamW
from src.engine.train_step import TrainStep


class _LinearWithLoss(nn.Cell):
    """total = mean((x W^T - target)^2) over the batch; returns (total, seg, aux) like the model."""

    def __init__(self, w):
        super().__init__()
        self.w = Parameter(Tensor(w), name="w")

    def construct(self, image, input_ids, attention_mask, target):
        pred = ops.matmul(image, self.w.T)
        total = ops.mean(ops.square(pred - target))
        return total, total, ops.zeros((), ms.float32)


def _batch(rng, n):
    x = Tensor(rng.standard_normal((n, 3)).astype(np.float32))
    t = Tensor(rng.standard_normal((n, 2)).astype(np.float32))
    ids = Tensor(np.zeros((n, 4), np.int32))
    return x, ids, ids, t


def _run(w0, batches, **kw):
    net = _LinearWithLoss(w0.copy())
    step = TrainStep(net, AdamW(net.trainable_params(), learning_rate=0.1), **kw)
    # an entry is a batch (update every step) or a (batch, update) pair for accumulation
    outs = [step(*b[0], update=b[1]) if isinstance(b[1], bool) else step(*b) for b in batches]
    return net.w.asnumpy(), outs


def test_accumulating_two_halves_equals_one_full_batch():
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal((2, 3)).astype(np.float32)
    full = _batch(rng, 8)
    halves = [tuple(a[:4] for a in full), tuple(a[4:] for a in full)]
    w_full, _ = _run(w0, [full])
    w_acc, outs = _run(w0, [(halves[0], False), (halves[1], True)], accumulate_steps=2)
    np.testing.assert_allclose(w_acc, w_full, rtol=1e-5, atol=1e-6)
    assert not np.allclose(w_full, w0)
    # buffers are reset after an update: a second identical cycle matches a second full step
    w_full2, _ = _run(w0, [full, full])
    w_acc2, _ = _run(w0, [(halves[0], False), (halves[1], True), (halves[0], False), (halves[1], True)],
                     accumulate_steps=2)
    np.testing.assert_allclose(w_acc2, w_full2, rtol=1e-5, atol=1e-6)


def test_clipping_scales_the_gradient_to_the_global_norm():
    # SGD makes the update proportional to the gradient, so the clipped gradient is visible exactly.
    rng = np.random.default_rng(1)
    w0 = (10 * rng.standard_normal((2, 3))).astype(np.float32)
    x, ids, _, t = _batch(rng, 8)
    residual = x.asnumpy() @ w0.T - t.asnumpy()
    grad = 2.0 / residual.size * residual.T @ x.asnumpy()
    for clip in (1e6, 1e-2):
        net = _LinearWithLoss(w0.copy())
        step = TrainStep(net, nn.SGD(net.trainable_params(), learning_rate=0.1), grad_clip_norm=clip)
        step(x, ids, ids, t)
        expected_grad = grad * min(1.0, clip / np.linalg.norm(grad))
        np.testing.assert_allclose(net.w.asnumpy(), w0 - 0.1 * expected_grad, rtol=1e-5, atol=1e-6)


def test_loss_scaling_matches_unscaled_and_skips_overflow():
    rng = np.random.default_rng(2)
    w0 = rng.standard_normal((2, 3)).astype(np.float32)
    b = _batch(rng, 8)
    w_plain, _ = _run(w0, [b])
    w_scaled, outs = _run(w0, [b], loss_scale=1024.0)
    np.testing.assert_allclose(w_scaled, w_plain, rtol=1e-5, atol=1e-6)
    assert bool(outs[0][3].asnumpy())
    bad = (Tensor(np.full((8, 3), np.inf, np.float32)),) + b[1:]
    w_bad, outs = _run(w0, [bad], loss_scale=1024.0)
    assert not bool(outs[0][3].asnumpy())
    np.testing.assert_array_equal(w_bad, w0)  # the overflowing step changed nothing


def test_grads_finite_finds_one_bad_element_among_many_gradients():
    """The step's overflow check (one float32 sum per gradient, then one isfinite) against NumPy's: a single nan
    or inf in one element of one gradient is caught, so are infinities of both signs that cancel to nan in the
    total, and large finite float16 gradients (whose float16 sum would overflow) are not mistaken for overflow."""
    from src.engine.train_step import grads_finite

    class Check(nn.Cell):
        def construct(self, grads):
            return grads_finite(grads)

    check = Check()
    rng = np.random.default_rng(3)
    shapes = [(7, 5), (5,), (3, 4, 2, 2), (1,), (64,)]
    clean = [rng.standard_normal(s).astype(np.float32) for s in shapes]

    def finite(arrays):
        return bool(check(tuple(Tensor(a) for a in arrays)).asnumpy())

    assert finite(clean)
    for bad in (np.nan, np.inf, -np.inf):
        for which in range(len(shapes)):
            grads = [a.copy() for a in clean]
            grads[which].flat[-1] = bad
            assert not finite(grads), (bad, which)
    grads = [a.copy() for a in clean]
    grads[0].flat[0], grads[2].flat[3] = np.inf, -np.inf  # the total is nan, not a finite cancellation
    assert not finite(grads)
    big = [np.full((4096,), 60000.0, np.float16), np.ones((3,), np.float16)]  # float16 sum: inf; float32: 2.5e8
    assert np.all(np.isfinite(big[0])) and not np.isfinite(big[0].sum(dtype=np.float16))
    assert finite(big)
    big[1][1] = np.nan
    assert not finite(big)
