"""``Backbone``: a network described so that every architecture can be built on it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from torch import nn

from .._trunk import SequentialTrunk, TapTrunk


@dataclass(frozen=True)
class Backbone:
    """A backbone split into stages, as :func:`mtlagg_arch.build_architecture` consumes it.

    Attributes:
        name: for messages.
        stage_factories: zero-argument factories, one per stage; each call builds a fresh stage
            (with the pretrained weights loaded, where the backbone has them). Empty for a
            backbone that cannot be split (then CrossStitch, PLE and LTB cannot use it).
        stage_channels: per stage, the output channels (dimension 1), or ``(u, p)`` pairs for MTAN
            (see :class:`~mtlagg_arch._trunk.SequentialTrunk`).
        stage_spatial: per stage, whether the output is an image ``(B, C, H, W)``.
        encoder_factory: builds the whole network as one module (default: the stages in an
            ``nn.Sequential``); used by HPS and as the expert of MMoE / CGC / DSelect-k.
        trunk_factory: builds MTAN's trunk (default: a
            :class:`~mtlagg_arch._trunk.SequentialTrunk` over the stages).
        out_channels: the channels of the encoder's output (default: the last stage's).
    """

    name: str
    stage_factories: tuple[Callable[[], nn.Module], ...] = ()
    stage_channels: tuple[int | tuple[int, int], ...] = ()
    stage_spatial: tuple[bool, ...] = ()
    encoder_factory: Callable[[], nn.Module] | None = None
    trunk_factory: Callable[[], TapTrunk] | None = None
    out_channels: int = field(default=0)

    def __post_init__(self) -> None:
        n = len(self.stage_factories)
        if len(self.stage_channels) != n or len(self.stage_spatial) != n:
            raise ValueError(
                f"backbone {self.name!r}: stage_factories, stage_channels and stage_spatial must have one entry "
                f"per stage, got {n}, {len(self.stage_channels)}, {len(self.stage_spatial)}"
            )
        if n == 0 and self.encoder_factory is None:
            raise ValueError(f"backbone {self.name!r} has neither stages nor an encoder_factory")
        if not self.out_channels:
            if n == 0:
                raise ValueError(f"backbone {self.name!r}: give out_channels when there are no stages")
            object.__setattr__(self, "out_channels", self.stage_out_channels[-1])

    @property
    def stage_out_channels(self) -> list[int]:
        """The output channels of each stage (the ``p`` of ``(u, p)`` pairs)."""
        return [c if isinstance(c, int) else c[1] for c in self.stage_channels]

    @property
    def num_stages(self) -> int:
        return len(self.stage_factories)

    def require_stages(self, architecture: str) -> None:
        if not self.stage_factories:
            raise ValueError(
                f"{architecture} needs a backbone split into stages, and backbone {self.name!r} is not; "
                "use a staged backbone (ResNet, LeNet, MLP) or HPS / MMoE / CGC / DSelectK / MTAN"
            )

    def stages(self) -> list[nn.Module]:
        """Fresh stage modules (one call of each factory)."""
        self.require_stages("this")
        return [factory() for factory in self.stage_factories]

    def encoder(self) -> nn.Module:
        """The whole network as one fresh module."""
        if self.encoder_factory is not None:
            return self.encoder_factory()
        return nn.Sequential(*self.stages())

    def mtan_trunk(self) -> TapTrunk:
        """A fresh trunk for :class:`~mtlagg_arch.MTAN`."""
        if self.trunk_factory is not None:
            return self.trunk_factory()
        self.require_stages("MTAN")
        return SequentialTrunk(self.stages(), list(self.stage_channels), list(self.stage_spatial))


def staged(
    name: str,
    stage_factories: Sequence[Callable[[], nn.Module]],
    channels: Sequence[int | tuple[int, int]],
    spatial: Sequence[bool],
    **kwargs: object,
) -> Backbone:
    return Backbone(name, tuple(stage_factories), tuple(channels), tuple(spatial), **kwargs)  # type: ignore[arg-type]
