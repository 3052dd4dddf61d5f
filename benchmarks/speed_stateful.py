"""Speed of the methods with memory, side by side with their baselines, in one run.

Workload (the core speed workload): a shared MLP 128-512-512-512 (ReLU), batch 256, ``T`` linear
heads 512 -> 1 with MSE, ``T`` in {2, 10, 40}; one step = forward + losses + ``mtlagg.backward``
(``.grad`` zeroed before, no optimizer step). Every method is timed against its baseline in the
same round-robin loop (interleaved repetitions, medians), so machine noise hits both alike:

* loss-weighting methods vs plain ``sum(losses).backward()`` (target: <= 1.15 x at T = 40);
* gradient methods with memory vs the stateless aggregator with the same needs (target: <= 1.1 x):
  Gramian-based ones vs ``Mean`` with ``compute_gramian=True`` (the per-task gradients and their
  Gramian, nothing else), ``CRMOGM(MGDA)`` vs ``MGDA``, Jacobian-based ones vs the mean of the
  Jacobian's rows through the same Jacobian path;
* multi-batch and bilevel methods: absolute cost, and the ratio to a plain backward (their work is
  several passes by design).

Run: ``python -m benchmarks.speed_stateful [--tasks 2 10 40] [--reps 10]``; prints a markdown table.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from typing import ClassVar

import torch
from torch import Tensor, nn

import mtlagg
from benchmarks.speed import CLOCKS
from mtlagg.aggregators import (
    CRMOGM,
    DBMTL,
    DWA,
    FAMO,
    GLS,
    IMTL,
    IMTLL,
    MGDA,
    PCD,
    PIVRG,
    STCH,
    UW,
    Aggregator,
    AggregatorInput,
    ExcessMTL,
    GO4Align,
    GradNorm,
    GradVac,
    Mean,
    MoCo,
    MoDo,
    Needs,
    SDMGrad,
)
from mtlagg.bilevel import FORUM, MOML, AutoLambda


class JacobianMean(Aggregator):
    """Stateless baseline with Jacobian needs: the mean of the rows."""

    needs: ClassVar[Needs] = Needs.JACOBIAN

    def compute_direction(self, inputs: AggregatorInput) -> Tensor:
        assert inputs.jacobian is not None
        return inputs.jacobian.mean(dim=0)


class Net(nn.Module):
    """The shared MLP and ``T`` linear heads."""

    def __init__(self, num_tasks: int) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Linear(128, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU()
        )
        self.heads = nn.ModuleList(nn.Linear(512, 1) for _ in range(num_tasks))

    def forward(self, x: Tensor) -> list[Tensor]:
        h = self.trunk(x)
        return [head(h) for head in self.heads]


class Workload:
    def __init__(self, num_tasks: int, batch: int = 256, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.model = Net(num_tasks)
        self.trunk = self.model.trunk
        self.heads = self.model.heads
        self.x = torch.randn(batch, 128)
        self.targets = [torch.randn(batch, 1) for _ in range(num_tasks)]
        self.batches = [(torch.randn(batch, 128), [torch.randn(batch, 1) for _ in range(num_tasks)]) for _ in range(3)]

    def losses(self, batch=None) -> list[Tensor]:
        x, targets = batch if batch is not None else (self.x, self.targets)
        return [nn.functional.mse_loss(p, y) for p, y in zip(self.model(x), targets)]

    def zero(self) -> None:
        for p in self.model.parameters():
            p.grad = None


def loss_fn(forward: Callable, batch) -> list[Tensor]:
    x, targets = batch
    h = forward(x)
    return [nn.functional.mse_loss(p, y) for p, y in zip(h, targets)]


def make_steps(w: Workload) -> dict[str, tuple[str, Callable[[], None], str]]:
    """name -> (kind, step function, baseline name)."""
    shared = list(w.trunk.named_parameters())
    steps: dict[str, tuple[str, Callable[[], None], str]] = {}

    def plain() -> None:
        w.zero()
        sum(w.losses()).backward()

    steps["plain backward"] = ("baseline", plain, "")

    def engine(aggregator, **kwargs) -> Callable[[], None]:
        def step() -> None:
            w.zero()
            mtlagg.backward(w.losses(), shared, aggregator, **kwargs)

        return step

    steps["Mean + Gramian"] = ("baseline", engine(Mean(), compute_gramian=True), "")
    steps["MGDA"] = ("baseline", engine(MGDA()), "")
    steps["Jacobian mean"] = ("baseline", engine(JacobianMean()), "")

    steps["Mean (engine, loss path)"] = ("loss weighting", engine(Mean()), "plain backward")
    for aggregator in (UW(), DWA(), GLS(), IMTLL(), STCH(nadir=torch.ones(len(w.heads)), warmup_epochs=0)):
        steps[type(aggregator).__name__] = ("loss weighting", engine(aggregator), "plain backward")
    steps["GO4Align"] = ("loss weighting", engine(GO4Align(num_groups=2)), "plain backward")

    famo = FAMO()

    def famo_step() -> None:
        w.zero()
        result = mtlagg.backward(w.losses(), shared, famo)
        famo.update(result.losses * 0.99)  # the logit update alone (no extra forward)

    def famo_full() -> None:
        w.zero()
        mtlagg.backward(w.losses(), shared, famo_b)
        with torch.no_grad():
            famo_b.update(w.losses())  # with the extra forward on the same batch

    famo_b = FAMO()
    steps["FAMO"] = ("loss weighting", famo_step, "plain backward")
    steps["FAMO + update forward"] = ("loss weighting", famo_full, "plain backward")

    for aggregator in (GradNorm(), IMTL(), PCD(), PIVRG()):
        steps[type(aggregator).__name__] = ("memory (Gramian)", engine(aggregator), "Mean + Gramian")
    steps["CRMOGM(MGDA)"] = ("memory (Gramian)", engine(CRMOGM(MGDA())), "MGDA")
    steps["GradVac (whole)"] = ("memory (Jacobian)", engine(GradVac()), "Jacobian mean")
    steps["GradVac (layer)"] = ("memory (Jacobian)", engine(GradVac(group_type="layer")), "Jacobian mean")
    for aggregator in (MoCo(), DBMTL(), ExcessMTL()):
        steps[type(aggregator).__name__] = ("memory (Jacobian)", engine(aggregator), "Jacobian mean")

    for aggregator in (SDMGrad(), MoDo()):

        def multi(aggregator=aggregator) -> None:
            w.zero()
            losses = [w.losses(b) for b in w.batches[: aggregator.num_batches]]
            mtlagg.multibatch_backward(losses, shared, aggregator)

        steps[type(aggregator).__name__] = ("multi-batch (3 batches)", multi, "plain backward")

    train, val = w.batches[0], w.batches[1]
    for method in (MOML(), AutoLambda(inner_lr=1e-3), FORUM()):

        def bilevel(method=method) -> None:
            w.zero()
            method.step(w.model, loss_fn, train, val)

        steps[type(method).__name__] = ("bilevel", bilevel, "plain backward")
    return steps


TARGETS = {"loss weighting": 1.15, "memory (Gramian)": 1.1, "memory (Jacobian)": 1.1}


def measure(num_tasks: int, reps: int, names: list[str] | None, clock: str = "wall") -> list[dict]:
    now = CLOCKS[clock]
    w = Workload(num_tasks)
    steps = make_steps(w)
    if names:
        keep = set(names) | {steps[n][2] for n in names if n in steps} | {"plain backward"}
        steps = {k: v for k, v in steps.items() if k in keep}
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _, step, _ in steps.values():  # warm-up (also fills the methods' state)
        step()
        step()
    for _ in range(reps):
        for name, (_, step, _) in steps.items():
            start = now()
            step()
            times[name].append(now() - start)
    medians = {name: statistics.median(values) * 1e3 for name, values in times.items()}
    rows = []
    for name, (kind, _, baseline) in steps.items():
        if kind == "baseline":
            continue
        ratio = medians[name] / medians[baseline]
        target = TARGETS.get(kind)
        rows.append(
            {
                "T": num_tasks,
                "method": name,
                "kind": kind,
                "ms": medians[name],
                "baseline": baseline,
                "baseline_ms": medians[baseline],
                "ratio": ratio,
                "target": target,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[2, 10, 40])
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--methods", nargs="*", default=None, help="only these rows (names as in the table)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall: perf_counter (default); cpu: the process's CPU time, steadier on a loaded machine (one thread)",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.clock} clock; "
        f"medians of {args.reps} interleaved reps\n"
    )
    print("| T | method | kind | ms / step | baseline | baseline ms | ratio | target |")
    print("|---|---|---|---|---|---|---|---|")
    for T in args.tasks:
        for row in measure(T, args.reps, args.methods, args.clock):
            target = (
                ""
                if row["target"] is None
                else f"<= {row['target']:.2f}" + (" ok" if row["ratio"] <= row["target"] else " MISSED")
            )
            if row["target"] is not None and max(args.tasks) != T and row["kind"] == "loss weighting":
                target = f"({target})"
            print(
                f"| {row['T']} | {row['method']} | {row['kind']} | {row['ms']:.1f} | {row['baseline']} | "
                f"{row['baseline_ms']:.1f} | {row['ratio']:.2f} | {target} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
