"""Registries: a name in the config chooses a registered part (a fusion module, a pixel decoder, a dataset).

A part registers itself where it is defined::

    @PIXEL_DECODERS.register("fpn")
    class FPNPixelDecoder(nn.Cell):
        @classmethod
        def from_config(cls, cfg, in_channels): ...  # reads cfg.model.mask_generator

and is built from the name the config holds: ``PIXEL_DECODERS.get(cfg.model.mask_generator.pixel_decoder)``,
always as ``from_config(cfg, *runtime_args)``: the whole Config first (the part reads its own section), then only
what other parts fix at build time (in_channels, text_dim, stage, split). An unknown name is a ConfigError listing
the registered names nearest to it.

Discovery, the same for every registry: a registry names the package its parts live in, and before it looks a
name up (`get`, `keys`, `in`) it imports, once, every module of that package whose source registers a part in it,
i.e. mentions ``<REGISTRY>.register`` (`import_registering_modules`). Adding a part is therefore one new file in
that package and nothing else; modules that register nothing are not imported, so listing the datasets does not
load MindSpore. No MindSpore import here, so the config and the tools can list the choices cheaply.
"""
from __future__ import annotations

import difflib
import importlib
import importlib.util
import pkgutil
from typing import Callable, Dict, Generic, List, Optional, TypeVar

from src.errors import ConfigError

T = TypeVar("T")


def import_registering_modules(package: str, marker: str) -> List[str]:
    """Imports every module of `package` (its direct modules; a subpackage through its ``__init__``) whose source
    contains `marker`, and returns their names. A module without readable source (compiled only) is imported.
    Reading the source first keeps modules that register nothing (and what they import) out of the process."""
    root = importlib.import_module(package)
    imported = []
    for info in pkgutil.iter_modules(root.__path__):
        name = f"{package}.{info.name}"
        spec = importlib.util.find_spec(name)
        origin = spec.origin if spec is not None else None
        if origin and origin.endswith(".py"):
            with open(origin, encoding="utf-8") as f:
                if marker not in f.read():
                    continue
        importlib.import_module(name)
        imported.append(name)
    return imported


class Registry(Generic[T]):
    """Names -> classes of one kind of part, each built by its ``from_config(cfg, *runtime_args)`` (MODELS holds
    builder functions, src/models/factory.py). `key` is the
    config key whose value names the part (error messages use it). With `package` and `name` (the variable the
    registry is bound to, e.g. "FUSIONS"), a look-up first imports the modules of `package` that mention
    ``<name>.register`` (module docstring, "Discovery")."""

    def __init__(self, kind: str, key: str, package: Optional[str] = None, name: Optional[str] = None):
        if (package is None) != (name is None):
            raise ValueError("Registry: give both package and name (to discover its parts), or neither")
        self.kind = kind
        self.key = key
        self.package = package
        self.name = name
        self._discovered = package is None
        self._entries: Dict[str, T] = {}

    def discover(self) -> None:
        """Imports, once, the modules of the registry's package that register a part in it."""
        if not self._discovered:
            import_registering_modules(self.package, f"{self.name}.register")
            self._discovered = True

    def register(self, name: str) -> Callable[[T], T]:
        def add(entry: T) -> T:
            if name in self._entries and self._entries[name] is not entry:
                # Two parts under one name: a programming error, not a user error.
                raise KeyError(f"{self.kind} '{name}' is registered twice ({self._entries[name]!r} and {entry!r})")
            self._entries[name] = entry
            return entry
        return add

    def get(self, name: str) -> T:
        self.discover()
        if name not in self._entries:
            near = difflib.get_close_matches(name, self.keys(), n=3, cutoff=0.4)
            hint = f"; did you mean {', '.join(map(repr, near))}?" if near else ""
            raise ConfigError(f"unknown {self.kind} {name!r} (config key '{self.key}'); registered: "
                              f"{', '.join(map(repr, self.keys()))}{hint}")
        return self._entries[name]

    def keys(self) -> List[str]:
        self.discover()
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        self.discover()
        return name in self._entries

    def __repr__(self) -> str:
        return f"Registry({self.kind}: {', '.join(self.keys())})"
