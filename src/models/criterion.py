"""CoupAlign's training loss: a list of named terms, each times its weight (docs/method.md, "Losses").

As Mask2Former's SetCriterion: the config names the terms (`loss.terms`, each a registered `LossTerm` of
src/models/losses/, one file each) and their weights (`loss.weights`, a term's own `default_weight` where it names
none); the total is ``sum_i weight_i * term_i``. The proposals' one-to-one matching, which the proposal terms share,
is computed once per step when a term uses it.

``CoupAlignCriterion(outputs, batch) -> (total, term_1, ..., term_n)``: ``outputs`` the model's training outputs,
``batch`` the batch's fields (both dicts; src/models/outputs.py). The values are named by ``loss_names`` ("loss",
then the terms' names), each term unweighted; ``loss_weights`` holds the weights in the same order.
"""
from __future__ import annotations

import difflib
from typing import Optional, Sequence, Tuple

import mindspore as ms
from mindspore import nn, ops

from src.errors import ConfigError
from src.models.losses.base import LossTerm
from src.models.losses.matching import ProposalMatcher
from src.models.outputs import float32_outputs
from src.models.registry import LOSS_TERMS


class CoupAlignCriterion(nn.Cell):
    """The weighted sum of named loss terms (module docstring).

    Args:
        terms: ``(name, term, weight)`` in the order they are logged.
        matcher: the proposals' matching, given to every term (None when no term uses it).
    """

    def __init__(self, terms: Sequence[Tuple[str, LossTerm, float]], matcher: Optional[ProposalMatcher] = None):
        super().__init__()
        if not terms:
            raise ValueError("a criterion needs at least one loss term")
        needs_matching = [name for name, term, _ in terms if term.uses_matching]
        if needs_matching and matcher is None:
            raise ValueError(f"loss terms {needs_matching} read the proposals' matching; give a matcher")
        self.term_names = tuple(name for name, _, _ in terms)
        self.terms = nn.CellList([term for _, term, _ in terms])
        self.loss_names = ("loss",) + self.term_names
        self.loss_weights = tuple(float(weight) for _, _, weight in terms)
        self.matcher = matcher if needs_matching else None

    @classmethod
    def from_config(cls, cfg) -> "CoupAlignCriterion":
        """The terms of ``cfg.loss.terms`` with the weights of ``cfg.loss.weights``; a term that does not fit the
        model, or a weight for no registered term, is a ConfigError."""
        registered = LOSS_TERMS.keys()
        for name in cfg.loss.weights:
            if name not in registered:
                near = difflib.get_close_matches(name, registered, n=2)
                hint = f"; did you mean {', '.join(map(repr, near))}?" if near else ""
                raise ConfigError(f"config key 'loss.weights.{name}': no loss term is named {name!r}; registered: "
                                  f"{', '.join(registered)}{hint}")
        terms = []
        for name in cfg.loss.terms:
            term_cls = LOSS_TERMS.get(name)
            terms.append((name, term_cls.from_config(cfg), cfg.loss.weights.get(name, term_cls.default_weight)))
        matcher = None
        if any(term.uses_matching for _, term, _ in terms):
            # The class cost joins the matching only when the class loss trains the category head; it takes that
            # term's weight, as Mask2Former uses its class weight for both.
            classified = {name: weight for name, _, weight in terms}.get("proposal_class")
            matcher = ProposalMatcher(cfg.model.mask_generator.num_classes if classified is not None else 0,
                                      classified or 0.0, cfg.model.sma.proposal_grad_scale)
        return cls(terms, matcher)

    def term(self, name: str) -> LossTerm:
        """The term registered under `name` in this criterion (KeyError if it has none)."""
        if name not in self.term_names:
            raise KeyError(f"the criterion has no loss term {name!r}; it has {self.term_names}")
        return self.terms[self.term_names.index(name)]

    def construct(self, outputs, batch):
        # The loss in float32 whatever the model's precision (train.amp_level; float16 outputs under O2/O3): its
        # constants and its sums over every pixel do not fit float16. No-op casts at O0.
        outputs = float32_outputs(outputs)
        batch = {"target": batch["target"].astype(ms.float32), "others": batch["others"],
                 "categories": batch["categories"]}
        matching = None if self.matcher is None else self.matcher(outputs, batch)
        values = ()
        total = ops.zeros((), ms.float32)
        for i in range(len(self.loss_weights)):
            value = self.terms[i](outputs, batch, matching)
            values = values + (value,)
            total = total + self.loss_weights[i] * value
        return (total,) + values
