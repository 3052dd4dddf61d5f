"""GradDrop: gradient sign dropout."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar

import torch
from torch import Tensor

from ._base import Aggregator, AggregatorInput, Needs
from ._registry import register
from ._utils import check_generator


@register()
class GradDrop(Aggregator):
    r"""Gradient Sign Dropout (Chen et al., "Just Pick a Sign: Optimizing Deep Multitask Models
    with Gradient Sign Dropout", NeurIPS 2020, Algorithm 1).

    For every coordinate (every unit of the layer), the *sign purity*
    :math:`P = \tfrac12\big(1 + \sum_i G_i / \sum_i |G_i|\big)` decides, through one uniform draw
    :math:`U` per coordinate, which sign survives: task ``i`` keeps its gradient there iff
    :math:`M_i = [f(P) > U][G_i > 0] + [f(P) < U][G_i < 0]`, and

    .. math:: d = \sum_i \big(\ell_i + (1 - \ell_i) M_i\big) \odot \nabla L_i,

    with the leak :math:`\ell_i` and a monotone :math:`f` (identity by default).

    What :math:`G_i` is depends on the layer, as in the paper:

    * ``batch_separated=False`` (default; a layer shared by the whole batch, e.g. parameters):
      :math:`G_i = \nabla L_i`, coordinate by coordinate (TorchJD's and MTLlib's GradDrop).
    * ``batch_separated=True`` (activations, the paper's setting; use it with
      ``mtlagg.backward(..., features=...)``): :math:`G_i = \sum_{\text{batch}} \operatorname{sign}(A)
      \odot \nabla_A L_i`, summed over the first (batch) dimension of each feature tensor, so that
      ``P``, ``U`` and the masks have one entry per unit and apply to every sample of the batch
      (LibMTL's rep-grad GradDrop). This reads the values of the features (``uses_input_values``)
      and their shapes, which :func:`mtlagg.backward` passes.

    Where :math:`\sum_i |G_i| = 0` every :math:`G_i` is 0 and nothing is kept there (but the leak).
    Scale convention: **sum** (as the paper, LibMTL and TorchJD; MTLlib averages then multiplies
    by ``T``). Random: reproducible through ``generator``. Not weighted (the masks act per
    coordinate), so it needs the whole Jacobian.

    Args:
        leak: :math:`\ell` in ``[0, 1]``, one number or one per task (default 0).
        batch_separated: see above.
        f: monotone function applied to ``P`` (default identity).
        generator: ``torch.Generator`` for the uniform draws (global RNG if ``None``).
    """

    needs: ClassVar[Needs] = Needs.JACOBIAN

    def __init__(
        self,
        leak: float | Sequence[float] | Tensor = 0.0,
        *,
        batch_separated: bool = False,
        f: Callable[[Tensor], Tensor] | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        leak_tensor = torch.as_tensor(leak, dtype=torch.float64).detach().clone()
        if leak_tensor.dim() > 1:
            raise ValueError(
                f"leak must be a number or a 1-D sequence (one per task), got shape {tuple(leak_tensor.shape)}"
            )
        if not bool(torch.isfinite(leak_tensor).all()) or bool(((leak_tensor < 0) | (leak_tensor > 1)).any()):
            raise ValueError(f"leak must lie in [0, 1], got {leak_tensor.tolist()}")
        if not isinstance(batch_separated, bool):
            raise TypeError(f"batch_separated must be a bool, got {type(batch_separated).__name__}")
        if f is not None and not callable(f):
            raise TypeError(f"f must be callable, got {type(f).__name__}")
        self.leak = leak_tensor
        self.batch_separated = batch_separated
        self.uses_input_values = batch_separated  # type: ignore[misc]
        self.f = f
        self.generator = check_generator(generator)

    def _leaks(self, num_tasks: int, like: Tensor) -> Tensor:
        if self.leak.dim() == 1 and self.leak.shape[0] != num_tasks:
            raise ValueError(f"leak has {self.leak.shape[0]} entries but there are {num_tasks} tasks")
        return self.leak.to(device=like.device, dtype=like.dtype).reshape(-1, 1).expand(num_tasks, 1)

    def _uniform(self, size: int, like: Tensor) -> Tensor:
        device = self.generator.device if self.generator is not None else like.device
        return torch.rand(size, generator=self.generator, device=device, dtype=like.dtype).to(like.device)

    def _masks(self, signals: Tensor) -> Tensor:
        """``M_i`` (``T x k``, as 0/1 in the dtype of ``signals``) from the ``G_i`` (``T x k``)."""
        total = signals.abs().sum(dim=0)
        purity = 0.5 * (1 + signals.sum(dim=0) / torch.where(total > 0, total, 1))
        if self.f is not None:
            purity = self.f(purity)
        uniform = self._uniform(signals.shape[1], signals)
        keep_positive = (purity > uniform)[None, :] & (signals > 0)
        keep_negative = (purity < uniform)[None, :] & (signals < 0)
        return (keep_positive | keep_negative).to(signals.dtype)

    def compute_direction(self, inputs: AggregatorInput) -> Tensor:
        jacobian = inputs.jacobian
        assert jacobian is not None
        T = inputs.num_tasks
        work = jacobian if jacobian.dtype in (torch.float32, torch.float64) else jacobian.float()
        leaks = self._leaks(T, work)
        if not self.batch_separated:
            masks = self._masks(work)
            return ((leaks + (1 - leaks) * masks) * work).sum(dim=0).to(jacobian.dtype)
        shapes = inputs.block_shapes
        if inputs.input_values is None or shapes is None:
            raise ValueError(
                "GradDrop(batch_separated=True) needs the values and the shapes of the feature tensors; "
                "use it through mtlagg.backward(..., features=...)"
            )
        values = inputs.input_values.to(work.dtype)
        parts = []
        offset = 0
        for shape in shapes:
            size = 1
            for extent in shape:
                size *= extent
            batch = shape[0] if len(shape) > 0 else 1
            block = work[:, offset : offset + size].reshape(T, batch, -1)
            signs = values[offset : offset + size].reshape(batch, -1).sign()
            masks = self._masks((block * signs).sum(dim=1))
            parts.append(((leaks[:, :, None] + (1 - leaks[:, :, None]) * masks[:, None, :]) * block).sum(dim=0))
            offset += size
        if offset != work.shape[1]:
            raise ValueError(f"the feature shapes {shapes} describe {offset} columns, the Jacobian has {work.shape[1]}")
        return torch.cat([p.reshape(-1) for p in parts]).to(jacobian.dtype)

    def extra_repr(self) -> str:
        parts = []
        if bool((self.leak != 0).any()):
            parts.append(f"leak={self.leak.tolist()}")
        if self.batch_separated:
            parts.append("batch_separated=True")
        return ", ".join(parts)
