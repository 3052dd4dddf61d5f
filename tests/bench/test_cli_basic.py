"""``mtlagg-bench list``, ``toy`` and ``speed`` on tiny budgets; errors on unknown names."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmarks import cli, toy


def test_list_names_every_method(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("upgrad", "cagrad", "mean (ew)", "random (rlw)"):
        assert name in out


def test_unknown_method_suggests_close_names(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert cli.main(["toy", "--methods", "upgrd", "--steps", "1", "--out", str(tmp_path)]) == 2
    assert "unknown aggregator 'upgrd'; did you mean upgrad" in capsys.readouterr().err


def test_toy_writes_a_figure_and_a_table(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert cli.main(["toy", "--methods", "mean,upgrad", "--steps", "20", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| upgrad |" in out and (tmp_path / "toy.png").stat().st_size > 10_000


def test_toy_losses_match_the_papers_definition() -> None:
    x = torch.tensor([[1.0, 2.0], [-3.0, -4.0]], dtype=torch.float64)
    x1, x2 = x[0]
    valley1 = torch.log(torch.abs(0.5 * (-x1 - 7) - torch.tanh(-x2))) + 6
    valley2 = torch.log(torch.abs(0.5 * (-x1 + 3) + torch.tanh(-x2) + 2)) + 6
    f = toy.toy_losses(x, scale=0.1)
    torch.testing.assert_close(f[0], torch.stack([0.1 * torch.tanh(x2 / 2) * valley1, torch.tanh(x2 / 2) * valley2]))
    x1, x2 = x[1]
    bowl1 = ((-x1 + 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
    bowl2 = ((-x1 - 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
    torch.testing.assert_close(f[1], torch.stack([0.1 * torch.tanh(-x2 / 2) * bowl1, torch.tanh(-x2 / 2) * bowl2]))


def test_pareto_front_is_non_dominated() -> None:
    front = toy.pareto_front(scale=1.0, resolution=150)
    assert torch.all(front[1:, 0] >= front[:-1, 0]) and torch.all(front[1:, 1] < front[:-1, 1])


def test_speed_engine_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["speed", "--tasks", "2", "--repetitions", "1", "--no-memory"]) == 0
    out = capsys.readouterr().out
    assert "| 2 | mtlagg UPGrad (exact) |" in out and "| 2 | torchjd mtl_backward + jac_to_grad(UPGrad) |" in out


@pytest.mark.parametrize("numba", [None, False])
def test_speed_aggregators_table(
    numba: bool | None, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The aggregator table on a tiny matrix: a row per method with both timings and the cosine of
    the directions, and a header that says which dual-cone iterations ran."""
    from benchmarks import speed_aggregators
    from mtlagg.solvers import compiled

    monkeypatch.setattr(compiled, "_setting", numba)
    speed_aggregators.main(["--tasks", "4", "--n", "30", "--repeats", "1", "--warmup", "0", "--only", "UPGrad", "MGDA"])
    out = capsys.readouterr().out
    kernel = "compiled by numba" if numba is None and compiled.pdas_kernel() is not None else "in numpy"
    assert f"dual-cone iterations {kernel}" in out
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in out.splitlines() if line.startswith("| ")}
    assert set(rows) == {"method", "UPGrad", "MGDA"}
    ours, theirs, ratio, cosine = (cell.strip() for cell in rows["UPGrad"])
    assert float(ours) > 0 and float(theirs) > 0 and float(ratio) > 0 and float(cosine) > 0.999
