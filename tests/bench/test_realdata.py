"""A real MultiMNIST run (a slice of the real data, about 20 s on one thread): well above chance on both tasks.

Skips unless ``MTLAGG_DATA_DIR`` points at a folder with ``mnist.npz`` (CI: ``../shared/data``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import cli


@pytest.mark.realdata
def test_multimnist_upgrad_learns_both_tasks(data_dir: Path, tmp_path: Path) -> None:
    argv = ["run", "--dataset", "multimnist", "--data-dir", str(data_dir), "--aggregator", "upgrad", "--quiet"]
    argv += ["--epochs", "3", "--lr", "0.003", "--batch-size", "64", "--model-arg", "dropout=0"]
    argv += ["--data-arg", 'subset={"train": 8000, "val": 1000, "test": 1000}', "--out", str(tmp_path)]
    assert cli.main(argv) == 0
    results = json.loads((tmp_path / "multimnist" / "quick" / "hps" / "upgrad" / "seed0" / "results.json").read_text())
    assert results["test"]["left/accuracy"] > 0.6 and results["test"]["right/accuracy"] > 0.6  # chance: 0.1
    assert results["selected_epoch"] >= 2
