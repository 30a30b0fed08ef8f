"""Shared fixtures."""

from __future__ import annotations

import pytest
from _streams import random_stream

from budgetsft.base import Round


@pytest.fixture
def small_stream() -> list[Round]:
    return random_stream(300, 6, 4, seed=7)
