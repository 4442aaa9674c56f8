"""Stochastic depth."""
from __future__ import annotations

from mindspore import nn, ops


class DropPath(nn.Cell):
    """Stochastic depth: in training, zero a whole residual branch per sample with probability ``drop_prob``.

    Surviving samples are scaled by ``1 / (1 - drop_prob)`` so the expectation is unchanged. The per-sample
    keep mask is ``nn.Dropout`` applied to a ``(B, 1, ..., 1)`` tensor of ones, which yields exactly ``0``
    or ``1 / keep_prob``. ``nn.Dropout`` takes its seeds from ``ms.set_seed``; the bare ``ops.Dropout``
    primitive with its default seeds (0, 0) draws a fresh seed per process, which made training runs
    with the same seed differ. Identity in evaluation mode (``set_train(False)``).
    """

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_prob must be in [0, 1), got {drop_prob}")
        self.drop_prob = float(drop_prob)
        self.keep_mask = nn.Dropout(p=self.drop_prob)

    def construct(self, x):
        if not self.training or self.drop_prob == 0.0:
            return x
        mask_shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        keep = self.keep_mask(ops.ones(mask_shape, x.dtype))  # (B, 1, ..): 0 or 1/keep_prob
        return x * keep

    def extend_repr(self):
        return f"drop_prob={self.drop_prob}"
