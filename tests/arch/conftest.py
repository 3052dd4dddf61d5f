"""Architecture tests: tiny models run fastest on one thread (OpenMP threads spin badly on a busy
2-core machine: the same tests take several times longer with two)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
