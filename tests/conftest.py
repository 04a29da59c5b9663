"""Shared test fixtures: free loopback ports, real peer binaries, seeded RNG."""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator

import numpy as np
import pytest


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def port() -> int:
    return free_port()


def require_tool(name: str) -> str:
    """Path of a peer binary; fails (never skips) when it is missing.

    ``make test`` installs the peers (scripts/install-peers.sh), so a missing
    one is a broken set-up, not a reason to skip.
    """
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if path is None:
        pytest.fail(f"test peer '{name}' is not installed: run scripts/install-peers.sh")
    return path


@pytest.fixture
def rng() -> Iterator[np.random.Generator]:
    yield np.random.default_rng(20261121)


@pytest.fixture(autouse=True)
def _pydicom_validation_restored() -> Iterator[None]:
    """Tests that run the CLI in-process (``logs.configure`` sets pydicom's reading
    validation to IGNORE for the node) must not change what later tests see."""
    from pydicom import config

    saved = (config.settings.reading_validation_mode, config.settings.writing_validation_mode)
    yield
    config.settings.reading_validation_mode, config.settings.writing_validation_mode = saved
