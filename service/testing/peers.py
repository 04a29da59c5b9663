"""Binaries of the real peers (DCMTK, Orthanc, dciodvfy, docker-compose)."""

from __future__ import annotations

import shutil


def require_tool(name: str) -> str:
    """Path of a peer binary; raises ``FileNotFoundError`` when it is missing.

    A test that needs a missing peer fails, never skips: ``make test``
    installs the peers (scripts/install-peers.sh), so a missing one is a
    broken set-up. Debian puts some (Orthanc) in /usr/sbin.
    """
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if path is None:
        raise FileNotFoundError(f"test peer '{name}' is not installed: "
                                "run scripts/install-peers.sh")
    return path
