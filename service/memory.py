"""Keeping the node's resident memory flat over days of jobs (glibc only).

Each thread that allocates gets its own glibc malloc arena by default (up to
8 x cores), and freed memory stays in them: a node with SCP, worker and sender
threads grows by tens of MB per arena over the first jobs. Capping the arenas
and trimming the heap after each job keeps the peak near the working set.
On other C libraries both calls do nothing (said once in the log).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from functools import lru_cache

log = logging.getLogger(__name__)

_M_ARENA_MAX = -8  # glibc malloc.h


@lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        libc.mallopt  # noqa: B018 - glibc has it, musl does not
        libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        log.info("malloc_tuning_unavailable", extra={"fields": {"libc": name}})
        return None
    return libc


def limit_arenas(count: int = 2) -> bool:
    """Cap glibc malloc arenas; call before threads start. True when applied."""
    libc = _libc()
    return bool(libc is not None and libc.mallopt(_M_ARENA_MAX, count) == 1)


def trim() -> None:
    """Give freed heap memory back to the operating system."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
