"""Shared fixtures only: a free loopback port, a seeded RNG.

Helpers (NodeProcess, OrthancPeer, wait_until, free_port, require_tool, NM
data writers, the test pipelines) live in :mod:`service.testing`.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from service.testing.ports import free_port


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def rng() -> Iterator[np.random.Generator]:
    yield np.random.default_rng(20261121)
