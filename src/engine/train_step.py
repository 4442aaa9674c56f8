"""One training iteration as a single compiled graph: forward, backward, gradient reduction across
devices, optional clipping and loss scaling, and the optimizer update.

Gradient accumulation needs two behaviours (add to the buffers / add and then update). They are
selected by a Python bool argument, which MindSpore treats as a compile-time constant, so each
behaviour compiles once into its own static graph and no step branches on a tensor value.
"""
from __future__ import annotations

import mindspore as ms
from mindspore import Tensor, nn, ops
from mindspore.communication import get_group_size

# Checkpoint names of the dynamic loss scale's state: the current scale, overflow-free steps since the last change.
LOSS_SCALE_PARAMS = ("loss_scale_value", "loss_scale_counter")

_add_scaled = ops.MultitypeFuncGraph("add_scaled")


@_add_scaled.register("Tensor", "Tensor", "Tensor")
def _add_scaled_grad(scale, buf, grad):
    """The accumulated value as a new tensor (the buffer itself is written separately)."""
    return buf + grad * scale


_store = ops.MultitypeFuncGraph("store")


@_store.register("Tensor", "Tensor")
def _store_value(buf, value):
    ops.assign(buf, value)
    return True


_zero = ops.MultitypeFuncGraph("zero")


@_zero.register("Tensor")
def _zero_buf(buf):
    ops.assign(buf, ops.zeros_like(buf))
    return True


_sum_fp32 = ops.MultitypeFuncGraph("sum_fp32")


@_sum_fp32.register("Tensor")
def _sum_as_fp32(grad):
    grad = grad.astype(ms.float32)  # float32 first: float16 gradients' finite sums may exceed 65504
    if grad.ndim > 1:
        # Rows first: MindSpore's CPU kernel reduces a whole tensor on one thread (~190 M values/s; 63 ms for the
        # text encoder's 30522 x 384 word embeddings) but splits a last-axis reduction over rows (3.9 ms).
        grad = grad.reshape(grad.shape[0], -1).sum(-1)
    return grad.sum()


_hyper_map = ops.HyperMap()


def grads_finite(grads):
    """True when no gradient holds an inf or a nan, as one reduction per gradient and a single check: an inf or a
    nan anywhere makes the float32 sum of every gradient's sum inf or nan (+inf and -inf give nan).
    `ms.amp.all_finite` compiles to an IsFinite and a ReduceAll per gradient with more kernels around them (the
    quickstart's training step: 10,020 kernels with it, 8,634 with this). On the quickstart's 385 gradients, timed
    alone (research/tools/update_path_timing.py; research/results/finite_check/): `all_finite` 171-232 ms, whole-tensor
    sums 178-189 ms, sums by rows first (`_sum_as_fp32`) 47-58 ms; in the training step the sums' kernel time fell
    from 178 to 73 ms per step (MindSpore's profiler, research/tools/profile_train_step.py). The one difference from
    `all_finite`: finite gradients whose total passes float32's range (3.4e38) count as an overflow, as they should."""
    return ops.isfinite(ops.addn(_hyper_map(_sum_fp32, grads)))


class _ScaledLoss(nn.Cell):
    """`net_with_loss` with its total multiplied by the loss scale (the parts unchanged)."""

    def __init__(self, net_with_loss: nn.Cell, scaler):
        super().__init__(auto_prefix=False)
        self.net_with_loss = net_with_loss
        self.scaler = scaler

    def construct(self, *inputs):
        losses = self.net_with_loss(*inputs)
        return (self.scaler.scale(losses[0]),) + losses[1:]


class TrainStep(nn.Cell):
    """`net_with_loss(*inputs) -> (total, *parts)` (any number of inputs and named loss parts; the
    first output is the one differentiated); `step(*inputs, update=True)` returns
    `(total, *parts, finite)` where `finite` is False when the gradients overflowed (with loss scaling
    on, that step's update is skipped and the scale lowered).

    Args:
        grad_clip_norm: clip the global gradient norm to this value (0 = off).
        loss_scale: 1 = no scaling; > 1 = dynamic loss scaling starting at this value (Ascend/GPU fp16).
        accumulate_steps: number of micro-batches whose mean gradient makes one update.
        distributed: average gradients over the data-parallel group (needs `init()` first).
    """

    def __init__(self, net_with_loss: nn.Cell, optimizer: nn.Optimizer, grad_clip_norm: float = 0.0,
                 loss_scale: float = 1.0, accumulate_steps: int = 1, distributed: bool = False):
        super().__init__(auto_prefix=False)
        self.net_with_loss = net_with_loss
        self.optimizer = optimizer
        self.weights = optimizer.parameters
        self.grad_fn = ms.value_and_grad(net_with_loss, None, self.weights, has_aux=True)
        self.grad_clip_norm = float(grad_clip_norm)
        self.use_loss_scale = loss_scale > 1.0
        self.scaler = ms.amp.DynamicLossScaler(loss_scale, 2, 1000) if self.use_loss_scale else None
        if self.use_loss_scale:
            # The scale and its count of overflow-free steps live in the scaler's Parameters; held by this cell
            # too (under names of their own) they are saved in every step checkpoint and restored on resume.
            self.scaler.scale_value.name = LOSS_SCALE_PARAMS[0]
            self.scaler.counter.name = LOSS_SCALE_PARAMS[1]
            self.loss_scale_value, self.loss_scale_counter = self.scaler.scale_value, self.scaler.counter
            self.scaled_grad_fn = ms.value_and_grad(_ScaledLoss(net_with_loss, self.scaler), None, self.weights,
                                                    has_aux=True)
        self.accumulate_steps = int(accumulate_steps)
        if self.accumulate_steps > 1:
            self.accum_grads = self.weights.clone(prefix="accum_grad", init="zeros")
        self.hyper_map = ops.HyperMap()
        self.distributed = distributed
        if distributed:
            self.grad_reducer = nn.DistributedGradReducer(self.weights, mean=True, degree=get_group_size())

    def construct(self, *inputs, update=True):
        if self.use_loss_scale:
            losses, grads = self._scaled_grads(*inputs)
        else:
            losses, grads = self.grad_fn(*inputs)
        if self.accumulate_steps > 1:
            # Values, not the buffers: the update must not read a Parameter written in the same graph.
            grads = self.hyper_map(ops.partial(_add_scaled, Tensor(1.0 / self.accumulate_steps, ms.float32)),
                                   self.accum_grads, grads)
            if not update:
                self.hyper_map(_store, self.accum_grads, grads)
                return losses + (Tensor(True),)
            self.hyper_map(_zero, self.accum_grads)
        finite = self._apply(grads)
        return losses + (finite,)

    def _scaled_grads(self, *inputs):
        losses, grads = self.scaled_grad_fn(*inputs)
        grads = self.scaler.unscale(grads)
        return (self.scaler.unscale(losses[0]),) + losses[1:], grads

    def _apply(self, grads):
        if self.distributed:
            grads = self.grad_reducer(grads)
        finite = grads_finite(grads)
        if self.use_loss_scale:
            self.scaler.adjust(finite)
        if self.grad_clip_norm > 0:
            grads = ops.clip_by_global_norm(grads, self.grad_clip_norm)
        if finite:
            self.optimizer(grads)
        return finite


OPTIMIZERS = ("adamw", "ms_adamweightdecay")


def build_train_step(cfg, model: nn.Cell, schedule, distributed: bool = False, optimizer: str = "adamw") -> TrainStep:
    """The compiled training step of a Config, for `model` (a CoupAlign): mixed precision (train.amp_level),
    the criterion of the config, AdamW on LAVT's parameter groups with the text encoder's lr scale and
    `schedule`, clipping, loss scaling and accumulation. The one assembly used by the Trainer,
    tools/benchmark.py and research/tools/optimizer_memory.py; the network it trains is `step.net_with_loss.model`.

    `optimizer="ms_adamweightdecay"` swaps in MindSpore's fused `nn.AdamWeightDecay` (no bias correction,
    no lr_scale) on the same groups, as a memory and time reference (research/tools/optimizer_memory.py)."""
    from src.engine.optimizer import AdamW, param_groups
    from src.models.amp import apply_mixed_precision
    from src.models.coupalign import CoupAlignWithLoss
    from src.models.criterion import CoupAlignCriterion

    tc = cfg.train
    # A part may ask for learning-rate multipliers of its own parameters (`param_lr_scales`, names relative to the part;
    # the coupled SMA head's scalar gate and temperature).
    head_scales = {f"head.{name}": scale for name, scale in getattr(model.head, "param_lr_scales", {}).items()}
    if tc.amp_level != "O0":
        # Mixed precision (float16 compute) set in place on the model's cells: the model keeps its methods,
        # which the loss cell and the trainer call (src/models/amp.py). Pair it with train.loss_scale > 1.
        model = apply_mixed_precision(model, tc.amp_level)
    net_with_loss = CoupAlignWithLoss(model, CoupAlignCriterion.from_config(cfg))
    net_with_loss.set_train(True)
    groups = param_groups(net_with_loss.trainable_params(), tc.weight_decay,
                          lr_scales={"bert.": tc.text_encoder_lr_scale, "swin.": tc.image_encoder_lr_scale,
                                     **head_scales})
    if optimizer == "adamw":
        update = AdamW(groups, learning_rate=schedule)
    elif optimizer == "ms_adamweightdecay":
        update = nn.AdamWeightDecay([{k: v for k, v in g.items() if k != "lr_scale"} for g in groups],
                                    learning_rate=schedule)
    else:
        raise ValueError(f"unknown optimizer {optimizer!r}; expected one of {OPTIMIZERS}")
    return TrainStep(net_with_loss, update, grad_clip_norm=tc.grad_clip_norm, loss_scale=tc.loss_scale,
                     accumulate_steps=tc.accumulate_steps, distributed=distributed)
