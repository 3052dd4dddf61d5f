"""Speed of every aggregator against TorchJD 0.18's version of it, side by side.

Run ``python -m benchmarks.speed_aggregators`` (``--help`` for the options). On the same seeded
float32 ``T x n`` matrix with conflicting rows (a shared direction with coefficients of both signs:
about a third of the pairs conflict), each aggregator and its TorchJD counterpart are timed in
alternation (interleaved repetitions, medians of the process CPU time by default, which a loaded
machine disturbs less than wall-clock time; ``--clock wall`` for wall-clock), and the cosine between the two
directions is reported. TorchJD's NashMTL is stateful: it is timed in its steady state (warm-started
from its previous solution on the same matrix, its cvxpy problem already built), which favours it;
mtlagg's NashMTL solves from scratch every call.

Prints a markdown table per number of tasks.
"""

from __future__ import annotations

import argparse
import math
import statistics
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from benchmarks.speed import CLOCKS, clock_for
from mtlagg.aggregators import (
    IMTLG,
    MGDA,
    AlignedMTL,
    CAGrad,
    ConFIG,
    DualProj,
    FairGrad,
    GradDrop,
    Krum,
    LogMGDA,
    Mean,
    NashMTL,
    PCGrad,
    Random,
    Sum,
    TrimmedMean,
    UPGrad,
    set_solver_device,
)
from mtlagg.solvers import numba_enabled

Factory = Callable[[int], Callable[[Tensor], Tensor]]


@dataclass(frozen=True)
class Method:
    name: str
    ours: Factory
    theirs: Factory | None
    #: the directions can be compared (deterministic methods with the same definition).
    comparable: bool = True
    #: > 0: every call gets a new matrix, the base one plus this relative Gaussian perturbation of
    #: the rows (a training-like sequence of close Jacobians, for warm-started solvers).
    drift: float = 0.0
    #: the rank of the matrix (``None``: full rank, ``min(T, n)``); a rank-deficient version of the
    #: same kind of matrix (see :func:`conflicting_matrix`).
    rank: int | None = None


def _torchjd() -> object | None:
    try:
        import torchjd.aggregation as tj
    except ImportError:  # pragma: no cover - torchjd is a test/benchmark dependency
        return None
    return tj


def methods() -> list[Method]:
    """The aggregators timed, with their TorchJD counterparts (same hyperparameters)."""
    tj = _torchjd()

    def theirs(build: Callable[[object, int], object]) -> Factory | None:
        if tj is None:
            return None
        return lambda T: build(tj, T)  # type: ignore[return-value]

    return [
        Method("Mean", lambda T: Mean(), theirs(lambda tj, T: tj.Mean())),
        Method("Sum", lambda T: Sum(), theirs(lambda tj, T: tj.Sum())),
        Method("Random", lambda T: Random(), theirs(lambda tj, T: tj.Random()), comparable=False),
        Method("MGDA", lambda T: MGDA(), theirs(lambda tj, T: tj.MGDA())),
        Method("PCGrad", lambda T: PCGrad(), theirs(lambda tj, T: tj.PCGrad()), comparable=False),
        Method("GradDrop", lambda T: GradDrop(), theirs(lambda tj, T: tj.GradDrop()), comparable=False),
        Method("IMTLG", lambda T: IMTLG(), theirs(lambda tj, T: tj.IMTLG())),
        Method("CAGrad", lambda T: CAGrad(0.5, rescale=0), theirs(lambda tj, T: tj.CAGrad(c=0.5))),
        Method("NashMTL", lambda T: NashMTL(max_norm=1.0), theirs(lambda tj, T: tj.NashMTL(n_tasks=T, max_norm=1.0))),
        Method("AlignedMTL", lambda T: AlignedMTL(), theirs(lambda tj, T: tj.AlignedMTL())),
        Method("UPGrad", lambda T: UPGrad(), theirs(lambda tj, T: tj.UPGrad())),
        Method(
            "UPGrad, warm start, drifting J",
            lambda T: UPGrad(warm_start=True),
            theirs(lambda tj, T: tj.UPGrad()),
            drift=0.02,
        ),
        Method("UPGrad, rank 64", lambda T: UPGrad(), theirs(lambda tj, T: tj.UPGrad()), rank=64),
        Method("DualProj", lambda T: DualProj(), theirs(lambda tj, T: tj.DualProj())),
        Method("ConFIG", lambda T: ConFIG(), theirs(lambda tj, T: tj.ConFIG())),
        Method("Krum", lambda T: Krum(1, 2), theirs(lambda tj, T: tj.Krum(n_byzantine=1, n_selected=2))),
        Method("TrimmedMean", lambda T: TrimmedMean(1), theirs(lambda tj, T: tj.TrimmedMean(1))),
        Method("FairGrad", lambda T: FairGrad(2.0), theirs(lambda tj, T: tj.FairGrad(alpha=2.0))),
        Method("LogMGDA", lambda T: _with_losses(LogMGDA(), T), None),
    ]


def _with_losses(aggregator: Callable[..., Tensor], T: int) -> Callable[[Tensor], Tensor]:
    losses = torch.linspace(0.5, 2.0, T)
    return lambda J: aggregator(J, losses=losses)


def conflicting_matrix(
    T: int, n: int, seed: int = 0, dtype: torch.dtype = torch.float32, rank: int | None = None
) -> Tensor:
    """``T x n`` rows with a shared unit direction of coefficient in ``[-0.5, 1]`` (mixed signs: about
    a third of the pairs conflict), unit-norm noise for the rest, and log-normal norms.

    With ``rank``, the noise lies in a random subspace of dimension ``rank - 1`` (so that the matrix,
    with the shared direction, has rank ``rank`` when ``T >= rank``): the Gramian of a batch of
    per-example gradients taken with respect to a narrow representation (IWRM with ``features=``).
    """
    g = torch.Generator().manual_seed(seed)
    common = torch.randn(n, generator=g, dtype=torch.float64)
    common = common / common.norm()
    coefficient = torch.linspace(-0.5, 1.0, T, dtype=torch.float64)[torch.randperm(T, generator=g)]
    if rank is None or rank >= min(T, n):
        noise = torch.randn(T, n, generator=g, dtype=torch.float64)
    else:
        if rank < 2:
            raise ValueError(f"rank must be at least 2, got {rank}")
        basis = torch.randn(rank - 1, n, generator=g, dtype=torch.float64)
        noise = torch.randn(T, rank - 1, generator=g, dtype=torch.float64) @ basis
    noise = noise / noise.norm(dim=1, keepdim=True)
    rows = coefficient[:, None] * common + (1 - coefficient**2).sqrt()[:, None] * noise
    norms = torch.exp(0.5 * torch.randn(T, 1, generator=g, dtype=torch.float64))
    return (norms * rows).to(dtype)


@dataclass
class Row:
    method: str
    tasks: int
    ours_ms: float
    theirs_ms: float | None
    cosine: float | None


def _timed(call: Callable[[], object], clock: Callable[[], float]) -> float:
    start = clock()
    call()
    return clock() - start


def run(
    tasks: Sequence[int] = (40, 10),
    n: int = 2000,
    repeats: int = 30,
    warmup: int = 3,
    only: Sequence[str] | None = None,
    seed: int = 0,
    clock: str = "cpu",
    device: str = "cpu",
) -> list[Row]:
    """Time every method (and its TorchJD version) at each ``T``; interleaved, medians. With
    ``device="cuda"`` the matrices live on the GPU and the clock is the wall clock after a sync."""
    selected = [m for m in methods() if only is None or m.name.lower() in {o.lower() for o in only}]
    timer = CLOCKS[clock_for(device, clock)]
    rows: list[Row] = []
    for T in tasks:
        J = conflicting_matrix(T, n, seed)
        matrices = {rank: conflicting_matrix(T, n, seed, rank=rank).to(device) for rank in {m.rank for m in selected}}
        g = torch.Generator().manual_seed(seed + 1)
        noise = [
            (torch.randn(J.shape, generator=g) * (J.norm(dim=1, keepdim=True) / math.sqrt(n))).to(device)
            for _ in range(16)
        ]
        pairs = []
        for method in selected:
            if method.rank is not None and method.rank >= min(T, n):
                continue  # (the full-rank row)
            ours = method.ours(T)
            theirs = method.theirs(T) if method.theirs is not None else None
            pairs.append((method, ours, theirs))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # cvxpy's (non-DPP problem) inside TorchJD's NashMTL
            for method, ours, theirs in pairs:
                for _ in range(warmup):
                    ours(matrices[method.rank])
                    if theirs is not None:
                        theirs(matrices[method.rank])
            times: dict[str, tuple[list[float], list[float]]] = {m.name: ([], []) for m, _, _ in pairs}
            for r in range(repeats):
                for method, ours, theirs in pairs:
                    M = matrices[method.rank]
                    M = M + method.drift * noise[r % len(noise)] if method.drift else M
                    times[method.name][0].append(_timed(lambda ours=ours, M=M: ours(M), timer))
                    if theirs is not None:
                        times[method.name][1].append(_timed(lambda theirs=theirs, M=M: theirs(M), timer))
            for method, ours, theirs in pairs:
                cosine = None
                if theirs is not None and method.comparable:
                    a, b = ours(matrices[method.rank]).double(), theirs(matrices[method.rank]).double()
                    cosine = float(a @ b / (a.norm() * b.norm())) if a.norm() > 0 and b.norm() > 0 else math.nan
                ours_times, their_times = times[method.name]
                rows.append(
                    Row(
                        method.name,
                        T,
                        1e3 * statistics.median(ours_times),
                        1e3 * statistics.median(their_times) if their_times else None,
                        cosine,
                    )
                )
    return rows


def format_table(rows: Sequence[Row], n: int) -> str:
    """Markdown tables, one per number of tasks."""
    lines: list[str] = []
    for T in dict.fromkeys(r.tasks for r in rows):
        lines += [
            f"**T = {T}** (float32 {T} x {n} matrix with conflicting rows)",
            "",
            "| method | mtlagg (ms) | TorchJD 0.18 (ms) | mtlagg / TorchJD | cosine |",
            "|---|---:|---:|---:|---:|",
        ]
        for r in rows:
            if r.tasks != T:
                continue
            theirs = f"{r.theirs_ms:.3f}" if r.theirs_ms is not None else "-"
            ratio = f"{r.ours_ms / r.theirs_ms:.2f}" if r.theirs_ms else "-"
            cosine = f"{r.cosine:.6f}" if r.cosine is not None else "-"
            lines.append(f"| {r.method} | {r.ours_ms:.3f} | {theirs} | {ratio} | {cosine} |")
        lines.append("")
    return "\n".join(lines)


def _kernel_description() -> str:
    """Which iterations mtlagg's dual-cone projections run on the CPU (see mtlagg.solvers.compiled)."""
    if not numba_enabled():
        return "dual-cone iterations in numpy (numba not in use)"
    import numba

    return f"dual-cone iterations compiled by numba {numba.__version__}"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[40, 10], help="numbers of tasks (default 40 10)")
    parser.add_argument("--n", type=int, default=2000, help="number of columns (default 2000)")
    parser.add_argument("--repeats", type=int, default=30, help="interleaved repetitions (default 30)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls of each method first (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--only", nargs="+", default=None, help="method names to time (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--clock", choices=sorted(CLOCKS), default="cpu", help="cpu: process CPU time (default), wall: perf_counter"
    )
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:i]: matrices on the GPU, synced clock")
    parser.add_argument(
        "--solver-device",
        choices=["cpu", "input"],
        default="cpu",
        help="where mtlagg's small T x T solves run when the matrix is on a GPU (mtlagg.aggregators.set_solver_device)",
    )
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    set_solver_device(args.solver_device)
    clock = clock_for(args.device, args.clock)
    tj = _torchjd()
    version = getattr(tj, "__version__", None) if tj is not None else None
    if tj is not None and version is None:
        from importlib.metadata import version as package_version

        version = package_version("torchjd")
    where = torch.cuda.get_device_name(args.device) if clock == "cuda" else "CPU"
    print(
        f"torch {torch.__version__}, {where}, {torch.get_num_threads()} thread(s), "
        f"TorchJD {version or 'not installed'}, {_kernel_description()}, "
        f"{args.repeats} interleaved repetitions, medians of {clock} time"
        + (f", mtlagg's T x T solves on the {args.solver_device} device" if clock == "cuda" else "")
    )
    print()
    rows = run(
        args.tasks, args.n, args.repeats, args.warmup, only=args.only, seed=args.seed, clock=clock, device=args.device
    )
    print(format_table(rows, args.n))


if __name__ == "__main__":
    main()
