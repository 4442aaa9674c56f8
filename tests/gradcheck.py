"""Shared check for "gradients reach every parameter" tests."""
import numpy as np

# Far above the round-off left by a gradient that cancels in theory, far below a real one.
ZERO_GRADIENT = 1e-6


def assert_every_parameter_gets_gradient(weights, grads, net_params_count: int) -> None:
    """`grads` from ms.value_and_grad(..., weights): one finite, non-vanishing gradient per parameter."""
    assert len(grads) == len(weights) == net_params_count
    zero, non_finite = [], []
    for param, grad in zip(weights, grads):
        g = grad.asnumpy()
        assert g.shape == param.shape, (param.name, g.shape, param.shape)
        if not np.isfinite(g).all():
            non_finite.append(param.name)
        elif np.abs(g).max() < ZERO_GRADIENT:
            zero.append(param.name)
    assert not non_finite, f"non-finite gradients: {non_finite}"
    assert not zero, f"parameters without gradient: {zero}"
