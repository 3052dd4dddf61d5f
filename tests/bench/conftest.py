"""Fixtures of the harness tests: tiny synthetic datasets (registered once) and a fake MNIST in the real format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from benchmarks.datasets import REGISTRY, BenchmarkData, DatasetSpec, Protocol, TaskSpec, register
from benchmarks.datasets._spec import metric

IN = 8


class _Vectors(Dataset):
    def __init__(self, x: torch.Tensor, targets: dict[str, torch.Tensor]) -> None:
        self.x, self.targets = x, targets

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], {t: y[i] for t, y in self.targets.items()}


class _Pairs(Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]


def _split(n: int, seed: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, IN, generator=g)
    w = torch.randn(IN, 3, generator=g)
    z = x @ w
    targets = {
        "reg_a": z[:, 0] + 0.1 * torch.randn(n, generator=g),
        "reg_b": z[:, 1] ** 2 / 4,
        "cls": (z[:, 2] > 0).long() + (z[:, 2] > 1).long(),
    }
    return x, targets


def _load_synthetic(
    spec: DatasetSpec, data_dir, *, subset=None, seed: int = 0, size: int = 64, nan_at: int | None = None
) -> BenchmarkData:
    """``nan_at``: that training example's ``reg_a`` target is NaN (a non-finite loss in its batch)."""
    from benchmarks.metrics import Accuracy, MeanAbsoluteError

    sizes = {"train": size, "val": 32, "test": 32}
    splits = {s: _Vectors(*_split(n, 100 * seed + k)) for k, (s, n) in enumerate(sizes.items())}
    if nan_at is not None:
        splits["train"].targets["reg_a"][nan_at] = float("nan")

    def metrics() -> dict:
        return {"reg_a": MeanAbsoluteError(), "reg_b": MeanAbsoluteError(), "cls": Accuracy()}

    return BenchmarkData(spec, splits["train"], splits["val"], splits["test"], metrics)


def _load_multi(spec: DatasetSpec, data_dir, *, subset=None, seed: int = 0) -> BenchmarkData:
    from benchmarks.metrics import Accuracy

    def split(n: int, offset: int) -> dict[str, Dataset]:
        out = {}
        for k, t in enumerate(("first", "second")):
            g = torch.Generator().manual_seed(1000 * seed + 10 * offset + k)
            x = torch.randn(n + 4 * k, IN, generator=g)  # different sizes per task: loaders cycle
            out[t] = _Pairs(x, (x[:, k] > 0).long())
        return out

    def metrics() -> dict:
        return {"first": Accuracy(), "second": Accuracy()}

    return BenchmarkData(spec, split(160, 0), split(48, 1), split(48, 2), metrics)


def _protocol(**kw) -> Protocol:
    base = dict(
        optimizer="adam",
        lr=1e-2,
        batch_size=16,
        epochs=2,
        model="mlp",
        model_kwargs={"in_features": IN, "hidden": [16, 16]},
        source="test fixture",
    )
    base.update(kw)
    return Protocol(**base)


def _specs() -> list[DatasetSpec]:
    return [
        DatasetSpec(
            name="synthetic",
            title="synthetic regression + classification (tests)",
            tasks=(
                TaskSpec("reg_a", "regression", "mse", 1, (metric("reg_a", "mae", False),)),
                TaskSpec("reg_b", "regression", "mse", 1, (metric("reg_b", "mae", False),)),
                TaskSpec("cls", "classification", "cross_entropy", 3, (metric("cls", "accuracy", True),)),
            ),
            multi_input=False,
            presets={
                "quick": _protocol(),
                "paper": _protocol(
                    optimizer="sgd",
                    optimizer_kwargs={"momentum": 0.9},
                    scheduler="multistep",
                    scheduler_kwargs={"milestones": [1, 2], "gamma": 0.5},
                    model_kwargs={"in_features": IN, "hidden": [16, 16], "dropout": 0.3},
                ),
            },
            loader=_load_synthetic,
            data_source="generated",
            expected_files=(),
            validation="generated",
            input_shape=(IN,),
        ),
        DatasetSpec(
            name="synthetic_multi",
            title="synthetic multi-input classification (tests)",
            tasks=tuple(
                TaskSpec(t, "classification", "cross_entropy", 2, (metric(t, "accuracy", True),))
                for t in ("first", "second")
            ),
            multi_input=True,
            presets={"quick": _protocol(), "paper": _protocol()},
            loader=_load_multi,
            data_source="generated",
            expected_files=(),
            validation="generated",
            input_shape=(IN,),
        ),
    ]


SPECS = _specs()


@pytest.fixture(autouse=True)
def _synthetic_datasets():
    """Register the synthetic datasets for the tests of this folder only (the registry is global)."""
    for spec in SPECS:
        register(spec)
    yield
    for spec in SPECS:
        del REGISTRY[spec.name]


@pytest.fixture(autouse=True)
def _no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests compare numbers run to run: stay on the CPU even where a GPU exists."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def fake_mnist(tmp_path: Path) -> Path:
    """A folder with an ``mnist.npz`` of random digits (real layout): 400 train / 100 test images."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "data"
    folder.mkdir()
    x_train = rng.integers(0, 256, size=(400, 28, 28), dtype=np.uint8)
    x_test = rng.integers(0, 256, size=(100, 28, 28), dtype=np.uint8)
    np.savez(
        folder / "mnist.npz",
        x_train=x_train,
        y_train=rng.integers(0, 10, 400).astype(np.uint8),
        x_test=x_test,
        y_test=rng.integers(0, 10, 100).astype(np.uint8),
    )
    return folder
