"""One training run of ``mtlagg-bench``: data, model, method, epochs, model selection, checkpoints.

``train(config)`` (or ``Trainer(config).run()``) trains the model of ``config.dataset``'s protocol with
``config.method`` and returns the results. Per epoch it trains, evaluates the validation and test
splits with the dataset's metric objects, appends a JSON line to ``log.jsonl`` and writes
``checkpoint.pt``. At the end it writes ``results.json``.

**Model selection** uses validation data only: the selected epoch minimises the Δm% of the validation
metrics against the validation metrics of the run's *first* epoch,

    score_e = (100 / S) Σ_s (-1)^{δ_s} (V_{e,s} - V_{1,s}) / V_{1,s}    (δ_s = 1 when higher is better),

(a fixed per-run normaliser, so a run never depends on other runs; metrics whose first-epoch value is
0 are left out; ties go to the earlier epoch). The reported results are the *test* metrics of the
selected epoch; test metrics never influence training or selection.

**Determinism and resume.** Python, numpy and torch are seeded with ``config.seed``; the training
loaders' shuffling comes from their own seeded generators. The checkpoint holds the model, the
optimizer, the scheduler, the method's ``state_dict()``, every RNG state (python, numpy, torch, the
loaders' generators), the epoch and the selection bookkeeping. Running the same config again
resumes after the last finished epoch and ends with exactly the numbers of an uninterrupted run
(same machine, same thread count). Each epoch starts fresh loader iterators, so the state at an
epoch boundary is complete.
"""

from __future__ import annotations

import inspect
import math
import random
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from benchmarks import methods, zoo
from benchmarks.progress import Progress, format_seconds
from benchmarks.runs import (
    RunConfig,
    check_config,
    load_checkpoint,
    read_json,
    save_checkpoint,
    write_json,
)

CHECKPOINT_VERSION = 1
SELECTION = "val Δm% vs the run's first-epoch validation metrics (lower is better)"


class StopRun(Exception):
    """Raised by the ``stop_after_epoch`` test hook after the checkpoint of that epoch is written."""


# --------------------------------------------------------------------------------------------- helpers


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def to_device(obj: Any, device: torch.device) -> Any:
    if device.type == "cpu":
        return obj
    if isinstance(obj, torch.Tensor) or hasattr(obj, "to"):
        return obj.to(device)
    if isinstance(obj, Mapping):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


def delta_terms(
    values: Mapping[str, float], reference: Mapping[str, float], higher_is_better: Mapping[str, bool]
) -> dict[str, float]:
    """``100 (-1)^δ (V - R) / R`` per metric with a finite non-zero reference (``inf`` for a non-finite value)."""
    out = {}
    for key, ref in reference.items():
        if not math.isfinite(ref) or ref == 0.0:
            continue
        value = values.get(key, float("nan"))
        if not math.isfinite(value):
            out[key] = math.inf
            continue
        sign = -1.0 if higher_is_better[key] else 1.0
        out[key] = 100.0 * sign * (value - ref) / ref
    return out


def selection_score(
    values: Mapping[str, float], reference: Mapping[str, float], higher_is_better: Mapping[str, bool]
) -> float:
    terms = delta_terms(values, reference, higher_is_better)
    if not terms:  # every reference is 0: fall back to the signed mean of the metrics
        return float(np.mean([-v if higher_is_better[k] else v for k, v in values.items()]))
    return float(sum(terms.values()) / len(terms))


def task_scores(
    values: Mapping[str, float],
    reference: Mapping[str, float],
    higher_is_better: Mapping[str, bool],
    tasks: Sequence[str],
) -> list[float]:
    """Per-task Δm% (the mean of the task's metric terms; 0 for a task without a usable term)."""
    terms = delta_terms(values, reference, higher_is_better)
    out = []
    for t in tasks:
        mine = [v for k, v in terms.items() if k.split("/", 1)[0] == t and math.isfinite(v)]
        out.append(float(sum(mine) / len(mine)) if mine else 0.0)
    return out


def _build_optimizer(name: str, params: list[torch.nn.Parameter], lr: float, wd: float, kwargs: Mapping[str, Any]):
    options = {"lr": lr, "weight_decay": wd, **dict(kwargs)}
    table = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
    if name not in table:
        raise ValueError(f"unknown optimizer {name!r} in the protocol; known: {', '.join(table)}")
    return table[name](params, **options)


def _build_scheduler(
    name: str | None, optimizer: torch.optim.Optimizer, kwargs: Mapping[str, Any], epochs: int, steps: int
) -> tuple[Any, str, str | None]:
    """``(scheduler, when, monitor)``: ``when`` is ``"epoch"``, ``"step"`` or ``"none"``."""
    kw = dict(kwargs)
    monitor = kw.pop("monitor", None)
    if name is None:
        return None, "none", None
    if name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, **kw), "epoch", None
    if name == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, **kw), "epoch", None
    if name == "cosine":
        kw.setdefault("T_max", epochs)
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, **kw), "epoch", None
    if name == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, **kw), "epoch", monitor or "val_delta_m"
    if name == "linear_warmup":
        total = max(1, epochs * steps)
        warmup = max(1, round(float(kw.get("warmup_fraction", 0.1)) * total))

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return max(0.0, (total - step) / max(1, total - warmup))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor), "step", None
    raise ValueError(f"unknown scheduler {name!r} in the protocol")


def load_data(config: RunConfig):
    """The dataset of ``config`` (its ``data_args``; ``seed=data_seed`` where the loader takes a seed)."""
    from benchmarks.datasets import DatasetError, lookup

    spec = lookup(config.dataset)
    kwargs = dict(config.data_args)
    params = inspect.signature(spec.loader).parameters
    if "seed" in params and "seed" not in kwargs:
        kwargs["seed"] = config.data_seed
    unknown = [k for k in kwargs if k not in params]
    if unknown:
        accepted = ", ".join(list(params)[2:])
        raise DatasetError(f"{spec.name}: unknown --data-arg {unknown}; the loader takes {accepted}")
    return spec, spec.load(config.data_dir, preset=config.preset, **kwargs)


# --------------------------------------------------------------------------------------------- trainer


class Trainer:
    """One run of a (resolved or not) :class:`RunConfig`. ``run()`` returns the results dict.

    ``stop_after_epoch``: test hook; raise :class:`StopRun` after writing that epoch's checkpoint.
    ``log``: where one-line messages go (default: stderr).
    """

    def __init__(
        self,
        config: RunConfig,
        *,
        stop_after_epoch: int | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config.resolved()
        self.stop_after_epoch = stop_after_epoch
        self.log = log or (lambda message: print(message, file=sys.stderr, flush=True))
        self.run_dir = self.config.run_dir()

    # -- set-up ---------------------------------------------------------------------------------
    def _setup(self) -> None:
        c = self.config
        if c.threads:
            torch.set_num_threads(int(c.threads))
        self.device = torch.device(c.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.spec, self.data = load_data(c)
        self.protocol = self.spec.protocol(c.preset)
        self.tasks = list(c.tasks) if c.tasks else list(self.spec.task_names)
        self.metric_keys = [m.key for t in self.tasks for m in self.spec.task(t).metrics]
        self.higher = {k: self.spec.higher_is_better[k] for k in self.metric_keys}
        seed_everything(c.seed)
        self.built = zoo.build(
            self.spec,
            c.preset,
            c.arch,
            tasks=c.tasks,
            model_kwargs=c.model_args,
            arch_options=c.arch_args,
            info=self.data.info,
        )
        self.model = self.built.model.to(self.device)
        self.head = self.built.head_of
        all_losses = self.data.losses()
        self.loss_fns = {t: all_losses[t] for t in self.tasks}
        self.driver = methods.make_driver(c.method, c.agg_args)
        if c.features and type(self.driver) not in (
            methods.Driver,
            methods.FamoDriver,
            methods.EpochDriver,
            methods.ScoresDriver,
        ):
            raise methods.MethodError(
                f"--features (the MGDA-UB representation path) applies to methods driven by mtlagg.backward; "
                f"{c.method} has its own step"
            )
        loaders = self.data.dataloaders(c.batch_size, eval_batch_size=c.eval_batch_size, seed=c.seed)
        self.train_loaders = self._pick(loaders["train"])
        self.eval_loaders = {s: self._pick(loaders[s]) for s in ("val", "test")}
        self.outer_loader: DataLoader | None = None
        if self.driver.needs_outer:
            val = self.data.val
            gen = torch.Generator().manual_seed(c.seed + 7919)
            if isinstance(val, Mapping):
                self.outer_loader = {  # type: ignore[assignment]
                    t: DataLoader(
                        val[t],
                        batch_size=c.batch_size,
                        shuffle=True,
                        generator=torch.Generator().manual_seed(c.seed + 7919 + i),
                        collate_fn=self.data.collate_fn,
                    )
                    for i, t in enumerate(self.tasks)
                }
            else:
                self.outer_loader = DataLoader(
                    val, batch_size=c.batch_size, shuffle=True, generator=gen, collate_fn=self.data.collate_fn
                )
        n_batches = (
            max(len(dl) for dl in self.train_loaders.values())
            if isinstance(self.train_loaders, Mapping)
            else len(self.train_loaders)
        )
        self.steps_per_epoch = max(1, n_batches // self.driver.batches_per_step)
        if c.max_steps:
            self.steps_per_epoch = min(self.steps_per_epoch, c.max_steps)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = _build_optimizer(
            self.protocol.optimizer, params, c.lr, c.weight_decay, self.protocol.optimizer_kwargs
        )
        self.scheduler, self.scheduler_when, self.monitor = _build_scheduler(
            self.protocol.scheduler, self.optimizer, self.protocol.scheduler_kwargs, c.epochs, self.steps_per_epoch
        )
        self.ctx = methods.StepContext(
            model=self.model,
            task_losses=self._task_losses,
            optimizer=self.optimizer,
            features=c.features,
            on_nonfinite=c.on_nonfinite,
        )

    def _pick(self, loaders: Any) -> Any:
        """Only the run's tasks' loaders of a multi-input dataset."""
        if isinstance(loaders, Mapping):
            return {t: loaders[t] for t in self.tasks}
        return loaders

    def generators(self) -> dict[str, torch.Generator]:
        gens: dict[str, torch.Generator] = {}
        for prefix, group in (("train", self.train_loaders), ("outer", self.outer_loader)):
            if group is None:
                continue
            items = group.items() if isinstance(group, Mapping) else [("", group)]
            for name, dl in items:
                if dl.generator is not None:
                    gens[f"{prefix}/{name}"] = dl.generator
        return gens

    # -- losses and evaluation ------------------------------------------------------------------
    def _task_losses(self, forward: Callable[..., Any], batch: Any) -> list[torch.Tensor]:
        if self.spec.multi_input:
            inputs = {self.head[t]: to_device(batch[t][0], self.device) for t in self.tasks}
            targets = {t: to_device(batch[t][1], self.device) for t in self.tasks}
        else:
            x, ys = batch
            inputs = to_device(x, self.device)
            targets = {t: to_device(ys[t], self.device) for t in self.tasks}
        out = forward(inputs)
        losses = [self.loss_fns[t](out[self.head[t]], targets[t]) for t in self.tasks]
        return self.model.add_regularization(losses)

    @torch.no_grad()
    def evaluate(self, split: str) -> dict[str, float]:
        from benchmarks.metrics import compute_all

        self.model.eval()
        made = self.data.make_metrics()
        metrics = {t: made[t] for t in self.tasks}
        loaders = self.eval_loaders[split]
        if isinstance(loaders, Mapping):
            for t, dl in loaders.items():
                for x, y in dl:
                    out = self.model(to_device(x, self.device), task=self.head[t])
                    metrics[t].update(out[self.head[t]].cpu(), y)
        else:
            for x, ys in loaders:
                out = self.model(to_device(x, self.device))
                for t in self.tasks:
                    metrics[t].update(out[self.head[t]].cpu(), ys[t])
        values = compute_all(metrics)
        return {k: float(values[k]) for k in self.metric_keys}

    # -- training -------------------------------------------------------------------------------
    def _batch_source(self) -> Callable[[], Any]:
        """A fresh ``next batch`` function for one epoch (multi-input: one batch per task, cycled)."""
        return _cycling_source(self.train_loaders)

    def _outer_source(self) -> Callable[[], Any] | None:
        return None if self.outer_loader is None else _cycling_source(self.outer_loader)

    def train_epoch(self, progress: Progress, epoch: int) -> dict[str, Any]:
        self.model.train()
        next_batch = self._batch_source()
        self.ctx.outer_batches = self._outer_source()
        sums = np.zeros(len(self.tasks))
        counted = 0
        skipped = 0
        last_print = 0.0
        pending = 0
        interval = 0.5 if getattr(progress, "_interactive", False) else 15.0
        for step in range(self.steps_per_epoch):
            batches = [next_batch() for _ in range(self.driver.batches_per_step)]
            outcome = self.driver.step(self.ctx, batches)
            if outcome.skipped:
                skipped += 1
            elif all(math.isfinite(v) for v in outcome.losses):
                sums += np.asarray(outcome.losses)
                counted += 1
            if self.scheduler_when == "step":
                self.scheduler.step()
            pending += 1
            now = time.perf_counter()
            if now - last_print > interval or step + 1 == self.steps_per_epoch:
                last_print = now
                loss = float(sums.sum() / max(1, counted))
                progress.advance(f"epoch {epoch + 1}/{self.config.epochs}  train loss {loss:.4g}", amount=pending)
                pending = 0
        self.driver.end_epoch(self.ctx)
        means = (sums / counted).tolist() if counted else [float("nan")] * len(self.tasks)
        return {"train_loss": dict(zip(self.tasks, means)), "steps": self.steps_per_epoch, "skipped_steps": skipped}

    # -- checkpoints ----------------------------------------------------------------------------
    def checkpoint_state(self, epoch: int, book: dict[str, Any]) -> dict[str, Any]:
        return {
            "version": CHECKPOINT_VERSION,
            "config": self.config.identity(),
            "epoch": epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "driver": self.driver.state_dict(),
            "rng": rng_state(),
            "generators": {k: g.get_state() for k, g in self.generators().items()},
            "book": book,
        }

    def restore(self, state: Mapping[str, Any]) -> dict[str, Any]:
        if state.get("version") != CHECKPOINT_VERSION:
            raise RuntimeError(f"{self.run_dir / 'checkpoint.pt'}: unknown checkpoint version {state.get('version')}")
        if state["config"] != self.config.identity():
            raise RuntimeError(f"{self.run_dir / 'checkpoint.pt'} belongs to another configuration")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.driver.load_state_dict(state["driver"])
        set_rng_state(state["rng"])
        gens = self.generators()
        if set(gens) != set(state["generators"]):
            raise RuntimeError(f"{self.run_dir / 'checkpoint.pt'}: loader generators differ from this run's")
        for key, g in gens.items():
            g.set_state(state["generators"][key])
        return dict(state["book"])

    # -- the run --------------------------------------------------------------------------------
    def run(self) -> dict[str, Any] | None:
        """Train (or resume, or return the finished results); ``None`` when stopped by the test hook."""
        c = self.config
        check_config(self.run_dir, c)
        results_path = self.run_dir / "results.json"
        if results_path.is_file():
            return read_json(results_path)
        self._setup()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_json(self.run_dir / "config.json", asdict(c))
        ckpt_path = self.run_dir / "checkpoint.pt"
        log_path = self.run_dir / "log.jsonl"
        book: dict[str, Any] = {
            "reference": None,
            "best_epoch": None,
            "best_score": None,
            "best_val": None,
            "best_test": None,
            "steps": 0,
            "skipped_steps": 0,
            "train_time_s": 0.0,
        }
        start_epoch = 0
        if ckpt_path.is_file():
            state = load_checkpoint(ckpt_path)
            book = self.restore(state)
            start_epoch = int(state["epoch"])
            self.log(f"resuming {self.run_dir} after epoch {start_epoch}")
        _truncate_lines(log_path, start_epoch)
        total = (c.epochs - start_epoch) * self.steps_per_epoch
        label = f"{c.dataset} {c.method}{' ' + c.tasks[0] if c.tasks else ''} seed {c.seed}"
        progress = Progress(total, label, enabled=c.progress)
        for epoch in range(start_epoch, c.epochs):
            t0 = time.perf_counter()
            train = self.train_epoch(progress, epoch)
            train_time = time.perf_counter() - t0
            val = self.evaluate("val")
            test = self.evaluate("test")
            if book["reference"] is None:
                book["reference"] = val
            score = selection_score(val, book["reference"], self.higher)
            self.driver.after_validation(self.ctx, task_scores(val, book["reference"], self.higher, self.tasks))
            if self.scheduler is not None and self.scheduler_when == "epoch":
                if self.monitor is not None:
                    self.scheduler.step(score)
                else:
                    self.scheduler.step()
            if book["best_score"] is None or score < book["best_score"]:
                book.update(best_epoch=epoch + 1, best_score=score, best_val=val, best_test=test)
            book["steps"] += train["steps"]
            book["skipped_steps"] += train["skipped_steps"]
            book["train_time_s"] += train_time
            line = {
                "epoch": epoch + 1,
                **train,
                "val": val,
                "test": test,
                "val_score": score,
                "best_epoch": book["best_epoch"],
                "lr": float(self.optimizer.param_groups[0]["lr"]),
                "train_time_s": round(train_time, 3),
                "eval_time_s": round(time.perf_counter() - t0 - train_time, 3),
            }
            with log_path.open("a", encoding="utf-8") as f:
                f.write(_json_line(line) + "\n")
            save_checkpoint(ckpt_path, self.checkpoint_state(epoch + 1, book))
            if self.stop_after_epoch is not None and epoch + 1 >= self.stop_after_epoch and epoch + 1 < c.epochs:
                raise StopRun(f"stopped after epoch {epoch + 1} (test hook)")
        progress.close()
        results = {
            "dataset": c.dataset,
            "preset": c.preset,
            "arch": c.arch,
            "method": c.method,
            "agg_args": c.agg_args,
            "features": c.features,
            "tasks": self.tasks,
            "seed": c.seed,
            "epochs": c.epochs,
            "selected_epoch": book["best_epoch"],
            "selection": SELECTION,
            "selection_reference": book["reference"],
            "val": book["best_val"],
            "test": book["best_test"],
            "higher_is_better": self.higher,
            "steps": book["steps"],
            "skipped_steps": book["skipped_steps"],
            "train_time_s": round(book["train_time_s"], 3),
            "run_dir": str(self.run_dir),
        }
        write_json(self.run_dir / "results.json", results)
        self.log(
            f"finished {label}: epoch {book['best_epoch']} selected on validation, "
            f"train time {format_seconds(book['train_time_s'])}; {self.run_dir / 'results.json'}"
        )
        return results


def _json_line(data: Any) -> str:
    import json

    return json.dumps(data, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v))


def _truncate_lines(path: Path, keep: int) -> None:
    """Keep the first ``keep`` lines of ``path`` (epochs logged after the last checkpoint are dropped)."""
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    if len(lines) != keep:
        path.write_text("".join(lines[:keep]), encoding="utf-8")


def train(config: RunConfig, **kwargs: Any) -> dict[str, Any] | None:
    """``Trainer(config, **kwargs).run()``."""
    return Trainer(config, **kwargs).run()


def _cycling_source(loaders: Any) -> Callable[[], Any]:
    """A ``next batch`` function over a loader, or a mapping of task -> loader (one batch per task),
    restarting a loader when a step needs more batches than one pass holds."""
    if isinstance(loaders, Mapping):
        iters: dict[str, Iterator[Any]] = {t: iter(dl) for t, dl in loaders.items()}

        def next_multi() -> dict[str, Any]:
            batch = {}
            for t, dl in loaders.items():
                try:
                    batch[t] = next(iters[t])
                except StopIteration:
                    iters[t] = iter(dl)
                    batch[t] = next(iters[t])
            return batch

        return next_multi
    state = {"it": iter(loaders)}

    def next_single() -> Any:
        try:
            return next(state["it"])
        except StopIteration:
            state["it"] = iter(loaders)
            return next(state["it"])

    return next_single
