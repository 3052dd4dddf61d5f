"""Comparison tables: mean ± std over seeds, Δm% per seed then averaged, MR, and the files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks.report import RunRecord, stat, summarize, to_markdown, write_all
from benchmarks.scores import user_baseline

HIGHER = {"a/acc": True, "b/mae": False}


def _records() -> list[RunRecord]:
    return [
        RunRecord("x", 0, {"a/acc": 0.80, "b/mae": 2.0}),
        RunRecord("x", 1, {"a/acc": 0.90, "b/mae": 1.0}),
        RunRecord("y", 0, {"a/acc": 0.70, "b/mae": 1.0}),
        RunRecord("y", 1, {"a/acc": 0.70, "b/mae": 1.0}),
    ]


def test_mean_std_delta_m_and_rank() -> None:
    baseline = user_baseline("toy", {"a/acc": 0.8, "b/mae": 1.0}, HIGHER)
    summary = summarize(_records(), HIGHER, baseline)
    assert summary.metrics["x"]["a/acc"].mean == pytest.approx(0.85)
    assert summary.metrics["x"]["a/acc"].std == pytest.approx(math.sqrt(0.005))
    # seed 0: (-(0.8-0.8)/0.8 + (2-1)/1)/2 * 100 = 50; seed 1: (-(0.1/0.8) + 0)/2 * 100 = -6.25
    assert summary.delta_m["x"].mean == pytest.approx((50 - 6.25) / 2)
    assert summary.delta_m["y"].mean == pytest.approx(100 * (0.1 / 0.8) / 2)
    # x is best on accuracy (rank 1), y on MAE (rank 1): MR 1.5 each
    assert summary.mean_rank == {"x": pytest.approx(1.5), "y": pytest.approx(1.5)}
    text = to_markdown(summary)
    assert "| x | 2 | 0.85 ± 0.071 | 1.5 ± 0.71 |" in text


def test_one_seed_has_no_spread() -> None:
    assert stat([3.0]).text() == "3"
    with pytest.raises(ValueError, match="no finished runs"):
        summarize([], HIGHER)


def test_files_are_written(tmp_path: Path) -> None:
    paths = write_all(summarize(_records(), HIGHER), tmp_path, "toy")
    data = json.loads(paths["json"].read_text())
    assert data["methods"]["y"]["metrics"]["b/mae"]["mean"] == pytest.approx(1.0)
    assert paths["csv"].read_text().splitlines()[0].startswith("method,seeds,a/acc mean")
    assert paths["figure"].stat().st_size > 5000
