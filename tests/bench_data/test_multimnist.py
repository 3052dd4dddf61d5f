"""MultiMNIST family: generator (determinism, placement, labels), IDX / npz readers, errors, real data."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from benchmarks.datasets import CorruptDataError, DatasetError, MissingDataError, lookup
from benchmarks.datasets._files import read_idx, write_idx
from benchmarks.datasets.multimnist import compose, generate, load_source

from .conftest import digit_sources


def _marker_digits(labels: np.ndarray, corner: str) -> np.ndarray:
    """Blank 28x28 images with one pixel = 10 * (label + 1) in the given corner."""
    images = np.zeros((len(labels), 28, 28), dtype=np.uint8)
    r = 0 if corner == "top-left" else 27
    images[:, r, r] = 10 * (labels + 1)
    return images


def test_compose_places_each_item_at_its_shift_and_clips():
    rng_data = np.random.default_rng(0)
    first = rng_data.integers(0, 256, (50, 28, 28), dtype=np.uint8)
    second = rng_data.integers(0, 256, (50, 28, 28), dtype=np.uint8)
    out, shifts = compose(first, second, np.random.default_rng(1))
    assert out.shape == (50, 36, 36) and out.dtype == np.uint8
    assert shifts.min() >= 0 and shifts.max() <= 4
    for i in range(50):
        dy1, dx1, dy2, dx2 = shifts[i]
        expected = np.zeros((36, 36), dtype=np.int32)
        expected[dy1 : dy1 + 28, dx1 : dx1 + 28] += first[i]
        expected[4 + dy2 : 32 + dy2, 4 + dx2 : 32 + dx2] += second[i]
        np.testing.assert_array_equal(out[i], np.minimum(expected, 255))
    assert len({tuple(s) for s in shifts}) > 20  # the shifts really vary


def test_generate_labels_follow_the_items_and_are_deterministic():
    y1 = np.arange(300) % 10
    y2 = (np.arange(300) * 7 + 3) % 10
    first = (_marker_digits(y1, "top-left"), y1)
    second = (_marker_digits(y2, "bottom-right"), y2)
    images, labels = generate(first, second, seed=5)
    for img, (left, right) in zip(images, labels):
        tl = img[:5, :5]
        br = img[31:, 31:]
        assert tl.max() == 10 * (left + 1) and np.count_nonzero(tl) == 1
        assert br.max() == 10 * (right + 1) and np.count_nonzero(br) == 1
    assert (labels[:, 0] == y1).all()  # the first item keeps its order; the partner is permuted
    assert not (labels[:, 1] == y2).all()
    again = generate(first, second, seed=5)
    np.testing.assert_array_equal(again[0], images)
    np.testing.assert_array_equal(again[1], labels)
    other = generate(first, second, seed=6)
    assert not np.array_equal(other[0], images)


def test_generate_resize_to_28():
    x, y = digit_sources(20)
    images, _ = generate((x, y), (x, y), seed=0, resize=28)
    assert images.shape == (20, 28, 28)


def _write_mnist_idx(folder, n_train=120, n_test=40, gz=True, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    xtr, ytr = digit_sources(n_train, seed)
    xte, yte = digit_sources(n_test, seed + 1)
    ext = ".gz" if gz else ""
    write_idx(folder / f"train-images-idx3-ubyte{ext}", xtr)
    write_idx(folder / f"train-labels-idx1-ubyte{ext}", ytr)
    write_idx(folder / f"t10k-images-idx3-ubyte{ext}", xte)
    write_idx(folder / f"t10k-labels-idx1-ubyte{ext}", yte)
    return (xtr, ytr), (xte, yte)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_roundtrip_and_loader_reads_idx_folder(tmp_path, gz):
    (xtr, _), (_, yte) = _write_mnist_idx(tmp_path / "mnist", gz=gz)
    src = load_source("mnist", tmp_path)
    np.testing.assert_array_equal(src["train"][0], xtr)
    np.testing.assert_array_equal(src["test"][1], yte)
    data = lookup("multimnist").load(tmp_path, preset="paper", val_size=20)
    assert data.sizes() == {"train": 100, "val": 20, "test": 40}
    x, y = data.train[0]
    assert x.shape == (1, 36, 36) and x.dtype == torch.float32 and 0.0 <= float(x.min()) <= float(x.max()) <= 1.0
    assert set(y) == {"left", "right"} and y["left"].dtype == torch.int64


def test_npz_layout_and_mixed_dataset(tmp_path):
    _write_mnist_idx(tmp_path / "mnist")
    xf, yf = digit_sources(150, seed=9)
    xft, yft = digit_sources(50, seed=10)
    np.savez(tmp_path / "fashion_mnist.npz", x_train=xf, y_train=yf, x_test=xft, y_test=yft)
    data = lookup("multi-fashion+mnist").load(tmp_path, preset="quick", val_size=10)
    assert data.sizes() == {"train": 110, "val": 10, "test": 40}
    data2 = lookup("multifashion").load(tmp_path, preset="quick", val_size=10)
    assert data2.sizes() == {"train": 140, "val": 10, "test": 50}
    # the validation images are carved from the generated training images, disjoint from train
    train_imgs = {data.train.images[i].numpy().tobytes() for i in range(len(data.train))}
    assert all(data.val.images[i].numpy().tobytes() not in train_imgs for i in range(len(data.val)))


def test_dataloaders_batch_dicts_and_metrics(tmp_path):
    _write_mnist_idx(tmp_path / "mnist")
    data = lookup("multimnist").load(tmp_path, val_size=20)
    loaders = data.dataloaders(batch_size=32, seed=3)
    x, y = next(iter(loaders["train"]))
    assert x.shape == (32, 1, 36, 36) and y["left"].shape == (32,)
    metrics = data.make_metrics()
    assert set(metrics) == {"left", "right"}
    losses = data.losses()
    assert losses["left"](torch.zeros(32, 10), y["left"]).item() == pytest.approx(np.log(10))


def test_missing_files_message_names_files_and_source(tmp_path):
    with pytest.raises(MissingDataError) as err:
        lookup("multimnist").load(tmp_path)
    msg = str(err.value)
    assert "mnist.npz" in msg and "train-images-idx3-ubyte" in msg and "yann.lecun.com" in msg
    with pytest.raises(DatasetError, match="no data folder given"):
        lookup("multimnist").load(None)


def test_partial_idx_folder_names_the_missing_file(tmp_path):
    _write_mnist_idx(tmp_path / "mnist")
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(MissingDataError, match="t10k-labels-idx1-ubyte"):
        lookup("multimnist").load(tmp_path)


def test_truncated_idx_files_give_clear_errors(tmp_path):
    _write_mnist_idx(tmp_path / "mnist", gz=False)
    path = tmp_path / "mnist" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(CorruptDataError, match=r"train-images-idx3-ubyte: the file is truncated"):
        lookup("multimnist").load(tmp_path)
    path.write_bytes(b"\x00\x00\x08\x03\x00\x00")
    with pytest.raises(CorruptDataError, match="truncated IDX header"):
        read_idx(path)
    path.write_bytes(b"PK\x03\x04rubbish")
    with pytest.raises(CorruptDataError, match="bad magic number"):
        read_idx(path)


def test_truncated_gzip_and_npz(tmp_path):
    _write_mnist_idx(tmp_path / "mnist", gz=True)
    path = tmp_path / "mnist" / "train-labels-idx1-ubyte.gz"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CorruptDataError, match="gzip file is truncated"):
        read_idx(path)
    x, y = digit_sources(30)
    np.savez(tmp_path / "fashion_mnist.npz", x_train=x, y_train=y, x_test=x, y_test=y)
    blob = (tmp_path / "fashion_mnist.npz").read_bytes()
    (tmp_path / "fashion_mnist.npz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CorruptDataError, match=r"fashion_mnist\.npz: the npz archive is truncated"):
        load_source("fashion", tmp_path)
    np.savez(tmp_path / "fashion_mnist.npz", x_train=x, y_train=y)
    with pytest.raises(CorruptDataError, match="lacks the arrays"):
        load_source("fashion", tmp_path)


def test_bad_shapes_and_labels(tmp_path):
    x, y = digit_sources(10)
    np.savez(tmp_path / "mnist.npz", x_train=x[:, :20], y_train=y, x_test=x, y_test=y)
    with pytest.raises(CorruptDataError, match=r"shape \(N, 28, 28\)"):
        load_source("mnist", tmp_path)
    np.savez(tmp_path / "mnist.npz", x_train=x, y_train=y + 20, x_test=x, y_test=y)
    with pytest.raises(CorruptDataError, match=r"labels must lie in 0\.\.9"):
        load_source("mnist", tmp_path)


def test_gzip_written_by_write_idx_is_standard(tmp_path):
    x, _ = digit_sources(3)
    write_idx(tmp_path / "a.gz", x)
    with gzip.open(tmp_path / "a.gz") as fh:
        raw = fh.read()
    assert raw[:4] == b"\x00\x00\x08\x03" and len(raw) == 16 + 3 * 784


@pytest.mark.realdata
def test_real_mnist_and_fashion(data_dir):
    mnist = load_source("mnist", data_dir)
    assert mnist["train"][0].shape == (60000, 28, 28) and mnist["test"][0].shape == (10000, 28, 28)
    assert np.bincount(mnist["train"][1]).min() > 5000
    data = lookup("multifashion_mnist").load(data_dir, preset="quick")
    assert data.sizes() == {"train": 10000, "val": 2000, "test": 2000}
    # full protocol sizes and determinism on the real data
    a = lookup("multimnist").load(data_dir, preset="paper", seed=1)
    b = lookup("multimnist").load(data_dir, preset="paper", seed=1)
    assert a.sizes() == {"train": 54000, "val": 6000, "test": 10000}
    assert torch.equal(a.test.images, b.test.images) and torch.equal(a.train.labels, b.train.labels)


@pytest.mark.realdata
@pytest.mark.slow
def test_real_multimnist_small_lenet_learns_both_tasks(data_dir):
    """A LeNet trained two epochs on 6k real MultiMNIST images is far above chance (10%) on both tasks."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small convolutions: one thread is faster on a busy 2-core machine
    try:
        acc = _train_lenet(data_dir)
    finally:
        torch.set_num_threads(threads)
    assert acc["left"] > 0.6 and acc["right"] > 0.6, acc


def _train_lenet(data_dir) -> dict[str, float]:
    data = lookup("multimnist").load(data_dir, subset={"train": 6000, "val": 1000, "test": 2000})

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.trunk = torch.nn.Sequential(
                torch.nn.Conv2d(1, 10, 9), torch.nn.MaxPool2d(2), torch.nn.ReLU(),
                torch.nn.Conv2d(10, 20, 5), torch.nn.MaxPool2d(2), torch.nn.ReLU(),
                torch.nn.Flatten(), torch.nn.Linear(500, 50), torch.nn.ReLU(),
            )  # fmt: skip
            self.heads = torch.nn.ModuleDict({t: torch.nn.Linear(50, 10) for t in ("left", "right")})

        def forward(self, x):
            z = self.trunk(x)
            return {t: h(z) for t, h in self.heads.items()}

    net = Net()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    loaders = data.dataloaders(batch_size=64)
    losses = data.losses()
    for _ in range(2):
        for x, y in loaders["train"]:
            out = net(x)
            loss = sum(losses[t](out[t], y[t]) for t in y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    metrics = data.make_metrics()
    with torch.no_grad():
        for x, y in loaders["test"]:
            out = net(x)
            for t in y:
                metrics[t].update(out[t], y[t])
    return {t: m.compute()["accuracy"] for t, m in metrics.items()}
