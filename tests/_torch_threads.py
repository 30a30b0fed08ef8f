"""The autouse fixture of the model tests: torch on one thread.

With several threads, OpenMP barriers on a CPU shared with other jobs make each
small op wait (seen: tiny-model tests 20x slower, SmolLM2 2-7x). Import it into a
test module (``from _torch_threads import one_thread``) to apply it there.
"""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
