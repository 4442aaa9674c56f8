"""Activations: the exact (erf) GELU, a tanh accurate to float32, and a softmax computed in float32."""
from __future__ import annotations

import math

import mindspore as ms
from mindspore import nn, ops


_INV_SQRT2 = 1.0 / math.sqrt(2.0)


def gelu(x):
    """Exact (erf) GELU, ``x * (1 + erf(x / sqrt(2))) / 2``, as PyTorch's default ``nn.GELU()``.

    ``ops.gelu(approximate="none")`` divides by a sqrt(2) tensor; multiplying by its inverse gives the same
    values (within one ulp) and on CPU a scalar Mul is several times cheaper than a tensor Div
    (docs/performance.md).
    """
    return x * (ops.erf(x * _INV_SQRT2) + 1.0) * 0.5


def softmax_fp32(x, axis=-1):
    """``softmax(x)`` computed in float32 and returned in ``x``'s dtype.

    Under mixed precision (train.amp_level) the attention scores arrive in float16: exponentials of float16
    differences and a float16 sum over thousands of keys (14,400 pixels per word at 480x480) lose the small
    weights. Returning ``x``'s dtype keeps the following product in float16. No-op casts in float32.
    Graph mode only honours the casts inside a float16 cell; PyNative casts every op of such a cell to
    float16 (measured, MindSpore 2.10), explicit casts included.
    """
    return ops.softmax(x.astype(ms.float32), axis=axis).astype(x.dtype)


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
