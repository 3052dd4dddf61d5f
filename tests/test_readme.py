"""The README's promises: the quickstart runs, and the method table matches the registry."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import mtlagg
from mtlagg.aggregators import REGISTRY

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_quickstart_runs_and_trains(capsys: pytest.CaptureFixture[str]) -> None:
    quickstart = next(block for block in _python_blocks() if "for epoch in range" in block)
    namespace: dict[str, object] = {}
    exec(compile(quickstart, "README quickstart", "exec"), namespace)
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 5
    first = [float(v) for v in re.findall(r"[-\d.]+", printed[0].split("[", 1)[1].split("]")[0])]
    last = [float(v) for v in re.findall(r"[-\d.]+", printed[-1].split("[", 1)[1].split("]")[0])]
    assert last[0] < first[0] and last[1] < first[1], (first, last)


def _table_rows() -> list[list[str]]:
    text = README.read_text()
    table = text.split("<!-- methods-table:start -->")[1].split("<!-- methods-table:end -->")[0]
    rows = [line.strip().strip("|").split("|") for line in table.strip().splitlines()[2:]]
    return [[cell.strip() for cell in row] for row in rows]


def test_method_table_lists_every_registered_name_once() -> None:
    listed: list[str] = []
    for row in _table_rows():
        listed += re.findall(r"`([^`]+)`", row[1])
    assert sorted(listed) == sorted(REGISTRY), "README method table and REGISTRY differ"


def test_method_table_columns_match_the_classes() -> None:
    letters = {mtlagg.Needs.LOSSES: "L", mtlagg.Needs.GRAMIAN: "G", mtlagg.Needs.JACOBIAN: "J"}
    for row in _table_rows():
        name = re.findall(r"`([^`]+)`", row[1])[0]
        cls = REGISTRY[name]
        needs = getattr(cls, "needs", None)
        expected = "bilevel" if getattr(cls, "kind", None) == "bilevel" else letters[needs]
        assert row[4] == expected, f"{name}: README says needs {row[4]}, the class {expected}"
        promised = getattr(cls, "non_conflicting", False)
        if isinstance(promised, bool):
            assert (row[5] == "yes") == promised, f"{name}: README says NC {row[5]}"
