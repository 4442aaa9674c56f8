"""Registries: a name in the config chooses a registered part (a fusion module, a pixel decoder, a dataset).

A part registers itself where it is defined::

    @PIXEL_DECODERS.register("fpn")
    class FPNPixelDecoder(nn.Cell):
        @classmethod
        def from_config(cls, section, in_channels): ...

and is built from the name the config holds: ``PIXEL_DECODERS.get(cfg.model.mask_generator.pixel_decoder)``.
An unknown name is a ConfigError listing the registered names nearest to it. No MindSpore import here, so
the config and the tools can list the choices cheaply.
"""
from __future__ import annotations

import difflib
from typing import Callable, Dict, Generic, List, TypeVar

from src.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Names -> classes or builder functions of one kind of part. `key` is the config key whose value names
    the part; error messages use it."""

    def __init__(self, kind: str, key: str):
        self.kind = kind
        self.key = key
        self._entries: Dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(entry: T) -> T:
            if name in self._entries and self._entries[name] is not entry:
                # Two parts under one name: a programming error, not a user error.
                raise KeyError(f"{self.kind} '{name}' is registered twice ({self._entries[name]!r} and {entry!r})")
            self._entries[name] = entry
            return entry
        return add

    def get(self, name: str) -> T:
        if name not in self._entries:
            near = difflib.get_close_matches(name, self.keys(), n=3, cutoff=0.4)
            hint = f"; did you mean {', '.join(map(repr, near))}?" if near else ""
            raise ConfigError(f"unknown {self.kind} {name!r} (config key '{self.key}'); registered: "
                              f"{', '.join(map(repr, self.keys()))}{hint}")
        return self._entries[name]

    def keys(self) -> List[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __repr__(self) -> str:
        return f"Registry({self.kind}: {', '.join(self.keys())})"
