"""Comparison tables and figures from finished runs: mean ± std over seeds, Δm% and MR.

Δm% is computed per seed and then averaged (as the papers do), against a single-task baseline
(published, or the user's own ``mtlagg-bench stl`` runs). MR ranks the methods on the seed-mean of
each metric. Standard deviations are sample standard deviations over seeds (``ddof=1``).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.scores import Baseline, mean_rank


@dataclass(frozen=True)
class RunRecord:
    """The test metrics of one finished run at its selected epoch."""

    method: str
    seed: int
    metrics: Mapping[str, float]
    info: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Stat:
    mean: float
    std: float
    n: int

    def text(self, digits: int = 4) -> str:
        if self.n < 2 or math.isnan(self.std):
            return f"{self.mean:.{digits}g}"
        return f"{self.mean:.{digits}g} ± {self.std:.{max(1, digits - 2)}g}"


def stat(values: Sequence[float]) -> Stat:
    n = len(values)
    if n == 0:
        return Stat(float("nan"), float("nan"), 0)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else float("nan")
    return Stat(mean, std, n)


@dataclass
class Summary:
    """One row per method."""

    metric_keys: list[str]
    higher_is_better: dict[str, bool]
    metrics: dict[str, dict[str, Stat]]
    delta_m: dict[str, Stat]
    mean_rank: dict[str, float]
    seeds: dict[str, list[int]]
    baseline: str | None

    @property
    def methods(self) -> list[str]:
        return list(self.metrics)


def summarize(
    records: Sequence[RunRecord],
    higher_is_better: Mapping[str, bool],
    baseline: Baseline | None = None,
) -> Summary:
    if not records:
        raise ValueError("no finished runs to summarise")
    keys = list(higher_is_better)
    methods = list(dict.fromkeys(r.method for r in records))
    metrics: dict[str, dict[str, Stat]] = {}
    deltas: dict[str, Stat] = {}
    seeds: dict[str, list[int]] = {}
    for method in methods:
        runs = [r for r in records if r.method == method]
        seeds[method] = [r.seed for r in runs]
        metrics[method] = {k: stat([float(r.metrics[k]) for r in runs]) for k in keys}
        if baseline is not None:
            deltas[method] = stat([baseline.delta_m(r.metrics) for r in runs])
    table = {m: {k: metrics[m][k].mean for k in keys} for m in methods}
    ranks = mean_rank(table, dict(higher_is_better), keys) if len(methods) > 1 else dict.fromkeys(methods, 1.0)
    return Summary(keys, dict(higher_is_better), metrics, deltas, ranks, seeds, baseline.source if baseline else None)


def to_markdown(summary: Summary) -> str:
    arrows = {k: "↑" if up else "↓" for k, up in summary.higher_is_better.items()}
    header = ["method", "seeds", *[f"{k} {arrows[k]}" for k in summary.metric_keys]]
    if summary.delta_m:
        header.append("Δm% ↓")
    header.append("MR ↓")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in summary.methods:
        cells = [method, str(len(summary.seeds[method]))]
        cells += [summary.metrics[method][k].text() for k in summary.metric_keys]
        if summary.delta_m:
            cells.append(summary.delta_m[method].text(3))
        cells.append(f"{summary.mean_rank[method]:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    if summary.baseline:
        lines.append(f"\nΔm% against: {summary.baseline}")
    return "\n".join(lines)


def to_csv(summary: Summary) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    header = ["method", "seeds"]
    for k in summary.metric_keys:
        header += [f"{k} mean", f"{k} std"]
    header += ["delta_m mean", "delta_m std", "mean_rank"]
    writer.writerow(header)
    for method in summary.methods:
        row: list[Any] = [method, len(summary.seeds[method])]
        for k in summary.metric_keys:
            row += [summary.metrics[method][k].mean, summary.metrics[method][k].std]
        d = summary.delta_m.get(method)
        row += [d.mean if d else "", d.std if d else "", summary.mean_rank[method]]
        writer.writerow(row)
    return buffer.getvalue()


def to_json(summary: Summary) -> dict[str, Any]:
    return {
        "metrics": summary.metric_keys,
        "higher_is_better": summary.higher_is_better,
        "baseline": summary.baseline,
        "methods": {
            m: {
                "seeds": summary.seeds[m],
                "metrics": {k: {"mean": s.mean, "std": s.std} for k, s in summary.metrics[m].items()},
                "delta_m": (
                    {"mean": summary.delta_m[m].mean, "std": summary.delta_m[m].std} if m in summary.delta_m else None
                ),
                "mean_rank": summary.mean_rank[m],
            }
            for m in summary.methods
        },
    }


def write_all(summary: Summary, out: Path, title: str) -> dict[str, Path]:
    """Write ``comparison.md``, ``.csv``, ``.json`` and ``.png`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "markdown": out / "comparison.md",
        "csv": out / "comparison.csv",
        "json": out / "comparison.json",
        "figure": out / "comparison.png",
    }
    paths["markdown"].write_text(f"# {title}\n\n{to_markdown(summary)}\n", encoding="utf-8")
    paths["csv"].write_text(to_csv(summary), encoding="utf-8")
    paths["json"].write_text(json.dumps(to_json(summary), indent=2), encoding="utf-8")
    plot(summary, paths["figure"], title)
    return paths


def _spreads(stats: list[Stat]) -> list[float]:
    """Standard deviations for error bars; 0 where a single seed gives none (no bar is drawn when
    no method has one)."""
    return [0.0 if math.isnan(s.std) else s.std for s in stats]


def plot(summary: Summary, path: Path, title: str) -> Path:
    """Δm% (or MR when there is no baseline) per method, and every metric with its spread over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = summary.methods
    keys = summary.metric_keys
    panels = 1 + len(keys)
    columns = min(4, panels)
    rows = math.ceil(panels / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 2.9 * rows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    palette = [colors[i % len(colors)] for i in range(len(methods))]
    first = flat[0]
    if summary.delta_m:
        values = [summary.delta_m[m].mean for m in methods]
        errors = _spreads([summary.delta_m[m] for m in methods])
        first.bar(methods, values, yerr=errors if any(errors) else None, color=palette, capsize=3)
        first.axhline(0, color="black", linewidth=0.8)
        first.set_title("Δm% vs single-task (lower is better)")
    else:
        first.bar(methods, [summary.mean_rank[m] for m in methods], color=palette)
        first.set_title("mean rank (lower is better)")
    for ax, key in zip(flat[1:], keys):
        values = [summary.metrics[m][key].mean for m in methods]
        errors = _spreads([summary.metrics[m][key] for m in methods])
        ax.bar(methods, values, yerr=errors if any(errors) else None, color=palette, capsize=3)
        low = min(v - e for v, e in zip(values, errors))
        high = max(v + e for v, e in zip(values, errors))
        margin = 0.15 * (high - low) if high > low else abs(high) * 0.05 + 1e-9
        ax.set_ylim(low - margin, high + margin)
        ax.set_title(f"{key} {'↑' if summary.higher_is_better[key] else '↓'}")
    for ax in flat:
        ax.tick_params(axis="x", labelrotation=45, labelsize=8)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
    for ax in flat[panels:]:
        ax.axis("off")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
