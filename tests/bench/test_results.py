"""The results page generator on a tiny synthetic study: runs, page, raw JSON, figure, missing runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import results


def test_page_from_real_runs_and_missing_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    study = results.Study(
        "synthetic",
        "two epochs of the synthetic fixture",
        {"preset": "quick", "epochs": 2},
        methods=("mean", "upgrad", "notamethod"),
        seeds=(0, 1),
        stl_seeds=(0,),
        published="nothing published",
    )
    monkeypatch.setattr(results, "STUDIES", (study,))
    page = tmp_path / "docs" / "results.md"
    argv = ["--out", str(page), "--runs", str(tmp_path / "runs"), "--jobs", "1"]

    # nothing run yet: the page says what is missing and how to complete it
    assert results.main([*argv, "--render-only"]) == 0
    text = page.read_text()
    assert "*No finished run yet.*" in text and "synthetic: upgrad seed 1" in text

    assert results.main(argv) == 0
    text = page.read_text()
    assert "| mean | 2 |" in text and "| upgrad | 2 |" in text and "Δm% ↓" in text
    assert "your single-task runs" in text and "methods not in this version of mtlagg: notamethod" in text
    assert "## Not finished" not in text
    raw = json.loads((tmp_path / "docs" / "results" / "synthetic.json").read_text())
    assert {(r["method"], r["seed"]) for r in raw["runs"]} == {(m, s) for m in ("mean", "upgrad") for s in (0, 1)}
    assert len(raw["stl"]) == 3  # three tasks, one seed
    assert (tmp_path / "docs" / "results" / "synthetic.png").stat().st_size > 5000
