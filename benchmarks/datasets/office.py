"""Office-31 and Office-Home: one classification task per domain, multi-input (LibMTL's protocol).

Layout: images under ``<root>`` (the data folder, or its ``office31`` / ``Office31`` / ``office-31`` /
``officehome`` / ``OfficeHome`` / ``office-home`` / ``OfficeHomeDataset_10072016`` sub-folder), as in the
official archives::

    office31:   <root>/{amazon,dslr,webcam}/images/<class>/<file>.jpg
    officehome: <root>/{Art,Clipart,Product,Real_World or "Real World"}/<class>/<file>.jpg

Split lists: ``<split_dir>/<domain>_{train,val,test}.txt`` (default ``split_dir = <root>/splits``), one
image per line, ``<path relative to root> <class index>``, the path may contain spaces (the label is the
last field). Class indices are the sorted class-folder names. When the lists are absent they are written
(under the cache folder if the data folder is read-only) by :func:`make_split_lists`: 60% / 20% / 20%
per class of every domain under the seed (LibMTL's proportions; its own lists are not shipped with
mtlagg). Validation = the 20% ``val`` lists.

Images are resized to 224x224 (bilinear) and normalised with the ImageNet mean and std (LibMTL). Each
split is a dict ``domain -> Dataset`` yielding ``(image, label)``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from benchmarks.datasets._errors import CorruptDataError, MissingDataError, missing_files_message
from benchmarks.datasets._files import default_cache_dir, resolve_data_dir
from benchmarks.datasets._image import load_image, normalize
from benchmarks.datasets._registry import register
from benchmarks.datasets._spec import BenchmarkData, DatasetSpec, Protocol, TaskSpec, cap, metric

DOMAINS = {"office31": ("amazon", "dslr", "webcam"), "officehome": ("Art", "Clipart", "Product", "Real_World")}
NUM_CLASSES = {"office31": 31, "officehome": 65}
SUBFOLDERS = {
    "office31": ("office31", "Office31", "office-31", "Office-31"),
    "officehome": ("officehome", "OfficeHome", "office-home", "Office-Home", "OfficeHomeDataset_10072016"),
}
WHERE = {
    "office31": "Office-31 (Saenko et al., ECCV 2010), the domain_adaptation_images archive with "
    "amazon/, dslr/ and webcam/ folders (e.g. from the authors' page or faculty.cc.gatech.edu/~judy/domainadapt)",
    "officehome": "Office-Home (Venkateswara et al., CVPR 2017), OfficeHomeDataset_10072016.zip from "
    "hemanthdv.github.io/officehome-dataset, with Art/, Clipart/, Product/ and Real World/ folders",
}
EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
SPLITS = ("train", "val", "test")


def _domain_dir(root: Path, dataset: str, domain: str) -> Path | None:
    for name in (domain, domain.replace("_", " ")):
        folder = root / name / "images" if dataset == "office31" else root / name
        if folder.is_dir():
            return folder
    return None


def find_root(data_dir: Path, dataset: str) -> Path:
    for c in (data_dir, *(data_dir / s for s in SUBFOLDERS[dataset])):
        if all(_domain_dir(c, dataset, d) is not None for d in DOMAINS[dataset]):
            return c
    pattern = "<domain>/images/<class>/*.jpg" if dataset == "office31" else "<domain>/<class>/*.jpg"
    expected = [f"{data_dir}/{d}/{'images/' if dataset == 'office31' else ''}<class>/*.jpg" for d in DOMAINS[dataset]]
    raise MissingDataError(missing_files_message(dataset, data_dir, [*expected, f"(layout {pattern})"], WHERE[dataset]))


def make_split_lists(root: Path, dataset: str, split_dir: Path, seed: int = 0, fractions=(0.6, 0.2)) -> None:
    """Write ``<domain>_{train,val,test}.txt`` for every domain: a per-class 60/20/20 split under ``seed``."""
    split_dir.mkdir(parents=True, exist_ok=True)
    for domain in DOMAINS[dataset]:
        folder = _domain_dir(root, dataset, domain)
        if folder is None:
            raise MissingDataError(missing_files_message(dataset, root, [f"{root}/{domain}/..."], WHERE[dataset]))
        classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
        if not classes:
            raise MissingDataError(f"{dataset}: {folder} holds no class folders. {WHERE[dataset]}")
        rng = np.random.default_rng([seed, DOMAINS[dataset].index(domain)])
        lines: dict[str, list[str]] = {s: [] for s in SPLITS}
        for label, cls in enumerate(classes):
            files = sorted(p for p in (folder / cls).iterdir() if p.suffix.lower() in EXTENSIONS)
            order = rng.permutation(len(files))
            n_train = round(fractions[0] * len(files))
            n_val = round(fractions[1] * len(files))
            parts = {
                "train": order[:n_train],
                "val": order[n_train : n_train + n_val],
                "test": order[n_train + n_val :],
            }
            for s, idx in parts.items():
                lines[s].extend(f"{files[i].relative_to(root).as_posix()} {label}" for i in sorted(idx))
        for s in SPLITS:
            (split_dir / f"{domain}_{s}.txt").write_text("\n".join(lines[s]) + "\n", encoding="utf-8")


def read_split_list(path: Path, num_classes: int) -> list[tuple[str, int]]:
    """``[(relative path, label)]`` of one split list; malformed lines raise an error naming the line."""
    items = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise CorruptDataError(f"{path}, line {lineno}: expected '<path> <label>', got {line!r}")
        label = int(parts[1])
        if not 0 <= label < num_classes:
            raise CorruptDataError(f"{path}, line {lineno}: label {label} outside 0..{num_classes - 1}")
        items.append((parts[0], label))
    return items


class ImageListDataset(Dataset):
    """Images of a split list: ``(normalised image (3, h, w), label)``."""

    def __init__(
        self, root: Path, items: list[tuple[str, int]], size: tuple[int, int], imagenet_norm: bool = True
    ) -> None:
        self.root = root
        self.items = items
        self.size = tuple(size)
        self.imagenet_norm = imagenet_norm

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        rel, label = self.items[i]
        img = load_image(self.root / rel, self.size)
        return (normalize(img) if self.imagenet_norm else img), torch.tensor(label)


def _load(
    spec: DatasetSpec,
    data_dir: str | os.PathLike | None,
    *,
    subset: Mapping[str, int] | None = None,
    seed: int = 0,
    split_dir: str | os.PathLike | None = None,
    size: tuple[int, int] = (224, 224),
) -> BenchmarkData:
    dataset = spec.name
    root = find_root(resolve_data_dir(data_dir, dataset, WHERE[dataset]), dataset)
    lists = Path(split_dir) if split_dir is not None else root / "splits"
    wanted = [lists / f"{d}_{s}.txt" for d in DOMAINS[dataset] for s in SPLITS]
    written = False
    if not all(p.is_file() for p in wanted):
        if split_dir is not None and any(p.is_file() for p in wanted):
            missing = [str(p) for p in wanted if not p.is_file()]
            raise MissingDataError(missing_files_message(dataset, lists, missing, "write them with make_split_lists()"))
        try:
            make_split_lists(root, dataset, lists, seed=seed)
        except PermissionError:  # a read-only data folder: write the lists under the cache folder
            lists = default_cache_dir() / f"{dataset}-splits-seed{seed}"
            make_split_lists(root, dataset, lists, seed=seed)
        written = True
    n_cls = NUM_CLASSES[dataset]
    splits: dict[str, dict[str, Dataset]] = {s: {} for s in SPLITS}
    for d in DOMAINS[dataset]:
        for s in SPLITS:
            items = read_split_list(lists / f"{d}_{s}.txt", n_cls)
            splits[s][d] = ImageListDataset(root, items[: cap(len(items), subset, s)], size)

    def metrics() -> dict:
        from benchmarks.metrics import Accuracy

        return {d: Accuracy() for d in DOMAINS[dataset]}

    return BenchmarkData(
        spec=spec,
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        metric_factory=metrics,
        info={"root": str(root), "split_dir": str(lists), "split_lists_written": written, "size": tuple(size)},
    )


def _spec(name: str, title: str, aliases: tuple[str, ...]) -> DatasetSpec:
    return DatasetSpec(
        name=name,
        title=title,
        tasks=tuple(
            TaskSpec(d, "classification", "cross_entropy", NUM_CLASSES[name], (metric(d, "accuracy", True),))
            for d in DOMAINS[name]
        ),
        multi_input=True,
        presets={
            "paper": Protocol(
                optimizer="adam",
                lr=1e-4,
                weight_decay=1e-5,
                batch_size=64,
                epochs=100,
                model="resnet18",
                model_kwargs={"pretrained": True, "feature_dim": 512},
                source="LibMTL office example (Lin & Zhang, JMLR 2023): ResNet-18 (ImageNet weights), Adam 1e-4, "
                "weight decay 1e-5, batch 64, 100 epochs, model selected on validation",
            ),
            "quick": Protocol(
                optimizer="adam",
                lr=1e-3,
                weight_decay=1e-5,
                batch_size=32,
                epochs=1,
                model="resnet18",
                model_kwargs={"pretrained": False},
                subset={"train": 128, "val": 64, "test": 64},
                data_kwargs={"size": (64, 64)},
                source="mtlagg quick preset (64x64 images, a subset per domain)",
            ),
        },
        loader=_load,
        data_source=WHERE[name],
        expected_files=(
            "<domain>/images/<class>/*.jpg" if name == "office31" else "<domain>/<class>/*.jpg",
            "splits/<domain>_{train,val,test}.txt (written when absent)",
        ),
        validation="the 20% 'val' split lists (per class, under the seed)",
        input_shape=(3, 224, 224),
        aliases=aliases,
    )


register(_spec("office31", "Office-31 (3 domains x 31 classes, multi-input)", ("office_31", "office-31")))
register(_spec("officehome", "Office-Home (4 domains x 65 classes, multi-input)", ("office_home", "office-home")))
