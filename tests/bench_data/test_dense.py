"""NYUv2 / Cityscapes on fixtures written in the preprocessed .npy layout of the MTAN release."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.datasets import CorruptDataError, MissingDataError, lookup
from benchmarks.datasets.dense import DenseDataset


def write_dense(root, name, n_train=5, n_test=2, shape=None, seed=0):
    rng = np.random.default_rng(seed)
    h, w = shape or {"nyuv2": (288, 384), "cityscapes": (128, 256)}[name]
    classes = {"nyuv2": 13, "cityscapes": 7}[name]
    label_dir = "label" if name == "nyuv2" else "label_7"
    for split, n in (("train", n_train), ("val", n_test)):
        for sub in ["image", label_dir, "depth"] + (["normal"] if name == "nyuv2" else []):
            (root / split / sub).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            np.save(root / split / "image" / f"{i}.npy", rng.random((h, w, 3), dtype=np.float32))
            label = rng.integers(-1, classes, (h, w)).astype(np.float32)
            np.save(root / split / label_dir / f"{i}.npy", label)
            depth = rng.random((h, w, 1), dtype=np.float32) + 0.5
            depth[: h // 4] = 0.0  # no measurement
            np.save(root / split / "depth" / f"{i}.npy", depth)
            if name == "nyuv2":
                normal = rng.normal(size=(h, w, 3)).astype(np.float32)
                normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
                normal[: h // 4] = 0.0
                np.save(root / split / "normal" / f"{i}.npy", normal)
    return root


def test_nyuv2_items_splits_and_perfect_metrics(tmp_path):
    write_dense(tmp_path / "nyuv2", "nyuv2")
    data = lookup("nyuv2").load(tmp_path, preset="paper", val_fraction=0.2)
    assert data.sizes() == {"train": 4, "val": 1, "test": 2}
    assert not set(data.train.indices) & set(data.val.indices)
    data = lookup("nyuv2").load(tmp_path, preset="paper", augment=False, val_fraction=0.2)
    img, y = data.test[1]
    assert img.shape == (3, 288, 384) and img.dtype == torch.float32
    assert y["segmentation"].shape == (288, 384) and y["segmentation"].dtype == torch.int64
    assert y["depth"].shape == (1, 288, 384) and y["normal"].shape == (3, 288, 384)
    raw = np.load(tmp_path / "nyuv2" / "val" / "label" / "1.npy")
    assert torch.equal(y["segmentation"], torch.from_numpy(raw).long())
    assert (y["segmentation"] == -1).any()
    # predictions equal to the targets give the ideal metric values
    metrics = data.make_metrics()
    seg_logits = torch.nn.functional.one_hot(y["segmentation"].clamp(min=0), 13).permute(2, 0, 1).float()
    metrics["segmentation"].update(seg_logits[None], y["segmentation"][None])
    metrics["depth"].update(y["depth"][None], y["depth"][None])
    metrics["normal"].update(y["normal"][None], y["normal"][None])
    assert metrics["segmentation"].compute() == {"miou": 1.0, "pixel_acc": 1.0}
    assert metrics["depth"].compute()["abs_err"] == 0.0
    assert metrics["normal"].compute()["angle_mean"] == pytest.approx(0.0, abs=0.02)  # float32 unit vectors
    losses = data.losses()
    assert losses["depth"](y["depth"][None], y["depth"][None]).item() == 0.0


def test_cityscapes_quick_preset_downsamples_and_batches(tmp_path):
    write_dense(tmp_path / "cityscapes", "cityscapes", n_train=6, n_test=3)
    data = lookup("cityscapes").load(tmp_path, preset="quick")
    assert data.sizes() == {"train": 5, "val": 1, "test": 3}
    x, y = next(iter(data.dataloaders(batch_size=2)["test"]))
    assert (
        x.shape == (2, 3, 64, 128) and y["segmentation"].shape == (2, 64, 128) and set(y) == {"segmentation", "depth"}
    )
    assert set(data.make_metrics()) == {"segmentation", "depth"}


def test_augmentation_flip_negates_normal_x(monkeypatch):
    img = torch.rand(3, 4, 6)
    label = torch.randint(0, 3, (4, 6)).float()
    depth = torch.rand(1, 4, 6) + 1
    normal = torch.nn.functional.normalize(torch.randn(3, 4, 6), dim=0)
    import benchmarks.datasets.dense as dense

    monkeypatch.setattr(dense.random, "randrange", lambda n: 2)  # scale 1.5
    monkeypatch.setattr(dense.random, "randint", lambda a, b: 0)
    monkeypatch.setattr(dense.random, "random", lambda: 0.0)  # flip
    i2, l2, d2, n2 = DenseDataset._scale_crop_flip(img, label, depth, normal.clone())
    assert i2.shape == img.shape and l2.shape == label.shape
    # the crop of 2x4 pixels at the top-left is upsampled back (nearest): pixel (0, 5) after the flip = (0, 0) before
    assert d2[0, 0, 5] == pytest.approx(depth[0, 0, 0] / 1.5)
    assert n2[0, 0, 5] == pytest.approx(-normal[0, 0, 0]) and n2[1, 0, 5] == pytest.approx(normal[1, 0, 0])
    assert set(l2.unique().tolist()) <= set(label.unique().tolist())


def test_missing_and_truncated_files(tmp_path):
    with pytest.raises(MissingDataError, match=r"(?s)train/image/0\.npy.*lorenmt/mtan"):
        lookup("nyuv2").load(tmp_path)
    root = write_dense(tmp_path / "nyuv2", "nyuv2", n_train=3, n_test=1, shape=(8, 8))
    (root / "train" / "normal" / "2.npy").unlink()
    with pytest.raises(MissingDataError, match=r"train/normal/2\.npy"):
        lookup("nyuv2").load(tmp_path)
    np.save(root / "train" / "normal" / "2.npy", np.zeros((8, 8, 3), np.float32))
    blob = (root / "val" / "depth" / "0.npy").read_bytes()
    (root / "val" / "depth" / "0.npy").write_bytes(blob[:100])
    data = lookup("nyuv2").load(tmp_path, val_fraction=0.4)
    with pytest.raises(CorruptDataError, match=r"val/depth/0\.npy: cannot read"):
        data.test[0]
