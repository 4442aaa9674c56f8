"""Typed configuration: one schema, one YAML loader, model-zoo style command-line overrides.

`load_config(path, argv)` reads the YAML file, applies the `--key=value` / `--key value` overrides from `argv`,
checks every key and type against the schema and returns a `Config`. Nothing here runs at import time, so any
module (and any test or notebook) can import this package freely; it imports no MindSpore and nothing of
src/models.

    schema.py   the sections (dataclasses) and their defaults, CHOICES
    loader.py   YAML, overrides, nearest-key errors, `load_config`, `config_from_dict`
    checks.py   checks across keys and ranges
    legacy.py   old configs (checkpoints, users' files): moved keys, the loss keys `loss.terms` replaced, removed options
"""
from src.config.checks import check
from src.config.legacy import RENAMED_KEYS
from src.config.loader import (ARGS_CWD_ENV, GLOBAL_ALIASES, PATH_KEYS, _from_args_cwd, all_keys, config_from_dict,
                               load_config, num_other_objects, num_proposal_classes, parse_overrides, parse_value,
                               read_yaml, resolve_key)
from src.config.schema import (AMP_O1_REASON, CHOICES, DEFAULT_LOSS_TERMS, BackendSection, BertSection, Config,
                               ConvNetSection, DataSection, EvalSection, ExportSection, LossSection,
                               MaskGeneratorSection, ModelSection, MSDeformSection, SMASection, SwinSection,
                               TrainSection, WPASection)
from src.errors import ConfigError

__all__ = [
    "AMP_O1_REASON", "ARGS_CWD_ENV", "CHOICES", "DEFAULT_LOSS_TERMS", "GLOBAL_ALIASES", "PATH_KEYS", "RENAMED_KEYS",
    "BackendSection", "BertSection", "Config", "ConfigError", "ConvNetSection", "DataSection", "EvalSection",
    "ExportSection", "LossSection", "MaskGeneratorSection", "ModelSection", "MSDeformSection", "SMASection",
    "SwinSection", "TrainSection", "WPASection", "all_keys", "check", "config_from_dict", "load_config",
    "num_other_objects", "num_proposal_classes", "parse_overrides", "parse_value", "read_yaml", "resolve_key",
    "_from_args_cwd",
]
