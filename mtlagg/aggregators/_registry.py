"""``REGISTRY``: lowercase method name -> aggregator class (the CLI looks methods up here)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

REGISTRY: dict[str, type] = {}
ALIASES: dict[str, str] = {}

_A = TypeVar("_A", bound=type)


def register(*aliases: str) -> Callable[[_A], _A]:
    """Class decorator: register under ``cls.__name__.lower()`` and the given aliases."""

    def decorate(cls: _A) -> _A:
        name = cls.__name__.lower()
        if name in REGISTRY and REGISTRY[name] is not cls:
            raise ValueError(f"two aggregators are registered as {name!r}")
        REGISTRY[name] = cls
        for alias in aliases:
            ALIASES[alias.lower()] = name
            REGISTRY[alias.lower()] = cls
        return cls

    return decorate


def lookup(name: str) -> type:
    """The class registered as ``name`` (case-insensitive), with close names suggested."""
    key = name.lower().replace("-", "_")
    if key in REGISTRY:
        return REGISTRY[key]
    import difflib

    close = difflib.get_close_matches(key, REGISTRY, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise KeyError(f"unknown aggregator {name!r}{hint} (known: {', '.join(sorted(REGISTRY))})")
