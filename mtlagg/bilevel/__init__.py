"""Bilevel task weighting: the weights are learned on an outer (validation) objective.

``MOML``, ``AutoLambda`` and ``FORUM`` take the model, a training batch and an outer batch::

    method = mtlagg.bilevel.AutoLambda(inner_lr=lr)
    for batch, val_batch in zip(train_loader, cycle(val_loader)):
        optimizer.zero_grad()
        result = method.step(model, loss_fn, batch, val_batch)   # weights updated, .grad filled
        optimizer.step()

``loss_fn(forward, batch)`` returns the ``T`` task losses, computing predictions with ``forward``
(called like the model). Virtual steps are functional (``torch.func.functional_call``), never a
copy of the model. The classes are registered in :data:`mtlagg.REGISTRY` (``kind = "bilevel"``).
"""

from ._common import BilevelMethod, BilevelResult, split_batch
from .autolambda import AutoLambda
from .forum import FORUM
from .moml import MOML

__all__ = ["FORUM", "MOML", "AutoLambda", "BilevelMethod", "BilevelResult", "split_batch"]
