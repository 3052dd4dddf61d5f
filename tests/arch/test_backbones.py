"""Backbones: sizes against published counts, stage shapes, dilation, loading weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mtlagg
from mtlagg.aggregators import UPGrad
from mtlagg_arch import HPS, MTAN
from mtlagg_arch.backbones import ResNet, SegNet, lenet, lenet_head, mlp, resnet, segnet
from mtlagg_arch.heads import DeepLabHead, segnet_head


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(("depth", "expected"), [(18, 11_176_512), (34, 21_284_672), (50, 23_508_032)])
def test_resnet_sizes_match_torchvision_without_the_classifier(depth, expected):
    # torchvision's resnet18/34/50 have 11,689,512 / 21,797,672 / 25,557,032 parameters, of which the
    # 1000-way classifier holds 513,000 / 513,000 / 2,049,000
    assert count(ResNet(depth)) == expected


def test_resnet_parameter_names_follow_torchvision():
    keys = set(ResNet(50, width=4).state_dict())
    for key in ("conv1.weight", "bn1.running_mean", "layer1.0.conv3.weight", "layer1.0.downsample.0.weight",
                "layer1.0.downsample.1.num_batches_tracked", "layer4.2.bn3.bias"):  # fmt: skip
        assert key in keys
    assert not any(k.startswith("fc") for k in keys)


@pytest.mark.parametrize("depth", [18, 50])
@pytest.mark.parametrize("dilated", [False, True])
def test_resnet_stages_shapes_and_output_stride(depth, dilated):
    backbone = resnet(depth, dilated=dilated, width=4)
    net = backbone.encoder()
    x = torch.randn(2, 3, 64, 64)
    h = x
    sizes = [16, 8, 8, 8] if dilated else [16, 8, 4, 2]
    for stage, channels, size in zip(net.stages(), backbone.stage_out_channels, sizes):
        h = stage(h)
        assert h.shape == (2, channels, size, size)
    torch.testing.assert_close(h, net(x))
    assert backbone.out_channels == net.feature_dim == 32 * (4 if depth == 50 else 1)


def test_dilation_as_in_torchvision_replace_stride_with_dilation():
    net = ResNet(50, dilated=True, width=4)
    assert (net.layer3[0].conv2.stride, net.layer3[0].conv2.dilation) == ((1, 1), (1, 1))
    assert net.layer3[1].conv2.dilation == (2, 2) and net.layer3[0].downsample[0].stride == (1, 1)
    assert net.layer4[0].conv2.dilation == (2, 2) and net.layer4[2].conv2.dilation == (4, 4)
    basic = ResNet(18, dilated=True, width=4)
    assert (basic.layer3[0].conv1.dilation, basic.layer3[0].conv2.dilation) == ((1, 1), (2, 2))
    assert basic.layer4[1].conv1.padding == (4, 4)


def test_resnet_weights_path(tmp_path):
    source = ResNet(18, width=4)
    state = source.state_dict()
    state["fc.weight"] = torch.zeros(10, 32)  # a classifier, as in a torchvision checkpoint
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    backbone = resnet(18, width=4, weights_path=path)
    for built in (backbone.encoder(), nn.Sequential(*backbone.stages())):
        for (name, p), q in zip(source.named_parameters(), built.parameters()):
            torch.testing.assert_close(q, p, msg=name)
    wrapped = tmp_path / "checkpoint.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, wrapped)
    torch.testing.assert_close(resnet(18, width=4, weights_path=wrapped).encoder().conv1.weight, source.conv1.weight)
    with pytest.raises(ValueError, match="the ResNet-34 weights do not match: missing"):
        resnet(34, width=4, weights_path=path)
    with pytest.raises(FileNotFoundError, match="is not a file"):
        resnet(18, weights_path=tmp_path / "absent.pth")


def test_resnet_errors():
    with pytest.raises(ValueError, match=r"depth must be one of \[18, 34, 50, 101\]"):
        ResNet(20)


def test_lenet_is_the_multimnist_network():
    backbone = lenet()
    assert count(backbone.encoder()) == 260 + 5020 + 16050  # conv 1->10 k5, conv 10->20 k5, fc 320->50
    assert count(lenet_head()) == 2550 + 510  # fc 50->50, fc 50->10
    h = torch.randn(3, 1, 28, 28)
    for stage, shape in zip(backbone.stages(), [(3, 10, 12, 12), (3, 20, 4, 4), (3, 50)]):
        h = stage(h)
        assert h.shape == shape
    assert lenet(image_size=36).stages()[2][1].in_features == 720
    with pytest.raises(ValueError, match="too small for LeNet"):
        lenet(image_size=12)


def test_mlp():
    backbone = mlp(7, (5, 3), dropout=0.1)
    assert backbone.encoder()(torch.randn(2, 7)).shape == (2, 3)
    assert backbone.stage_out_channels == [5, 3] and backbone.stage_spatial == (False, False)
    with pytest.raises(ValueError, match="hidden must be a non-empty sequence"):
        mlp(7, ())


def test_segnet_matches_the_published_sizes():
    trunk = count(segnet().encoder())
    # MTAN's code prints the single-task SegNet (with its 13-class prediction layer) as 24,981,069
    # parameters, and the paper gives MTAN 1.77 times that
    assert trunk + count(segnet_head(13)) == 24_981_069
    heads = {"segmentation": segnet_head(13), "depth": segnet_head(1), "normal": segnet_head(3)}
    model = MTAN(segnet().mtan_trunk(), heads)
    assert count(model) / 24_981_069 == pytest.approx(1.77, abs=0.005)


def test_segnet_taps_and_mtan_on_it():
    torch.manual_seed(0)
    trunk = SegNet(filters=(2, 3, 4, 4, 4))
    x = torch.randn(2, 3, 32, 32)
    taps = trunk.forward_taps(x)
    assert [(u.shape[1], p.shape[1]) for u, p in taps] == trunk.tap_channels
    assert trunk(x).shape == (2, 2, 32, 32)
    heads = {"seg": segnet_head(5, 2), "depth": segnet_head(1, 2)}
    model = MTAN(trunk, heads)
    assert len(model.shared.transfers) == 9 and len(model.tasks["seg"].attention) == 10
    for path in ("param", "features"):
        model.zero_grad()
        out = model(x)
        assert out["seg"].shape == (2, 5, 32, 32)
        losses = [out["seg"].pow(2).mean(), out["depth"].abs().mean()]
        features = model.representation if path == "features" else None
        mtlagg.backward(losses, model.shared_parameters(), UPGrad(), features=features)
        assert all(p.grad is not None for p in model.parameters())


def test_hps_on_segnet_and_deeplab_on_a_dilated_resnet():
    hps = HPS(segnet(filters=(2, 2, 2, 2, 2)).encoder(), {"a": segnet_head(3, 2), "b": segnet_head(1, 2)})
    assert hps(torch.randn(1, 3, 32, 32))["a"].shape == (1, 3, 32, 32)
    backbone = resnet(18, dilated=True, width=4)
    heads = {"seg": DeepLabHead(backbone.out_channels, 7, channels=8), "depth": DeepLabHead(32, 1, channels=8)}
    out = HPS(backbone.encoder(), heads)(torch.randn(2, 3, 64, 64))
    assert out["seg"].shape == (2, 7, 8, 8)
