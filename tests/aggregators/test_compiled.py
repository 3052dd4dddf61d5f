"""The optional numba kernel of the dual-cone projections: the switch, the failures it reports,
and what the kernel itself answers (its agreement with the numpy and torch solvers, and with
quadprog, is in test_solvers.py)."""

from __future__ import annotations

import builtins
import subprocess
import sys
import warnings
from typing import Any

import numpy as np
import pytest

from mtlagg.solvers import compiled, numba_enabled, set_numba


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    """A switch that has not loaded anything yet (restored afterwards)."""
    monkeypatch.setattr(compiled, "_setting", None)
    monkeypatch.setattr(compiled, "_kernel", None)
    monkeypatch.setattr(compiled, "_failure", None)


def _failing_import(monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    real = builtins.__import__

    def fake(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "numba" or (args and args[2] and "_numba_pdas" in args[2]):
            raise error
        return real(name, *args, **kwargs)

    monkeypatch.setitem(sys.modules, "mtlagg.solvers._numba_pdas", None)
    monkeypatch.setattr(builtins, "__import__", fake)


def test_missing_numba_falls_back_quietly_or_raises_when_required(fresh: None, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = ModuleNotFoundError("No module named 'numba'", name="numba")
    _failing_import(monkeypatch, missing)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (a missing optional dependency is not a warning)
        assert compiled.pdas_kernel() is None and not numba_enabled()
    with pytest.raises(ImportError, match=r"numba is not installed \(pip install \"mtlagg\[numba\]\"\)"):
        set_numba(True)


def test_broken_numba_is_reported_once(fresh: None, monkeypatch: pytest.MonkeyPatch) -> None:
    _failing_import(monkeypatch, ImportError("Numba needs NumPy 2.3 or less"))
    with pytest.warns(RuntimeWarning, match=r"numba is installed but could not be imported .*NumPy 2.3"):
        assert compiled.pdas_kernel() is None
    with pytest.raises(ImportError, match=r"could not be imported"):
        set_numba(True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert compiled.pdas_kernel() is None  # (no second warning)


def test_switch_values(fresh: None) -> None:
    with pytest.raises(TypeError, match=r"enabled must be True, False or None"):
        set_numba(1)  # type: ignore[arg-type]
    set_numba(False)
    assert compiled.pdas_kernel() is None and not numba_enabled()
    set_numba(None)
    assert (compiled.pdas_kernel() is not None) == _has_numba()


def test_environment_variable_switches_it_off() -> None:
    code = "from mtlagg.solvers import numba_enabled; print(numba_enabled())"
    off = subprocess.run([sys.executable, "-c", code], env={"MTLAGG_NUMBA": "0"}, capture_output=True, text=True)
    assert off.returncode == 0, off.stderr
    assert off.stdout.strip() == "False"


def _has_numba() -> bool:
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def test_kernel_reports_unsettled_and_indefinite_problems() -> None:
    pytest.importorskip("numba")
    from mtlagg.solvers._numba_pdas import primal_dual_active_set
    from mtlagg.solvers.pdas import FLIP

    rng = np.random.default_rng(0)
    J = rng.standard_normal((12, 30))
    G = J @ J.T
    G /= G.diagonal().max()
    C = -np.abs(rng.standard_normal((5, 12))) * 0.1
    free = np.zeros((5, 12), dtype=bool)
    X, settled = primal_dual_active_set(G, C, free, 25, FLIP)
    assert settled.all()
    gradient = X @ G + C
    assert (X >= -1e-13).all() and (gradient >= -1e-10).all() and np.abs(X * gradient).max() <= 1e-10
    # one iteration from x = 0 (with descent directions) cannot settle
    _, settled = primal_dual_active_set(G, C, free, 1, FLIP)
    assert not settled.any()
    # a block that is not positive definite: declined, whatever the iterations
    indefinite = np.diag([1.0, -1.0, 1.0])
    _, settled = primal_dual_active_set(indefinite, np.full((1, 3), -0.5), np.ones((1, 3), dtype=bool), 25, FLIP)
    assert not settled.any()
