"""The checks of a whole Config that one key's type cannot express: allowed values, ranges, and keys that depend on
each other. `src.config.loader` runs `check` after every file and override is applied."""
from __future__ import annotations

from src.config.schema import AMP_O1_REASON, CHOICES, Config
from src.errors import ConfigError


def flatten(tree, prefix: str = ""):
    """A nested dict as {dotted path: leaf value} (a dict-typed key such as loss.weights stays one leaf)."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict) and prefix + k not in DICT_KEYS:
            out.update(flatten(v, prefix + k + "."))
        else:
            out[prefix + k] = v
    return out


# Keys whose value is a mapping (a leaf of the schema, not a section).
DICT_KEYS = ("loss.weights",)


def check(cfg: Config) -> None:
    """Every check that needs more than one key or a value range (types were checked when the Config was built)."""
    flat = flatten(cfg.to_dict())
    if flat["train.amp_level"] == "O1":
        raise ConfigError(f"config key 'train.amp_level' = 'O1': not supported ({AMP_O1_REASON})")
    for key, allowed in CHOICES.items():
        if flat[key] not in allowed:
            raise ConfigError(f"config key '{key}' = {flat[key]!r}; expected one of {', '.join(map(repr, allowed))}")
    for key in ("train.batch_size", "train.epochs", "train.accumulate_steps", "train.keep_last",
                "train.validate_every", "train.diagnostics_batch_size", "model.image_size", "model.max_tokens",
                "model.mask_generator.num_queries"):
        if flat[key] < 1:
            raise ConfigError(f"config key '{key}' = {flat[key]}; expected a positive integer")
    for key in ("data.max_bad_samples", "data.num_workers", "train.warmup_steps", "train.max_steps",
                "model.sma.reasoning_layers",
                "train.diagnostics_pairs"):
        if flat[key] < 0:
            raise ConfigError(f"config key '{key}' = {flat[key]}; expected an integer >= 0")
    stages = flat["model.swin.recompute_stages"]
    if len(set(stages)) != len(stages) or any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < 4
                                              for i in stages):
        raise ConfigError(f"config key 'model.swin.recompute_stages' = {stages!r}; expected distinct stage indices "
                          "0-3 (0-based, as model.swin.depths), e.g. [2] for the deepest stage")
    if not flat["train.loss_scale"] >= 1.0:
        raise ConfigError(f"config key 'train.loss_scale' = {flat['train.loss_scale']}; expected 1 (off) or more (the "
                          "initial dynamic loss scale, e.g. 1024 with train.amp_level O2)")
    if flat["model.mask_generator.num_classes"] < 0:
        raise ConfigError(f"config key 'model.mask_generator.num_classes' = {flat['model.mask_generator.num_classes']}; "
                          "expected an integer >= 0 (0 = no category head)")
    if flat["model.mask_generator.num_classes"] and not flat["model.sma.enabled"]:
        raise ConfigError("config key 'model.mask_generator.num_classes' > 0 classifies the proposals: it needs "
                          "model.sma.enabled=true (or set num_classes=0)")
    for key in ("train.text_encoder_lr_scale", "train.image_encoder_lr_scale"):
        if not flat[key] >= 0.0:  # a negative multiplier would train that encoder up its loss
            raise ConfigError(f"config key '{key}' = {flat[key]}; expected a multiplier of train.lr >= 0 (0 = frozen)")
    if not 0.0 <= flat["model.sma.proposal_grad_scale"] <= 1.0:
        raise ConfigError(f"config key 'model.sma.proposal_grad_scale' = {flat['model.sma.proposal_grad_scale']}; "
                          "expected a value in [0, 1]")
    if flat["model.sma.pixel_agreement"] and flat["model.sma.head"] != "coupled":
        raise ConfigError("config key 'model.sma.pixel_agreement' = True needs model.sma.head='coupled' (the word-pixel "
                          f"path it reads), got {flat['model.sma.head']!r}")
    if flat["eval.control_output_dir"] and flat["eval.swap_sentences"]:
        raise ConfigError("config keys 'eval.control_output_dir' and 'eval.swap_sentences' = True: the control is "
                          "scored beside the split's own sentences; set one of them")
    _check_loss(cfg.loss)
    if flat["model.image_encoder"] == "convnet":
        widths, depths = flat["model.convnet.widths"], flat["model.convnet.depths"]
        if len(widths) != 4 or len(depths) != 4 or min(depths) < 0 or any(w < 8 or w % 8 for w in widths):
            raise ConfigError(f"config keys 'model.convnet.widths' = {widths} and 'model.convnet.depths' = {depths}: "
                              "expected 4 widths, each a multiple of 8 (GroupNorm of 8 groups), and 4 depths >= 0")
    # The msdeform section is read only when that decoder is chosen (a config can switch decoders without
    # deleting it), except for an option that asks for something no other decoder does.
    if flat["model.mask_generator.msdeform.recompute_sampling"] and flat["model.mask_generator.pixel_decoder"] != "msdeform":
        raise ConfigError("config key 'model.mask_generator.msdeform.recompute_sampling' = True needs pixel_decoder "
                          f"'msdeform' (the deformable attention it recomputes), got "
                          f"{flat['model.mask_generator.pixel_decoder']!r}")


    if flat["model.sma.enabled"]:
        others, queries = flat["data.max_other_objects"], flat["model.mask_generator.num_queries"]
        if others is None:
            others = min(queries - 1, 15)
            if others < 1:
                raise ConfigError("the proposals are matched to every object of the image: that needs 2 or more "
                                  f"proposals (model.mask_generator.num_queries = {queries})")
        elif others < 1:
            raise ConfigError("config key 'data.max_other_objects' must be >= 1 with SMA: the proposals are matched to "
                              "every object of the image, the referent and these others")
        if 1 + others > queries:
            raise ConfigError(f"config key 'data.max_other_objects' = {others}: 1 + {others} objects cannot be matched "
                              f"one-to-one to model.mask_generator.num_queries = {queries} proposals")


def _check_loss(loss) -> None:
    """The list of terms and the weights table; whether each term fits the model is checked when the criterion is
    built (src/models/criterion.py), where the terms are known."""
    if not loss.terms:
        raise ConfigError("config key 'loss.terms' is empty; name at least one loss term (e.g. [referring])")
    repeated = sorted({t for t in loss.terms if loss.terms.count(t) > 1})
    if repeated:
        raise ConfigError(f"config key 'loss.terms' names {repeated} more than once")
    for name, weight in loss.weights.items():
        if not weight >= 0:
            raise ConfigError(f"config key 'loss.weights.{name}' = {weight}; expected a weight >= 0")
