"""Aggregation of the gradients of the log-losses: SI, LOG_MGDA, LOG_CAGrad, LOG_IMTL."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from ._base import Aggregator, AggregatorInput, Needs, WeightedAggregator
from ._registry import register
from ._utils import check_float
from .cagrad import CAGrad
from .imtlg import IMTLG
from .mgda import MGDA, Normalization
from .sum import Sum


@register()
class LogLoss(Aggregator):
    r"""Any aggregator, applied to the gradients of :math:`\log(L_i + \epsilon)` instead of :math:`L_i`.

    Since :math:`\nabla \log(L_i + \epsilon) = g_i / (L_i + \epsilon)`, the wrapped aggregator sees
    the Jacobian :math:`D J` (Gramian :math:`D G D`) with :math:`D = \mathrm{diag}(1/(L_i +
    \epsilon))`, and its weights ``v`` (on the log-gradients) map back to the raw gradients:
    :math:`d = \sum_i v_i\, g_i / (L_i + \epsilon)`, i.e. :math:`w_i = v_i / (L_i + \epsilon)`.
    A weighted aggregator stays weighted (and keeps its Gramian shortcut); any other one gets the
    rescaled Jacobian. The wrapped aggregator receives :math:`\log(L_i + \epsilon)` as its losses.
    Non-conflicting iff the wrapped aggregator is (a positive rescaling of the rows keeps the dual
    cone). Needs the loss values; :math:`L_i + \epsilon \le 0` raises a ``ValueError``.

    The registered shortcuts are MTLlib's log-loss methods: :class:`SI` (``LogLoss(Sum())``),
    :class:`LogMGDA`, :class:`LogCAGrad` and :class:`LogIMTL`. MTLlib uses
    :math:`\epsilon = 10^{-8}` for LOG_MGDA and LOG_IMTL and none for SI and LOG_CAGrad; its
    LOG_MGDA also divides the raw weights by :math:`\sum_i v_i / L_i` (a scale), and its
    LOG_CAGrad multiplies by ``T``.

    Args:
        aggregator: the aggregator to apply to the log-loss gradients.
        eps: :math:`\epsilon \ge 0` added to the losses (default 0).
    """

    uses_losses = True

    def __new__(cls, *args: Any, **kwargs: Any) -> LogLoss:
        aggregator = args[0] if args else kwargs.get("aggregator")
        if cls is LogLoss and isinstance(aggregator, WeightedAggregator):
            cls = WeightedLogLoss
        return super().__new__(cls)

    def __init__(self, aggregator: Aggregator, *, eps: float = 0.0) -> None:
        if isinstance(aggregator, type) or not isinstance(aggregator, Aggregator):
            raise TypeError(f"aggregator must be an Aggregator instance, got {aggregator!r}")
        if isinstance(aggregator, LogLoss):
            raise TypeError("LogLoss of a LogLoss is the log of the log-loss: wrap the inner aggregator directly")
        self.aggregator = aggregator
        self.eps = check_float(eps, "eps", minimum=0.0)
        self.needs = aggregator.needs  # type: ignore[misc]
        self.uses_input_values = aggregator.uses_input_values  # type: ignore[misc]
        self.uses_block_gramians = aggregator.uses_block_gramians  # type: ignore[misc]
        self.host_solve = getattr(aggregator, "host_solve", False)  # type: ignore[misc]

    @property
    def non_conflicting(self) -> bool:  # type: ignore[override]
        return bool(self.aggregator.non_conflicting)

    def _scales(self, inputs: AggregatorInput, like: Tensor) -> Tensor:
        """``1 / (L_i + eps)``, float64 on ``like``'s device."""
        if inputs.losses is None:
            raise ValueError(f"{type(self).__name__} needs the loss values: pass losses=")
        shifted = inputs.losses.to(device=like.device, dtype=torch.float64) + self.eps
        if bool((shifted <= 0).any()):
            raise ValueError(
                f"{type(self).__name__} takes log(L_i + eps), so every L_i + eps must be > 0; got losses "
                f"{inputs.losses.tolist()} with eps={self.eps}"
            )
        return 1 / shifted

    def _inner_inputs(self, inputs: AggregatorInput, scales: Tensor) -> AggregatorInput:
        jacobian = inputs.jacobian
        if jacobian is not None:
            jacobian = jacobian * scales.to(jacobian.dtype)[:, None]
        gramian = None
        if inputs.has_gramian and (jacobian is None or inputs._gramian is not None):
            raw = inputs.gramian
            gramian = (raw.to(torch.float64) * scales[:, None] * scales[None, :]).to(raw.dtype)
        block_gramians = None
        if inputs.block_gramians is not None:
            outer = scales[:, None] * scales[None, :]
            block_gramians = [(b.to(torch.float64) * outer.to(b.device)).to(b.dtype) for b in inputs.block_gramians]
        return AggregatorInput(
            inputs.num_tasks,
            losses=-scales.log(),
            gramian=gramian,
            jacobian=jacobian,
            input_values=inputs.input_values,
            block_sizes=inputs.block_sizes,
            block_names=inputs.block_names,
            block_shapes=inputs.block_shapes,
            block_gramians=block_gramians,
        )

    def compute_direction(self, inputs: AggregatorInput) -> Tensor:
        jacobian = inputs.jacobian
        assert jacobian is not None
        scales = self._scales(inputs, jacobian)
        return self.aggregator.compute_direction(self._inner_inputs(inputs, scales))

    # State goes to the wrapped aggregator.
    def state_dict(self) -> dict[str, Any]:
        return self.aggregator.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.aggregator.load_state_dict(state_dict)

    def reset(self) -> None:
        self.aggregator.reset()

    def extra_repr(self) -> str:
        return f"{self.aggregator!r}" + (f", eps={self.eps}" if self.eps else "")


class WeightedLogLoss(WeightedAggregator, LogLoss):
    """:class:`LogLoss` of a weighted aggregator: weighted too (``LogLoss(...)`` picks it)."""

    aggregator: WeightedAggregator

    def compute_weights(self, inputs: AggregatorInput) -> Tensor:
        reference = inputs.reference()
        assert reference is not None
        scales = self._scales(inputs, reference)
        inner_inputs = self._inner_inputs(inputs, scales)
        # (a deferred check of the Jacobian moves to the scaled one: same non-finite rows)
        inner_inputs._unchecked_jacobian = inputs._unchecked_jacobian and inner_inputs.jacobian is not None
        inner = self.aggregator.compute_weights(inner_inputs)
        inputs._unchecked_jacobian = inputs._unchecked_jacobian and inner_inputs._unchecked_jacobian
        return (inner.to(torch.float64) * scales.to(inner.device)).to(inner.dtype)


@register()
class SI(WeightedLogLoss):
    r"""Scale-invariant loss (the SI baseline of Navon et al., ICML 2022; MTLlib ``scaleinvls``):
    :math:`\sum_i \log L_i`, so :math:`d = \sum_i g_i / L_i`. ``LogLoss(Sum())``; needs only the
    loss values (one ordinary backward). Scale convention: **sum** of the log-loss gradients."""

    weights_task_params = True  # the paper minimises sum_i w_i L_i, heads included

    needs: ClassVar[Needs] = Needs.LOSSES

    def __init__(self, *, eps: float = 0.0) -> None:
        super().__init__(Sum(), eps=eps)

    def extra_repr(self) -> str:
        return f"eps={self.eps}" if self.eps else ""


@register("log_mgda")
class LogMGDA(WeightedLogLoss):
    r""":class:`MGDA` on the log-loss gradients (MTLlib ``log_mgda``): ``LogLoss(MGDA(normalization))``.
    Non-conflicting. Default ``eps=1e-8`` as MTLlib. Scale convention: a convex combination of the
    log-loss gradients (MTLlib further rescales)."""

    def __init__(self, normalization: Normalization = "none", *, eps: float = 1e-8) -> None:
        super().__init__(MGDA(normalization), eps=eps)


@register("log_cagrad")
class LogCAGrad(WeightedLogLoss):
    r""":class:`CAGrad` on the log-loss gradients (MTLlib ``log_cagrad``): ``LogLoss(CAGrad(c, rescale))``.
    Defaults as :class:`CAGrad`, ``eps=0`` as MTLlib. Scale convention: the mean log-loss gradient,
    rescaled as CAGrad (MTLlib multiplies by ``T``)."""

    def __init__(self, c: float = 0.4, rescale: Literal[0, 1, 2] = 1, *, eps: float = 0.0) -> None:
        super().__init__(CAGrad(c, rescale), eps=eps)


@register("log_imtl")
class LogIMTL(WeightedLogLoss):
    r""":class:`IMTLG` on the log-loss gradients (MTLlib ``log_imtl``): ``LogLoss(IMTLG())``, with
    ``eps=1e-8`` as MTLlib. Scale convention: weights on the log-loss gradients sum to 1."""

    def __init__(self, *, eps: float = 1e-8) -> None:
        super().__init__(IMTLG(), eps=eps)
