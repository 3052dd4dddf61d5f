"""Tiny models and problems shared by the architecture tests."""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn

from mtlagg_arch import ARCHITECTURES, MultiTaskModel, build_architecture
from mtlagg_arch.backbones import Backbone, mlp, staged

TASKS = ("a", "b", "c")
NAMES = tuple(ARCHITECTURES)
IN_FEATURES = 5
WIDTH = 6


def conv_stage(in_channels: int, channels: int, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU()]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


def image_backbone() -> Backbone:
    """Three conv stages on (B, 3, 8, 8) inputs: 4 -> 6 -> 6 channels, 8 -> 4 -> 2 pixels."""
    factories = [partial(conv_stage, 3, 4, True), partial(conv_stage, 4, 6, True), partial(conv_stage, 6, 6, False)]
    return staged("tiny_conv", factories, [4, 6, 6], [True] * 3)


def flat_stage(in_features: int) -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, WIDTH), nn.ReLU())


def mixed_backbone() -> Backbone:
    """Image stages then vector stages (as LeNet): (B, 3, 8, 8) -> (B, 4, 4, 4) -> (B, 6) -> (B, 6)."""
    factories = [partial(conv_stage, 3, 4, True), partial(flat_stage, 64), partial(flat_stage, WIDTH)]
    return staged("tiny_mixed", factories, [4, WIDTH, WIDTH], [True, False, False])


def vector_backbone() -> Backbone:
    return mlp(IN_FEATURES, (WIDTH, WIDTH, WIDTH))


def vector_heads(out: int = 1) -> dict[str, nn.Module]:
    return {t: nn.Linear(WIDTH, out) for t in TASKS}


def image_heads(out: int = 1) -> dict[str, nn.Module]:
    return {t: nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, out)) for t in TASKS}


OPTIONS = {
    "mmoe": {"num_experts": 3},
    "cgc": {"num_shared_experts": 2, "num_task_experts": 1},
    "dselect_k": {"num_experts": 3, "num_nonzeros": 2, "entropy_reg": 0.1},
}


def build(name: str, kind: str = "vector", *, multi_input: bool = False, **options: object) -> MultiTaskModel:
    backbone = {"vector": vector_backbone, "image": image_backbone, "mixed": mixed_backbone}[kind]()
    heads = image_heads() if kind == "image" else vector_heads()
    merged = {**OPTIONS.get(name, {}), **options}
    return build_architecture(name, backbone, heads, multi_input=multi_input, **merged)


def batch(kind: str = "vector", size: int = 4, seed: int = 1) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    shape = (size, IN_FEATURES) if kind == "vector" else (size, 3, 8, 8)  # "image" and "mixed"
    return torch.randn(shape, generator=generator)


def losses_of(model: MultiTaskModel, outputs: dict[str, Tensor], targets: dict[str, Tensor]) -> list[Tensor]:
    losses = [((outputs[t] - targets[t]) ** 2).mean() for t in outputs]
    return model.add_regularization(losses)


def targets_for(x: Tensor, seed: int = 2) -> dict[str, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {t: torch.randn(x.shape[0], 1, generator=generator) for t in TASKS}


# -- configurations beyond the defaults: gate inputs, static gates, embeddings ---------------------
def _embedding() -> nn.Module:
    return nn.Sequential(nn.Linear(IN_FEATURES, 3), nn.Tanh())


VARIANTS: list[tuple[str, str, dict[str, object]]] = [
    *[(name, kind, {}) for name in NAMES for kind in ("vector", "image")],
    ("mmoe", "vector", {"gate_input": "input", "gate_in_features": IN_FEATURES}),
    ("cgc", "vector", {"gate_input": _embedding, "gate_in_features": 3, "num_task_experts": [0, 1, 2]}),
    ("ple", "vector", {"gate_input": "input", "gate_in_features": [IN_FEATURES, WIDTH, WIDTH]}),
    ("ple", "image", {"num_shared_experts": [1, 2, 1], "num_task_experts": 2}),
    ("dselect_k", "vector", {"gate_input": "static", "num_experts": 4}),
    ("dselect_k", "vector", {"gate_input": "input", "gate_in_features": IN_FEATURES}),
    ("mtan", "vector", {"share_transfer": False}),
    ("cross_stitch", "vector", {"stitch_after": [0]}),
    ("ltb", "vector", {"widths": [2, 2, 3]}),
    *[(name, "mixed", {}) for name in ("mtan", "ple", "ltb", "cross_stitch")],
]


def variant_id(variant: tuple[str, str, dict[str, object]]) -> str:
    name, kind, options = variant
    extra = ",".join(f"{k}={getattr(v, '__name__', v)}" for k, v in options.items())
    return f"{name}-{kind}" + (f"[{extra}]" if extra else "")
