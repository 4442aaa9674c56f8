"""Gradient scaling: the identity forward, the gradient multiplied by a constant backward."""
from mindspore import ops

__all__ = ["scale_gradient"]


def scale_gradient(x, scale: float):
    """``x`` unchanged forward (bit for bit); the gradient flowing back through it times ``scale``.

    Written as ``sg(x) + scale * (x - sg(x))``: the second term is exactly 0 forward and carries ``scale`` times
    the gradient backward. ``scale`` is a Python float fixed at build time; 1.0 returns ``x`` itself.
    """
    if scale == 1.0:
        return x
    frozen = ops.stop_gradient(x)
    return frozen + scale * (x - frozen)
