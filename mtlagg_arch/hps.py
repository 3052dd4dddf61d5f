"""Hard parameter sharing (Caruana, 1993)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from ._base import ModuleSpec, MultiTaskModel, _Cut, instantiate


class HPS(MultiTaskModel):
    r"""Hard parameter sharing: one shared encoder, one head per task.

    :math:`\hat y_t = h_t(E(x))`. Caruana, "Multitask learning: a knowledge-based source of
    inductive bias", ICML 1993.

    Args:
        encoder: the shared encoder (a module or a zero-argument factory). It may return a tensor
            or a tuple / list / dict of tensors; each head receives exactly what it returns.
        heads: one module per task (see :class:`MultiTaskModel`).
        multi_input: each task has its own input batch; the encoder runs once per task.

    Split: shared = the encoder; task ``t`` = head ``t``. Representation: the encoder output(s)
    (one per task with ``multi_input``).
    """

    def __init__(self, encoder: ModuleSpec, heads: Mapping[str, nn.Module], *, multi_input: bool = False) -> None:
        super().__init__(heads, multi_input=multi_input)
        self.shared.encoder = instantiate(encoder, 1, "encoder")[0]
        self._finalize()

    @classmethod
    def from_backbone(cls, backbone: Any, heads: Mapping[str, nn.Module], *, multi_input: bool = False) -> HPS:
        return cls(backbone.encoder, heads, multi_input=multi_input)

    def _forward(self, x: Any, tasks: list[str], cut: _Cut) -> dict[str, Tensor]:
        z = cut.tap_all(self.shared.encoder(x))
        return {t: self.tasks[t].head(z) for t in tasks}
