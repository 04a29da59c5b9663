"""Where shipped files live when no setting says otherwise."""

from __future__ import annotations

import os
from pathlib import Path


def default_models_dir() -> Path:
    """``models/`` beside the source tree, or ``$DOPANODE_MODELS_DIR``."""
    env = os.environ.get("DOPANODE_MODELS_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "models"
