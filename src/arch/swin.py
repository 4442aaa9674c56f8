"""Swin's architecture presets and the constructor arguments of a `model.swin` config section, in a module
without MindSpore (the config, the analytic cost model in tools/benchmark.py and the Swin itself read them)."""
from __future__ import annotations

from typing import Any, Dict

from src.errors import ConfigError

# Architecture presets (patch size 4). The window size is a separate choice (7 for the 224 ImageNet-1k
# models, 12 for the 384 ImageNet-22k models used by LAVT/CoupAlign).
SWIN_PRESETS = {
    "tiny": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)),
    "small": dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24)),
    "base": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)),
    "large": dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48)),
}


def swin_arch(section) -> Dict[str, Any]:
    """The SwinTransformer constructor arguments of a `model.swin` section (src.config.SwinSection): the
    preset's values, with the explicitly set embed_dim / depths / num_heads taking precedence."""
    if section.preset and section.preset not in SWIN_PRESETS:
        raise ConfigError(f"model.swin.preset = {section.preset!r}; expected one of {sorted(SWIN_PRESETS)} or ''")
    arch: Dict[str, Any] = dict(SWIN_PRESETS[section.preset]) if section.preset else {}
    for name in ("embed_dim", "depths", "num_heads"):
        value = getattr(section, name)
        if value is not None:
            arch[name] = value
        elif name not in arch:
            raise ConfigError(f"model.swin.{name} must be set when model.swin.preset is empty")
    if len(arch["depths"]) != 4 or len(arch["num_heads"]) != 4:
        raise ConfigError("model.swin.depths and model.swin.num_heads must have 4 entries (one per stage)")
    arch.update(window_size=section.window_size, patch_size=section.patch_size, mlp_ratio=section.mlp_ratio,
                qkv_bias=section.qkv_bias, drop_path_rate=section.drop_path_rate, patch_norm=section.patch_norm,
                stem=section.stem)
    return arch
