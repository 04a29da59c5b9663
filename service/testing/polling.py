"""The one polling helper: a predicate, a deadline, a message (no sleeps as synchronisation)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T | None], timeout_s: float = 10.0,
               what: str = "a condition", interval_s: float = 0.05) -> T:
    """Poll ``predicate`` until it returns something truthy; return that value.

    Parameters
    ----------
    predicate : callable
        Called at once, then every ``interval_s``; exceptions propagate. A
        falsy result (None, False, 0, empty) means "not yet".
    timeout_s : float
        Deadline, s from now; on expiry ``TimeoutError`` names ``what``.
    what : str
        What is awaited, for the error message.
    interval_s : float
        Polling interval, s.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(interval_s)  # polling interval with a deadline, not synchronisation
