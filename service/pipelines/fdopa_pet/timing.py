"""Wall time per analysis stage (``PipelineOutput.stage_durations_s``)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def stage(durations_s: dict[str, float], name: str) -> Iterator[None]:
    """Add the wall time of the block to ``durations_s[name]``, seconds."""
    start = time.perf_counter()
    try:
        yield
    finally:
        durations_s[name] = durations_s.get(name, 0.0) + time.perf_counter() - start
