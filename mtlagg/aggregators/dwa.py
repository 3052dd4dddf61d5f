"""DWA: dynamic weight average."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from ._base import AggregatorInput, Needs, WeightedAggregator
from ._registry import register
from ._stateful import Stateful, state_dtype


@register()
class DWA(Stateful, WeightedAggregator):
    r"""Dynamic Weight Average (Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention",
    CVPR 2019).

    .. math:: w_k(t) = T\,\mathrm{softmax}_k\!\big(r(t-1)/\tau\big),\qquad
        r_k(t-1) = \bar L_k(t-1) / \bar L_k(t-2),

    where :math:`\bar L_k(e)` is task :math:`k`'s mean training loss over epoch :math:`e`: a task
    whose loss falls more slowly gets more weight. During the first two epochs :math:`w = 1`.
    Scale: the weights sum to :math:`T` (the paper's convention).

    **Per epoch (default, as in the paper and LibMTL).** The aggregator accumulates the mean of the
    losses it sees; call :meth:`end_epoch` once at the end of every epoch (optionally with your own
    epoch means, e.g. batch-size weighted ones: ``dwa.end_epoch(mean_losses)``).

    **Per iteration** (``window=n``, MTLlib's variant): :math:`r_k` is the ratio of the mean loss
    over the last ``n`` steps to the mean over the ``n`` steps before; :math:`w = 1` until ``2n``
    steps have been seen (MTLlib instead starts from a window of ones, and divides the loss by
    :math:`T`). No :meth:`end_epoch` call in this mode.

    Needs: the loss values only. State: the running epoch sum, the last two epoch means (or the
    loss window).

    Args:
        temperature: :math:`\tau` (default 2, the paper's).
        window: ``None`` (per epoch) or the window length of the per-iteration variant (MTLlib: 25).
    """

    needs: ClassVar[Needs] = Needs.LOSSES
    uses_losses: ClassVar[bool] = True

    def __init__(self, temperature: float = 2.0, window: int | None = None) -> None:
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature!r}")
        if window is not None and (not isinstance(window, int) or isinstance(window, bool) or window < 1):
            raise ValueError(f"window must be None (per epoch) or a positive int, got {window!r}")
        self.temperature = float(temperature)
        self.window = window
        self._init_state()

    def _fresh_state(self) -> dict[str, Any]:
        return {
            "num_tasks": None,
            "epoch": 0,
            "epoch_sum": None,
            "epoch_count": 0,
            "epoch_means": [],  # the last two epochs' means, oldest first
            "recent": None,  # per-iteration mode: the last 2 * window loss vectors, oldest first
        }

    def _softmax_weights(self, ratios: Tensor) -> Tensor:
        return ratios.shape[0] * torch.softmax(ratios / self.temperature, dim=0)

    def compute_weights(self, inputs: AggregatorInput) -> Tensor:
        losses = inputs.losses
        if losses is None:
            raise ValueError("DWA needs the loss values")
        T = inputs.num_tasks
        self._check_num_tasks(T)
        values = losses.detach().to(state_dtype(losses))
        state = self._state
        if self.window is None:
            means = state["epoch_means"]
            weights = self._softmax_weights(means[1] / means[0]) if len(means) == 2 else torch.ones_like(values)
            state["epoch_sum"] = values.clone() if state["epoch_sum"] is None else state["epoch_sum"] + values
            state["epoch_count"] += 1
            return weights
        recent = state["recent"]
        if recent is not None and recent.shape[0] == 2 * self.window:
            weights = self._softmax_weights(recent[self.window :].mean(0) / recent[: self.window].mean(0))
        else:
            weights = torch.ones_like(values)
        recent = values[None] if recent is None else torch.cat([recent, values[None]])
        state["recent"] = recent[-2 * self.window :]
        return weights

    def end_epoch(self, mean_losses: Tensor | None = None) -> None:
        """Close the current epoch (per-epoch mode).

        Args:
            mean_losses: the epoch's mean loss per task. ``None``: the mean of the losses this
                aggregator saw since the last call.
        """
        if self.window is not None:
            raise RuntimeError(f"DWA(window={self.window}) weighs per iteration; end_epoch() is for the per-epoch mode")
        state = self._state
        if mean_losses is not None:
            means = torch.as_tensor(mean_losses).detach()
            if means.dim() != 1:
                raise ValueError(f"mean_losses must be 1-D (one mean per task), got shape {tuple(means.shape)}")
            self._check_num_tasks(means.shape[0], "mean losses")
            reference = state["epoch_sum"] if state["epoch_sum"] is not None else means.to(state_dtype(means))
            means = means.to(reference)
        else:
            if state["epoch_count"] == 0:
                raise RuntimeError(
                    "DWA.end_epoch() was called but no step ran since the last one: pass mean_losses= or call "
                    "mtlagg.backward with this aggregator during the epoch"
                )
            means = state["epoch_sum"] / state["epoch_count"]
        if not bool(torch.isfinite(means).all()) or bool((means == 0).any()):
            raise ValueError(f"DWA needs finite non-zero epoch mean losses, got {means.tolist()}")
        state["epoch_means"] = [*state["epoch_means"], means.clone()][-2:]
        state["epoch_sum"] = None
        state["epoch_count"] = 0
        state["epoch"] += 1

    @property
    def epoch(self) -> int:
        """Number of completed epochs."""
        return int(self._state["epoch"])

    def extra_repr(self) -> str:
        return f"temperature={self.temperature:g}" + (f", window={self.window}" if self.window else "")
