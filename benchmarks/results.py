"""The results page: ``python -m benchmarks.results --out docs/results.md``.

Runs (or reuses) every comparison of the page, then writes the page, the raw per-run results
(``docs/results/<dataset>.json``) and the figures (``docs/results/<dataset>.png``). Runs live under
``--runs`` (default ``mtlagg-runs/results``); finished runs are reused and interrupted ones resume, so the
command can be stopped and started again. ``--render-only`` writes the page from the runs that finished
and lists what is missing.

The protocols are reduced to fit a small CPU budget (2 busy cores); the page states them:

* MultiMNIST, MultiFashion, Multi-(Fashion+MNIST): LeNet on 36x36 images, HPS, Adam lr 1e-3, batch 256,
  10 epochs on 20,000 of the 54,000 training images (validation 2,000 of the 6,000 carved images, the full
  10,000 test images), seeds 0, 1, 2; single-task baselines with the same protocol and seeds.
* QM9 ``quick``: 3,000 / 1,000 / 1,000 molecules, the 16-d NNConv network, Adam 1e-3, batch 64, 8 epochs,
  seeds 0, 1, 2; the methods that use task gradients aggregate them on the shared representation
  (MGDA-UB path).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.runs import RunConfig, finished_results

METHODS = ("mean", "mgda", "pcgrad", "cagrad", "nashmtl", "upgrad", "famo")
SEEDS = (0, 1, 2)
#: our method name -> the key of the published tables (benchmarks/baselines/*.json)
PUBLISHED_KEYS = {
    "mean": "ls",
    "mgda": "mgda",
    "pcgrad": "pcgrad",
    "cagrad": "cagrad",
    "nashmtl": "nash_mtl",
    "famo": "famo",
}


@dataclass
class Study:
    """One comparison of the page."""

    dataset: str
    protocol: str  # the sentence the page prints
    config: dict[str, Any]
    methods: Sequence[str] = METHODS
    seeds: Sequence[int] = SEEDS
    stl_seeds: Sequence[int] = SEEDS
    features: str | bool = False
    published: str = ""  # what the papers report, or why nothing is shown
    stl_first: bool = True  # False: the method runs first (the single-task runs are an extra)

    def base(self, runs: Path, data_dir: str | None) -> RunConfig:
        return RunConfig(
            dataset=self.dataset, out=str(runs), data_dir=data_dir, threads=1, progress=False, **self.config
        )


_MULTI = {
    "preset": "quick",
    "epochs": 10,
    "batch_size": 256,
    "lr": 1e-3,
    "data_args": {"subset": {"train": 20000, "val": 2000, "test": 10000}},
}
_MULTI_TEXT = (
    "LeNet (Sener & Koltun's network, 36x36 canvas), hard parameter sharing, Adam lr 1e-3, batch 256, "
    "10 epochs on 20,000 of the 54,000 training images; validation 2,000 of the 6,000 carved images; test all "
    "10,000; data seed 0, training seeds 0, 1, 2. The papers' protocol is SGD lr 1e-3 (momentum 0.9), "
    "100 epochs on all images (`--preset paper`)."
)
_NO_PUBLISHED_MULTI = (
    "No published table for these methods under this protocol: the reference notes of the project "
    "(`shared/reference`) hold none for the MultiMNIST family, and the papers that use it (Sener & Koltun; "
    "Pareto MTL, EPO, PHN, COSMOS) plot Pareto fronts of preference-conditioned methods rather than tabulating "
    "EW, MGDA, PCGrad, CAGrad, Nash-MTL, UPGrad and FAMO. We show none rather than numbers of another protocol."
)

STUDIES: tuple[Study, ...] = (
    Study("multimnist", _MULTI_TEXT, _MULTI, published=_NO_PUBLISHED_MULTI),
    Study("multifashion", _MULTI_TEXT, _MULTI, published=_NO_PUBLISHED_MULTI),
    Study("multifashion_mnist", _MULTI_TEXT, _MULTI, published=_NO_PUBLISHED_MULTI),
    Study(
        "qm9",
        "`quick` preset: 3,000 / 1,000 / 1,000 molecules of the protocol split (data seed 0), the NNConv + GRU + "
        "Set2Set network with 16-d node states (the paper's: 64), hard parameter sharing, Adam lr 1e-3, batch 64, "
        "8 epochs, training seeds 0, 1, 2. The methods that use task gradients (marked `+features`) aggregate "
        "the gradients of the shared 16-d graph representation (the MGDA-UB path): the exact per-task gradients "
        "of the message-passing network cost 10-20 times a plain step on a CPU. The paper protocol is 300 "
        "epochs on 110,831 molecules (`--preset paper`). Δm% is against single-task runs of the same protocol "
        "(one seed per target: 11 networks).",
        {"preset": "quick", "epochs": 8},
        features="auto",
        published="qm9",
        stl_seeds=(0,),
        stl_first=False,
    ),
)


def configs_of(study: Study, runs: Path, data_dir: str | None) -> tuple[list[RunConfig], list[RunConfig]]:
    """``(method runs, single-task runs)`` of a study."""
    from benchmarks import comparison

    base = study.base(runs, data_dir)
    methods = [m for m in study.methods if _available(m)]
    runs_ = comparison.compare_configs(base, methods, study.seeds, features=study.features)
    stl = comparison.stl_configs(base, study.stl_seeds) if study.stl_seeds else []
    return runs_, stl


def _available(method: str) -> bool:
    from benchmarks.methods import resolve

    try:
        resolve(method)
    except KeyError:
        return False
    return True


def run_studies(studies: Sequence[Study], runs: Path, data_dir: str | None, jobs: int) -> None:
    """Run every missing run; STL first (its Δm% baseline), then the methods."""
    from benchmarks.comparison import run_all, write_stl_summary

    first = [s for s in studies if s.stl_first]
    later = [s for s in studies if not s.stl_first]
    for study in [*first, *later]:
        method_runs, stl_runs = configs_of(study, runs, data_dir)
        if stl_runs and study.stl_first:
            write_stl_summary(run_all(stl_runs, jobs=jobs, label=f"{study.dataset} stl"), runs)
        run_all(method_runs, jobs=jobs, label=f"{study.dataset} methods")
    for study in later:
        _, stl_runs = configs_of(study, runs, data_dir)
        if stl_runs:
            write_stl_summary(run_all(stl_runs, jobs=jobs, label=f"{study.dataset} stl"), runs)


# --------------------------------------------------------------------------------------------- the page


def _finished(configs: Sequence[RunConfig]) -> tuple[list[dict[str, Any]], list[RunConfig]]:
    done, missing = [], []
    for c in configs:
        r = finished_results(c.resolved())
        (done if r is not None else missing).append(r if r is not None else c)
    return done, missing  # type: ignore[return-value]


def _published_rows(study: Study, methods: Sequence[str]) -> list[str]:
    from benchmarks.scores import load_table

    if study.published != study.dataset:
        return [study.published]
    table = load_table(study.dataset)
    lines = [
        f"Published Δm% (paper protocol: {table.protocol}; {table.source}). They are not comparable with the "
        "numbers above in absolute terms (another protocol, 37x fewer molecules, a 4x narrower network): "
        "compare the ranking.",
        "",
        "| method | published Δm% ↓ | published MR ↓ |",
        "|---|---|---|",
    ]
    for m in methods:
        key = PUBLISHED_KEYS.get(m)
        row = table.methods.get(key) if key else None
        if row is None:
            lines.append(f"| {m} | not reported | |")
            continue
        sd = f" ± {row['delta_m_sd']}" if row.get("delta_m_sd") is not None else ""
        lines.append(f"| {m} ({key}) | {row['delta_m']}{sd} | {row.get('mr', '')} |")
    return lines


def render(studies: Sequence[Study], runs: Path, data_dir: str | None, out: Path, command: str) -> list[str]:
    """Write the page and the raw results; return the list of missing runs."""
    from benchmarks import comparison
    from benchmarks.datasets import lookup

    assets = out.parent / out.stem
    assets.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Results",
        "",
        f"Generated by `{command}` (see `benchmarks/results.py`) from real runs of `mtlagg-bench`; raw per-run "
        f"results in `{assets.name}/<dataset>.json`. Rerunning the command reuses finished runs and resumes "
        "interrupted ones.",
        "",
        "Every number is the test metric at the epoch selected on validation (Δm% of the validation metrics "
        "against the run's first epoch; test data never influences training or selection), as mean ± sample "
        "standard deviation over seeds. Δm% = (100/S) Σ_s (-1)^{δ_s} (M_s - B_s) / B_s over all S metrics, "
        "computed per seed against the single-task baseline B, then averaged (lower is better); MR is the "
        "mean rank over the metrics among the methods of the table (lower is better).",
        "",
    ]
    missing_all: list[str] = []
    for study in studies:
        spec = lookup(study.dataset)
        method_runs, stl_runs = configs_of(study, runs, data_dir)
        done, missing = _finished(method_runs)
        stl_done, stl_missing = _finished(stl_runs)
        missing_all += [f"{study.dataset}: {c.method} seed {c.seed}" for c in missing]
        missing_all += [f"{study.dataset}: stl {c.tasks[0]} seed {c.seed}" for c in stl_missing]
        lines += [f"## {spec.title}", "", f"**Protocol.** {study.protocol}", ""]
        not_run = [m for m in study.methods if not _available(m)]
        if not done:
            lines += ["*No finished run yet.*", ""]
            continue
        base = study.base(runs, data_dir)
        report = comparison.summarize_runs(base, done, title=spec.title, write=False)
        lines += [report.markdown, ""]
        if report.baseline_note:
            lines += [report.baseline_note, ""]
        if stl_done:
            stl_lines = ["Single-task baselines (test, mean over seeds):", ""]
            values = comparison.find_stl(base)
            if values is not None and values.values:
                seeds = ", ".join(map(str, values.seeds))
                stl_lines.append(", ".join(f"{k} {v:.4g}" for k, v in values.values.items()) + f" (seeds {seeds})")
            lines += [*stl_lines, ""]
        times = [r["train_time_s"] for r in done]
        lines += [
            f"Training time per run: {min(times):.0f}-{max(times):.0f} s on one CPU thread (busy 2-core machine).",
            "",
        ]
        lines += [*_published_rows(study, [r for r in study.methods if _available(r)]), ""]
        if not_run or missing or stl_missing:
            parts = []
            if not_run:
                parts.append(f"methods not in this version of mtlagg: {', '.join(not_run)}")
            if missing:
                parts.append(f"{len(missing)} method run(s) not finished")
            if stl_missing:
                parts.append(f"{len(stl_missing)} single-task run(s) not finished")
            lines += [f"**Missing:** {'; '.join(parts)}. `{command}` completes them.", ""]
        figure = assets / f"{study.dataset}.png"
        from benchmarks.report import plot

        plot(report.summary, figure, spec.title)
        lines += [f"![{study.dataset}]({assets.name}/{figure.name})", ""]
        raw = {
            "dataset": study.dataset,
            "protocol": study.protocol,
            "config": {**study.config, "features": study.features},
            "runs": [
                {k: r[k] for k in ("method", "agg_args", "features", "seed", "selected_epoch", "test", "val")}
                | {"train_time_s": r["train_time_s"]}
                for r in done
            ],
            "stl": [
                {k: r[k] for k in ("tasks", "seed", "selected_epoch", "test", "val")}
                | {"train_time_s": r["train_time_s"]}
                for r in stl_done
            ],
        }
        (assets / f"{study.dataset}.json").write_text(json.dumps(raw, indent=1), encoding="utf-8")
    if missing_all:
        lines += ["## Not finished", "", *[f"* {m}" for m in missing_all], "", f"Complete with `{command}`.", ""]
    out.write_text("\n".join(lines), encoding="utf-8")
    return missing_all


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.results", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="docs/results.md", help="the page (default docs/results.md)")
    parser.add_argument("--runs", default="mtlagg-runs/results", help="where the runs are kept")
    parser.add_argument("--data-dir", help="MNIST / Fashion-MNIST files (default: $MTLAGG_DATA_DIR)")
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (one thread each)")
    parser.add_argument("--only", help="run only these datasets, comma-separated (the page shows every study)")
    parser.add_argument("--render-only", action="store_true", help="write the page from the finished runs")
    args = parser.parse_args(argv)
    import os

    data_dir = args.data_dir or os.environ.get("MTLAGG_DATA_DIR")
    studies = [s for s in STUDIES if not args.only or s.dataset in args.only.split(",")]
    runs = Path(args.runs)
    command = "python -m benchmarks.results --out " + args.out
    started = time.perf_counter()
    if not args.render_only:
        run_studies(studies, runs, data_dir, args.jobs)
    missing = render(STUDIES, runs, data_dir, Path(args.out), command)
    print(f"wrote {args.out} ({len(missing)} run(s) missing) in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
