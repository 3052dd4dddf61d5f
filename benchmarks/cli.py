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
        from mtlagg_arch import ARCHITECTURES  # type: ignore[attr-defined]
    except ImportError:
        return None
    return [(name, _first_line(builder)) for name, builder in sorted(ARCHITECTURES.items())]


def _datasets() -> list[tuple[str, str]] | None:
    try:
        from benchmarks.datasets import DATASETS  # type: ignore[attr-defined]
    except ImportError:
        return None
    return [(name, getattr(spec, "summary", "") or _first_line(spec)) for name, spec in sorted(DATASETS.items())]


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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 0
    try:
        return handler(args)
    except KeyError as error:  # unknown names, with suggestions
        print(f"mtlagg-bench: {error.args[0]}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
