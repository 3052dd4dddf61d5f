"""NYUv2 and Cityscapes in the preprocessed ``.npy`` layout of the MTAN / CAGrad / Nash-MTL releases.

Layout (``<root>`` = the data folder, or its ``nyuv2/`` / ``cityscapes/`` sub-folder)::

    nyuv2:      <root>/{train,val}/{image,label,depth,normal}/{i}.npy     i = 0 .. N-1
    cityscapes: <root>/{train,val}/{image,label_7,depth}/{i}.npy

``image`` is HWC float (NYUv2 288x384x3, Cityscapes 128x256x3), ``label`` / ``label_7`` HW with -1 for
ignored pixels (13 / 7 classes), ``depth`` HW or HWx1 (0 = no measurement), ``normal`` HWx3 (0 = none).
Items are ``(image (3, H, W), {"segmentation": (H, W) long, "depth": (1, H, W), "normal": (3, H, W)})``.

Splits: the release's ``val`` folder (654 / 500 images) is the **test** split, as in every paper. The
protocol has no validation split (the papers report the mean test metrics of the last 10 epochs); we
carve ``val_fraction`` (10%) of the training images at random under the seed for model selection.

Augmentation (``augment=True``, the papers' default, training split only): random scale-crop with scale
s in {1, 1.2, 1.5} (crop H/s x W/s, resize back; depth divided by s) and a horizontal flip with
probability 1/2 (negating the x component of the normals). ``size=(h, w)`` downsamples every split
(bilinear images, nearest labels, depth and normals) for CPU-sized runs.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from benchmarks.datasets._errors import CorruptDataError, MissingDataError, missing_files_message
from benchmarks.datasets._files import load_npy, resolve_data_dir
from benchmarks.datasets._registry import register
from benchmarks.datasets._spec import BenchmarkData, DatasetSpec, Protocol, TaskSpec, cap, metric

WHERE = {
    "nyuv2": "the preprocessed NYUv2 of MTAN (Liu et al., CVPR 2019; github.com/lorenmt/mtan, Dropbox link in its "
    "README; also linked by LibMTL and nash-mtl): unzip so that train/ and val/ are in the data folder",
    "cityscapes": "the preprocessed 7-class Cityscapes of MTAN (github.com/lorenmt/mtan, Dropbox link in its README; "
    "also linked by LibMTL and nash-mtl): unzip so that train/ and val/ are in the data folder",
}
FOLDERS = {
    "nyuv2": {"image": "image", "segmentation": "label", "depth": "depth", "normal": "normal"},
    "cityscapes": {"image": "image", "segmentation": "label_7", "depth": "depth"},
}
NUM_CLASSES = {"nyuv2": 13, "cityscapes": 7}
SHAPES = {"nyuv2": (288, 384), "cityscapes": (128, 256)}
SCALES = (1.0, 1.2, 1.5)


def _find_root(data_dir: Path, name: str) -> Path:
    candidates = [data_dir, data_dir / name] + ([data_dir / "cityscapes2"] if name == "cityscapes" else [])
    for c in candidates:
        if (c / "train" / "image").is_dir():
            return c
    expected = [f"{data_dir}/{s}/{f}/0.npy ..." for s in ("train", "val") for f in FOLDERS[name].values()]
    raise MissingDataError(missing_files_message(name, data_dir, expected, WHERE[name]))


def _indices(root: Path, name: str, split: str) -> list[int]:
    folder = root / split / "image"
    if not folder.is_dir():
        raise MissingDataError(missing_files_message(name, root, [f"{folder}/0.npy ..."], WHERE[name]))
    try:
        idx = sorted(int(p.stem) for p in folder.glob("*.npy"))
    except ValueError as exc:
        raise CorruptDataError(f"{folder}: file names must be <integer>.npy ({exc})") from exc
    if not idx:
        raise MissingDataError(missing_files_message(name, root, [f"{folder}/0.npy ..."], WHERE[name]))
    missing = [
        str(root / split / sub / f"{i}.npy")
        for sub in FOLDERS[name].values()
        for i in idx
        if not (root / split / sub / f"{i}.npy").is_file()
    ]
    if missing:
        shown = missing[:5] + ([f"... and {len(missing) - 5} more"] if len(missing) > 5 else [])
        raise MissingDataError(missing_files_message(name, root, shown, WHERE[name]))
    return idx


def _resize(t: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    kw = {"align_corners": True} if mode == "bilinear" else {}
    return F.interpolate(t.unsqueeze(0), size=size, mode=mode, **kw).squeeze(0)


class DenseDataset(Dataset):
    """Images of one split read lazily from the ``.npy`` files, with optional augmentation and resizing."""

    def __init__(
        self,
        root: Path,
        name: str,
        split: str,
        indices: list[int],
        augment: bool = False,
        size: tuple[int, int] | None = None,
    ) -> None:
        self.root, self.name, self.split = root, name, split
        self.indices = list(indices)
        self.augment = augment
        self.size = tuple(size) if size is not None else None

    def __len__(self) -> int:
        return len(self.indices)

    def _read(self, sub: str, i: int) -> np.ndarray:
        return load_npy(self.root / self.split / sub / f"{i}.npy")

    def __getitem__(self, k: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        i = self.indices[k]
        folders = FOLDERS[self.name]
        image = self._read(folders["image"], i)
        if image.ndim != 3 or image.shape[-1] != 3:
            raise CorruptDataError(
                f"{self.root / self.split / 'image' / f'{i}.npy'}: expected HxWx3, got {image.shape}"
            )
        h, w = image.shape[:2]
        img = torch.from_numpy(np.ascontiguousarray(np.moveaxis(image, -1, 0), dtype=np.float32))
        label = torch.from_numpy(np.asarray(self._read(folders["segmentation"], i), dtype=np.float32).reshape(h, w))
        depth = torch.from_numpy(np.asarray(self._read(folders["depth"], i), dtype=np.float32).reshape(1, h, w))
        normal = None
        if "normal" in folders:
            n = np.asarray(self._read(folders["normal"], i), dtype=np.float32).reshape(h, w, 3)
            normal = torch.from_numpy(np.ascontiguousarray(np.moveaxis(n, -1, 0)))
        if self.augment:
            img, label, depth, normal = self._scale_crop_flip(img, label, depth, normal)
        if self.size is not None and self.size != (h, w):
            img = _resize(img, self.size, "bilinear")
            label = _resize(label.unsqueeze(0), self.size, "nearest").squeeze(0)
            depth = _resize(depth, self.size, "nearest")
            if normal is not None:
                normal = _resize(normal, self.size, "nearest")
        targets = {"segmentation": label.round().long(), "depth": depth}
        if normal is not None:
            targets["normal"] = normal
        return img, targets

    @staticmethod
    def _scale_crop_flip(img, label, depth, normal):
        height, width = img.shape[-2:]
        s = SCALES[random.randrange(len(SCALES))]
        h, w = int(height / s), int(width / s)
        i, j = random.randint(0, height - h), random.randint(0, width - w)
        size = (height, width)
        img = _resize(img[:, i : i + h, j : j + w], size, "bilinear")
        label = _resize(label[None, i : i + h, j : j + w], size, "nearest").squeeze(0)
        depth = _resize(depth[:, i : i + h, j : j + w], size, "nearest") / s
        if normal is not None:
            normal = _resize(normal[:, i : i + h, j : j + w], size, "nearest")
        if random.random() < 0.5:
            img, label, depth = img.flip(-1), label.flip(-1), depth.flip(-1)
            if normal is not None:
                normal = normal.flip(-1)
                normal[0] = -normal[0]
        return img, label, depth, normal


def _load(
    spec: DatasetSpec,
    data_dir: str | os.PathLike | None,
    *,
    subset: Mapping[str, int] | None = None,
    seed: int = 0,
    val_fraction: float = 0.1,
    augment: bool = True,
    size: tuple[int, int] | None = None,
    metric_reduction: str = "pixel",
) -> BenchmarkData:
    name = spec.name
    root = _find_root(resolve_data_dir(data_dir, name, WHERE[name]), name)
    train_all = _indices(root, name, "train")
    test_idx = _indices(root, name, "val")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    n_val = max(1, round(val_fraction * len(train_all)))
    if n_val >= len(train_all):
        raise CorruptDataError(f"{name}: {len(train_all)} training images are too few to carve a validation split")
    order = np.random.default_rng(seed).permutation(len(train_all))
    val_idx = sorted(train_all[k] for k in order[:n_val])
    train_idx = sorted(train_all[k] for k in order[n_val:])
    train_idx = train_idx[: cap(len(train_idx), subset, "train")]
    val_idx = val_idx[: cap(len(val_idx), subset, "val")]
    test_idx = test_idx[: cap(len(test_idx), subset, "test")]
    num_classes = NUM_CLASSES[name]

    def metrics() -> dict:
        from benchmarks.metrics import DepthErrors, NormalAngles, SegmentationMetrics

        out = {"segmentation": SegmentationMetrics(num_classes), "depth": DepthErrors(reduction=metric_reduction)}
        if "normal" in FOLDERS[name]:
            out["normal"] = NormalAngles(reduction=metric_reduction)
        return out

    return BenchmarkData(
        spec=spec,
        train=DenseDataset(root, name, "train", train_idx, augment=augment, size=size),
        val=DenseDataset(root, name, "train", val_idx, size=size),
        test=DenseDataset(root, name, "val", test_idx, size=size),
        metric_factory=metrics,
        info={"root": str(root), "num_classes": num_classes, "size": size or SHAPES[name], "augment": augment},
    )


def _seg(num_classes: int) -> TaskSpec:
    return TaskSpec(
        "segmentation",
        "segmentation",
        "cross_entropy",
        num_classes,
        (metric("segmentation", "miou", True), metric("segmentation", "pixel_acc", True)),
    )


_DEPTH = TaskSpec(
    "depth", "depth", "depth_l1", 1, (metric("depth", "abs_err", False), metric("depth", "rel_err", False))
)
_NORMAL = TaskSpec(
    "normal",
    "normal",
    "normal_cosine",
    3,
    (
        metric("normal", "angle_mean", False, "deg"),
        metric("normal", "angle_median", False, "deg"),
        metric("normal", "within_11.25", True),
        metric("normal", "within_22.5", True),
        metric("normal", "within_30", True),
    ),
)


def _paper(batch: int) -> Protocol:
    return Protocol(
        optimizer="adam",
        lr=1e-4,
        batch_size=batch,
        epochs=200,
        scheduler="step",
        scheduler_kwargs={"step_size": 100, "gamma": 0.5},
        model="mtan_segnet",
        data_kwargs={"augment": True},
        paper_selection="last10-test",
        source="Nash-MTL / FAMO / FairGrad protocol (MTAN SegNet, Liu et al. CVPR 2019)",
    )


register(
    DatasetSpec(
        name="nyuv2",
        title="NYUv2 (13-class segmentation, depth, surface normals; 288x384)",
        tasks=(_seg(13), _DEPTH, _NORMAL),
        multi_input=False,
        presets={
            "paper": _paper(2),
            "quick": Protocol(
                optimizer="adam",
                lr=1e-4,
                batch_size=8,
                epochs=1,
                model="mtan_segnet",
                subset={"train": 64, "val": 16, "test": 32},
                data_kwargs={"augment": False, "size": (72, 96)},
                source="mtlagg quick preset (images downsampled 4x)",
            ),
        },
        loader=_load,
        data_source=WHERE["nyuv2"],
        expected_files=("{train,val}/{image,label,depth,normal}/{i}.npy",),
        validation="10% of the 795 training images carved under the seed; the protocol has none "
        "(its 'val' folder is the test split)",
        input_shape=(3, 288, 384),
        baseline="nyuv2",
        aliases=("nyu", "nyu_v2", "nyudv2"),
    )
)
register(
    DatasetSpec(
        name="cityscapes",
        title="Cityscapes (7-class segmentation, depth; 128x256)",
        tasks=(_seg(7), _DEPTH),
        multi_input=False,
        presets={
            "paper": _paper(8),
            "quick": Protocol(
                optimizer="adam",
                lr=1e-4,
                batch_size=8,
                epochs=1,
                model="mtan_segnet",
                subset={"train": 64, "val": 16, "test": 32},
                data_kwargs={"augment": False, "size": (64, 128)},
                source="mtlagg quick preset (images downsampled 2x)",
            ),
        },
        loader=_load,
        data_source=WHERE["cityscapes"],
        expected_files=("{train,val}/{image,label_7,depth}/{i}.npy",),
        validation="10% of the 2,975 training images carved under the seed; the protocol has none "
        "(its 'val' folder is the test split)",
        input_shape=(3, 128, 256),
        baseline="cityscapes",
        aliases=("city", "cityscapes2"),
    )
)
