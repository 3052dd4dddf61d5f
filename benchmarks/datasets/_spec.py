"""Uniform description of a benchmark dataset and of the data a loader returns.

A :class:`DatasetSpec` says everything the harness needs without touching the data: the tasks
(their kind, loss and output size), every metric with its direction (the ``(-1)^delta`` of the
Δm% formula), whether the input differs per task (multi-input), the splits and how validation is
made, and the default hyper-parameters of the paper protocol (and of a small ``quick`` preset).

``spec.load(data_dir, preset=...)`` returns a :class:`BenchmarkData`: the three splits as torch
Datasets, the collate function, fresh metric objects and the per-task losses.

Batch conventions:

* single-input datasets yield ``(inputs, targets)`` with ``targets`` a dict ``task -> tensor``;
* multi-input datasets hold one Dataset per task per split; each yields ``(inputs, target)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader, Dataset

if TYPE_CHECKING:
    from benchmarks.metrics import Metric

SPLITS = ("train", "val", "test")
TASK_KINDS = ("classification", "binary", "regression", "segmentation", "depth", "normal")


@dataclass(frozen=True)
class MetricSpec:
    """One scalar metric of one task. ``key`` = ``"task/name"`` is how scores and baselines refer to it."""

    task: str
    name: str
    higher_is_better: bool
    unit: str = ""

    @property
    def key(self) -> str:
        return f"{self.task}/{self.name}"


@dataclass(frozen=True)
class TaskSpec:
    """One task: its kind, the name of its loss in :mod:`benchmarks.datasets.losses`, its output size."""

    name: str
    kind: str
    loss: str
    out_dim: int
    metrics: tuple[MetricSpec, ...]

    def __post_init__(self) -> None:
        if self.kind not in TASK_KINDS:
            raise ValueError(f"task {self.name!r}: kind must be one of {TASK_KINDS}, got {self.kind!r}")
        for m in self.metrics:
            if m.task != self.name:
                raise ValueError(f"metric {m.key!r} listed under task {self.name!r}")


@dataclass(frozen=True)
class Protocol:
    """Default hyper-parameters of a preset (``paper``: the published protocol; ``quick``: a CPU-sized run).

    ``subset`` caps the number of examples per split (``None``: all); ``data_kwargs`` are further loader
    options of the preset (e.g. a smaller image size for ``quick``). ``selection`` says how the reported
    epoch is chosen: ``"val"`` (best validation score; what mtlagg-bench always does) or, for the record,
    what the paper did (``"last10-test"`` = mean of the test metrics of the last 10 epochs).
    """

    optimizer: str
    lr: float
    batch_size: int
    epochs: int
    weight_decay: float = 0.0
    optimizer_kwargs: Mapping[str, Any] = field(default_factory=dict)
    scheduler: str | None = None
    scheduler_kwargs: Mapping[str, Any] = field(default_factory=dict)
    model: str = ""
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    subset: Mapping[str, int] | None = None
    data_kwargs: Mapping[str, Any] = field(default_factory=dict)
    eval_batch_size: int | None = None
    selection: str = "val"
    paper_selection: str = "val"
    source: str = ""
    notes: str = ""


@dataclass(frozen=True)
class DatasetSpec:
    """Everything about a benchmark except the data itself. Build the data with :meth:`load`."""

    name: str
    title: str
    tasks: tuple[TaskSpec, ...]
    multi_input: bool
    presets: Mapping[str, Protocol]
    loader: Callable[..., BenchmarkData]
    data_source: str
    expected_files: tuple[str, ...]
    validation: str
    input_shape: tuple[int, ...] | None = None
    baseline: str | None = None
    aliases: tuple[str, ...] = ()
    notes: str = ""

    def __post_init__(self) -> None:
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"dataset {self.name!r}: duplicate task names {names}")
        for required in ("paper", "quick"):
            if required not in self.presets:
                raise ValueError(f"dataset {self.name!r}: preset {required!r} missing")

    @property
    def task_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tasks)

    @property
    def metrics(self) -> tuple[MetricSpec, ...]:
        return tuple(m for t in self.tasks for m in t.metrics)

    @property
    def metric_keys(self) -> tuple[str, ...]:
        return tuple(m.key for m in self.metrics)

    @property
    def higher_is_better(self) -> dict[str, bool]:
        return {m.key: m.higher_is_better for m in self.metrics}

    def task(self, name: str) -> TaskSpec:
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(f"dataset {self.name!r} has no task {name!r}; tasks: {', '.join(self.task_names)}")

    def protocol(self, preset: str) -> Protocol:
        if preset not in self.presets:
            raise ValueError(f"dataset {self.name!r}: unknown preset {preset!r}; presets: {', '.join(self.presets)}")
        return self.presets[preset]

    def load(self, data_dir: str | Path | None = None, preset: str = "quick", **options: Any) -> BenchmarkData:
        """Read the data for ``preset``: its ``subset`` caps and ``data_kwargs`` apply unless overridden."""
        protocol = self.protocol(preset)
        options.setdefault("subset", protocol.subset)
        for key, value in protocol.data_kwargs.items():
            options.setdefault(key, value)
        return self.loader(self, data_dir, **options)


@dataclass
class BenchmarkData:
    """The loaded splits of one dataset, with its collate function, metric factory and losses.

    For a multi-input dataset each split is a dict ``task -> Dataset``.
    """

    spec: DatasetSpec
    train: Dataset | Mapping[str, Dataset]
    val: Dataset | Mapping[str, Dataset]
    test: Dataset | Mapping[str, Dataset]
    metric_factory: Callable[[], dict[str, Metric]]
    collate_fn: Callable | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def split(self, name: str) -> Dataset | Mapping[str, Dataset]:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; splits: {', '.join(SPLITS)}")
        return getattr(self, name)

    def sizes(self) -> dict[str, int | dict[str, int]]:
        out: dict[str, int | dict[str, int]] = {}
        for s in SPLITS:
            d = self.split(s)
            out[s] = {k: len(v) for k, v in d.items()} if isinstance(d, Mapping) else len(d)  # type: ignore[arg-type]
        return out

    def make_metrics(self) -> dict[str, Metric]:
        """Fresh accumulating metric objects, one per task (see :mod:`benchmarks.metrics`)."""
        return self.metric_factory()

    def losses(self) -> dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
        """The loss of each task, from :mod:`benchmarks.datasets.losses`."""
        from benchmarks.datasets.losses import get_loss

        return {t.name: get_loss(t.loss) for t in self.spec.tasks}

    def dataloaders(
        self,
        batch_size: int,
        *,
        eval_batch_size: int | None = None,
        seed: int = 0,
        num_workers: int = 0,
        drop_last: bool = False,
    ) -> dict[str, DataLoader | dict[str, DataLoader]]:
        """DataLoaders for the three splits; only ``train`` is shuffled (by a generator seeded with ``seed``)."""
        eval_bs = eval_batch_size or batch_size

        def make(ds: Dataset, train: bool, offset: int) -> DataLoader:
            gen = torch.Generator().manual_seed(seed + offset) if train else None
            return DataLoader(
                ds,
                batch_size=batch_size if train else eval_bs,
                shuffle=train,
                generator=gen,
                num_workers=num_workers,
                collate_fn=self.collate_fn,
                drop_last=drop_last and train,
            )

        out: dict[str, DataLoader | dict[str, DataLoader]] = {}
        for s in SPLITS:
            d = self.split(s)
            if isinstance(d, Mapping):
                out[s] = {k: make(v, s == "train", i) for i, (k, v) in enumerate(d.items())}
            else:
                out[s] = make(d, s == "train", 0)
        return out


def metric(task: str, name: str, higher_is_better: bool, unit: str = "") -> MetricSpec:
    """Shorthand used by the dataset modules."""
    return MetricSpec(task=task, name=name, higher_is_better=higher_is_better, unit=unit)


def cap(n: int, subset: Mapping[str, int] | None, split: str) -> int:
    """How many examples of ``split`` to keep under the ``subset`` caps."""
    if not subset or subset.get(split) is None:
        return n
    k = int(subset[split])
    if k <= 0:
        raise ValueError(f"subset[{split!r}] must be positive, got {k}")
    return min(n, k)
