"""Configs written by earlier versions: keys that moved, the loss keys that `loss.terms` replaced, and options that
were measured, found no help, and left the model (research/NOTEBOOK.md says what each measured).

`upgrade(tree, source)` rewrites a config tree (a YAML file merged over its bases, or the config stored in a
checkpoint) in place before it is checked, so old checkpoints and files keep loading with the behaviour they were
trained with; an override on the command line must use today's names (`legacy_override_error` says which).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional

from src.config.schema import MaskGeneratorSection, SMASection
from src.errors import ConfigError

# Keys that moved, old path -> new path. Configs stored in checkpoints written before the move (and users' files)
# still load; an override may use either name.
RENAMED_KEYS: Dict[str, str] = {
    f"model.mask_generator.{name}": f"model.mask_generator.msdeform.{name}"
    for name in ("encoder_layers", "encoder_heads", "encoder_points", "encoder_ffn_dim", "recompute_sampling")}

# The loss weights before `loss.weights`: old key under `loss` -> the term it weighted.
LEGACY_LOSS_WEIGHTS: Dict[str, str] = {
    "aux_weight": "aux_contrast", "proposal_weight": "proposal_masks", "sma_ce_weight": "proposal_selection",
    "class_weight": "proposal_class", "sma_map_weight": "sma_map"}
# The switches before `loss.terms`: aux_enabled (false = no aux_contrast) and proposal_loss (none | matched; none =
# no proposal terms).
LEGACY_LOSS_SWITCHES = ("aux_enabled", "proposal_loss")

# Options removed after they were measured as no help: path -> (the value that behaves as today's model, why it
# went). A config holding that value loads (the key is dropped); any other value is refused with the reason.
REMOVED_OPTIONS: Dict[str, tuple] = {
    "model.sma.weighting": ("softmax", "the paper's softmax over the proposals is the only weighting; no measured "
                                       "run chose sigmoid weights"),
    "model.sma.select_at_inference": (False, "taking the top proposal instead of the mix moved oIoU by -3.7 to +0.4 and "
                                             "lowered P@0.5 in every run (research/NOTEBOOK.md, 'Training health')"),
    "loss.proposal_targets": ("all_objects", "matching the proposals to every object is the only variant whose chosen "
                                             "proposal followed the sentence (research/NOTEBOOK.md, 'Training health')"),
    "loss.match_score_weight": (0.0, "SMA's score in the matching cost sent every sentence to one proposal "
                                     "(research/NOTEBOOK.md, 'Training health')"),
    "loss.pixel_class_weight": (0.0, "a category loss at every pixel moved val oIoU within the seed spread "
                                     "(research/NOTEBOOK.md, 'Training health')"),
}
_REMOVED_LOSS_VALUES = {"loss.proposal_loss": ("weighted", "the SMA-weighted proposal loss has a fixed point at "
                                                           "identical proposals and uniform weights")}


def _node(tree: Dict[str, Any], path: str, create: bool = False) -> Optional[Dict[str, Any]]:
    node: Any = tree
    for part in path.split("."):
        if not isinstance(node, dict):
            return None
        if part not in node and create:
            node[part] = {}
        node = node.get(part)
    return node if isinstance(node, dict) else None


def _move_renamed(tree: Dict[str, Any], source: str) -> None:
    for old, new in RENAMED_KEYS.items():
        parent, leaf = old.rsplit(".", 1)
        node = _node(tree, parent)
        if node is None or leaf not in node:
            continue
        value = node.pop(leaf)
        new_parent, new_leaf = new.rsplit(".", 1)
        target = _node(tree, new_parent, create=True)
        if new_leaf in target and target[new_leaf] != value:
            raise ConfigError(f"{source}: '{old}' (the old name) and '{new}' are both set; keep '{new}'")
        target[new_leaf] = value


def _drop_removed(tree: Dict[str, Any], source: str) -> None:
    for path, (kept, why) in REMOVED_OPTIONS.items():
        parent, leaf = path.rsplit(".", 1)
        node = _node(tree, parent)
        if node is None or leaf not in node:
            continue
        value = node.pop(leaf)
        if value != kept:
            raise ConfigError(f"{source}: config key '{path}' = {value!r} was removed ({why}); only {kept!r}, today's "
                              "behaviour, is accepted")


def _model_value(tree: Dict[str, Any], path: str, section, name: str) -> Any:
    node = _node(tree, path)
    if node is not None and name in node:
        return node[name]
    return {f.name: f for f in dataclasses.fields(section)}[name].default


def _legacy_terms(tree: Dict[str, Any], loss: Dict[str, Any], source: str) -> List[str]:
    """The terms an old config trained with: the referring loss, the aux contrast unless switched off, and with SMA
    and matched proposals the proposal masks and selection, the class loss with a category head, SMA's map loss with
    the coupled head (each implied by the model then)."""
    proposal_loss = loss.get("proposal_loss", "matched")
    removed, why = _REMOVED_LOSS_VALUES["loss.proposal_loss"]
    if proposal_loss == removed:
        raise ConfigError(f"{source}: config key 'loss.proposal_loss' = {proposal_loss!r} was removed ({why})")
    if proposal_loss not in ("none", "matched"):
        raise ConfigError(f"{source}: config key 'loss.proposal_loss' = {proposal_loss!r}; an old config may hold "
                          "'none' or 'matched' (today: the proposal terms in loss.terms)")
    terms = ["referring"]
    if loss.get("aux_enabled", True):
        terms.append("aux_contrast")
    sma_on = _model_value(tree, "model.sma", SMASection, "enabled")
    if sma_on and proposal_loss == "matched":
        terms += ["proposal_masks", "proposal_selection"]
        if _model_value(tree, "model.mask_generator", MaskGeneratorSection, "num_classes"):
            terms.append("proposal_class")
    weights = loss.get("weights") or {}
    if sma_on and _model_value(tree, "model.sma", SMASection, "head") == "coupled" and weights.get("sma_map", 1.0):
        terms.append("sma_map")
    return terms


def _upgrade_loss(tree: Dict[str, Any], source: str) -> None:
    loss = tree.get("loss")
    if not isinstance(loss, dict):
        return
    legacy = [k for k in (*LEGACY_LOSS_WEIGHTS, *LEGACY_LOSS_SWITCHES) if k in loss]
    if not legacy:
        return
    weights = dict(loss.get("weights") or {})
    for old, term in LEGACY_LOSS_WEIGHTS.items():
        if old in loss:  # the old key wins over a base file's weights: it is what this config trained with
            weights[term] = loss.pop(old)
    loss["weights"] = weights
    loss["terms"] = _legacy_terms(tree, loss, source)
    for key in LEGACY_LOSS_SWITCHES:
        loss.pop(key, None)


def upgrade(tree: Dict[str, Any], source: str) -> None:
    """Rewrites an old config tree to today's keys, in place (see the module docstring)."""
    _move_renamed(tree, source)
    _drop_removed(tree, source)
    _upgrade_loss(tree, source)


def legacy_override_error(key: str) -> Optional[ConfigError]:
    """The error for a command-line override of an old loss key, naming today's key; None for any other key."""
    if key.startswith("loss."):
        leaf = key[len("loss."):]
        if leaf in LEGACY_LOSS_WEIGHTS:
            return ConfigError(f"config key '{key}' is now 'loss.weights.{LEGACY_LOSS_WEIGHTS[leaf]}'")
        if leaf in LEGACY_LOSS_SWITCHES:
            return ConfigError(f"config key '{key}' is now the list loss.terms (e.g. --loss.terms=[referring,"
                               "aux_contrast]: name the terms to sum)")
    if key in REMOVED_OPTIONS or key in _REMOVED_LOSS_VALUES:
        why = (REMOVED_OPTIONS.get(key) or _REMOVED_LOSS_VALUES[key])[1]
        return ConfigError(f"config key '{key}' was removed ({why})")
    return None
