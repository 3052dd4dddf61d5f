"""Backbones for the architectures, each described as a :class:`Backbone` (stages, channels).

* :func:`mlp` - an MLP, one stage per hidden layer;
* :func:`lenet` - Sener & Koltun's MultiMNIST LeNet (and :func:`lenet_head`);
* :func:`resnet` - ResNet-18/34/50/101 in four stages, optionally dilated (output stride 8),
  with optional torchvision-style weights from a file;
* :func:`segnet` - MTAN's SegNet encoder-decoder for dense prediction.
"""

from ._spec import Backbone, staged
from .lenet import lenet, lenet_head, lenet_stages
from .mlp import mlp, mlp_stage
from .resnet import BasicBlock, Bottleneck, ResNet, build_resnet, load_state_dict_file, resnet
from .segnet import SegNet, segnet

__all__ = [
    "Backbone",
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "SegNet",
    "build_resnet",
    "lenet",
    "lenet_head",
    "lenet_stages",
    "load_state_dict_file",
    "mlp",
    "mlp_stage",
    "resnet",
    "segnet",
    "staged",
]
