"""Building any architecture by name on the benchmark backbones."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mtlagg_arch
from mtlagg_arch import ARCHITECTURES, build_architecture, canonical_name
from mtlagg_arch.backbones import lenet, lenet_head, mlp, resnet, segnet
from mtlagg_arch.heads import segnet_head

EIGHT = ["HPS", "CrossStitch", "MMoE", "CGC", "PLE", "MTAN", "LTB", "DSelectK"]


def test_the_eight_are_importable_and_registered():
    for name in EIGHT:
        cls = getattr(mtlagg_arch, name)
        assert ARCHITECTURES[canonical_name(name)] is cls
    assert len(ARCHITECTURES) == 8


@pytest.mark.parametrize(
    ("given", "expected"),
    [("Cross-Stitch", "cross_stitch"), ("crossstitch", "cross_stitch"), ("DSelect_k", "dselect_k"), ("MTAN", "mtan")],
)
def test_canonical_names(given, expected):
    assert canonical_name(given) == expected


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_multimnist_lenet(name):
    heads = {"left": lenet_head(), "right": lenet_head()}
    model = build_architecture(name, lenet(), heads)
    out = model(torch.randn(4, 1, 28, 28))
    assert {k: v.shape for k, v in out.items()} == {"left": (4, 10), "right": (4, 10)}


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_dense_prediction_on_a_dilated_resnet(name):
    backbone = resnet(18, dilated=True, width=2)
    heads = {"seg": nn.Conv2d(backbone.out_channels, 5, 1), "depth": nn.Conv2d(backbone.out_channels, 1, 1)}
    out = build_architecture(name, backbone, heads)(torch.randn(2, 3, 32, 32))
    assert out["seg"].shape == (2, 5, 4, 4) and out["depth"].shape == (2, 1, 4, 4)


@pytest.mark.parametrize("name", ["hps", "mmoe", "cgc", "dselect_k", "mtan"])
def test_segnet_for_the_architectures_it_supports(name):
    heads = {"seg": segnet_head(3, 2), "depth": segnet_head(1, 2)}
    out = build_architecture(name, segnet(filters=(2, 2, 2, 2, 2)), heads)(torch.randn(2, 3, 32, 32))
    assert out["seg"].shape == (2, 3, 32, 32)


@pytest.mark.parametrize("name", ["cross_stitch", "ple", "ltb"])
def test_segnet_is_refused_by_staged_architectures(name):
    with pytest.raises(ValueError, match="needs a backbone split into stages, and backbone 'segnet' is not"):
        build_architecture(name, segnet(filters=(2, 2, 2, 2, 2)), {"a": nn.Identity(), "b": nn.Identity()})


def test_multi_input_and_options_pass_through():
    heads = {t: nn.Linear(4, 3) for t in ("amazon", "dslr", "webcam")}
    model = build_architecture("MMoE", mlp(6, (4,)), heads, multi_input=True, num_experts=5)
    assert len(model.shared.experts) == 5 and model.multi_input
    out = model({"amazon": torch.randn(2, 6), "webcam": torch.randn(3, 6)})
    assert list(out) == ["amazon", "webcam"]


def test_registry_errors():
    with pytest.raises(ValueError, match="unknown architecture 'resnet'"):
        build_architecture("resnet", mlp(3), {"a": nn.Identity()})
    with pytest.raises(TypeError, match=r"backbone must be a mtlagg_arch\.backbones\.Backbone"):
        build_architecture("hps", nn.Linear(3, 3), {"a": nn.Identity()})
