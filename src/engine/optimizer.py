"""AdamW with PyTorch semantics, the LAVT parameter groups, and the per-iteration polynomial schedule.

The recipe we reproduce (LAVT, which CoupAlign follows) uses `torch.optim.AdamW`:

    p <- p - lr * wd * p                     (decoupled weight decay)
    m <- b1 m + (1 - b1) g ;  v <- b2 v + (1 - b2) g^2
    p <- p - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)

MindSpore's `nn.AdamWeightDecay` has no bias correction (it is the TF/BERT variant), and
`mint.optim.AdamW` is experimental and tied to its own scheduler classes. Written out with tensor
ops, though, the rule above builds ~15 parameter-sized temporaries per parameter, and on CPU these
were all resident at once (the paper-size train step passed 19 GiB; docs/performance.md, hot spot 4).
So the update runs through the fused in-place primitive `ops.AdamWeightDecay`, which computes

    m <- b1 m + (1 - b1) g ;  v <- b2 v + (1 - b2) g^2
    p <- p - lr' * (m / (sqrt(v) + eps') + wd' * p)

and the bias correction is folded into its scalar inputs. With c1 = 1 - b1^t, c2 = 1 - b2^t:

    lr'  = lr * sqrt(c2) / c1
    eps' = eps * sqrt(c2)
    wd'  = wd * c1 / sqrt(c2)           (= wd * lr / lr', so lr' * wd' = lr * wd)

because lr' * m / (sqrt(v) + eps') = (lr / c1) * m / (sqrt(v) / sqrt(c2) + eps)
= lr * (m / c1) / (sqrt(v / c2) + eps), and p - lr' * wd' * p = p - lr * wd * p. wd' is written
without lr so that lr = 0 (the schedule's last step) gives no 0/0.

tests/test_optimizer.py checks it step by step against torch.optim.AdamW + LambdaLR.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
from mindspore.nn.learning_rate_schedule import LearningRateSchedule

_adamw_update = ops.MultitypeFuncGraph("adamw_update")


@_adamw_update.register("Function", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor",
                        "Tensor", "Tensor", "Tensor")
def _adamw_step(fused_op, beta1, beta2, eps_t, lr_t, decay_factor, weight_decay, param, m, v, grad):
    """One AdamW update of `param`, `m` and `v` in place by the fused primitive, with the bias correction
    already in `lr_t` and `eps_t`; the weight decay is rescaled here (`decay_factor` = c1 / sqrt(c2))
    because it may differ per parameter. Returns True so hyper_map has a value to collect."""
    fused_op(param, m, v, lr_t, beta1, beta2, eps_t, weight_decay * decay_factor, ops.cast(grad, param.dtype))
    return True


_adamw_update_scaled = ops.MultitypeFuncGraph("adamw_update_scaled")


@_adamw_update_scaled.register("Function", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor",
                               "Tensor", "Tensor", "Tensor", "Tensor")
def _adamw_step_scaled(fused_op, beta1, beta2, eps_t, lr_t, decay_factor, weight_decay, lr_scale, param, m, v,
                       grad):
    """`_adamw_step` with this parameter's `lr_scale` on the (bias-corrected) learning rate. The decay
    factor needs no scale: lr' * wd' = lr_scale * lr * wd either way."""
    return _adamw_step(fused_op, beta1, beta2, eps_t, lr_t * lr_scale, decay_factor, weight_decay, param, m, v,
                       grad)


class AdamW(nn.Optimizer):
    """AdamW (PyTorch's update rule) over `params` (a list of Parameters or of group dicts with
    'params', 'weight_decay' and optionally 'lr_scale'), with `learning_rate` a float or an
    `nn.LearningRateSchedule`. A group's 'lr_scale' multiplies the one schedule for its parameters
    (e.g. a pretrained text encoder next to an image encoder trained from scratch)."""

    def __init__(self, params, learning_rate=1e-3, beta1: float = 0.9, beta2: float = 0.999,
                 eps: float = 1e-8, weight_decay: float = 0.0):
        scale_of = {}
        if params and isinstance(params[0], dict):
            params = [dict(g) for g in params]
            for group in params:
                scale = float(group.pop("lr_scale", 1.0))
                scale_of.update({id(p): scale for p in group["params"]})
        super().__init__(learning_rate, params, weight_decay)
        if self.is_group_lr:
            raise ValueError("AdamW: per-group learning rates are not supported; use one schedule (and lr_scale)")
        scales = [scale_of.get(id(p), 1.0) for p in self._parameters]
        # All-ones keeps the plain update graph; otherwise one scale per parameter, as weight decay is.
        self.lr_scales = tuple(Tensor(x, ms.float32) for x in scales) if any(x != 1.0 for x in scales) else None
        self.beta1 = Tensor(beta1, ms.float32)
        self.beta2 = Tensor(beta2, ms.float32)
        self.eps = Tensor(eps, ms.float32)
        self.moments1 = self._parameters.clone(prefix="adam_m", init="zeros")
        self.moments2 = self._parameters.clone(prefix="adam_v", init="zeros")
        # Number of updates applied so far; separate from nn.Optimizer.global_step, which the
        # learning-rate schedule reads *before* the increment.
        self.num_updates = Parameter(Tensor(0.0, ms.float32), name="adam_num_updates", requires_grad=False)
        # In place on param, m and v (fp32 or fp16, m and v in the parameter's dtype); no temporaries.
        self.fused_adamw = ops.AdamWeightDecay()

    def construct(self, gradients):
        gradients = self.flatten_gradients(gradients)
        weight_decay = self.get_weight_decay()
        lr = self.get_lr()
        self.assignadd(self.global_step, self.global_step_increase_tensor)
        t = self.num_updates + 1.0
        ops.assign(self.num_updates, t)
        # Bias correction folded into the fused op's scalars (derivation in the module docstring).
        bias_c1 = 1.0 - ops.pow(self.beta1, t)
        sqrt_bias_c2 = ops.sqrt(1.0 - ops.pow(self.beta2, t))
        lr_t = lr * sqrt_bias_c2 / bias_c1
        eps_t = self.eps * sqrt_bias_c2
        decay_factor = bias_c1 / sqrt_bias_c2
        if self.lr_scales is not None:  # only built from groups, so weight decay is per parameter too
            return self.hyper_map(
                ops.partial(_adamw_update_scaled, self.fused_adamw, self.beta1, self.beta2, eps_t, lr_t,
                            decay_factor),
                weight_decay, self.lr_scales, self._parameters, self.moments1, self.moments2, gradients)
        # (Each branch spells out its whole partial: a partial of a partial fails to compile.)
        if self.is_group:  # one weight decay per parameter
            return self.hyper_map(
                ops.partial(_adamw_update, self.fused_adamw, self.beta1, self.beta2, eps_t, lr_t, decay_factor),
                weight_decay, self._parameters, self.moments1, self.moments2, gradients)
        return self.hyper_map(
            ops.partial(_adamw_update, self.fused_adamw, self.beta1, self.beta2, eps_t, lr_t, decay_factor,
                        weight_decay),
            self._parameters, self.moments1, self.moments2, gradients)


class PolyLR(LearningRateSchedule):
    """lr(step) = base * (1 - step / total) ** power per iteration (LAVT's schedule), optionally after a
    linear warm-up from `warmup_init * base` over `warmup_steps`. `step` is the number of updates so far."""

    def __init__(self, base_lr: float, total_steps: int, power: float = 0.9, warmup_steps: int = 0,
                 warmup_init: float = 0.0, end_lr: float = 0.0):
        super().__init__()
        if total_steps < 1:
            raise ValueError(f"PolyLR: total_steps must be >= 1, got {total_steps}")
        self.base_lr = float(base_lr)
        self.end_lr = float(end_lr)
        self.total_steps = float(total_steps)
        self.power = float(power)
        self.warmup_steps = float(warmup_steps)
        self.warmup_init = float(warmup_init)

    def construct(self, global_step):
        step = ops.cast(global_step, ms.float32)
        frac = ops.clip_by_value(step / self.total_steps, 0.0, 1.0)
        decayed = (self.base_lr - self.end_lr) * ops.pow(1.0 - frac, self.power) + self.end_lr
        if self.warmup_steps > 0:
            ramp = self.warmup_init + (1.0 - self.warmup_init) * ops.minimum(step / self.warmup_steps, 1.0)
            decayed = decayed * ramp
        return decayed

    def value(self, step: int) -> float:
        """The same formula in Python, for logging without touching the device."""
        frac = min(max(step / self.total_steps, 0.0), 1.0)
        lr = (self.base_lr - self.end_lr) * (1.0 - frac) ** self.power + self.end_lr
        if self.warmup_steps > 0:
            lr *= self.warmup_init + (1.0 - self.warmup_init) * min(step / self.warmup_steps, 1.0)
        return lr


# Parameters exempt from weight decay (docs/method.md / LAVT): norms, biases, position tables,
# relative-position tables. Every 1-D parameter is a norm scale/shift, a bias or a per-channel
# scale, so the rule is "1-D, or a named position table".
NO_DECAY_NAME_PARTS = ("relative_position_bias_table", "position_embeddings", "token_type_embeddings",
                       "level_embed", "absolute_pos_embed")


def uses_weight_decay(param: Parameter) -> bool:
    if len(param.shape) <= 1:
        return False
    return not any(part in param.name for part in NO_DECAY_NAME_PARTS)


def param_groups(params: Sequence[Parameter], weight_decay: float,
                 lr_scales: Optional[Dict[str, float]] = None) -> List[Dict]:
    """Splits trainable parameters into decayed and undecayed groups (empty groups dropped).

    `lr_scales` maps a parameter-name prefix (e.g. "bert.") to a learning-rate multiplier; each
    (decay, scale) combination becomes its own group with an 'lr_scale' entry for `AdamW`.
    """
    lr_scales = lr_scales or {}

    def scale_of(p: Parameter) -> float:
        return next((v for k, v in lr_scales.items() if p.name.startswith(k)), 1.0)

    groups = []
    trainable = [p for p in params if p.requires_grad]
    for scale in sorted({scale_of(p) for p in trainable}, reverse=True):
        for decayed in (True, False):
            members = [p for p in trainable if uses_weight_decay(p) == decayed and scale_of(p) == scale]
            if members:
                group = {"params": members, "weight_decay": weight_decay if decayed else 0.0}
                if scale != 1.0:
                    group["lr_scale"] = scale
                groups.append(group)
    return groups
