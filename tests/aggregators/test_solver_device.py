"""``set_solver_device``: validation, and which aggregators move their small solves to the CPU.

(What the setting does on a GPU is checked in ``tests/devices/test_cuda.py``.)"""

from __future__ import annotations

import pytest

from mtlagg.aggregators import (
    IMTLG,
    MGDA,
    SI,
    AlignedMTL,
    CAGrad,
    ConFIG,
    DualProj,
    FairGrad,
    GradNorm,
    LogCAGrad,
    LogMGDA,
    Mean,
    NashMTL,
    UPGrad,
    get_solver_device,
    set_solver_device,
)


def test_setting_is_validated_and_read_back() -> None:
    before = get_solver_device()
    assert before == "cpu"  # (the default)
    try:
        set_solver_device("input")
        assert get_solver_device() == "input"
        with pytest.raises(ValueError, match=r"one of \('cpu', 'input'\), got 'gpu'"):
            set_solver_device("gpu")
        assert get_solver_device() == "input"
    finally:
        set_solver_device(before)


def test_only_stateless_solver_based_aggregators_solve_on_the_host() -> None:
    for make in (MGDA, CAGrad, NashMTL, FairGrad, UPGrad, DualProj, IMTLG, AlignedMTL, LogMGDA, LogCAGrad):
        assert make().host_solve, make
    # (closed forms over the whole Jacobian, learnable weights on the device, nothing to solve)
    for make in (ConFIG, GradNorm, Mean, SI):
        assert not getattr(make(), "host_solve", False), make
