"""Activations: the exact (erf) GELU and a tanh accurate to float32."""
from __future__ import annotations

import math

from mindspore import nn, ops


_INV_SQRT2 = 1.0 / math.sqrt(2.0)


def gelu(x):
    """Exact (erf) GELU, ``x * (1 + erf(x / sqrt(2))) / 2``, as PyTorch's default ``nn.GELU()``.

    ``ops.gelu(approximate="none")`` divides by a sqrt(2) tensor; multiplying by its inverse gives the same
    values (within one ulp) and on CPU a scalar Mul is several times cheaper than a tensor Div
    (docs/performance.md).
    """
    return x * (ops.erf(x * _INV_SQRT2) + 1.0) * 0.5


class GELU(nn.Cell):
    """``gelu`` as a Cell (no parameters), for SequentialCells."""

    def construct(self, x):
        return gelu(x)


class AccurateTanh(nn.Cell):
    """``tanh`` to ~1e-7 absolute error, as ``-sign(x) * t / (2 + t)`` with ``t = expm1(-2|x|)``.

    MindSpore 2.10's CPU ``Tanh`` kernel is an approximation whose absolute error reaches 1e-4 (measured
    for |x| around 5), which shows up directly in ``V'``; this form keeps parity with PyTorch's gate.
    """

    def construct(self, x):
        t = ops.expm1(-2.0 * ops.abs(x))  # in (-1, 0]
        return -ops.sign(x) * t / (2.0 + t)

    def bprop(self, x, out, dout):
        # d tanh / dx = 1 - tanh^2; explicit so the derivative at x = 0 is 1 (autodiff of sign() gives 0).
        return (dout * (1.0 - out * out),)
