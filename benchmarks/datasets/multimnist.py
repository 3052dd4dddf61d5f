"""MultiMNIST, MultiFashion and Multi-(Fashion+MNIST), generated at load time (Sener & Koltun, NeurIPS 2018).

Recipe (our own implementation of the published description): every image ``i`` of a split is paired
with a partner ``perm[i]`` from a seeded random permutation. The first item goes to the top-left of a
36x36 canvas at offset ``(dy1, dx1)``, the second to the bottom-right at ``(4 + dy2, 4 + dx2)``; all four
shifts are drawn uniformly from 0..4. Pixels are summed and clipped to 255. Task ``left`` is the class
of the top-left item, task ``right`` the class of the bottom-right item.

We keep the **36x36** canvas (as Pareto MTL, EPO, PHN and COSMOS do; their LeNet expects 36x36);
``resize=28`` gives the 28x28 nearest-neighbour version of Sener & Koltun. Generation is vectorised
numpy (25 slice additions, one per shift pair) and deterministic under ``seed``: about 0.1 s for 60k.

Sources: ``mnist.npz`` / ``fashion_mnist.npz`` (keys ``x_train, y_train, x_test, y_test``) or the standard
IDX files ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` in ``<data_dir>/mnist/`` (MNIST, also
``MNIST/raw/`` or the data folder itself) and ``<data_dir>/fashion-mnist/`` (Fashion-MNIST, also
``fashion_mnist/``, ``FashionMNIST/raw/``, or Debian's ``/usr/share/datasets/fashion-mnist``).

Splits: train = 60k generated from the source training images minus a validation part of ``val_size``
(6,000 by default, carved at random under the seed; the protocol itself has no validation set);
test = 10k generated from the source test images.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from benchmarks.datasets._errors import CorruptDataError, MissingDataError, missing_files_message
from benchmarks.datasets._files import load_npz, read_idx, resolve_data_dir
from benchmarks.datasets._registry import register
from benchmarks.datasets._spec import BenchmarkData, DatasetSpec, Protocol, TaskSpec, cap, metric

CANVAS = 36
DIGIT = 28
MAX_SHIFT = 4

WHERE = {
    "mnist": "MNIST: the four IDX files from yann.lecun.com/exdb/mnist (or any mirror, e.g. the torchvision "
    "MNIST/raw folder), or an mnist.npz with x_train, y_train, x_test, y_test (keras layout)",
    "fashion": "Fashion-MNIST: the four IDX files from github.com/zalandoresearch/fashion-mnist (data/fashion), "
    "the Debian package dataset-fashion-mnist (/usr/share/datasets/fashion-mnist), or a fashion_mnist.npz",
}
_NPZ = {"mnist": ("mnist.npz",), "fashion": ("fashion_mnist.npz", "fashion-mnist.npz")}
_DIRS = {
    "mnist": ("mnist", "MNIST/raw", "MNIST", "."),
    "fashion": (
        "fashion-mnist",
        "fashion_mnist",
        "FashionMNIST/raw",
        "FashionMNIST",
        "/usr/share/datasets/fashion-mnist",
    ),
}
_IDX = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _check(images: np.ndarray, labels: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    if images.ndim != 3 or images.shape[1:] != (DIGIT, DIGIT):
        raise CorruptDataError(f"{where}: images must have shape (N, 28, 28), got {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise CorruptDataError(f"{where}: {len(images)} images but labels of shape {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise CorruptDataError(f"{where}: labels must lie in 0..9, got {labels.min()}..{labels.max()}")
    return images.astype(np.uint8, copy=False), labels.astype(np.int64)


def load_source(source: str, data_dir: str | os.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"train": (images, labels), "test": (...)}`` of MNIST (``source="mnist"``) or Fashion-MNIST."""
    if source not in _NPZ:
        raise ValueError(f"source must be 'mnist' or 'fashion', got {source!r}")
    root = Path(data_dir)
    for name in _NPZ[source]:
        if (root / name).is_file():
            arrays = load_npz(root / name, ("x_train", "y_train", "x_test", "y_test"))
            return {
                "train": _check(arrays["x_train"], arrays["y_train"], str(root / name)),
                "test": _check(arrays["x_test"], arrays["y_test"], str(root / name)),
            }
    for sub in _DIRS[source]:
        folder = Path(sub) if sub.startswith("/") else root / sub
        if not folder.is_dir():
            continue
        found = {split: [_find_idx(folder, stem) for stem in stems] for split, stems in _IDX.items()}
        present = [p for paths in found.values() for p in paths if p is not None]
        if len(present) == 4:
            return {
                split: _check(read_idx(paths[0]), read_idx(paths[1]), str(folder))  # type: ignore[arg-type]
                for split, paths in found.items()
            }
        if present:  # a folder with some of the files: say which are missing
            missing = [
                f"{folder}/{stem}[.gz]"
                for split, stems in _IDX.items()
                for stem, p in zip(stems, found[split])
                if p is None
            ]
            raise MissingDataError(missing_files_message(source, folder, missing, WHERE[source]))
    expected = [str(root / n) for n in _NPZ[source]] + [
        f"or {root}/{_DIRS[source][0]}/{stem}[.gz]" for stems in _IDX.values() for stem in stems
    ]
    raise MissingDataError(missing_files_message(source, root, expected, WHERE[source]))


def compose(
    first: np.ndarray, second: np.ndarray, rng: np.random.Generator, resize: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Overlay ``first[i]`` (top-left) and ``second[i]`` (bottom-right) with random shifts.

    Returns the uint8 canvases ``(N, 36, 36)`` (or ``(N, resize, resize)``) and the shifts ``(N, 4)`` as
    ``(dy1, dx1, dy2, dx2)``; the second item's top-left corner is at ``(4 + dy2, 4 + dx2)``.
    """
    if first.shape != second.shape:
        raise ValueError(f"compose: shapes differ, {first.shape} vs {second.shape}")
    n = len(first)
    shifts = rng.integers(0, MAX_SHIFT + 1, size=(n, 4))
    canvas = np.zeros((n, CANVAS, CANVAS), dtype=np.uint16)
    base = CANVAS - DIGIT - MAX_SHIFT
    for images, (cy, cx), offset in ((first, (0, 1), 0), (second, (2, 3), base)):
        code = shifts[:, cy] * (MAX_SHIFT + 1) + shifts[:, cx]
        for c in np.unique(code):
            sel = np.nonzero(code == c)[0]
            dy, dx = offset + c // (MAX_SHIFT + 1), offset + c % (MAX_SHIFT + 1)
            canvas[sel, dy : dy + DIGIT, dx : dx + DIGIT] += images[sel]
    out = np.minimum(canvas, 255).astype(np.uint8)
    if resize is not None and resize != CANVAS:
        idx = (np.arange(resize) * CANVAS) // resize
        out = out[:, idx][:, :, idx]
    return out, shifts


def generate(
    first: tuple[np.ndarray, np.ndarray],
    second: tuple[np.ndarray, np.ndarray],
    seed: int | list[int],
    resize: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Pair ``first[i]`` with ``second[perm[i]]``: images ``(N, H, W)`` uint8 and labels ``(N, 2)``."""
    (x1, y1), (x2, y2) = first, second
    if len(x2) < len(x1):
        raise ValueError(f"generate: the second source has {len(x2)} items, fewer than the first ({len(x1)})")
    rng = np.random.default_rng(seed)
    partner = rng.permutation(len(x2))[: len(x1)]
    images, _ = compose(x1, x2[partner], rng, resize=resize)
    labels = np.stack([y1, y2[partner]], axis=1).astype(np.int64)
    return images, labels


class MultiDigitDataset(Dataset):
    """Generated two-item images as float ``(1, H, W)`` in [0, 1] with targets ``{"left": y, "right": y}``."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images = torch.from_numpy(np.ascontiguousarray(images))
        self.labels = torch.from_numpy(np.ascontiguousarray(labels))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x = self.images[i].unsqueeze(0).float().div_(255.0)
        return x, {"left": self.labels[i, 0], "right": self.labels[i, 1]}


_SOURCES = {
    "multimnist": ("mnist", "mnist"),
    "multifashion": ("fashion", "fashion"),
    "multifashion_mnist": ("mnist", "fashion"),
}


def _load(
    spec: DatasetSpec,
    data_dir: str | os.PathLike | None,
    *,
    subset: Mapping[str, int] | None = None,
    seed: int = 0,
    val_size: int = 6000,
    resize: int | None = None,
) -> BenchmarkData:
    left_src, right_src = _SOURCES[spec.name]
    root = resolve_data_dir(data_dir, spec.name, WHERE[left_src])
    left = load_source(left_src, root)
    right = left if right_src == left_src else load_source(right_src, root)
    # one seed sequence per split, so that the train and test pairings are independent
    x_train, y_train = generate(left["train"], right["train"], seed=[seed, 1], resize=resize)
    x_test, y_test = generate(left["test"], right["test"], seed=[seed, 2], resize=resize)
    if not 0 < val_size < len(x_train):
        raise ValueError(f"val_size must lie in (0, {len(x_train)}), got {val_size}")
    order = np.random.default_rng(seed).permutation(len(x_train))
    val_idx, train_idx = order[:val_size], order[val_size:]
    train_idx = train_idx[: cap(len(train_idx), subset, "train")]
    val_idx = val_idx[: cap(len(val_idx), subset, "val")]
    test_idx = np.arange(cap(len(x_test), subset, "test"))

    def metrics() -> dict:
        from benchmarks.metrics import Accuracy

        return {"left": Accuracy(), "right": Accuracy()}

    side = resize or CANVAS
    return BenchmarkData(
        spec=spec,
        train=MultiDigitDataset(x_train[train_idx], y_train[train_idx]),
        val=MultiDigitDataset(x_train[val_idx], y_train[val_idx]),
        test=MultiDigitDataset(x_test[test_idx], y_test[test_idx]),
        metric_factory=metrics,
        info={"image_size": side, "seed": seed, "val_size": val_size, "sources": (left_src, right_src)},
    )


def _tasks() -> tuple[TaskSpec, ...]:
    return tuple(
        TaskSpec(
            name=t, kind="classification", loss="cross_entropy", out_dim=10, metrics=(metric(t, "accuracy", True),)
        )
        for t in ("left", "right")
    )


_PAPER = Protocol(
    optimizer="sgd",
    lr=1e-3,
    optimizer_kwargs={"momentum": 0.9},
    batch_size=256,
    epochs=100,
    scheduler="multistep",
    scheduler_kwargs={"milestones": [15, 30, 45, 60, 75, 90], "gamma": 0.5},
    model="lenet",
    model_kwargs={"input_size": 36},
    paper_selection="last-test",
    source="Pareto MTL (Lin et al., NeurIPS 2019) release, LeNet branch of its train.py: SGD lr 1e-3 momentum 0.9, "
    "MultiStepLR(15, 30, ..., 90; x0.5), batch 256, 100 epochs (also the ParetoMTL settings of COSMOS)",
)
_QUICK = Protocol(
    optimizer="adam",
    lr=1e-3,
    batch_size=256,
    epochs=2,
    model="lenet",
    model_kwargs={"input_size": 36},
    subset={"train": 10000, "val": 2000, "test": 2000},
    source="mtlagg quick preset (a CPU-minute run)",
)

_COMMON = dict(
    multi_input=False,
    presets={"paper": _PAPER, "quick": _QUICK},
    loader=_load,
    validation="6,000 training images (10%) carved at random under the seed; the protocol has no validation set",
    input_shape=(1, 36, 36),
)

register(
    DatasetSpec(
        name="multimnist",
        title="MultiMNIST (two overlapping digits, 36x36)",
        tasks=_tasks(),
        data_source=WHERE["mnist"],
        expected_files=("mnist.npz", "or mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]"),
        aliases=("multi_mnist", "multi-mnist"),
        **_COMMON,
    )
)
register(
    DatasetSpec(
        name="multifashion",
        title="MultiFashion (two overlapping Fashion-MNIST items, 36x36)",
        tasks=_tasks(),
        data_source=WHERE["fashion"],
        expected_files=("fashion_mnist.npz", "or fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]"),
        aliases=("multi_fashion", "multi-fashion"),
        **_COMMON,
    )
)
register(
    DatasetSpec(
        name="multifashion_mnist",
        title="Multi-(Fashion+MNIST) (an MNIST digit top-left, a Fashion-MNIST item bottom-right, 36x36)",
        tasks=_tasks(),
        data_source=WHERE["mnist"] + "; " + WHERE["fashion"],
        expected_files=("mnist.npz and fashion_mnist.npz", "or the IDX files of both under mnist/ and fashion-mnist/"),
        aliases=("multi_fashion_mnist", "multi_fashion+mnist", "multifashionmnist"),
        **_COMMON,
    )
)
