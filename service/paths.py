"""Where shipped files live when no setting says otherwise; making a folder's entries durable."""

from __future__ import annotations

import os
from pathlib import Path


def default_models_dir() -> Path:
    """``models/`` beside the source tree, or ``$DOPANODE_MODELS_DIR``."""
    env = os.environ.get("DOPANODE_MODELS_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "models"


def fsync_dir(folder: Path) -> None:
    """Flush ``folder``'s entries (a create, rename or unlink in it) to disk."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
