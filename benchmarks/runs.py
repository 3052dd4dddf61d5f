"""Run configurations, run directories and checkpoints.

A run is identified by its :class:`RunConfig`. Its directory is

    <out>/<dataset>/<preset>/<arch>/<method tag>/seed<k>/     (multi-task runs)
    <out>/<dataset>/<preset>/stl/seed<k>/<task>/               (single-task baselines, ``mtlagg-bench stl``)

where the method tag is the method name, its ``--agg-arg`` values (sorted) and ``+features`` for the
MGDA-UB path, e.g. ``cagrad_c=0.4+features``. Each run directory holds ``config.json`` (the
config), ``log.jsonl`` (one JSON line per epoch), ``checkpoint.pt`` (written after every epoch) and,
once finished, ``results.json``. Running the same config again resumes from the checkpoint, or
returns the finished results; a different config in the same directory is refused (``ConfigMismatch``).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

DEFAULT_OUT = "mtlagg-runs"
#: fields that do not change the numbers of a run (where it reads and writes, how fast)
NON_IDENTITY = ("data_dir", "out", "threads", "device", "progress")


class ConfigMismatch(RuntimeError):
    """A run directory holds a run of another configuration."""


class BadArgument(ValueError):
    """A malformed ``name=value`` argument."""


# --------------------------------------------------------------------------------------------- values


def parse_value(text: str) -> Any:
    """``"3"`` -> 3, ``"0.5"`` -> 0.5, ``"true"`` -> True, ``"none"`` -> None, ``"1,2"`` / ``"[1, 2]"`` -> [1, 2].

    Anything else stays a string.
    """
    s = text.strip()
    low = s.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if low in ("none", "null"):
        return None
    if s.startswith(("[", "{")):
        try:
            return json.loads(s)
        except json.JSONDecodeError:
            pass
    if "," in s:
        return [parse_value(part) for part in s.split(",") if part.strip()]
    for cast in (int, float):
        try:
            return cast(s)
        except ValueError:
            pass
    return s


def parse_assignments(items: Sequence[str] | None, what: str) -> dict[str, Any]:
    """``["c=0.4", "rescale=true"]`` -> ``{"c": 0.4, "rescale": True}``; malformed items raise :class:`BadArgument`."""
    out: dict[str, Any] = {}
    for item in items or ():
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name.isidentifier():
            raise BadArgument(f"{what} expects name=value (e.g. {what} c=0.4), got {item!r}")
        out[name] = parse_value(value)
    return out


def _tag_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "-".join(_tag_value(v) for v in value)
    return re.sub(r"[^\w.\-]", "-", str(value))


def method_tag(method: str, agg_args: Mapping[str, Any], features: bool = False) -> str:
    """The directory name of a method with its arguments, e.g. ``cagrad_c=0.4+features``."""
    parts = [method] + [f"{k}={_tag_value(v)}" for k, v in sorted(agg_args.items())]
    return "_".join(parts) + ("+features" if features else "")


# --------------------------------------------------------------------------------------------- config


@dataclass
class RunConfig:
    """Everything that defines one training run.

    ``None`` for ``epochs``, ``lr``, ``batch_size`` ... means the preset's value; :meth:`resolved`
    fills them in from the dataset's protocol so that ``config.json`` records the values used.
    ``max_steps`` caps the optimizer steps of each epoch (a budget knob for quick runs).
    ``data_seed`` fixes the data (MultiMNIST pairing, validation carving, QM9 split) independently of
    ``seed`` (initialisation, shuffling, dropout), so every method and seed sees the same data.
    """

    dataset: str
    method: str = "mean"
    arch: str | None = None
    preset: str = "quick"
    seed: int = 0
    agg_args: dict[str, Any] = field(default_factory=dict)
    features: bool = False
    tasks: list[str] | None = None  # single-task baselines: the one task
    epochs: int | None = None
    max_steps: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    eval_batch_size: int | None = None
    weight_decay: float | None = None
    data_seed: int = 0
    data_args: dict[str, Any] = field(default_factory=dict)
    model_args: dict[str, Any] = field(default_factory=dict)
    arch_args: dict[str, Any] = field(default_factory=dict)
    on_nonfinite: str = "raise"
    # not part of the identity
    data_dir: str | None = None
    out: str = DEFAULT_OUT
    threads: int | None = None
    device: str | None = None
    progress: bool = True

    def resolved(self) -> RunConfig:
        """A copy with the dataset, method and architecture canonicalised and the preset's defaults filled in."""
        from benchmarks import methods, zoo
        from benchmarks.datasets import lookup

        spec = lookup(self.dataset)
        protocol = spec.protocol(self.preset)
        name, _ = methods.resolve(self.method)
        arch = "hps" if name == methods.STL else zoo.canonical_arch(self.arch or zoo.default_arch(spec, self.preset))
        if self.on_nonfinite not in ("raise", "skip", "zero", "ignore"):
            raise BadArgument(f"on_nonfinite must be raise, skip, zero or ignore, got {self.on_nonfinite!r}")
        if self.tasks is not None:
            for t in self.tasks:
                spec.task(t)
        for key, value in (("epochs", self.epochs), ("max_steps", self.max_steps), ("batch_size", self.batch_size)):
            if value is not None and value < 1:
                raise BadArgument(f"{key} must be >= 1, got {value}")
        if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
            raise BadArgument(f"lr must be positive, got {self.lr}")
        return RunConfig(
            **{
                **asdict(self),
                "dataset": spec.name,
                "method": name,
                "arch": arch,
                "epochs": self.epochs or protocol.epochs,
                "lr": self.lr or protocol.lr,
                "batch_size": self.batch_size or protocol.batch_size,
                "eval_batch_size": self.eval_batch_size
                or protocol.eval_batch_size
                or self.batch_size
                or protocol.batch_size,
                "weight_decay": protocol.weight_decay if self.weight_decay is None else self.weight_decay,
            }
        )

    def identity(self) -> dict[str, Any]:
        """The fields that decide the numbers of the run (compared when resuming)."""
        d = asdict(self)
        for key in NON_IDENTITY:
            d.pop(key, None)
        return json.loads(json.dumps(d))  # tuples -> lists, as read back from config.json

    def run_dir(self) -> Path:
        """Where this (resolved) run lives under ``out``."""
        base = Path(self.out) / self.dataset / self.preset
        if self.method == "stl":
            task = self.tasks[0] if self.tasks else "all"
            return base / "stl" / f"seed{self.seed}" / task
        return base / str(self.arch) / method_tag(self.method, self.agg_args, self.features) / f"seed{self.seed}"


def stl_dir(out: str | os.PathLike, dataset: str, preset: str, seed: int) -> Path:
    return Path(out) / dataset / preset / "stl" / f"seed{seed}"


# --------------------------------------------------------------------------------------------- files


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON atomically (a temporary file, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_json_default), encoding="utf-8")
    os.replace(tmp, path)


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def check_config(run_dir: Path, config: RunConfig) -> None:
    """Refuse a run directory whose ``config.json`` records another configuration."""
    path = run_dir / "config.json"
    if not path.is_file():
        return
    stored = read_json(path)
    stored_identity = {k: v for k, v in stored.items() if k not in NON_IDENTITY}
    mine = config.identity()
    if stored_identity != mine:
        diffs = [
            f"{k}: stored {stored_identity.get(k)!r}, now {mine.get(k)!r}"
            for k in sorted(set(stored_identity) | set(mine))
            if stored_identity.get(k) != mine.get(k)
        ]
        raise ConfigMismatch(
            f"{run_dir} holds a run of another configuration ({'; '.join(diffs)}). Resuming it would mix "
            "the two: use another --out, or delete that folder to start over."
        )


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` to a temporary file, then rename: an interrupted write never leaves a broken checkpoint."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise RuntimeError(f"{path} cannot be read ({error}); delete it to start the run over") from None


def finished_results(config: RunConfig) -> dict[str, Any] | None:
    """The results of a finished run of ``config`` (resolved), or ``None`` (a mismatching config raises)."""
    run_dir = config.run_dir()
    check_config(run_dir, config)
    path = run_dir / "results.json"
    return read_json(path) if path.is_file() else None
