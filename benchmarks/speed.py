"""Speed and memory of one multi-task training step: mtlagg vs TorchJD vs a plain backward.

Workload (the core issue's): a shared MLP 128-512-512-512 (ReLU), batch 256, ``T`` linear heads with
MSE losses. One step = ``zero_grad`` + forward + losses + backward (+ aggregation); no optimizer step.

Timing: every method has its own copy of the model, methods are interleaved round-robin within each
repetition after a global warm-up, and the table reports medians (the machine is noisy: compare the
ratios, which come from one run). Memory: the peak RSS increase over three steps, each method in a
fresh subprocess (RSS includes allocator slack; only ratios are meaningful).

Run ``python -m benchmarks.speed`` (or ``mtlagg-bench speed``).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

import mtlagg
from mtlagg.aggregators import Mean, UPGrad

BATCH = 256


class Workload(nn.Module):
    def __init__(self, num_tasks: int) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Linear(128, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU()
        )
        self.heads = nn.ModuleList(nn.Linear(512, 1) for _ in range(num_tasks))

    def losses(self, x: Tensor, y: Tensor) -> tuple[Tensor, list[Tensor]]:
        z = self.trunk(x)
        return z, [((head(z).squeeze(-1) - y[:, i]) ** 2).mean() for i, head in enumerate(self.heads)]


Step = Callable[[Workload, Tensor, Tensor], None]


def _plain(model: Workload, x: Tensor, y: Tensor) -> None:
    _, losses = model.losses(x, y)
    torch.stack(losses).sum().backward()


def _mtlagg(aggregator_factory: Callable[[], mtlagg.Aggregator], **kwargs: object) -> Step:
    aggregator = aggregator_factory()

    def step(model: Workload, x: Tensor, y: Tensor) -> None:
        z, losses = model.losses(x, y)
        extra = dict(kwargs)
        if extra.pop("features", False):
            extra["features"] = z
        mtlagg.backward(losses, model.trunk.parameters(), aggregator, **extra)  # type: ignore[arg-type]

    return step


def _torchjd_upgrad() -> Step:
    from torchjd.aggregation import UPGrad as TorchjdUPGrad
    from torchjd.autojac import jac_to_grad, mtl_backward

    aggregator = TorchjdUPGrad()

    def step(model: Workload, x: Tensor, y: Tensor) -> None:
        z, losses = model.losses(x, y)
        mtl_backward(losses, features=z)
        jac_to_grad(list(model.trunk.parameters()), aggregator)

    return step


def methods() -> dict[str, Callable[[], Step]]:
    """Name -> factory of a step function (each factory builds its own aggregator)."""
    return {
        "plain sum(losses).backward()": lambda: _plain,
        "torchjd mtl_backward + jac_to_grad(UPGrad)": _torchjd_upgrad,
        "mtlagg UPGrad (exact)": lambda: _mtlagg(UPGrad),
        "mtlagg UPGrad (exact, vmap over all tasks)": lambda: _mtlagg(UPGrad, chunk_size=1 << 20),
        "mtlagg UPGrad (features=)": lambda: _mtlagg(UPGrad, features=True),
        "mtlagg Mean (loss-only)": lambda: _mtlagg(Mean),
    }


def _data(num_tasks: int) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(BATCH, 128, generator=generator), torch.randn(BATCH, num_tasks, generator=generator)


def _cuda_wall() -> float:
    """Wall-clock time once the GPU's queued work is done (kernels run asynchronously)."""
    torch.cuda.synchronize()
    return time.perf_counter()


#: The clocks of every speed benchmark: ``"cpu"`` counts the CPU time of this process (all its
#: threads), which a loaded machine disturbs far less than wall-clock time; ``"wall"`` is
#: ``time.perf_counter``; ``"cuda"`` is wall-clock time read after ``torch.cuda.synchronize()`` (the
#: clock of every run with ``--device cuda``).
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time, "cuda": _cuda_wall}


def clock_for(device: str, clock: str) -> str:
    """The clock a run on ``device`` uses: ``"cuda"`` on a GPU (CPU time does not see the kernels)."""
    on_gpu = torch.device(device).type == "cuda"
    if (on_gpu or clock == "cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {device} --clock {clock}: CUDA is not available on this machine")
    return "cuda" if on_gpu else clock


def time_steps(
    num_tasks: int, names: list[str], repetitions: int, clock: str = "wall", device: str = "cpu"
) -> dict[str, float]:
    """Median seconds per step of each method, interleaved round-robin.

    ``clock="cpu"`` measures the process's CPU time, which other jobs on a shared machine disturb
    far less than wall-clock time (use it with one thread).
    """
    now = CLOCKS[clock_for(device, clock)]
    torch.manual_seed(0)
    base = Workload(num_tasks).to(device)
    x, y = (t.to(device) for t in _data(num_tasks))
    factories = methods()
    runners = {name: (factories[name](), copy.deepcopy(base)) for name in names}
    for _ in range(2):  # warm-up
        for step, model in runners.values():
            model.zero_grad(set_to_none=True)
            step(model, x, y)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(repetitions):
        for name, (step, model) in runners.items():
            model.zero_grad(set_to_none=True)
            start = now()
            step(model, x, y)
            samples[name].append(now() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS counter (VmHWM) to the current RSS (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")


def memory_probe(name: str, num_tasks: int, device: str = "cpu") -> int:
    """Peak memory increase (KiB) over three steps of one method after a warm-up step, in this
    process: of the RSS on the CPU, of the CUDA caching allocator's allocated bytes on a GPU."""
    torch.manual_seed(0)
    model = Workload(num_tasks).to(device)
    x, y = (t.to(device) for t in _data(num_tasks))
    with torch.no_grad():
        model.losses(x, y)
    step = methods()[name]()
    model.zero_grad(set_to_none=True)
    step(model, x, y)  # one warm-up step: lazy imports and first-call caches are not the method's memory
    model.zero_grad(set_to_none=True)
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        _reset_peak_rss()
        before = _status_kib("VmRSS")
    for _ in range(3):
        model.zero_grad(set_to_none=True)
        step(model, x, y)
    if cuda:
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) // 1024
    return _status_kib("VmHWM") - before


def measure_memory(name: str, num_tasks: int, device: str = "cpu") -> float:
    """Peak memory increase in MB (RSS, or allocated CUDA memory), in a fresh subprocess.

    glibc's dynamic mmap threshold makes RSS depend on the allocation history; a fixed threshold
    (``MALLOC_MMAP_THRESHOLD_``) returns every large buffer to the system when it is freed, so the
    peak RSS tracks the peak of live memory and repeats from run to run.
    """
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    probe = ["--memory-probe", name, "--tasks", str(num_tasks), "--device", device]
    output = subprocess.run(
        [sys.executable, "-m", "benchmarks.speed", *probe],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])["kib"] / 1024


def engine_table(
    tasks: list[int], repetitions: int, with_memory: bool, clock: str = "wall", device: str = "cpu"
) -> str:
    names = list(methods())
    plain, reference = names[0], names[1]
    lines = [
        "| T | method | ms / step | × plain | × torchjd |" + (" peak MB | mem × torchjd |" if with_memory else ""),
        "|---|---|---|---|---|" + ("---|---|" if with_memory else ""),
    ]
    for T in tasks:
        times = time_steps(T, names, repetitions, clock, device)
        memory = {name: measure_memory(name, T, device) for name in names} if with_memory else {}
        for name in names:
            row = f"| {T} | {name} | {1000 * times[name]:.1f} | {times[name] / times[plain]:.2f} | "
            row += f"{times[name] / times[reference]:.2f} |"
            if with_memory:
                ratio = memory[name] / memory[reference] if memory[reference] > 0 else float("nan")
                row += f" {memory[name]:.0f} | {ratio:.2f} |"
            lines.append(row)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, nargs="+", default=[2, 10, 40])
    parser.add_argument("--repetitions", type=int, default=15)
    parser.add_argument("--no-memory", action="store_true", help="skip the (slower) memory measurements")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall", help="wall-clock or process CPU time")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:i]: the wall clock after a sync")
    parser.add_argument("--memory-probe", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_probe is not None:
        print(json.dumps({"kib": memory_probe(args.memory_probe, args.tasks[0], args.device)}))
        return
    clock = clock_for(args.device, args.clock)
    where = torch.cuda.get_device_name(args.device) if clock == "cuda" else "CPU"
    print(
        f"torch {torch.__version__}, {where}, {torch.get_num_threads()} thread(s), {clock} clock, batch {BATCH}, "
        f"MLP 128-512-512-512, medians of {args.repetitions} interleaved repetitions"
    )
    print(engine_table(args.tasks, args.repetitions, not args.no_memory, clock, args.device))


if __name__ == "__main__":
    main()
