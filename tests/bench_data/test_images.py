"""Office-31 / Office-Home and CelebA on fixtures written in the official folder and file layouts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.datasets import CorruptDataError, MissingDataError, lookup
from benchmarks.datasets.celeba import ATTRIBUTES
from benchmarks.datasets.office import read_split_list

Image = pytest.importorskip("PIL.Image")


def _jpeg(path, size=(12, 10), seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, quality=90)


def write_office31(root, classes=("back_pack", "bike"), per_class=5):
    for d, domain in enumerate(("amazon", "dslr", "webcam")):
        for c, cls in enumerate(classes):
            for k in range(per_class):
                _jpeg(root / domain / "images" / cls / f"frame_{k:04d}.jpg", seed=100 * d + 10 * c + k)
    return root


def write_officehome(root, classes=("Alarm_Clock", "Bike"), per_class=5):
    for d, domain in enumerate(("Art", "Clipart", "Product", "Real World")):  # the official folder has a space
        for c, cls in enumerate(classes):
            for k in range(per_class):
                _jpeg(root / domain / cls / f"{k:05d}.jpg", seed=100 * d + 10 * c + k)
    return root


def test_office31_split_lists_written_60_20_20_per_class(tmp_path):
    write_office31(tmp_path / "office31")
    data = lookup("office31").load(tmp_path, preset="paper", size=(32, 32))
    assert data.info["split_lists_written"]
    assert data.sizes() == {
        s: dict.fromkeys(("amazon", "dslr", "webcam"), n) for s, n in (("train", 6), ("val", 2), ("test", 2))
    }
    lists = tmp_path / "office31" / "splits"
    line = (lists / "amazon_train.txt").read_text().splitlines()[0]
    assert line.startswith("amazon/images/back_pack/frame_") and line.endswith(" 0")
    everything = set()
    for s in ("train", "val", "test"):
        items = read_split_list(lists / f"dslr_{s}.txt", 31)
        assert {label for _, label in items} == {0, 1}
        everything |= {p for p, _ in items}
    assert len(everything) == 10  # disjoint and complete
    x, y = data.train["webcam"][0]
    assert x.shape == (3, 32, 32) and y.dtype == torch.int64
    # ImageNet normalisation: values outside [0, 1]
    assert float(x.min()) < 0.0
    loaders = data.dataloaders(batch_size=4)
    assert set(loaders["train"]) == {"amazon", "dslr", "webcam"}
    xb, yb = next(iter(loaders["test"]["amazon"]))
    assert xb.shape == (2, 3, 32, 32) and yb.shape == (2,)
    again = lookup("office31").load(tmp_path, size=(32, 32))
    assert not again.info["split_lists_written"]  # the written lists are read back


def test_officehome_space_in_folder_and_paths(tmp_path):
    write_officehome(tmp_path / "OfficeHomeDataset_10072016")
    data = lookup("officehome").load(tmp_path, size=(16, 16))
    assert set(data.train) == {"Art", "Clipart", "Product", "Real_World"}
    rel, _ = data.train["Real_World"].items[0]
    assert rel.startswith("Real World/")
    x, _ = data.train["Real_World"][0]
    assert x.shape == (3, 16, 16)


def test_office_errors(tmp_path):
    with pytest.raises(MissingDataError, match=r"(?s)amazon/images/<class>/\*\.jpg.*Office-31"):
        lookup("office31").load(tmp_path)
    root = write_office31(tmp_path / "o")
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "amazon_train.txt").write_text("amazon/images/bike/frame_0000.jpg 1\n")
    with pytest.raises(MissingDataError, match=r"amazon_val\.txt"):
        lookup("office31").load(root, split_dir=lists)
    (lists / "bad.txt").write_text("just-a-path\n")
    with pytest.raises(CorruptDataError, match=r"bad\.txt, line 1"):
        read_split_list(lists / "bad.txt", 31)
    (lists / "bad.txt").write_text("a.jpg 40\n")
    with pytest.raises(CorruptDataError, match=r"outside 0\.\.30"):
        read_split_list(lists / "bad.txt", 31)
    data = lookup("office31").load(root, size=(8, 8))
    rel, _ = data.test["dslr"].items[0]
    blob = (root / rel).read_bytes()
    (root / rel).write_bytes(blob[:40])
    with pytest.raises(CorruptDataError, match="cannot decode the image"):
        data.test["dslr"][0]


def write_celeba(root, n=8, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.choice([-1, 1], size=(n, 40))
    files = [f"{i + 1:06d}.jpg" for i in range(n)]
    (root / "Anno").mkdir(parents=True)
    (root / "Eval").mkdir()
    lines = [str(n), " ".join(ATTRIBUTES) + " "]
    lines += [f + "".join(f" {v:2d}" for v in row) for f, row in zip(files, labels)]
    (root / "Anno" / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    parts = [0] * (n - 3) + [1, 2, 2]
    (root / "Eval" / "list_eval_partition.txt").write_text("".join(f"{f} {p}\n" for f, p in zip(files, parts)))
    for k, f in enumerate(files):
        _jpeg(root / "Img" / "img_align_celeba" / f, size=(178, 218), seed=k)
    return labels


def test_celeba_items_partition_and_f1(tmp_path):
    labels = write_celeba(tmp_path / "celeba")
    data = lookup("celeba").load(tmp_path, preset="paper")
    assert data.sizes() == {"train": 5, "val": 1, "test": 2}
    x, y = data.test[1]
    assert x.shape == (3, 64, 64) and float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert list(y) == list(ATTRIBUTES)
    assert [int(y[a]) for a in ATTRIBUTES] == [int(v > 0) for v in labels[7]]
    xb, yb = next(iter(data.dataloaders(batch_size=5)["train"]))
    assert xb.shape == (5, 3, 64, 64) and yb["Smiling"].shape == (5,)
    metrics = data.make_metrics()
    assert len(metrics) == 40
    metrics["Male"].update(yb["Male"] * 8 - 4, yb["Male"])  # logits of the right sign
    assert metrics["Male"].compute()["f1"] == (1.0 if yb["Male"].sum() > 0 else 0.0)


def test_celeba_errors(tmp_path):
    with pytest.raises(MissingDataError, match=r"(?s)Anno/list_attr_celeba\.txt.*mmlab"):
        lookup("celeba").load(tmp_path)
    write_celeba(tmp_path / "CelebA")
    attr = tmp_path / "CelebA" / "Anno" / "list_attr_celeba.txt"
    lines = attr.read_text().splitlines()
    attr.write_text("\n".join(lines[:-2]) + "\n")  # truncated: fewer rows than announced
    with pytest.raises(CorruptDataError, match="announces 8 images but lists 6"):
        lookup("celeba").load(tmp_path)
    attr.write_text("\n".join([*lines[:3], lines[3][:30]]) + "\n")
    with pytest.raises(CorruptDataError, match="line 4: expected a file name and 40 values"):
        lookup("celeba").load(tmp_path)


def test_celeba_model_shapes():
    from benchmarks.models.celeba import CelebANet

    net = CelebANet(width=0.125)
    out = net(torch.rand(3, 3, 64, 64))
    assert len(out) == 40 and out["Young"].shape == (3,)
    assert sum(p.numel() for p in CelebANet().encoder.parameters()) > 4_000_000  # the paper-size trunk
