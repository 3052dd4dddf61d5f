"""Benchmark datasets of mtlagg-bench: specs, loaders and a registry.

>>> from benchmarks.datasets import lookup
>>> spec = lookup("multimnist")
>>> data = spec.load("/path/to/data", preset="quick")
>>> loaders = data.dataloaders(batch_size=256)

Importing this package registers every dataset family; heavy dependencies (RDKit, transformers,
Pillow) are imported only when a loader needs them.
"""

from benchmarks.datasets import celeba, dense, multimnist, office, pawsx, qm9, sick
from benchmarks.datasets._errors import CorruptDataError, DatasetError, MissingDataError, UnknownDatasetError
from benchmarks.datasets._registry import REGISTRY, lookup, names, register
from benchmarks.datasets._spec import SPLITS, BenchmarkData, DatasetSpec, MetricSpec, Protocol, TaskSpec

__all__ = [
    "REGISTRY",
    "SPLITS",
    "BenchmarkData",
    "CorruptDataError",
    "DatasetError",
    "DatasetSpec",
    "MetricSpec",
    "MissingDataError",
    "Protocol",
    "TaskSpec",
    "UnknownDatasetError",
    "celeba",
    "dense",
    "lookup",
    "multimnist",
    "names",
    "office",
    "pawsx",
    "qm9",
    "register",
    "sick",
]
