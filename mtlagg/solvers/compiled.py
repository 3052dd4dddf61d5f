"""Optional compiled kernels: numba (``pip install "mtlagg[numba]"``).

With numba installed, the dual-cone projections on the CPU (UPGrad's ``T`` problems, DualProj's
one, up to :data:`~mtlagg.solvers.numpy_pdas.MAX_TASKS` tasks) run their active-set iterations in a
compiled loop, one problem at a time (:mod:`~mtlagg.solvers._numba_pdas`); the set-up, the
certification and the KKT check of :mod:`~mtlagg.solvers.numpy_pdas` stay as they are, and the
answers are the same (tested). Without it, the batched numpy version runs. Measured at ``T = 40``:
the iterations 0.12 ms instead of 0.9 ms (see ``docs/aggregators.md``).

The first call in a process compiles the kernel (about 2 s; cached on disk next to the module
afterwards, when that directory is writable). :func:`set_numba` switches it: ``None`` (default)
uses numba when it imports, ``True`` requires it (``ImportError`` otherwise), ``False`` never uses
it. The environment variable ``MTLAGG_NUMBA=0`` sets ``False`` at import. A numba that is installed
but fails to import (for example a numpy it does not support) is reported by a ``RuntimeWarning``,
once, and the numpy version runs.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import Any

_setting: bool | None = False if os.environ.get("MTLAGG_NUMBA", "").strip() == "0" else None
_kernel: Callable[..., Any] | None = None
_failure: str | None = None  # why numba could not be loaded (once known)


def set_numba(enabled: bool | None) -> None:
    """Use the numba kernels: ``None`` when available (default), ``True`` always (raises
    ``ImportError`` now if numba cannot be imported), ``False`` never."""
    global _setting
    if enabled is not None and not isinstance(enabled, bool):
        raise TypeError(f"enabled must be True, False or None, got {enabled!r}")
    if enabled:
        _load(strict=True)
    _setting = enabled


def numba_enabled() -> bool:
    """Whether the next dual-cone projection on the CPU will use the numba kernel (imports it)."""
    return pdas_kernel() is not None


def pdas_kernel() -> Callable[..., Any] | None:
    """The compiled primal-dual active set (see :mod:`~mtlagg.solvers._numba_pdas`), or ``None``
    when numba is switched off or unavailable."""
    if _setting is False:
        return None
    return _load(strict=bool(_setting))


def _load(strict: bool) -> Callable[..., Any] | None:
    global _kernel, _failure
    if _kernel is not None:
        return _kernel
    if _failure is None:
        try:
            from . import _numba_pdas
        except ModuleNotFoundError as error:
            if error.name != "numba":
                raise
            _failure = 'numba is not installed (pip install "mtlagg[numba]")'
        except Exception as error:  # a broken installation: say so, and go on without it
            _failure = f"numba is installed but could not be imported ({type(error).__name__}: {error})"
            warnings.warn(f"{_failure}; the dual-cone projections use the numpy solver", RuntimeWarning, stacklevel=3)
        else:
            _kernel = _numba_pdas.primal_dual_active_set
            return _kernel
    if strict:
        raise ImportError(_failure)
    return None
