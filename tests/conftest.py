"""Shared test configuration: determinism and the location of the real data."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch


def pytest_configure(config: pytest.Config) -> None:
    # The tests use tiny tensors: one thread avoids OpenMP spinning, which makes them several times
    # slower on a busy 2-core machine, and keeps results independent of the thread count.
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


def real_data_dir() -> Path | None:
    """The folder with the real data files (``MTLAGG_DATA_DIR``), or None."""
    value = os.environ.get("MTLAGG_DATA_DIR")
    if not value:
        return None
    path = Path(value)
    return path if path.is_dir() else None


@pytest.fixture
def data_dir() -> Path:
    path = real_data_dir()
    if path is None:
        pytest.skip(
            "real data not found: set MTLAGG_DATA_DIR to a folder with mnist.npz, fashion_mnist.npz and SICK.txt "
            "(MNIST from yann.lecun.com or the Debian package dataset-fashion-mnist; SICK from the SemEval 2014 site)"
        )
    return path
