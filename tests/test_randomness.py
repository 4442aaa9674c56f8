"""Random draws inside the compiled training step (issue 22, findings 10 and 11).

Compiling the training step, MindSpore warns "Some side effect nodes were eliminated by mistake" at
`AuxPixelSampler.construct`. The node it names is the `tuple_getitem` of `ops.topk`'s unused values output, not
the random draw: the auxiliary loss's keys are new at every step (checked here in graph mode, through the
project's TrainStep, with the parameters frozen so that only the keys can change the loss)."""
import numpy as np

import mindspore as ms
from mindspore import Tensor, nn

from src.engine.train_step import TrainStep
from src.models.losses.aux_contrast import AuxContrastLoss
from src.utils.runtime import rank_seed, seed_rank_randomness


class _AuxOnly(nn.Cell):
    """(aux loss, aux loss) of a target embedding projected by one Dense: the criterion's random pixel choice,
    its sampler and contrast, differentiated as in training."""

    def __init__(self):
        super().__init__()
        self.aux = AuxContrastLoss(num_fg=8, num_bg=16)
        self.proj = nn.Dense(8, 8)

    def construct(self, pixel_embed, target_embed, target):
        aux = self.aux.loss(pixel_embed, self.proj(target_embed), target)  # scalar
        return aux, aux


def test_aux_keys_are_drawn_anew_at_every_compiled_step():
    ms.set_seed(0)
    net = _AuxOnly()
    step = TrainStep(net, nn.SGD(net.trainable_params(), learning_rate=0.0))  # lr 0: the parameters stay
    rng = np.random.default_rng(0)
    pixel_embed = Tensor(rng.standard_normal((2, 8, 8, 8)).astype(np.float32))  # (B, D, h, w)
    target_embed = Tensor(rng.standard_normal((2, 8)).astype(np.float32))
    target = Tensor((rng.random((2, 32, 32)) > 0.6).astype(np.float32))  # more fg/bg pixels than are sampled
    losses = [float(step(pixel_embed, target_embed, target)[0].asnumpy()) for _ in range(3)]
    assert len(set(losses)) == 3, losses  # the same inputs and weights: only new keys change the loss


def _seeds(dropout):
    return dropout.dropout.attrs["Seed0"], dropout.dropout.attrs["Seed1"]


def test_rank_seeds_leave_rank_0_alone_and_reseed_the_others():
    assert rank_seed(42, 0) == 42 and len({rank_seed(42, r) for r in range(16)}) == 16
    ms.set_seed(7)
    net = nn.SequentialCell([nn.Dense(4, 4), nn.Dropout(p=0.1)])
    weights = net[0].weight.asnumpy().copy()
    seeds = _seeds(net[1])
    assert seed_rank_randomness(net, 7, 0) == 7 and _seeds(net[1]) == seeds
    assert seed_rank_randomness(net, 7, 1) == rank_seed(7, 1)
    assert _seeds(net[1]) != seeds and net[1].dropout.attrs["keep_prob"] == 0.9  # rank 1 draws its own masks
    np.testing.assert_array_equal(net[0].weight.asnumpy(), weights)  # the parameters are untouched
    ms.set_seed(0)
