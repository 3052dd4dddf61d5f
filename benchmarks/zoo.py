"""Dataset -> model: the backbone and heads of each benchmark protocol, on any ``mtlagg_arch`` architecture.

``build(spec, preset, arch)`` reads ``spec.protocol(preset).model`` / ``model_kwargs`` and builds a
:class:`mtlagg_arch.backbones.Backbone` and one head per task, then
``mtlagg_arch.build_architecture(arch, backbone, heads, multi_input=spec.multi_input, **options)``.

| ``model`` | backbone | head per task | architectures |
| --- | --- | --- | --- |
| ``lenet`` | Sener & Koltun's LeNet trunk (3 stages) | ``lenet_head`` (50-50-classes) | all eight |
| ``mlp`` | an MLP (one stage per hidden layer) | Linear | all eight |
| ``qm9_mpnn`` | NNConv + GRU + Set2Set encoder (not staged) | Linear(dim, 1) | HPS, MMoE, CGC, DSelect-k |
| ``celeba_cnn`` | the 9-layer CelebA CNN (not staged) | Linear(512, 1) | HPS, MMoE, CGC, DSelect-k |
| ``sick_minilm`` | siamese all-MiniLM-L6-v2, ``[u, v, |u-v|, u*v]`` | Dropout + Linear | HPS, MMoE, CGC, DSelect-k |
| ``pawsx_bert`` | a local BERT's pooled output | Dropout + Linear(hidden, 2) | HPS, MMoE, CGC, DSelect-k |
| ``mtan_segnet`` | MTAN's SegNet (trunk with taps) | MTAN's 3x3 + 1x1 conv layer | HPS, MMoE, CGC, DSelect-k, MTAN |
| ``resnet18`` | ResNet-18 (4 stages) + a shared pooled FC stage | Linear(feature_dim, classes) | all eight |

Non-staged encoders are wrapped as ``Backbone(name, encoder_factory=..., out_channels=...)``; the
architectures that need stages (CrossStitch, PLE, LTB) refuse them with a message naming the ones
that work. The default architecture is MTAN for ``mtan_segnet`` (the papers' NYUv2 / Cityscapes model
is SegNet-MTAN for every method) and HPS elsewhere.

Task names that are not Python identifiers (CelebA's ``5_o_Clock_Shadow``) get a safe head name;
:attr:`BuiltModel.head_of` maps dataset task -> model task.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import nn

from benchmarks.datasets import DatasetSpec, TaskSpec

MODELS = ("lenet", "mlp", "qm9_mpnn", "celeba_cnn", "sick_minilm", "pawsx_bert", "mtan_segnet", "resnet18")
STAGED_ARCHITECTURES = ("cross_stitch", "ple", "ltb")


class ModelError(ValueError):
    """A model or architecture that cannot be built as asked (the message says what works)."""


class Squeeze(nn.Module):
    """``(B, 1) -> (B,)``: the prediction of a scalar task."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.squeeze(-1)


class PoolFC(nn.Module):
    """Global average pooling, then ``Linear -> BatchNorm1d -> ReLU -> Dropout`` (LibMTL's Office encoder FC)."""

    def __init__(self, in_channels: int, out_features: int, dropout: float = 0.5) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            nn.Linear(in_channels, out_features), nn.BatchNorm1d(out_features), nn.ReLU(), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(x), 1))


@dataclass
class BuiltModel:
    """The model and how its task names relate to the dataset's."""

    model: Any  # mtlagg_arch.MultiTaskModel
    arch: str
    model_name: str
    head_of: dict[str, str] = field(default_factory=dict)  # dataset task -> model task

    @property
    def task_of(self) -> dict[str, str]:
        return {v: k for k, v in self.head_of.items()}


def safe_task_name(name: str) -> str:
    """A Python identifier for ``name`` (letters, digits, underscores; no leading digit)."""
    safe = re.sub(r"\W", "_", name)
    return safe if safe.isidentifier() else f"t_{safe}"


def default_arch(spec: DatasetSpec, preset: str) -> str:
    return "mtan" if spec.protocol(preset).model == "mtan_segnet" else "hps"


def _scalar_head(in_features: int, task: TaskSpec, dropout: float = 0.0) -> nn.Module:
    layers: list[nn.Module] = [nn.Dropout(dropout)] if dropout > 0 else []
    layers.append(nn.Linear(in_features, task.out_dim))
    if task.out_dim == 1:
        layers.append(Squeeze())
    return nn.Sequential(*layers)


def _pop(kwargs: dict[str, Any], allowed: Mapping[str, Any], model: str) -> dict[str, Any]:
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ModelError(f"model {model!r}: unknown option(s) {unknown}; options: {sorted(allowed)}")
    return {k: kwargs.get(k, v) for k, v in allowed.items()}


def _lenet(spec: DatasetSpec, tasks: list[TaskSpec], kwargs: dict[str, Any], info: Mapping[str, Any]):
    from mtlagg_arch.backbones import lenet, lenet_head

    default_size = int(info.get("image_size", (spec.input_shape or (1, 36, 36))[-1]))
    o = _pop(kwargs, {"input_size": default_size, "dropout": 0.5}, "lenet")
    size = int(info.get("image_size", o["input_size"]))  # the data decides (a resize option changes it)
    in_channels = (spec.input_shape or (1,))[0]
    backbone = lenet(image_size=size, in_channels=in_channels)
    return backbone, {t.name: lenet_head(t.out_dim, dropout=o["dropout"]) for t in tasks}


def _mlp(spec: DatasetSpec, tasks: list[TaskSpec], kwargs: dict[str, Any], info: Mapping[str, Any]):
    from mtlagg_arch.backbones import mlp

    o = _pop(kwargs, {"in_features": None, "hidden": (64, 32), "dropout": 0.0}, "mlp")
    in_features = o["in_features"] or (spec.input_shape[0] if spec.input_shape else None)
    if in_features is None:
        raise ModelError("model 'mlp' needs in_features (model_kwargs) or the spec's input_shape")
    hidden = tuple(int(h) for h in (o["hidden"] if isinstance(o["hidden"], (list, tuple)) else [o["hidden"]]))
    backbone = mlp(int(in_features), hidden=hidden, dropout=float(o["dropout"]))
    return backbone, {t.name: _scalar_head(hidden[-1], t) for t in tasks}


def _qm9(spec: DatasetSpec, tasks: list[TaskSpec], kwargs: dict[str, Any], info: Mapping[str, Any]):
    from benchmarks.models.qm9 import QM9Encoder
    from mtlagg_arch.backbones import Backbone

    o = _pop(kwargs, {"dim": 64, "edge_hidden": 128, "rounds": 3}, "qm9_mpnn")
    node_features = int(info.get("num_node_features", 11))
    edge_features = int(info.get("num_edge_features", 5))
    factory = partial(
        QM9Encoder,
        num_node_features=node_features,
        num_edge_features=edge_features,
        dim=int(o["dim"]),
        edge_hidden=int(o["edge_hidden"]),
        rounds=int(o["rounds"]),
    )
    backbone = Backbone("qm9_mpnn", encoder_factory=factory, out_channels=int(o["dim"]))
    return backbone, {t.name: _scalar_head(int(o["dim"]), t) for t in tasks}


def _celeba(spec: DatasetSpec, tasks: list[TaskSpec], kwargs: dict[str, Any], info: Mapping[str, Any]):
    from benchmarks.models.celeba import CelebAEncoder
    from mtlagg_arch.backbones import Backbone

    o = _pop(kwargs, {"width": 1.0}, "celeba_cnn")
    width = float(o["width"])
    out = CelebAEncoder(width).out_dim
    backbone = Backbone("celeba_cnn", encoder_factory=partial(CelebAEncoder, width), out_channels=out)
    return backbone, {t.name: _scalar_head(out, t) for t in tasks}


def _sick(spec: DatasetSpec, tasks: list[TaskSpec], kwargs: dict[str, Any], info: Mapping[str, Any]):
    from benchmarks.models.sick import SiameseEncoder, load_encoder, load_minilm, tiny_bert
    from mtlagg_arch.backbones import Backbone

    o = _pop(kwargs, {"encoder_path": None, "tiny": False, "dropout": 0.1}, "sick_minilm")

    def make_encoder() -> nn.Module:
        if o["tiny"]:
            return tiny_bert()
        return load_encoder(o["encoder_path"]) if o["encoder_path"] else load_minilm()

    hidden = int(make_encoder().config.hidden_size)
    backbone = Backbone("sick_minilm", encoder_factory=lambda: SiameseEncoder(make_encoder()), out_channels=4 * hidden)
    return backbone, {t.name: _scalar_head(4 * hidden, t, float(o["dropout"])) for t in tasks}


def _pawsx(spec: DatasetSpec, tasks: list[TaskSpec], kwargs: dict[str, Any], info: Mapping[str, Any]):
    from benchmarks.models.sick import PooledEncoder, load_encoder, tiny_bert
    from mtlagg_arch.backbones import Backbone

    o = _pop(kwargs, {"model_path": info.get("model_path"), "tiny": False, "dropout": 0.1}, "pawsx_bert")
    if not o["model_path"] and not o["tiny"]:
        raise ModelError(
            "model 'pawsx_bert' needs the local folder of a multilingual BERT: --data-arg model_path=DIR "
            "(the tokenizer and the encoder are read from it)"
        )

    def make_encoder() -> nn.Module:
        return tiny_bert() if o["tiny"] else load_encoder(o["model_path"])

    hidden = int(make_encoder().config.hidden_size)
    backbone = Backbone("pawsx_bert", encoder_factory=lambda: PooledEncoder(make_encoder()), out_channels=hidden)
    return backbone, {t.name: _scalar_head(hidden, t, float(o["dropout"])) for t in tasks}


def _segnet(spec: DatasetSpec, tasks: list[TaskSpec], kwargs: dict[str, Any], info: Mapping[str, Any]):
    from mtlagg_arch.backbones import segnet
    from mtlagg_arch.heads import segnet_head

    o = _pop(kwargs, {"filters": (64, 128, 256, 512, 512)}, "mtan_segnet")
    filters = tuple(int(c) for c in o["filters"])
    backbone = segnet(filters)
    return backbone, {t.name: segnet_head(t.out_dim, channels=filters[0]) for t in tasks}


def _resnet18(spec: DatasetSpec, tasks: list[TaskSpec], kwargs: dict[str, Any], info: Mapping[str, Any]):
    from mtlagg_arch.backbones import resnet, staged

    o = _pop(
        kwargs, {"pretrained": False, "weights_path": None, "feature_dim": 512, "width": 64, "dropout": 0.5}, "resnet18"
    )
    if o["pretrained"] and not o["weights_path"]:
        raise ModelError(
            "the paper protocol starts ResNet-18 from ImageNet weights, which mtlagg-bench cannot download: pass "
            "--model-arg weights_path=FILE (a torchvision resnet18 state_dict) or --model-arg pretrained=false"
        )
    base = resnet(18, width=int(o["width"]), weights_path=o["weights_path"])
    last = base.stage_out_channels[-1]
    feature_dim = int(o["feature_dim"])
    fc = partial(PoolFC, last, feature_dim, float(o["dropout"]))
    backbone = staged(
        "resnet18_fc",
        [*base.stage_factories, fc],
        [*base.stage_channels, feature_dim],
        [*base.stage_spatial, False],
    )
    return backbone, {t.name: _scalar_head(feature_dim, t) for t in tasks}


_BUILDERS: dict[str, Callable[..., tuple[Any, dict[str, nn.Module]]]] = {
    "lenet": _lenet,
    "mlp": _mlp,
    "qm9_mpnn": _qm9,
    "celeba_cnn": _celeba,
    "sick_minilm": _sick,
    "pawsx_bert": _pawsx,
    "mtan_segnet": _segnet,
    "resnet18": _resnet18,
}


def canonical_arch(name: str) -> str:
    """The ``mtlagg_arch`` name of ``name``; unknown names raise ``KeyError`` with the closest names."""
    from mtlagg_arch import ARCHITECTURES, canonical_name

    try:
        return canonical_name(name)
    except ValueError:
        key = name.lower().replace("-", "_")
        close = difflib.get_close_matches(key, list(ARCHITECTURES), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"unknown architecture {name!r}{hint} (known: {', '.join(sorted(ARCHITECTURES))})") from None


def build(
    spec: DatasetSpec,
    preset: str,
    arch: str | None = None,
    *,
    tasks: list[str] | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    arch_options: Mapping[str, Any] | None = None,
    info: Mapping[str, Any] | None = None,
) -> BuiltModel:
    """The model of ``spec``'s ``preset`` protocol on architecture ``arch`` (default: :func:`default_arch`).

    ``tasks`` restricts the heads (single-task baselines); ``model_kwargs`` override the protocol's;
    ``info`` is the loaded data's ``info`` (image size, feature counts, model path).
    """
    from mtlagg_arch import build_architecture

    protocol = spec.protocol(preset)
    name = protocol.model
    if name not in _BUILDERS:
        raise ModelError(f"dataset {spec.name!r}: no model {name!r} in the zoo (models: {', '.join(MODELS)})")
    arch = canonical_arch(arch or default_arch(spec, preset))
    kwargs = {**dict(protocol.model_kwargs), **dict(model_kwargs or {})}
    task_specs = [spec.task(t) for t in tasks] if tasks else list(spec.tasks)
    backbone, heads = _BUILDERS[name](spec, task_specs, kwargs, dict(info or {}))
    needs_stages = arch in STAGED_ARCHITECTURES or (arch == "mtan" and backbone.trunk_factory is None)
    if needs_stages and not backbone.stage_factories:
        works = ["hps", "mmoe", "cgc", "dselect_k"] + (["mtan"] if backbone.trunk_factory is not None else [])
        raise ModelError(
            f"architecture {arch!r} needs a backbone split into stages, and {spec.name}'s model {name!r} is not "
            f"staged; architectures that work with it: {', '.join(works)}"
        )
    head_of = {t: safe_task_name(t) for t in heads}
    model_heads = {head_of[t]: h for t, h in heads.items()}
    try:
        model = build_architecture(
            arch, backbone, model_heads, multi_input=spec.multi_input, **dict(arch_options or {})
        )
    except TypeError as error:  # an unknown --arch-arg
        raise ModelError(f"architecture {arch!r}: {error}") from None
    return BuiltModel(model=model, arch=arch, model_name=name, head_of=head_of)
