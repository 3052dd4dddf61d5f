"""``compare``, ``stl`` and the main job on tiny budgets: the runs, the reuse, the baselines and the files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import cli, comparison
from benchmarks.runs import RunConfig

SYN = ["--dataset", "synthetic", "--epochs", "2", "--quiet"]


def test_stl_writes_one_run_per_task_and_a_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["stl", *SYN, "--seeds", "0,1", "--out", str(tmp_path)]) == 0
    root = tmp_path / "synthetic" / "quick" / "stl"
    for seed in (0, 1):
        for task in ("reg_a", "reg_b", "cls"):
            results = json.loads((root / f"seed{seed}" / task / "results.json").read_text())
            assert results["tasks"] == [task] and list(results["test"]) == [
                f"{task}/{'accuracy' if task == 'cls' else 'mae'}"
            ]
        summary = json.loads((root / f"seed{seed}" / "results.json").read_text())
        assert set(summary["test"]) == {"reg_a/mae", "reg_b/mae", "cls/accuracy"}
    assert "compare finds them" in capsys.readouterr().out


def test_stl_on_a_multi_input_dataset_reads_only_its_task(tmp_path: Path) -> None:
    from benchmarks.trainer import Trainer

    config = RunConfig(dataset="synthetic_multi", method="stl", tasks=["second"], epochs=1, out=str(tmp_path))
    config.progress = False
    trainer = Trainer(config)
    results = trainer.run()
    assert results is not None and list(results["test"]) == ["second/accuracy"]
    assert list(trainer.train_loaders) == ["second"] and results["steps"] == 11  # 164 examples / 16


def test_single_task_model_has_one_head(tmp_path: Path) -> None:
    config = RunConfig(dataset="synthetic", method="stl", tasks=["cls"], epochs=1, out=str(tmp_path), progress=False)
    from benchmarks.trainer import Trainer

    trainer = Trainer(config)
    trainer.run()
    assert trainer.model.task_names == ("cls",) and trainer.config.arch == "hps"


def test_compare_runs_reuses_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["compare", *SYN, "--aggregators", "mean,upgrad", "--seeds", "0,1", "--out", str(tmp_path)]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "| mean | 2 |" in out and "| upgrad | 2 |" in out
    assert "No Δm%" in out  # no single-task baseline yet: MR only
    folder = tmp_path / "synthetic" / "quick" / "hps" / "comparison"
    for name in ("comparison.md", "comparison.csv", "comparison.json", "comparison.png"):
        assert (folder / name).stat().st_size > 0
    table = json.loads((folder / "comparison.json").read_text())
    runs = [
        json.loads((tmp_path / "synthetic" / "quick" / "hps" / m / f"seed{s}" / "results.json").read_text())["test"]
        for m in ("upgrad",)
        for s in (0, 1)
    ]
    mean_mae = sum(r["reg_a/mae"] for r in runs) / 2
    assert table["methods"]["upgrad"]["metrics"]["reg_a/mae"]["mean"] == pytest.approx(mean_mae)

    # the single-task baselines appear in the table once they exist; finished runs are reused
    assert cli.main(["stl", *SYN, "--seeds", "0", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    assert "reusing 4 finished run(s)" in captured.err
    assert (
        "Δm% ↓" in captured.out and "your single-task runs (mtlagg-bench stl, seeds 0, same protocol)" in captured.out
    )
    table = json.loads((folder / "comparison.json").read_text())
    stl = json.loads((tmp_path / "synthetic" / "quick" / "stl" / "seed0" / "results.json").read_text())["test"]
    higher = {"reg_a/mae": False, "reg_b/mae": False, "cls/accuracy": True}
    deltas = [
        100 / 3 * sum((-1 if higher[k] else 1) * (r[k] - stl[k]) / stl[k] for k in higher) for r in runs
    ]  # Δm% per seed, then averaged
    assert table["methods"]["upgrad"]["delta_m"]["mean"] == pytest.approx(sum(deltas) / 2)


def test_stl_of_another_protocol_is_not_used(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["stl", "--dataset", "synthetic", "--epochs", "1", "--quiet", "--out", str(tmp_path)]) == 0
    assert cli.main(["compare", *SYN, "--aggregators", "mean", "--seeds", "0", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "another protocol (epochs), not used" in out and "No Δm%" in out


def test_per_method_agg_args(tmp_path: Path) -> None:
    argv = ["compare", *SYN, "--aggregators", "mean,cagrad", "--seeds", "0", "--agg-arg", "cagrad:c=0.2"]
    assert cli.main([*argv, "--out", str(tmp_path)]) == 0
    assert (tmp_path / "synthetic" / "quick" / "hps" / "cagrad_c=0.2" / "seed0" / "results.json").is_file()
    assert cli.main([*argv[:-1], "mean:c=0.2", "--out", str(tmp_path / "x")]) == 2  # Mean takes no c


def test_compare_in_parallel_processes(tmp_path: Path, fake_mnist: Path) -> None:
    # spawned workers see only registered datasets: the MultiMNIST loader on the fake MNIST files
    argv = ["compare", "--dataset", "multimnist", "--data-dir", str(fake_mnist), "--data-arg", "val_size=50"]
    argv += ["--aggregators", "mean,mgda", "--seeds", "0", "--epochs", "1", "--max-steps", "2", "--batch-size", "32"]
    argv += ["--device", "cpu"]  # (the spawned workers do not see the fixture that hides a GPU)
    assert cli.main([*argv, "--jobs", "2", "--out", str(tmp_path / "p"), "--quiet"]) == 0
    assert cli.main([*argv, "--jobs", "1", "--out", str(tmp_path / "s"), "--quiet"]) == 0
    for method in ("mean", "mgda"):
        a, b = (
            json.loads((tmp_path / o / "multimnist" / "quick" / "hps" / method / "seed0" / "results.json").read_text())
            for o in ("p", "s")
        )
        assert a["test"] == b["test"]  # one thread each: the same numbers as in-process


def test_published_baseline_is_cited_when_there_is_no_stl(tmp_path: Path) -> None:
    base = RunConfig(dataset="qm9", method="mean", out=str(tmp_path))
    results = []
    for seed, scale in ((0, 1.0), (1, 1.1)):
        values = {k: v * scale for k, v in _qm9_published().items()}
        results.append({"method": "mean", "agg_args": {}, "features": False, "seed": seed, "test": values})
    report = comparison.summarize_runs(base, results, write=False)
    assert "published baseline was measured under the paper protocol" in report.baseline_note
    assert "nash-mtl" in report.markdown  # the source is cited under the table
    # seed 0 equals the baseline (0 %), seed 1 is 10 % worse on every MAE (+10 %)
    assert report.summary.delta_m["mean"].mean == pytest.approx(5.0)


def test_a_reference_baseline_of_the_protocol_replaces_the_published_one(tmp_path: Path) -> None:
    from benchmarks.scores import load_baseline

    reference = load_baseline("qm9", "stl_main_job")
    base = RunConfig(dataset="qm9", method="mean", out=str(tmp_path))
    values = {k: v * 1.2 for k, v in reference.values.items()}  # 20 % worse on every MAE
    results = [{"method": "mean", "agg_args": {}, "features": False, "seed": 0, "test": values}]
    report = comparison.summarize_runs(base, results, write=False, reference=reference)
    assert report.summary.delta_m["mean"].mean == pytest.approx(20.0)
    assert "main job's protocol" in report.markdown and "take precedence" in report.baseline_note
    # the published (paper-protocol) baseline is still reported, second
    published = report.extra["vs_published"].delta_m["mean"].mean
    assert published == pytest.approx(load_baseline("qm9").delta_m(values))
    assert published > 1000  # 4 epochs on 3,000 molecules against the papers' 300 epochs


def test_main_job_uses_its_reference_baseline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: dict[str, object] = {}

    def fake_compare(base: RunConfig, methods: list[str], seeds: list[int], **kwargs: object) -> object:
        seen.update(kwargs)
        raise SystemExit(0)

    monkeypatch.setattr(comparison, "compare", fake_compare)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        cli.main([])
    reference = seen["reference"]
    assert reference is not None and reference.name == "stl_main_job" and reference.dataset == "qm9"


def _qm9_published() -> dict[str, float]:
    from benchmarks.scores import load_baseline

    return dict(load_baseline("qm9").values)


def test_main_job_prints_the_table_and_writes_the_plot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(
        cli, "MAIN_JOB", {**cli.MAIN_JOB, "dataset": "synthetic", "methods": "mean,upgrad", "epochs": 1, "jobs": 1}
    )
    monkeypatch.chdir(tmp_path)
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    assert "| mean |" in out and "| upgrad+features |" in out and "comparison.png" in out  # features: "auto"
    assert (
        tmp_path / "mtlagg-runs" / "main-job" / "synthetic" / "quick" / "hps" / "comparison" / "comparison.png"
    ).is_file()
