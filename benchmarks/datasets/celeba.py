"""CelebA: 40 binary face attributes as 40 tasks (the FAMO / FairGrad / MTLlib protocol).

Files (the official release; ``<root>`` = the data folder or its ``celeba`` / ``CelebA`` sub-folder)::

    <root>/Anno/list_attr_celeba.txt       line 1: image count; line 2: the 40 attribute names;
                                           then "<file> v1 ... v40" with v in {-1, 1}
    <root>/Eval/list_eval_partition.txt    "<file> <0 train | 1 val | 2 test>"
    <root>/Img/img_align_celeba/<file>     the aligned 178x218 JPEGs

Splits: the official partition (162,770 / 19,867 / 19,962). Images are resized to 64x64 (bilinear) and
scaled to [0, 1] without normalisation; labels are {0, 1} floats. Items are
``(image (3, 64, 64), {attribute: label})``. Loss: BCE per attribute; metric: F1 at probability 0.5 with
TP / FP / FN accumulated over the split.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch.utils.data import Dataset

from benchmarks.datasets._errors import CorruptDataError, MissingDataError, missing_files_message
from benchmarks.datasets._files import resolve_data_dir
from benchmarks.datasets._image import load_image
from benchmarks.datasets._registry import register
from benchmarks.datasets._spec import BenchmarkData, DatasetSpec, Protocol, TaskSpec, cap, metric

ATTRIBUTES = [
    "5_o_Clock_Shadow",
    "Arched_Eyebrows",
    "Attractive",
    "Bags_Under_Eyes",
    "Bald",
    "Bangs",
    "Big_Lips",
    "Big_Nose",
    "Black_Hair",
    "Blond_Hair",
    "Blurry",
    "Brown_Hair",
    "Bushy_Eyebrows",
    "Chubby",
    "Double_Chin",
    "Eyeglasses",
    "Goatee",
    "Gray_Hair",
    "Heavy_Makeup",
    "High_Cheekbones",
    "Male",
    "Mouth_Slightly_Open",
    "Mustache",
    "Narrow_Eyes",
    "No_Beard",
    "Oval_Face",
    "Pale_Skin",
    "Pointy_Nose",
    "Receding_Hairline",
    "Rosy_Cheeks",
    "Sideburns",
    "Smiling",
    "Straight_Hair",
    "Wavy_Hair",
    "Wearing_Earrings",
    "Wearing_Hat",
    "Wearing_Lipstick",
    "Wearing_Necklace",
    "Wearing_Necktie",
    "Young",
]
ATTR_FILE = "Anno/list_attr_celeba.txt"
PARTITION_FILE = "Eval/list_eval_partition.txt"
IMAGE_DIR = "Img/img_align_celeba"
WHERE = (
    "CelebA (Liu et al., ICCV 2015) from mmlab.ie.cuhk.edu.hk/projects/CelebA.html: Anno/list_attr_celeba.txt, "
    "Eval/list_eval_partition.txt and Img/img_align_celeba.zip (unzipped); non-commercial research licence"
)
PARTITION = {"0": "train", "1": "val", "2": "test"}


def find_root(data_dir: Path) -> Path:
    for c in (data_dir, data_dir / "celeba", data_dir / "CelebA"):
        if (c / ATTR_FILE).is_file() and (c / PARTITION_FILE).is_file() and (c / IMAGE_DIR).is_dir():
            return c
    expected = [str(data_dir / f) for f in (ATTR_FILE, PARTITION_FILE, IMAGE_DIR + "/000001.jpg ...")]
    raise MissingDataError(missing_files_message("celeba", data_dir, expected, WHERE))


def read_attributes(path: Path) -> tuple[list[str], dict[str, list[int]]]:
    """Attribute names and ``{file: [0/1] * 40}`` of ``list_attr_celeba.txt`` (count and columns checked)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    if len(lines) < 2 or not lines[0].strip().isdigit():
        raise CorruptDataError(f"{path}: expected the image count on line 1 and the attribute names on line 2")
    count = int(lines[0])
    names = lines[1].split()
    if len(names) != 40:
        raise CorruptDataError(f"{path}: line 2 names {len(names)} attributes, expected 40")
    labels: dict[str, list[int]] = {}
    for lineno, line in enumerate(lines[2:], start=3):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 41 or any(v not in ("1", "-1") for v in parts[1:]):
            raise CorruptDataError(f"{path}, line {lineno}: expected a file name and 40 values in {{-1, 1}}")
        labels[parts[0]] = [1 if v == "1" else 0 for v in parts[1:]]
    if len(labels) != count:
        raise CorruptDataError(f"{path}: announces {count} images but lists {len(labels)} (truncated file?)")
    return names, labels


def read_partition(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or parts[1] not in PARTITION:
            raise CorruptDataError(f"{path}, line {lineno}: expected '<file> <0|1|2>', got {line!r}")
        out[PARTITION[parts[1]]].append(parts[0])
    return out


class CelebADataset(Dataset):
    """Images of one split with their 40 attribute labels."""

    def __init__(
        self, image_dir: Path, files: list[str], labels: torch.Tensor, names: list[str], size: tuple[int, int]
    ):
        self.image_dir = image_dir
        self.files = files
        self.labels = labels
        self.names = names
        self.size = tuple(size)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        img = load_image(self.image_dir / self.files[i], self.size)
        row = self.labels[i]
        return img, {name: row[k] for k, name in enumerate(self.names)}


def _load(
    spec: DatasetSpec,
    data_dir: str | os.PathLike | None,
    *,
    subset: Mapping[str, int] | None = None,
    size: tuple[int, int] = (64, 64),
) -> BenchmarkData:
    root = find_root(resolve_data_dir(data_dir, "celeba", WHERE))
    names, labels = read_attributes(root / ATTR_FILE)
    if names != list(ATTRIBUTES):
        raise CorruptDataError(f"{root / ATTR_FILE}: attribute names differ from the official 40 (got {names[:3]}...)")
    parts = read_partition(root / PARTITION_FILE)
    splits = {}
    for s, files in parts.items():
        files = files[: cap(len(files), subset, s)]
        missing = [f for f in files if f not in labels]
        if missing:
            raise CorruptDataError(f"{root / ATTR_FILE}: no labels for {missing[:3]} of {root / PARTITION_FILE}")
        y = torch.tensor([labels[f] for f in files], dtype=torch.float32).reshape(-1, 40)
        splits[s] = CelebADataset(root / IMAGE_DIR, files, y, names, size)

    def metrics() -> dict:
        from benchmarks.metrics import BinaryF1

        return {a: BinaryF1() for a in ATTRIBUTES}

    return BenchmarkData(
        spec=spec,
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        metric_factory=metrics,
        info={"root": str(root), "size": tuple(size)},
    )


register(
    DatasetSpec(
        name="celeba",
        title="CelebA (40 binary face attributes, 64x64)",
        tasks=tuple(TaskSpec(a, "binary", "bce", 1, (metric(a, "f1", True),)) for a in ATTRIBUTES),
        multi_input=False,
        presets={
            "paper": Protocol(
                optimizer="adam",
                lr=3e-4,
                batch_size=256,
                epochs=15,
                model="celeba_cnn",
                paper_selection="val",
                notes="constant lr in FAMO and FairGrad; MTLlib uses CosineAnnealingLR(T_max=15)",
                source="FAMO (Liu et al., NeurIPS 2023) protocol, also FairGrad and MTLlib",
            ),
            "quick": Protocol(
                optimizer="adam",
                lr=1e-3,
                batch_size=64,
                epochs=1,
                model="celeba_cnn",
                model_kwargs={"width": 0.25},
                subset={"train": 2000, "val": 500, "test": 500},
                source="mtlagg quick preset",
            ),
        },
        loader=_load,
        data_source=WHERE,
        expected_files=(ATTR_FILE, PARTITION_FILE, IMAGE_DIR + "/*.jpg"),
        validation="the official validation partition (19,867 images)",
        input_shape=(3, 64, 64),
        baseline="celeba",
    )
)
