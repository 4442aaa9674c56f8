"""The interface of a loss term (src/models/losses/__init__.py lists the terms)."""
from __future__ import annotations

from mindspore import nn

from src.errors import ConfigError


class LossTerm(nn.Cell):
    """One named term of the total loss.

    ``construct(outputs, batch, matching) -> scalar``, unweighted: ``outputs`` the model's training outputs and
    ``batch`` the batch's fields (src/models/outputs.py), ``matching`` the proposals' one-to-one matching
    (src/models/losses/matching.py) when a term of the criterion sets ``uses_matching``, else None.

    A subclass sets ``default_weight`` (the weight when ``loss.weights`` names none) and builds itself with
    ``from_config(cfg)``, refusing a model that lacks what it reads (`require`).
    """

    default_weight = 1.0
    uses_matching = False

    @classmethod
    def from_config(cls, cfg) -> "LossTerm":
        return cls()

    @classmethod
    def activation_elements(cls, cfg, height: int, width: int) -> int:
        """float32 elements per image the term keeps for the backward beyond the referring loss's (the accounting of
        tools/benchmark.py's training-memory estimate); 0 for a term whose tensors are a few per proposal."""
        return 0

    @staticmethod
    def require(ok: bool, term: str, what: str) -> None:
        """A ConfigError when the model lacks what the term reads: ``what`` names the config key to set."""
        if not ok:
            raise ConfigError(f"loss term '{term}' (config key 'loss.terms') needs {what}; set it or remove the term")


class ProposalTerm(LossTerm):
    """A term over SMA's proposals and their one-to-one matching to the image's objects: it needs SMA
    (model.sma.enabled). ``name`` is the registered name, for the message."""

    uses_matching = True
    name = ""

    @classmethod
    def check_model(cls, cfg) -> None:
        cls.require(cfg.model.sma.enabled, cls.name, "SMA's proposals (model.sma.enabled=true)")

    @classmethod
    def from_config(cls, cfg) -> "LossTerm":
        cls.check_model(cfg)
        return cls()
