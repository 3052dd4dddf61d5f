"""The aggregator suites work on tiny matrices: run them single-threaded.

On a loaded machine, torch's intra-op thread pool turns every small parallel kernel into a wait
for a descheduled worker (milliseconds each); the results do not depend on the thread count.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
