"""Sub-commands of this area (see :mod:`service.cli`)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add this area's sub-commands (none yet)."""
