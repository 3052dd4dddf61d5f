"""``mtlagg-bench``: the benchmark harness's command line.

mtlagg-bench                 the main job: a quick comparison of a few methods on the default data
mtlagg-bench list            datasets, architectures and methods
mtlagg-bench run ...         one training run
mtlagg-bench compare ...     several methods x seeds, then a table and a figure
mtlagg-bench stl ...         single-task baselines
mtlagg-bench speed ...       engine and aggregator timings
mtlagg-bench toy ...         the two-objective toy problem, as a figure
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path


def _first_line(obj: object) -> str:
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return doc.splitlines()[0].strip() if doc else ""


def command_list(args: argparse.Namespace) -> int:
    from mtlagg.aggregators import ALIASES, REGISTRY

    print("Methods (mtlagg.aggregators.REGISTRY):")
    for name in sorted(REGISTRY):
        if name in ALIASES:
            continue
        aliases = sorted(a for a, target in ALIASES.items() if target == name)
        label = name + (f" ({', '.join(aliases)})" if aliases else "")
        print(f"  {label:<28} {_first_line(REGISTRY[name])}")
    for title, loader in (("Architectures", _architectures), ("Datasets", _datasets)):
        entries = loader()
        print(f"\n{title}:")
        if entries is None:
            print("  (not installed in this version)")
            continue
        for name, summary in entries:
            print(f"  {name:<28} {summary}")
    return 0


def _architectures() -> list[tuple[str, str]] | None:
    try:
        from mtlagg_arch import ARCHITECTURES
    except ImportError:
        return None
    return [(name, _first_line(builder)) for name, builder in sorted(ARCHITECTURES.items())]


def _datasets() -> list[tuple[str, str]] | None:
    try:
        from benchmarks.datasets import REGISTRY as DATASETS
    except ImportError:
        return None
    return [(name, getattr(spec, "title", "") or _first_line(spec)) for name, spec in sorted(DATASETS.items())]


def command_speed(args: argparse.Namespace) -> int:
    argv: list[str] = ["--tasks", *map(str, args.tasks), "--repetitions", str(args.repetitions)]
    if args.aggregators:
        from benchmarks import speed_aggregators

        speed_aggregators.main([])
        return 0
    if args.stateful:
        from benchmarks import speed_stateful

        speed_stateful.main(["--tasks", *map(str, args.tasks)])
        return 0
    from benchmarks import speed

    if args.no_memory:
        argv.append("--no-memory")
    speed.main(argv)
    return 0


def command_toy(args: argparse.Namespace) -> int:
    from benchmarks import toy

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    from mtlagg.aggregators import lookup

    for method in methods:
        lookup(method)  # fail early, with close names suggested
    trajectories = toy.run(methods, steps=args.steps, lr=args.lr, scale=args.scale)
    path = toy.plot(trajectories, Path(args.out) / "toy.png", args.scale)
    print(toy.summary(trajectories, args.scale))
    print(f"\nfigure: {path}")
    return 0


DEFAULT_METHODS = "mean,mgda,pcgrad,cagrad,upgrad,nashmtl,famo"
#: the main job (``mtlagg-bench`` without arguments): QM9 ``quick`` on a training subset, one seed
MAIN_JOB = {
    "dataset": "qm9",
    "preset": "quick",
    "methods": DEFAULT_METHODS,
    "seeds": "0",
    "epochs": 4,
    "jobs": 2,
    # the methods that use task gradients aggregate them on the shared representation (MGDA-UB): the exact
    # per-task gradients of the message-passing network cost 10-20 times a plain step on a CPU
    "features": "auto",
    # Δm% against single-task networks of exactly this protocol, measured by mtlagg (benchmarks/baselines/qm9.json)
    "reference": "stl_main_job",
}


def _seeds(text: str) -> list[int]:
    from benchmarks.runs import BadArgument

    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise BadArgument(f"--seeds expects integers separated by commas, e.g. 0,1,2; got {text!r}") from None
    if not seeds:
        raise BadArgument("--seeds is empty")
    return seeds


def _config(args: argparse.Namespace, **overrides: object):
    from benchmarks.runs import RunConfig, parse_assignments

    values = {
        "dataset": args.dataset,
        "arch": getattr(args, "arch", None),
        "preset": args.preset,
        "seed": getattr(args, "seed", 0),
        "features": getattr(args, "features", False),
        "epochs": args.epochs,
        "max_steps": args.max_steps,
        "lr": args.lr,
        "batch_size": args.batch_size,
        "eval_batch_size": args.eval_batch_size,
        "weight_decay": args.weight_decay,
        "data_seed": args.data_seed,
        "data_args": parse_assignments(args.data_arg, "--data-arg"),
        "model_args": parse_assignments(args.model_arg, "--model-arg"),
        "arch_args": parse_assignments(getattr(args, "arch_arg", None), "--arch-arg"),
        "on_nonfinite": args.on_nonfinite,
        "data_dir": args.data_dir,
        "out": args.out,
        "threads": args.threads,
        "device": args.device,
        "progress": not args.quiet,
    }
    values.update(overrides)
    return RunConfig(**values)  # type: ignore[arg-type]


def _print_metrics(title: str, values: dict) -> None:
    print(title)
    for key, value in values.items():
        print(f"  {key:<28} {value:.6g}")


def command_run(args: argparse.Namespace) -> int:
    from benchmarks.runs import parse_assignments
    from benchmarks.trainer import StopRun, Trainer

    config = _config(args, method=args.aggregator, agg_args=parse_assignments(args.agg_arg, "--agg-arg"))
    trainer = Trainer(config, stop_after_epoch=args.stop_after_epoch)
    try:
        results = trainer.run()
    except StopRun as stop:
        print(f"{stop}; run the same command again to resume from {trainer.run_dir / 'checkpoint.pt'}")
        return 0
    assert results is not None
    _print_metrics(f"test metrics at epoch {results['selected_epoch']} (selected on validation):", results["test"])
    print(f"\nrun folder: {trainer.run_dir}")
    return 0


def _split_agg_args(items: list[str] | None, methods: list[str]) -> dict[str, dict]:
    """``--agg-arg cagrad:c=0.4`` -> ``{"cagrad": {"c": 0.4}}`` (a bare ``name=value`` applies to every method)."""
    from benchmarks.methods import resolve
    from benchmarks.runs import BadArgument, parse_assignments

    canonical = {resolve(m)[0]: m for m in methods}
    out: dict[str, dict] = {m: {} for m in canonical}
    for item in items or []:
        head, sep, rest = item.partition(":")
        if sep and "=" not in head:
            name = resolve(head)[0]
            if name not in out:
                raise BadArgument(f"--agg-arg {item!r} names {head!r}, which is not among --aggregators")
            out[name].update(parse_assignments([rest], "--agg-arg"))
        else:
            for m in out:
                out[m].update(parse_assignments([item], "--agg-arg"))
    return out


def _report(comparison, out_note: str = "") -> None:
    print(comparison.markdown)
    if comparison.baseline_note:
        print(comparison.baseline_note)
    second = comparison.extra.get("vs_published")
    if second is not None:
        cells = ", ".join(f"{m} {second.delta_m[m].text(3)}" for m in second.methods)
        print(f"Δm% against the published single-task baseline ({second.baseline}): {cells}")
    for note in comparison.extra.get("notes", []):
        print(f"note: {note}")
    if comparison.paths:
        print("\nfiles:")
        for kind, path in comparison.paths.items():
            print(f"  {kind:<24} {path}")
    if out_note:
        print(out_note)


def command_compare(args: argparse.Namespace) -> int:
    from benchmarks import comparison
    from benchmarks.methods import resolve

    methods = [resolve(m.strip())[0] for m in args.aggregators.split(",") if m.strip()]
    if not methods:
        from benchmarks.runs import BadArgument

        raise BadArgument("--aggregators is empty")
    base = _config(args)
    result = comparison.compare(
        base, methods, _seeds(args.seeds), agg_args=_split_agg_args(args.agg_arg, methods), jobs=args.jobs
    )
    _report(result, f"wall time {comparison.format_elapsed(result.extra['wall_s'])}")
    return 0


def command_stl(args: argparse.Namespace) -> int:
    from benchmarks import comparison

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    results, paths = comparison.stl(_config(args), _seeds(args.seeds), tasks=tasks, jobs=args.jobs)
    for r in results:
        print(f"{r['tasks'][0]} seed {r['seed']}: " + ", ".join(f"{k} {v:.4g}" for k, v in r["test"].items()))
    print("\nsingle-task results (compare finds them):")
    for path in paths:
        print(f"  {path}")
    return 0


def command_main(args: argparse.Namespace) -> int:
    """The main job: a quick comparison on QM9 (from the qm9pack package; nothing to download)."""
    import time

    from benchmarks import comparison
    from benchmarks.methods import resolve

    started = time.perf_counter()
    job = MAIN_JOB
    methods, missing = [], []
    for name in job["methods"].split(","):
        try:
            methods.append(resolve(name)[0])
        except KeyError:
            missing.append(name)
    if missing:
        print(f"(not in this version of mtlagg, left out: {', '.join(missing)})")
    print(
        f"mtlagg-bench main job: {', '.join(methods)} on QM9 (quick preset: 3,000 training molecules, "
        f"{job['epochs']} epochs, seed {job['seeds']}), {job['jobs']} runs in parallel.\n"
        "Data: the qm9pack package (the first call featurises the 130,831 molecules once, one to three minutes, "
        "then caches them).\n",
        flush=True,
    )
    base = _config(
        argparse.Namespace(**{**vars(_main_defaults()), "out": args.out, "quiet": False, "threads": 1}),
        dataset=job["dataset"],
        preset=job["preset"],
        epochs=job["epochs"],
    )
    from benchmarks.scores import load_baseline, published_datasets

    reference = None
    if job.get("reference") and job["dataset"] in published_datasets():
        reference = load_baseline(job["dataset"], job["reference"])
    result = comparison.compare(
        base, methods, _seeds(job["seeds"]), features=job["features"], jobs=job["jobs"], reference=reference
    )
    _report(result)
    print(f"\ntotal time {comparison.format_elapsed(time.perf_counter() - started)}")
    return 0


def _main_defaults() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    _training_options(parser)
    return parser.parse_args(["--dataset", "qm9"])


def _training_options(parser: argparse.ArgumentParser, *, single: bool = False) -> None:
    parser.add_argument("--dataset", required=True, help="a dataset name (mtlagg-bench list)")
    parser.add_argument("--preset", default="quick", choices=["quick", "paper"], help="protocol preset (default quick)")
    parser.add_argument("--epochs", type=int, help="epochs (default: the preset's)")
    parser.add_argument("--max-steps", type=int, help="at most this many optimizer steps per epoch")
    parser.add_argument("--lr", type=float, help="learning rate (default: the preset's)")
    parser.add_argument("--batch-size", type=int, help="training batch size (default: the preset's)")
    parser.add_argument("--eval-batch-size", type=int, help="evaluation batch size")
    parser.add_argument("--weight-decay", type=float, help="weight decay (default: the preset's)")
    parser.add_argument("--data-dir", help="folder with the data files (QM9: not needed with qm9pack installed)")
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the data split / generation (default 0)")
    parser.add_argument("--data-arg", action="append", metavar="NAME=VALUE", help="a loader option (repeatable)")
    parser.add_argument("--model-arg", action="append", metavar="NAME=VALUE", help="a model option (repeatable)")
    parser.add_argument("--out", default="mtlagg-runs", help="where runs are written (default mtlagg-runs)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    parser.add_argument(
        "--on-nonfinite",
        default="raise",
        choices=["raise", "skip", "zero", "ignore"],
        help="NaN / Inf losses or gradients: raise (default), skip the step, zero the task, ignore",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress line")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mtlagg-bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command")

    listing = commands.add_parser("list", help="datasets, architectures and methods")
    listing.set_defaults(handler=command_list)

    speed = commands.add_parser("speed", help="engine and aggregator timings")
    speed.add_argument("--aggregators", action="store_true", help="time every aggregator against TorchJD's")
    speed.add_argument("--stateful", action="store_true", help="time the methods with memory")
    speed.add_argument("--tasks", type=int, nargs="+", default=[2, 10, 40])
    speed.add_argument("--repetitions", type=int, default=15)
    speed.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    speed.set_defaults(handler=command_speed)

    toy = commands.add_parser("toy", help="the two-objective toy problem of the CAGrad / Nash-MTL papers")
    toy.add_argument("--methods", default="mean,mgda,pcgrad,cagrad,upgrad,nashmtl")
    toy.add_argument("--steps", type=int, default=2500)
    toy.add_argument("--lr", type=float, default=1e-2)
    toy.add_argument("--scale", type=float, default=0.1, help="factor on f1 (Nash-MTL uses 0.1; CAGrad 1)")
    toy.add_argument("--out", default="mtlagg-runs/toy")
    toy.set_defaults(handler=command_toy)

    run = commands.add_parser("run", help="one training run")
    _training_options(run)
    run.add_argument("--aggregator", "--method", default="mean", help="a method name (mtlagg-bench list)")
    run.add_argument("--agg-arg", action="append", metavar="NAME=VALUE", help="a method hyper-parameter (repeatable)")
    run.add_argument("--arch", help="architecture (default: hps; mtan for the SegNet datasets)")
    run.add_argument("--arch-arg", action="append", metavar="NAME=VALUE", help="an architecture option (repeatable)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--features", action="store_true", help="aggregate on the shared representation (MGDA-UB)")
    run.add_argument("--stop-after-epoch", type=int, help=argparse.SUPPRESS)  # test hook: interrupt, then resume
    run.set_defaults(handler=command_run)

    compare = commands.add_parser("compare", help="several methods x seeds, then a table and a figure")
    _training_options(compare)
    compare.add_argument("--aggregators", "--methods", default=DEFAULT_METHODS, help="methods, comma-separated")
    compare.add_argument("--seeds", default="0,1,2", help="seeds, comma-separated (default 0,1,2)")
    compare.add_argument(
        "--agg-arg", action="append", metavar="[METHOD:]NAME=VALUE", help="a method hyper-parameter (repeatable)"
    )
    compare.add_argument("--arch", help="architecture (default: hps; mtan for the SegNet datasets)")
    compare.add_argument("--arch-arg", action="append", metavar="NAME=VALUE", help="an architecture option")
    compare.add_argument("--features", action="store_true", help="aggregate on the shared representation (MGDA-UB)")
    compare.add_argument("--jobs", type=int, default=1, help="runs in parallel (processes, one thread each)")
    compare.set_defaults(handler=command_compare)

    stl = commands.add_parser("stl", help="single-task baselines, saved where compare finds them")
    _training_options(stl)
    stl.add_argument("--seeds", default="0", help="seeds, comma-separated (default 0)")
    stl.add_argument("--tasks", help="only these tasks, comma-separated (default: all)")
    stl.add_argument("--jobs", type=int, default=1, help="runs in parallel (processes, one thread each)")
    stl.set_defaults(handler=command_stl)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] | None = getattr(args, "handler", None)
    if handler is None:
        args.out = "mtlagg-runs/main-job"
        handler = command_main
    from benchmarks.datasets import DatasetError
    from benchmarks.methods import MethodError
    from benchmarks.runs import BadArgument, ConfigMismatch
    from benchmarks.zoo import ModelError
    from mtlagg.errors import NonFiniteError

    try:
        return handler(args)
    except KeyError as error:  # unknown names, with suggestions
        print(f"mtlagg-bench: {error.args[0] if error.args else error}", file=sys.stderr)
        return 2
    except (BadArgument, MethodError, ModelError) as error:
        print(f"mtlagg-bench: {error}", file=sys.stderr)
        return 2
    except (DatasetError, ConfigMismatch) as error:  # missing or corrupt data files, a run folder in use
        print(f"mtlagg-bench: {error}", file=sys.stderr)
        return 1
    except NonFiniteError as error:
        print(f"mtlagg-bench: training diverged: {error}", file=sys.stderr)
        return 1
    except (ValueError, TypeError, RuntimeError) as error:  # e.g. a method that cannot run on this dataset
        if os.environ.get("MTLAGG_DEBUG"):
            raise
        print(f"mtlagg-bench: {type(error).__name__}: {error}", file=sys.stderr)
        print("(set MTLAGG_DEBUG=1 to see the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
