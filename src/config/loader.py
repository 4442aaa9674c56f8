"""Reading a Config: YAML files (with `_base_`), `--key=value` overrides, old configs upgraded, then checked.

Override keys are dotted paths (`--model.swin.depths=[2,2,6,2]`) or, for convenience, a leaf name that is unique
in the whole tree (`--data_root=/data` means `--data.data_root=/data`). An unknown key is an error that lists the
nearest valid keys.
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import os
import typing
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml

from src.config.checks import DICT_KEYS, check
from src.config.legacy import RENAMED_KEYS, legacy_override_error, upgrade
from src.config.schema import Config
from src.errors import ConfigError


# ----------------------------------------------------------------------------------------------
# Schema introspection
# ----------------------------------------------------------------------------------------------
def _fields(cls) -> Dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _is_section(tp) -> bool:
    return dataclasses.is_dataclass(tp) and isinstance(tp, type)


def all_keys(cls=Config, prefix: str = "") -> Dict[str, Any]:
    """Every leaf key of the schema as a dotted path -> its type."""
    out = {}
    for name, tp in _fields(cls).items():
        path = prefix + name
        if _is_section(tp):
            out.update(all_keys(tp, path + "."))
        else:
            out[path] = tp
    return out


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return f"{_type_name(inner[0])} or null"
    if origin in (list, List):
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if origin in (dict, Dict):
        return f"mapping of name to {_type_name(typing.get_args(tp)[1])}"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp, key: str) -> Any:
    """Checks `value` against the annotation `tp`; converts only lossless cases (int -> float)."""
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        if value is None:
            return None
        inner = [a for a in typing.get_args(tp) if a is not type(None)][0]
        return _coerce(value, inner, key)
    if origin in (list, List):
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")
        key_tp, item_tp = typing.get_args(tp)
        return {_coerce(k, key_tp, f"{key} (a name)"): _coerce(v, item_tp, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - schema error, not a user error
        raise TypeError(f"unsupported schema type {tp} for {key}")
    raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def _unknown_key(key: str, valid: Sequence[str]) -> ConfigError:
    """An error for `key` listing the valid keys nearest to it (by full path and by leaf name)."""
    leaf = key.rsplit(".", 1)[-1]
    near = difflib.get_close_matches(key, valid, n=5, cutoff=0.5)
    by_leaf = [v for v in valid if difflib.SequenceMatcher(None, leaf, v.rsplit(".", 1)[-1]).ratio() >= 0.75]
    suggestions = list(dict.fromkeys(near + by_leaf))[:6]
    hint = f"; did you mean: {', '.join(suggestions)}" if suggestions else ""
    return ConfigError(f"unknown config key '{key}'{hint}")


# ----------------------------------------------------------------------------------------------
# Building a Config from nested dicts
# ----------------------------------------------------------------------------------------------
def _build(cls, data: Dict[str, Any], prefix: str, source: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: '{prefix.rstrip('.') or '<root>'}' must be a mapping, got {data!r}")
    fields = _fields(cls)
    valid = list(all_keys(Config))
    kwargs = {}
    for name, value in data.items():
        path = prefix + str(name)
        if name not in fields:
            err = _unknown_key(path, valid)
            raise ConfigError(f"{source}: {err}")
        tp = fields[name]
        if _is_section(tp):
            kwargs[name] = _build(tp, value if value is not None else {}, path + ".", source)
        else:
            try:
                kwargs[name] = _coerce(value, tp, path)
            except ConfigError as e:
                raise ConfigError(f"{source}: {e}") from None
    try:
        return cls(**kwargs)
    except ConfigError as e:  # a section's own check (BertSection: heads must divide the width)
        raise ConfigError(f"{source}: {e}") from None


def _set_path(tree: Dict[str, Any], path: str, value: Any) -> None:
    node = tree
    parts = path.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{path}': '{p}' is not a section")
    node[parts[-1]] = value


def resolve_key(key: str) -> str:
    """Maps an override key (dotted path, a path that moved, or a unique leaf name) to its full dotted path. A name
    inside a mapping-valued key (loss.weights.aux_contrast) is its own path."""
    keys = all_keys(Config)
    key = RENAMED_KEYS.get(key, key)
    if key in keys or any(key.startswith(k + ".") for k in DICT_KEYS):
        return key
    legacy = legacy_override_error(key)
    if legacy is not None:
        raise legacy
    if "." not in key:
        matches = [k for k in keys if k.rsplit(".", 1)[-1] == key]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise ConfigError(f"config key '{key}' is ambiguous; use one of: {', '.join(matches)}")
    raise _unknown_key(key, list(keys))


def parse_value(text: str) -> Any:
    """Command-line text -> Python value: true/false/True/False, null, ints, floats, lists, else str."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("null", "none", "~"):
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        pass
    if text.strip().startswith("["):
        # Lists of bare words, e.g. [tiny,base] or [true,false].
        return [parse_value(t) for t in text.strip()[1:-1].split(",") if t.strip()]
    return text


# Config keys that name files or directories. On the command line of a scripts/*.sh launcher they are
# relative to the directory the user ran the script from (ARGS_CWD_ENV), although the launcher runs
# Python from the repository root; paths inside config files stay relative to the working directory
# (the repository root for every launcher), as default_config.yaml's pretrained/... paths expect.
PATH_KEYS = ("output_dir", "checkpoint_path", "data.data_root", "model.swin.pretrained", "model.convnet.pretrained",
             "model.bert.pretrained", "model.bert.vocab_path", "eval.output_dir", "eval.control_output_dir",
             "export.file_name", "backend.compile_cache_path")
ARGS_CWD_ENV = "COUPALIGN_ARGS_CWD"
# Names every entry script accepts: `--ckpt_file` is the model zoo's name for the trained weights.
GLOBAL_ALIASES = {"ckpt_file": "checkpoint_path"}


def _from_args_cwd(text: str) -> str:
    base = os.environ.get(ARGS_CWD_ENV)
    if not base or not text or os.path.isabs(text):
        return text
    return os.path.normpath(os.path.join(base, os.path.expanduser(text)))


def parse_overrides(argv: Sequence[str], aliases: Optional[Dict[str, str]] = None
                    ) -> Tuple[Optional[str], Dict[str, Any]]:
    """Splits argv into (config_path, {dotted_key: value}). Accepts --k=v and --k v. `aliases` maps a
    script's short names to full keys (export.py: batch_size -> export.batch_size); `GLOBAL_ALIASES`
    apply everywhere. Relative path values are resolved against $COUPALIGN_ARGS_CWD when it is set."""
    aliases = {**GLOBAL_ALIASES, **(aliases or {})}
    config_path = None
    overrides: Dict[str, Any] = {}
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument '{arg}': options are written --key=value")
        body = arg[2:]
        if "=" in body:
            key, text = body.split("=", 1)
        else:
            if i + 1 >= len(args) or args[i + 1].startswith("--"):
                raise ConfigError(f"option '--{body}' has no value (write --{body}=VALUE)")
            key, text = body, args[i + 1]
            i += 1
        i += 1
        if key == "config_path":
            config_path = _from_args_cwd(text)
            continue
        key = resolve_key(aliases.get(key, key))
        if key in PATH_KEYS:
            text = _from_args_cwd(text)
        # A key of type str takes the text as written ("none" stays a string, not null).
        overrides[key] = text if all_keys().get(key) is str else parse_value(text)
    return config_path, overrides


def config_from_dict(data: Dict[str, Any], overrides: Optional[Dict[str, Any]] = None, source: str = "<dict>") -> Config:
    tree = yaml.safe_load(yaml.safe_dump(data or {}))  # deep copy of plain data
    upgrade(tree, source)  # an old config (a checkpoint's, a user's file) in today's keys
    for key, value in (overrides or {}).items():
        _set_path(tree, resolve_key(key), value)
    cfg = _build(Config, tree, "", source)
    check(cfg)
    return cfg


def _merge(base: Dict[str, Any], over: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_yaml(path: str, _seen: Tuple[str, ...] = ()) -> Dict[str, Any]:
    """Reads a config file; a top-level `_base_: other.yaml` (relative to this file) is loaded first
    and this file's keys are merged over it, so variants state only what differs."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    real = os.path.realpath(path)
    if real in _seen:
        raise ConfigError(f"{path}: _base_ chain loops back to itself")
    with open(path, "r", encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of config keys")
    base = data.pop("_base_", None)
    if base:
        data = _merge(read_yaml(os.path.join(os.path.dirname(path), base), _seen + (real,)), data)
    return data


def load_config(path: Optional[str] = None, argv: Sequence[str] = (),
                aliases: Optional[Dict[str, str]] = None) -> Config:
    """YAML file (`path`, or `--config_path` in argv) + argv overrides -> validated Config."""
    argv_path, overrides = parse_overrides(argv, aliases)
    path = argv_path or path
    data = read_yaml(path) if path else {}
    return config_from_dict(data, overrides, path or "<defaults>")


def num_other_objects(cfg: Config) -> int:
    """How many other objects' masks a training batch carries (column ``others``): data.max_other_objects with SMA
    (the proposals are matched to every object of the image), else 0."""
    if cfg.model.sma.enabled:
        others = cfg.data.max_other_objects
        return min(cfg.model.mask_generator.num_queries - 1, 15) if others is None else others
    return 0


def num_proposal_classes(cfg: Config) -> int:
    """How many object categories the training batches label (column ``categories``): the category head's
    classes (the config check allows num_classes > 0 only with SMA)."""
    return cfg.model.mask_generator.num_classes


def main(argv: Sequence[str]) -> int:
    """``python -m src.config KEY [--config_path C] [--key=value ...]`` prints one resolved value (the
    launchers in scripts/ read output_dir with it). No MindSpore import: it answers in ~0.1 s."""
    import sys

    if not argv or argv[0].startswith("--"):
        print("usage: python -m src.config KEY [--config_path C] [--key=value ...]", file=sys.stderr)
        return 2
    try:
        cfg = load_config(None, argv[1:])
        value: Any = cfg.to_dict()
        for part in resolve_key(argv[0]).split("."):
            value = value[part]
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("" if value is None else value)
    return 0
