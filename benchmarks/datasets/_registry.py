"""Registry of the benchmark datasets: ``register(spec)`` and ``lookup(name)`` (close names suggested)."""

from __future__ import annotations

import difflib

from benchmarks.datasets._errors import UnknownDatasetError
from benchmarks.datasets._spec import DatasetSpec

REGISTRY: dict[str, DatasetSpec] = {}
_ALIASES: dict[str, str] = {}


def _normalise(name: str) -> str:
    return name.strip().lower().replace("-", "_").replace(" ", "_")


def register(spec: DatasetSpec) -> DatasetSpec:
    """Add ``spec`` under its name and aliases; a name already taken raises ``ValueError``."""
    for key in (spec.name, *spec.aliases):
        k = _normalise(key)
        if k in REGISTRY or k in _ALIASES:
            raise ValueError(f"dataset name {key!r} is already registered")
    REGISTRY[_normalise(spec.name)] = spec
    for alias in spec.aliases:
        _ALIASES[_normalise(alias)] = _normalise(spec.name)
    return spec


def names() -> list[str]:
    """The registered dataset names, sorted."""
    return sorted(REGISTRY)


def lookup(name: str) -> DatasetSpec:
    """The spec registered as ``name`` (case, ``-`` and ``_`` do not matter; aliases accepted).

    Raises :class:`UnknownDatasetError` naming the closest registered names.
    """
    if not isinstance(name, str):
        raise TypeError(f"dataset name must be a string, got {type(name).__name__}")
    k = _normalise(name)
    if k in REGISTRY:
        return REGISTRY[k]
    if k in _ALIASES:
        return REGISTRY[_ALIASES[k]]
    candidates = list(REGISTRY) + list(_ALIASES)
    close = difflib.get_close_matches(k, candidates, n=3, cutoff=0.5)
    close_names = list(dict.fromkeys(REGISTRY[_ALIASES.get(c, c)].name for c in close))
    hint = f" Did you mean {' or '.join(repr(c) for c in close_names)}?" if close_names else ""
    raise UnknownDatasetError(f"unknown dataset {name!r}.{hint} Known datasets: {', '.join(names())}.")
