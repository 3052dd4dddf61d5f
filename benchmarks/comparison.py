"""Several runs and their comparison: ``mtlagg-bench compare`` / ``stl`` and the default main job.

``compare`` runs every missing (method, seed) pair (finished runs are reused, interrupted ones
resume), then summarises the test metrics at each run's selected epoch with
:func:`benchmarks.report.summarize` (mean ± std over seeds, Δm% per seed then averaged, MR) and writes
``comparison.{md,csv,json,png}`` under ``<out>/<dataset>/<preset>/<arch>/comparison/``.

Δm% baselines, in this order of preference for the main table:

1. the user's own single-task runs (``mtlagg-bench stl`` with the same protocol: preset, epochs,
   steps, learning rate, batch size, data and model arguments), averaged over the STL seeds found;
2. a reference baseline that the caller passes: single-task runs of exactly that protocol that mtlagg
   measured and ships (the main job uses ``stl_main_job`` of ``benchmarks/baselines/qm9.json``);
3. the published single-task baseline of the dataset (:func:`benchmarks.scores.load_baseline`; NYUv2,
   Cityscapes, QM9, CelebA), cited in the table. It was measured under the *paper* protocol: against a
   ``quick`` run it says how far the run is from the papers' single-task models, not which method is best.

When 1 or 2 and 3 exist, the table against the published baseline is written too (``comparison/vs_published/``).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.progress import Progress, format_seconds
from benchmarks.runs import RunConfig, finished_results, read_json, stl_dir, write_json

if TYPE_CHECKING:
    from benchmarks.scores import Baseline

#: config fields that must agree between a multi-task run and the single-task runs it is compared with
PROTOCOL_FIELDS = (
    "preset",
    "epochs",
    "max_steps",
    "lr",
    "batch_size",
    "weight_decay",
    "data_seed",
    "data_args",
    "model_args",
)


def _run_in_worker(config: dict[str, Any]) -> dict[str, Any]:
    """Process-pool entry point: one run, one torch thread unless the config says otherwise."""
    import torch

    from benchmarks.trainer import train

    torch.set_num_threads(int(config.get("threads") or 1))
    result = train(RunConfig(**config), log=lambda message: None)
    assert result is not None
    return result


def run_all(
    configs: Sequence[RunConfig],
    *,
    jobs: int = 1,
    log: Callable[[str], None] | None = None,
    label: str = "runs",
) -> list[dict[str, Any]]:
    """Run (or reuse) every config; ``jobs > 1`` runs that many in parallel processes.

    Returns the results in the order of ``configs``.
    """
    from benchmarks.trainer import train

    say = log or (lambda message: print(message, file=sys.stderr, flush=True))
    resolved = [c.resolved() for c in configs]
    results: list[dict[str, Any] | None] = [finished_results(c) for c in resolved]
    todo = [i for i, r in enumerate(results) if r is None]
    if len(todo) < len(resolved):
        say(f"{label}: reusing {len(resolved) - len(todo)} finished run(s) under {resolved[0].out}")
    if not todo:
        return results  # type: ignore[return-value]
    progress = Progress(len(todo), label)
    if jobs <= 1 or len(todo) == 1:
        for i in todo:
            results[i] = train(resolved[i])
            progress.advance(f"{resolved[i].method} seed {resolved[i].seed} done")
        return results  # type: ignore[return-value]
    import multiprocessing

    payloads = {i: {**dataclasses.asdict(resolved[i]), "progress": False} for i in todo}
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_run_in_worker, payloads[i]): i for i in todo}
        for future in as_completed(futures):
            i = futures[future]
            results[i] = future.result()
            c = resolved[i]
            progress.advance(f"{c.method}{' ' + c.tasks[0] if c.tasks else ''} seed {c.seed} done")
    return results  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------- STL


def stl_configs(base: RunConfig, seeds: Sequence[int], tasks: Sequence[str] | None = None) -> list[RunConfig]:
    """One single-task run per task and seed, with ``base``'s protocol (HPS with one head)."""
    from benchmarks.datasets import lookup

    spec = lookup(base.dataset)
    names = list(tasks) if tasks else list(spec.task_names)
    return [
        dataclasses.replace(base, method="stl", arch=None, agg_args={}, features=False, arch_args={}, tasks=[t], seed=s)
        for s in seeds
        for t in names
    ]


def write_stl_summary(results: Sequence[Mapping[str, Any]], out: str | Path) -> list[Path]:
    """``<out>/<dataset>/<preset>/stl/seed<k>/results.json``: every task's single-task val and test metrics."""
    by_seed: dict[tuple[str, str, int], list[Mapping[str, Any]]] = {}
    for r in results:
        by_seed.setdefault((r["dataset"], r["preset"], int(r["seed"])), []).append(r)
    paths = []
    for (dataset, preset, seed), runs in sorted(by_seed.items()):
        path = stl_dir(out, dataset, preset, seed) / "results.json"
        previous = read_json(path) if path.is_file() else {"tasks": {}}
        tasks = dict(previous.get("tasks", {}))
        for r in runs:
            tasks[r["tasks"][0]] = {"val": r["val"], "test": r["test"], "selected_epoch": r["selected_epoch"]}
        merged_val = {k: v for t in tasks.values() for k, v in t["val"].items()}
        merged_test = {k: v for t in tasks.values() for k, v in t["test"].items()}
        summary = {"dataset": dataset, "preset": preset, "seed": seed, "tasks": tasks}
        write_json(path, {**summary, "val": merged_val, "test": merged_test})
        paths.append(path)
    return paths


@dataclass
class StlBaseline:
    """The user's single-task test metrics averaged over the STL seeds found, and what was left out."""

    values: dict[str, float]
    seeds: list[int]
    notes: list[str] = field(default_factory=list)


def find_stl(config: RunConfig) -> StlBaseline | None:
    """The user's STL results for ``config``'s dataset and protocol (every task present), or ``None``.

    STL runs of another protocol (``PROTOCOL_FIELDS``) are not used; a note says so.
    """
    from benchmarks.datasets import lookup

    c = config.resolved()
    spec = lookup(c.dataset)
    root = Path(c.out) / c.dataset / c.preset / "stl"
    if not root.is_dir():
        return None
    notes: list[str] = []
    per_seed: list[tuple[int, dict[str, float]]] = []
    for seed_dir in sorted(root.glob("seed*")):
        values: dict[str, float] = {}
        complete = True
        for task in spec.task_names:
            path = seed_dir / task / "results.json"
            cfg_path = seed_dir / task / "config.json"
            if not path.is_file() or not cfg_path.is_file():
                complete = False
                break
            stored = read_json(cfg_path)
            diffs = [k for k in PROTOCOL_FIELDS if stored.get(k) != _jsonish(getattr(c, k))]
            if diffs:
                notes.append(f"{seed_dir / task}: another protocol ({', '.join(diffs)}), not used")
                complete = False
                break
            values.update(read_json(path)["test"])
        if complete:
            per_seed.append((int(seed_dir.name[4:]), values))
    if not per_seed:
        return StlBaseline({}, [], notes) if notes else None
    keys = list(per_seed[0][1])
    mean = {k: sum(v[k] for _, v in per_seed) / len(per_seed) for k in keys}
    return StlBaseline(mean, [s for s, _ in per_seed], notes)


def _jsonish(value: Any) -> Any:
    import json

    return json.loads(json.dumps(value))


# --------------------------------------------------------------------------------------------- compare


@dataclass
class Comparison:
    """What ``compare`` produced."""

    summary: Any  # benchmarks.report.Summary
    markdown: str
    paths: dict[str, Path]
    baseline_note: str
    extra: dict[str, Any] = field(default_factory=dict)


def method_label(method: str, agg_args: Mapping[str, Any], features: bool) -> str:
    from benchmarks.runs import method_tag

    return method_tag(method, agg_args, features)


def uses_gradients(method: str) -> bool:
    """Whether ``method`` looks at task gradients (so that the ``features`` path changes its cost)."""
    from mtlagg.aggregators import Needs, lookup

    if method == "stl":
        return False
    cls = lookup(method)
    return getattr(cls, "needs", Needs.GRAMIAN) > Needs.LOSSES


def compare_configs(
    base: RunConfig,
    methods: Sequence[str],
    seeds: Sequence[int],
    agg_args: Mapping[str, Mapping[str, Any]] | None = None,
    features: bool | str | None = None,
) -> list[RunConfig]:
    """One config per (method, seed). ``features="auto"``: the representation path for the methods that use
    task gradients, the parameter path (identical for them) for loss-only methods."""
    agg_args = agg_args or {}
    configs = []
    for m in methods:
        use = base.features if features is None else (uses_gradients(m) if features == "auto" else bool(features))
        for s in seeds:
            configs.append(
                dataclasses.replace(base, method=m, agg_args=dict(agg_args.get(m, {})), seed=s, features=use)
            )
    return configs


def summarize_runs(
    base: RunConfig,
    results: Sequence[Mapping[str, Any]],
    *,
    title: str | None = None,
    write: bool = True,
    reference: Baseline | None = None,
) -> Comparison:
    """Tables and figure of finished runs (all of one dataset, preset and architecture).

    Δm% is against the user's own single-task runs of the same protocol when they exist, else against
    ``reference`` (single-task runs of exactly this protocol that mtlagg measured and ships, as for the
    main job), else against the published baseline of the dataset (another protocol: stated).
    """
    from benchmarks.datasets import lookup
    from benchmarks.report import RunRecord, summarize, to_markdown, write_all
    from benchmarks.scores import load_baseline, published_datasets, user_baseline

    c = base.resolved()
    spec = lookup(c.dataset)
    higher = dict(spec.higher_is_better)
    records = [
        RunRecord(method_label(r["method"], r["agg_args"], r["features"]), int(r["seed"]), r["test"]) for r in results
    ]
    stl = find_stl(c)
    published = load_baseline(c.dataset) if c.dataset in published_datasets() else None
    notes = list(stl.notes) if stl else []
    own = None
    if stl is not None and stl.values:
        source = f"your single-task runs (mtlagg-bench stl, seeds {', '.join(map(str, stl.seeds))}, same protocol)"
        own = user_baseline(c.dataset, stl.values, higher, source=source)
    primary = own or reference or published
    if own is not None:
        note = ""
    elif reference is not None:
        note = (
            "(A reference shipped with mtlagg, measured on one machine: your own `mtlagg-bench stl` runs with "
            "the same options take precedence once they exist.)"
        )
    elif published is not None:
        note = (
            f"(The published baseline was measured under the paper protocol: against the {c.preset!r} preset, Δm% "
            "measures the distance to the papers' single-task models. `mtlagg-bench stl` with the same options "
            "gives a baseline of this protocol.)"
        )
    else:
        note = "No Δm%: no single-task baseline (run `mtlagg-bench stl` with the same options); MR only."
    summary = summarize(records, higher, primary)
    title = title or f"{spec.title}: {c.preset} preset, {c.arch}"
    markdown = to_markdown(summary)
    out = Path(c.out) / c.dataset / c.preset / str(c.arch) / "comparison"
    paths: dict[str, Path] = {}
    extra: dict[str, Any] = {"notes": notes}
    if write:
        paths = write_all(summary, out, title)
    if (own or reference) is not None and published is not None:
        second = summarize(records, higher, published)
        extra["vs_published"] = second
        if write:
            paths.update({f"vs_published_{k}": v for k, v in write_all(second, out / "vs_published", title).items()})
    return Comparison(summary, markdown, paths, note, extra)


def compare(
    base: RunConfig,
    methods: Sequence[str],
    seeds: Sequence[int],
    *,
    agg_args: Mapping[str, Mapping[str, Any]] | None = None,
    features: bool | str | None = None,
    jobs: int = 1,
    log: Callable[[str], None] | None = None,
    reference: Baseline | None = None,
) -> Comparison:
    configs = compare_configs(base, methods, seeds, agg_args, features)
    started = time.perf_counter()
    results = run_all(configs, jobs=jobs, log=log, label=f"compare {base.dataset}")
    comparison = summarize_runs(base, results, reference=reference)
    comparison.extra["wall_s"] = time.perf_counter() - started
    return comparison


def stl(
    base: RunConfig,
    seeds: Sequence[int],
    *,
    tasks: Sequence[str] | None = None,
    jobs: int = 1,
    log: Callable[[str], None] | None = None,
) -> tuple[list[dict[str, Any]], list[Path]]:
    results = run_all(stl_configs(base, seeds, tasks), jobs=jobs, log=log, label=f"stl {base.dataset}")
    return results, write_stl_summary(results, base.out)


def format_elapsed(seconds: float) -> str:
    return format_seconds(seconds) if math.isfinite(seconds) else "?"
