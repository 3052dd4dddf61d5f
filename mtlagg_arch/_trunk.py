"""Trunks that expose the per-stage features MTAN's attention modules read."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from ._base import ModuleSpec, check_stages, instantiate


class TapTrunk(nn.Module):
    """A shared network that returns, for each of its stages, the pair ``(u, p)``.

    ``p`` is the stage's output, which the attention mask multiplies; ``u`` is the intermediate
    feature the mask is computed from (in MTAN, the features before the stage's last layer).

    Subclasses set :attr:`tap_channels` (``(channels of u, channels of p)`` per stage) and
    :attr:`tap_spatial` (``True`` where the features are images ``(B, C, H, W)``, ``False`` for
    vectors ``(B, C)``), implement :meth:`forward_taps`, and may override :meth:`make_transfer`.
    """

    tap_channels: list[tuple[int, int]]
    tap_spatial: list[bool]

    def forward_taps(self, x: Any) -> list[tuple[Tensor, Tensor]]:
        raise NotImplementedError

    def forward(self, x: Any) -> Tensor:
        """The trunk's final features (the last stage's ``p``)."""
        return self.forward_taps(x)[-1][1]

    def init_module(self, module: nn.Module) -> None:
        """Initialise a module MTAN attaches to this trunk (attention masks, transfer blocks);
        the default keeps PyTorch's initialisation."""

    def make_transfer(self, stage: int) -> nn.Module | None:
        """The block that carries task features from ``stage`` to ``stage + 1`` (``None``: MTAN's
        default, a 3x3 convolution (or linear layer), batch norm and ReLU to the next stage's
        channels, with the resolution matched by max-pooling or bilinear interpolation)."""
        return None


class SequentialTrunk(TapTrunk):
    """A trunk made of stages applied one after the other.

    With ``split=True``, a stage that is an ``nn.Sequential`` of at least two modules gives ``u``
    = the output of all but its last module and ``p`` = its output (as in MTAN, where the mask is
    computed from the features before the block's last layer); any other stage gives ``u = p``.

    Args:
        stages: modules or zero-argument factories.
        channels: per stage, the channels of ``p`` (``u`` has the same), or a pair ``(u, p)``.
        spatial: per stage (or one for all), whether the features are images ``(B, C, H, W)``.
        split: as above.
    """

    def __init__(
        self,
        stages: Sequence[ModuleSpec],
        channels: Sequence[int | tuple[int, int]],
        spatial: bool | Sequence[bool] = True,
        split: bool = True,
    ) -> None:
        super().__init__()
        stage_list = check_stages(stages)
        self.stages = nn.ModuleList(instantiate(s, 1, f"stages[{i}]")[0] for i, s in enumerate(stage_list))
        if isinstance(channels, (int, str)) or not isinstance(channels, Sequence) or len(channels) != len(stage_list):
            raise ValueError(f"channels must give one entry per stage ({len(stage_list)}), got {channels!r}")
        pairs: list[tuple[int, int]] = []
        for c in channels:
            pair = (c, c) if isinstance(c, int) else tuple(c)
            if len(pair) != 2 or any(not isinstance(v, int) or v < 1 for v in pair):
                raise ValueError(f"each channels entry must be a positive int or a pair (u, p) of them, got {c!r}")
            pairs.append((pair[0], pair[1]))
        self.tap_channels = pairs
        flags = [spatial] * len(stage_list) if isinstance(spatial, bool) else list(spatial)
        if len(flags) != len(stage_list):
            raise ValueError(f"spatial must be a bool or one bool per stage ({len(stage_list)}), got {spatial!r}")
        self.tap_spatial = [bool(f) for f in flags]
        # body/tail views share the stage's modules; a plain list keeps them out of the registry
        self._split: list[tuple[nn.Module, nn.Module] | None] = []
        for stage in self.stages:
            if split and isinstance(stage, nn.Sequential) and len(stage) >= 2:
                self._split.append((stage[:-1], stage[-1]))
            else:
                self._split.append(None)

    def forward_taps(self, x: Any) -> list[tuple[Tensor, Tensor]]:
        taps = []
        h = x
        for stage, parts in zip(self.stages, self._split):
            if parts is None:
                h = stage(h)
                taps.append((h, h))
            else:
                u = parts[0](h)
                h = parts[1](u)
                taps.append((u, h))
        return taps
