"""Per-task losses of the benchmark protocols, by name (``TaskSpec.loss``).

Every loss takes ``(prediction, target)`` and returns a scalar mean over the valid elements.

* ``cross_entropy``: softmax cross-entropy on logits ``(B, C[, H, W])``, targets ``(B[, H, W])`` with
  ``-1`` ignored (NYUv2 / Cityscapes segmentation; MultiMNIST, Office, SICK entailment, PAWS-X).
* ``bce``: binary cross-entropy on logits ``(B,)`` or ``(B, 1)``, targets in {0, 1} (CelebA attributes).
* ``mse``: mean squared error (QM9 standardised targets, SICK relatedness).
* ``depth_l1``: L1 over pixels whose target depth is non-zero (MTAN protocol).
* ``normal_cosine``: ``1 - mean <pred/|pred|, target>`` over pixels whose target normal is non-zero.

The masked losses return 0 (with a gradient) when a batch has no valid pixel, instead of the
0/0 = NaN of the peers' code (reference mtllib.md §5, pitfall 7).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from benchmarks.datasets._errors import DatasetError

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    target = target.long()
    if (target != -1).sum() == 0:
        return pred.sum() * 0.0
    return F.cross_entropy(pred, target, ignore_index=-1)


def bce(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(pred.reshape(target.shape), target.float())


def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(pred.reshape(target.shape), target.float())


def _pixel_mask(target: torch.Tensor) -> torch.Tensor:
    """``(B, 1, H, W)`` mask of the pixels whose target is not all zero over the channels."""
    return (target != 0).any(dim=1, keepdim=True)


def depth_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    mask = _pixel_mask(target).expand_as(target)
    n = mask.sum()
    if n == 0:
        return pred.sum() * 0.0
    return (pred - target).abs().masked_select(mask).sum() / n


def normal_cosine(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    mask = _pixel_mask(target)
    n = mask.sum()
    if n == 0:
        return pred.sum() * 0.0
    unit = F.normalize(pred, p=2, dim=1)
    dot = (unit * target).sum(dim=1, keepdim=True)
    return 1.0 - dot.masked_select(mask).sum() / n


LOSSES: dict[str, LossFn] = {
    "cross_entropy": cross_entropy,
    "bce": bce,
    "mse": mse,
    "depth_l1": depth_l1,
    "normal_cosine": normal_cosine,
}


def get_loss(name: str) -> LossFn:
    try:
        return LOSSES[name]
    except KeyError:
        raise DatasetError(f"unknown loss {name!r}; losses: {', '.join(LOSSES)}") from None
