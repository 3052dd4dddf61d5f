"""STCH: smooth Tchebycheff scalarization."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from ._base import AggregatorInput, Needs, WeightedAggregator
from ._registry import register
from ._stateful import Stateful, state_dtype


@register()
class STCH(Stateful, WeightedAggregator):
    r"""Smooth Tchebycheff scalarization (Lin et al., "Smooth Tchebycheff Scalarization for
    Multi-Objective Optimization", ICML 2024), with the warm-up of its multi-task code.

    After the warm-up, with the nadir point :math:`z` (the mean losses of the last warm-up epoch)
    and :math:`l_i = \log(L_i / z_i + \epsilon)`, the objective is

    .. math:: \mathcal L = T\,\mu \log \sum_i e^{(l_i - \max_j l_j)/\mu},

    a smooth maximum of the normalised log-losses: the task that lags most relative to its nadir
    value gets most of the weight. Its gradient is :math:`\sum_i w_i g_i` with

    .. math:: w_i = T\,\mathrm{softmax}_i(l/\mu)\,\frac{1}{L_i + \epsilon z_i}.

    During the warm-up the objective is :math:`\sum_i \log(L_i + \epsilon)` (weights
    :math:`1/(L_i+\epsilon)`); the losses of the last warm-up epoch are averaged into :math:`z`.
    Call :meth:`end_epoch` at the end of every epoch (or pass ``nadir=`` to skip the warm-up).

    Needs: the loss values only, positive. State: epoch counter, the running mean of the warm-up
    epoch, the nadir point.

    Defaults: :math:`\mu = 1`, ``warmup_epochs = 5`` (LibMTL's ``STCH_warmup_epoch = 4``: epochs 0-3
    plain, epoch 4 plain and averaged, STCH from epoch 5), :math:`\epsilon = 10^{-20}`; the factor
    :math:`T` as in LibMTL.

    Args:
        mu: smoothing :math:`\mu > 0` (smaller: closer to the maximum).
        warmup_epochs: epochs of log-sum training before STCH starts; the nadir is the mean of the
            losses seen during the last of them. ``0`` needs ``nadir``.
        nadir: a nadir point to use from the first step (no warm-up).
        eps: :math:`\epsilon`.
    """

    needs: ClassVar[Needs] = Needs.LOSSES
    uses_losses: ClassVar[bool] = True

    def __init__(
        self, mu: float = 1.0, warmup_epochs: int = 5, nadir: Tensor | None = None, eps: float = 1e-20
    ) -> None:
        if not mu > 0:
            raise ValueError(f"mu must be positive, got {mu!r}")
        if not isinstance(warmup_epochs, int) or isinstance(warmup_epochs, bool) or warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be a non-negative int, got {warmup_epochs!r}")
        if nadir is None and warmup_epochs == 0:
            raise ValueError("STCH(warmup_epochs=0) needs the nadir point: pass nadir=")
        if nadir is not None:
            nadir = torch.as_tensor(nadir, dtype=torch.float64).detach()
            if nadir.dim() != 1 or not bool((nadir > 0).all()) or not bool(torch.isfinite(nadir).all()):
                raise ValueError(f"nadir must be a 1-D tensor of positive finite numbers, got {nadir}")
        self.mu = float(mu)
        self.warmup_epochs = warmup_epochs
        self.nadir = nadir
        self.eps = float(eps)
        self._init_state()

    def _fresh_state(self) -> dict[str, Any]:
        return {"num_tasks": None, "epoch": 0, "nadir": None, "running_sum": None, "running_count": 0}

    @property
    def warming_up(self) -> bool:
        """Whether the next step is still a warm-up step."""
        return self.nadir is None and self._state["nadir"] is None

    def nadir_point(self) -> Tensor | None:
        """The nadir point in use (``None`` during the warm-up)."""
        value = self.nadir if self.nadir is not None else self._state["nadir"]
        return None if value is None else value.clone()

    def compute_weights(self, inputs: AggregatorInput) -> Tensor:
        losses = inputs.losses
        if losses is None:
            raise ValueError("STCH needs the loss values")
        T = inputs.num_tasks
        self._check_num_tasks(T)
        values = losses.detach().to(state_dtype(losses))
        if bool((values <= 0).any()):
            raise ValueError(f"STCH takes the logarithm of the losses and needs them positive, got {values.tolist()}")
        state = self._state
        nadir = self.nadir_point()
        if nadir is None:
            if state["epoch"] == self.warmup_epochs - 1:
                state["running_sum"] = values.clone() if state["running_sum"] is None else state["running_sum"] + values
                state["running_count"] += 1
            return 1.0 / (values + self.eps)
        if nadir.shape[0] != T:
            raise ValueError(f"the nadir point has {nadir.shape[0]} entries but there are {T} tasks")
        nadir = nadir.to(values)
        log_ratios = torch.log(values / nadir + self.eps)
        return T * torch.softmax(log_ratios / self.mu, dim=0) / (values + self.eps * nadir)

    def end_epoch(self, mean_losses: Tensor | None = None) -> None:
        """Close the current epoch. At the end of the last warm-up epoch the nadir point is fixed:
        ``mean_losses`` if given, else the mean of the losses seen during that epoch."""
        state = self._state
        if self.warming_up and state["epoch"] == self.warmup_epochs - 1:
            if mean_losses is not None:
                nadir = torch.as_tensor(mean_losses).detach().reshape(-1)
                self._check_num_tasks(nadir.shape[0], "mean losses")
                nadir = nadir.to(state_dtype(nadir))
            elif state["running_count"] == 0:
                raise RuntimeError(
                    "STCH.end_epoch() closed the last warm-up epoch, but no step ran in it: the nadir point is the "
                    "mean of that epoch's losses (run the epoch with this aggregator, or pass mean_losses=)"
                )
            else:
                nadir = state["running_sum"] / state["running_count"]
            if not bool((nadir > 0).all()):
                raise ValueError(f"the nadir point must be positive, got {nadir.tolist()}")
            state["nadir"] = nadir
            state["running_sum"] = None
            state["running_count"] = 0
        state["epoch"] += 1

    @property
    def epoch(self) -> int:
        """Number of completed epochs."""
        return int(self._state["epoch"])

    def extra_repr(self) -> str:
        return f"mu={self.mu:g}, warmup_epochs={self.warmup_epochs}"
