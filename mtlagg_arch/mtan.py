"""Multi-task attention network (Liu et al., CVPR 2019)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._base import ModuleSpec, MultiTaskModel, _Cut
from ._trunk import SequentialTrunk, TapTrunk


def attention_block(in_channels: int, channels: int, spatial: bool) -> nn.Module:
    """MTAN's attention mask: ``[1x1 conv, BN, ReLU, 1x1 conv, BN, sigmoid]`` (linear layers for vectors)."""
    if spatial:
        return nn.Sequential(
            nn.Conv2d(in_channels, channels, 1),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 1),
            nn.BatchNorm2d(channels),
            nn.Sigmoid(),
        )
    return nn.Sequential(
        nn.Linear(in_channels, channels),
        nn.BatchNorm1d(channels),
        nn.ReLU(inplace=True),
        nn.Linear(channels, channels),
        nn.BatchNorm1d(channels),
        nn.Sigmoid(),
    )


def transfer_block(in_channels: int, channels: int, spatial: bool, next_spatial: bool | None = None) -> nn.Module:
    """MTAN's default block between stages: ``[3x3 conv, BN, ReLU]`` (``[linear, BN, ReLU]`` for
    vectors); from images to vectors (e.g. before a fully connected stage) it ends with a global
    average pooling."""
    next_spatial = spatial if next_spatial is None else next_spatial
    if spatial:
        layers = [nn.Conv2d(in_channels, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU()]
        if not next_spatial:
            layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        return nn.Sequential(*layers)
    if next_spatial:
        raise ValueError("MTAN cannot carry vector features into a later image stage; give a TapTrunk.make_transfer")
    return nn.Sequential(nn.Linear(in_channels, channels), nn.BatchNorm1d(channels), nn.ReLU())


def match_resolution(features: Tensor, like: Tensor) -> Tensor:
    """Resize image features to ``like``'s height and width (max-pooling down, bilinear up)."""
    if features.dim() != 4 or features.shape[-2:] == like.shape[-2:]:
        return features
    size = tuple(like.shape[-2:])
    if features.shape[-2] >= size[0] and features.shape[-1] >= size[1]:
        return F.adaptive_max_pool2d(features, size)
    return F.interpolate(features, size=size, mode="bilinear", align_corners=True)


class MTAN(MultiTaskModel):
    r"""Multi-task attention network: a shared trunk with per-task attention modules at each stage.

    The trunk gives, at every stage ``j``, features :math:`u^j` and its output :math:`p^j`. Task
    ``t`` computes a soft mask :math:`a^j_t = \mathrm{att}^j_t([u^j; f^{j-1}(\hat a^{j-1}_t)])` (only
    :math:`u^0` at the first stage) and keeps :math:`\hat a^j_t = a^j_t \odot p^j`; :math:`f^{j-1}` is
    the block that carries the task features to the next stage's channels and resolution (where
    ``u`` and ``p`` differ in resolution, e.g. a stage ending with pooling, ``u`` is max-pooled to
    ``p``'s). The head
    reads the last :math:`\hat a_t`. Liu, Johns and Davison, "End-to-end multi-task learning with
    attention", CVPR 2019. As in the authors' code, the blocks :math:`f^j` are shared by the tasks
    (``share_transfer=True``); they are then shared parameters, as every task depends on them.

    Args:
        stages: the trunk: a :class:`~mtlagg_arch._trunk.TapTrunk` (e.g. the SegNet of
            :func:`mtlagg_arch.backbones.segnet`), or a sequence of stages (modules or
            zero-argument factories), wrapped in a :class:`~mtlagg_arch._trunk.SequentialTrunk`.
        heads: one module per task.
        channels: for a sequence of stages, each stage's output channels (or ``(u, p)`` pairs).
        spatial: for a sequence of stages, whether the features are images (bool or one per stage).
        split_stages: for a sequence of stages, take ``u`` before the last module of each
            ``nn.Sequential`` stage (default), else ``u = p``.
        share_transfer: one set of blocks :math:`f^j` for all tasks (default) or one per task.
        multi_input: each task has its own input batch (the trunk runs once per task).

    Split: shared = the trunk and (with ``share_transfer``) the blocks :math:`f^j`; task ``t`` = its
    attention modules (and blocks) and its head. Representation: the trunk's :math:`u^j` and
    :math:`p^j` as the attention modules read them, plus the shared blocks' parameters (a shared
    module applied to task-specific features: no activation separates it from the tasks, so its
    parameters themselves are part of the cut; ``mtlagg.backward`` handles parameters in
    ``features=``).
    """

    def __init__(
        self,
        stages: TapTrunk | Sequence[ModuleSpec],
        heads: Mapping[str, nn.Module],
        *,
        channels: Sequence[int | tuple[int, int]] | None = None,
        spatial: bool | Sequence[bool] = True,
        split_stages: bool = True,
        share_transfer: bool = True,
        multi_input: bool = False,
    ) -> None:
        super().__init__(heads, multi_input=multi_input)
        if isinstance(stages, TapTrunk):
            trunk = stages
        else:
            if channels is None:
                raise ValueError("channels is required when stages is a sequence: each stage's output channels")
            trunk = SequentialTrunk(stages, channels, spatial, split_stages)
        self.shared.trunk = trunk
        self.share_transfer = bool(share_transfer)
        pairs, flags = trunk.tap_channels, trunk.tap_spatial
        S = len(pairs)
        self.num_stages = S

        def transfers() -> nn.ModuleList:
            blocks = []
            for j in range(S - 1):
                block = trunk.make_transfer(j)
                if block is None:
                    block = transfer_block(pairs[j][1], pairs[j + 1][1], flags[j], flags[j + 1])
                    trunk.init_module(block)
                blocks.append(block)
            return nn.ModuleList(blocks)

        if self.share_transfer:
            self.shared.transfers = transfers()
        for t in self.task_names:
            self.tasks[t].attention = nn.ModuleList(
                attention_block(pairs[j][0] + (pairs[j][1] if j else 0), pairs[j][1], flags[j]) for j in range(S)
            )
            trunk.init_module(self.tasks[t].attention)
            if not self.share_transfer:
                self.tasks[t].transfers = transfers()
        self._finalize()

    @classmethod
    def from_backbone(
        cls, backbone: Any, heads: Mapping[str, nn.Module], *, multi_input: bool = False, **options: Any
    ) -> MTAN:
        return cls(backbone.mtan_trunk(), heads, multi_input=multi_input, **options)

    def _transfers(self, task: str) -> nn.ModuleList:
        return self.shared.transfers if self.share_transfer else self.tasks[task].transfers

    def _forward(self, x: Any, tasks: list[str], cut: _Cut) -> dict[str, Tensor]:
        taps = [(cut.tap(u), cut.tap(p)) for u, p in self.shared.trunk.forward_taps(x)]
        if len(taps) != self.num_stages:
            raise ValueError(f"the trunk returned {len(taps)} stages of features, expected {self.num_stages}")
        if self.share_transfer:
            for parameter in self.shared.transfers.parameters():
                cut.tap(parameter)
        # the masks live at the resolution of the features they multiply
        taps = [(match_resolution(u, p), p) for u, p in taps]
        outputs = {}
        for t in tasks:
            attention, transfers = self.tasks[t].attention, self._transfers(t)
            carried: Tensor | None = None
            for j, (u, p) in enumerate(taps):
                mask = attention[j](u if carried is None else torch.cat([u, carried], dim=1))
                attended = mask * p
                if j + 1 < self.num_stages:
                    carried = match_resolution(transfers[j](attended), taps[j + 1][1])
            outputs[t] = self.tasks[t].head(attended)
        return outputs
