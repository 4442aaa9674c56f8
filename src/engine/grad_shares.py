"""How much of the gradient on the shared trunk each loss term contributes (issue #21, item 3).

The total loss is ``sum_i w_i * part_i`` (``net_with_loss.loss_names[1:]``, weights
``net_with_loss.criterion.loss_weights``). Every part reaches the shared trunk (image encoder ``swin.``,
text encoder ``bert.``, fusion ``wpa.``, pixel decoder ``pixel_decoder.``), and one term whose gradient
there is much larger than the others' decides what the trunk learns, whatever the weights suggest. For one
batch, :func:`gradient_shares` backpropagates each weighted term on its own and reports

| key | value |
|---|---|
| ``grad_norm/<part>`` | global L2 norm, over every trunk parameter, of the gradient of ``w_i * part_i`` |
| ``grad_share/<part>`` | ``grad_norm/<part> / sum_j grad_norm/<part_j>`` (the shares sum to 1) |

A term with weight 0, or one that does not reach the trunk, has norm 0 and share 0. The parts are compared on
one and the same forward computation:

* dropout and drop-path are off (the network is put in inference mode for the measurement, then restored), so
  no term sees another mask;
* the auxiliary contrast's random pixel choice uses fixed keys instead of ``ops.rand``: for a pixel-embedding
  grid of ``B x hw``, ``rng = numpy.random.default_rng(seed)``, foreground keys ``rng.random((B, hw),
  dtype=float32)`` then background keys drawn the same way (see :func:`aux_keys`).

Forward and backward passes only (PyNative; the previous execution mode is restored): no optimizer step, the
parameters are not changed, and no global random state is consumed. The cost is one forward and one backward
per term of nonzero weight. ``src/engine/trainer.py`` logs the shares at the start, middle and end of a run
(``train_log.jsonl``, records of type ``grad_shares``); ``tools/grad_shares.py`` prints them for a checkpoint.
"""
from __future__ import annotations

import contextlib
import math
from typing import Dict, List, Sequence, Tuple

import numpy as np

import mindspore as ms
from mindspore import Tensor, ops

TRUNK_PREFIXES = ("swin.", "bert.", "wpa.", "pixel_decoder.")
NORM, SHARE = "grad_norm/", "grad_share/"


def trunk_parameters(net_with_loss, prefixes: Sequence[str] = TRUNK_PREFIXES) -> List[ms.Parameter]:
    """The trainable parameters whose names start with one of `prefixes` (names as the train step sees them)."""
    params = [p for p in net_with_loss.trainable_params() if p.name.startswith(tuple(prefixes))]
    if not params:
        names = [p.name for p in net_with_loss.trainable_params()][:5]
        raise ValueError(f"no trainable parameter starts with any of {tuple(prefixes)} (the first are {names})")
    return params


def aux_keys(batch: int, num_pixels: int, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """The fixed (foreground, background) keys, each (batch, num_pixels) float32 in [0, 1), of the measurement."""
    rng = np.random.default_rng(seed)
    return (rng.random((batch, num_pixels), dtype=np.float32), rng.random((batch, num_pixels), dtype=np.float32))


@contextlib.contextmanager
def _fixed_aux_draws(criterion, image, seed: int):
    """Makes the criterion's auxiliary contrast (its aux_contrast term) draw the keys of `aux_keys` for the pixel
    embeddings of `image` (B, 3, H, W), at stride 4."""
    if "aux_contrast" not in getattr(criterion, "term_names", ()):  # no auxiliary contrast: nothing is drawn
        yield
        return
    aux = criterion.term("aux_contrast")
    previous = aux.fixed_keys
    num_pixels = -(-image.shape[2] // 4) * -(-image.shape[3] // 4)
    aux.use_fixed_keys(*(Tensor(keys) for keys in aux_keys(image.shape[0], num_pixels, seed)))
    try:
        yield
    finally:
        aux.fixed_keys = previous


@contextlib.contextmanager
def _measuring(net_with_loss):
    """PyNative and inference mode (no dropout) for the measurement; both restored afterwards."""
    previous_mode = ms.get_context("mode")
    was_training = net_with_loss.training
    ms.set_context(mode=ms.PYNATIVE_MODE)
    net_with_loss.set_train(False)
    try:
        yield
    finally:
        net_with_loss.set_train(was_training)
        ms.set_context(mode=previous_mode)


def _global_norm(grads) -> float:
    squares = [ops.square(g.astype(ms.float32)).sum() for g in grads if g is not None]
    if not squares:
        return 0.0
    return math.sqrt(float(ops.stack(squares).sum().asnumpy()))


def gradient_shares(net_with_loss, batch: Sequence, trunk_prefixes: Sequence[str] = TRUNK_PREFIXES,
                    seed: int = 0) -> Dict[str, float]:
    """Each loss term's gradient norm on the shared trunk and its share of their sum (see the module docstring).

    Args:
        net_with_loss: a CoupAlignWithLoss (or any cell returning ``(total, *parts)`` with ``loss_names`` and
            ``criterion.loss_weights``, one weight per part).
        batch: its inputs in order, arrays or Tensors: ``(image, input_ids, attention_mask, target, others,
            categories)``. A few samples are enough.
        trunk_prefixes: the parameters measured, by name prefix.
        seed: of the auxiliary contrast's pixel keys (`aux_keys`).

    Returns:
        ``{"grad_norm/<part>": float, ..., "grad_share/<part>": float, ...}`` in the order of ``loss_names[1:]``;
        every share is 0 when every norm is 0.
    """
    names = tuple(net_with_loss.loss_names[1:])
    weights = tuple(float(w) for w in net_with_loss.criterion.loss_weights)
    if len(weights) != len(names):
        raise ValueError(f"{len(weights)} loss weights for the {len(names)} loss parts {names}")
    params = trunk_parameters(net_with_loss, trunk_prefixes)
    inputs = tuple(x if isinstance(x, Tensor) else Tensor(np.asarray(x)) for x in batch)
    norms: Dict[str, float] = {}
    with _measuring(net_with_loss), _fixed_aux_draws(net_with_loss.criterion, inputs[0], seed):
        for index, (name, weight) in enumerate(zip(names, weights), start=1):
            if weight == 0.0:
                norms[name] = 0.0
                continue

            def term(*args, index=index, weight=weight):
                return weight * net_with_loss(*args)[index]

            grads = ms.grad(term, grad_position=None, weights=params)(*inputs)
            norms[name] = _global_norm(grads)
    total = sum(norms.values())
    result = {NORM + name: value for name, value in norms.items()}
    result.update({SHARE + name: (value / total if total > 0 else 0.0) for name, value in norms.items()})
    return result


def part_names(shares: Dict[str, float]) -> List[str]:
    return [key[len(NORM):] for key in shares if key.startswith(NORM)]


def combine(results: Sequence[Dict[str, float]]) -> Dict[str, float]:
    """Several batches' results as one: the mean norm of each part, and the shares of those means."""
    if not results:
        raise ValueError("no results to combine")
    names = part_names(results[0])
    norms = {name: float(np.mean([r[NORM + name] for r in results])) for name in names}
    total = sum(norms.values())
    combined = {NORM + name: value for name, value in norms.items()}
    combined.update({SHARE + name: (value / total if total > 0 else 0.0) for name, value in norms.items()})
    return combined


def summary_line(shares: Dict[str, float]) -> str:
    """One line: ``referring 41.2% (|g| 6.65) | aux_contrast 52.0% (|g| 8.4) | ...``."""
    return " | ".join(f"{name} {100 * shares[SHARE + name]:.1f}% (|g| {shares[NORM + name]:.3g})"
                      for name in part_names(shares))


def format_table(shares: Dict[str, float], weights: Dict[str, float] = None,
                 per_batch: Sequence[Dict[str, float]] = ()) -> str:
    """A table: part, weight (when given), gradient norm, share, and each batch's share (when given)."""
    names = part_names(shares)
    width = max([len("part")] + [len(n) for n in names])
    header = f"{'part':<{width}}" + ("  weight" if weights else "") + "   grad norm   share"
    if per_batch:
        header += "  per batch"
    lines = [header]
    for name in names:
        line = f"{name:<{width}}"
        if weights:
            line += f"  {weights[name]:6.3g}"
        line += f"  {shares[NORM + name]:10.4g}  {100 * shares[SHARE + name]:5.1f}%"
        if per_batch:
            line += "  " + " ".join(f"{100 * r[SHARE + name]:5.1f}%" for r in per_batch)
        lines.append(line)
    return "\n".join(lines)
