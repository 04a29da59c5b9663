"""Read-only summaries of the outbox for /ready, /metrics and the admin page.

The outbox's writes stay in :mod:`service.store.outbox`. Functions take a
connection and do not commit.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from service.store.outbox import STATES
from service.store.rows import Connection


@dataclass(frozen=True)
class BacklogStats:
    """Outbox summary for /ready and /metrics.

    Attributes
    ----------
    pending : int
        Items not yet delivered (all destinations).
    failed : int
        Items given up on.
    oldest_age_s : float
        Age of the oldest pending item, seconds (0.0 when none is pending).
    pending_by_destination : dict of str to int
    """

    pending: int
    failed: int
    oldest_age_s: float
    pending_by_destination: dict[str, int]


@dataclass(frozen=True)
class DestinationSummary:
    """One destination's deliveries, for the admin page (GET /api/outbox).

    Attributes
    ----------
    destination : str
        Configured destination name.
    counts : dict of str to int
        Items per state (every state in :data:`STATES` present).
    oldest_pending_age_s : float or None
        Age of the oldest pending item, seconds; None when none is pending.
    last_sent_at : float or None
        When the newest delivery succeeded (seconds since the epoch).
    last_error : str or None
        The newest error of an item still pending or failed (peer text, sanitised by the sender).
    """

    destination: str
    counts: dict[str, int]
    oldest_pending_age_s: float | None
    last_sent_at: float | None
    last_error: str | None


def destination_summaries(conn: Connection, destinations: Sequence[str] = (),
                          now: float | None = None) -> list[DestinationSummary]:
    """Per destination: items by state, oldest pending age, last success and last error.

    ``destinations`` (the configured names) appear even with no items; names
    found only in the table (a destination since removed) follow them.
    """
    at = time.time() if now is None else now
    names = list(dict.fromkeys([*destinations, *(str(r[0]) for r in conn.execute(
        "SELECT DISTINCT destination FROM outbox ORDER BY destination"))]))
    out = []
    for name in names:
        counts = dict.fromkeys(STATES, 0)
        for state, n in conn.execute(
                "SELECT state, COUNT(*) FROM outbox WHERE destination = ? GROUP BY state", (name,)):
            counts[str(state)] = int(n)
        oldest, last_sent = conn.execute(
            "SELECT MIN(CASE WHEN state = 'pending' THEN created_at END), MAX(sent_at)"
            " FROM outbox WHERE destination = ?", (name,)).fetchone()
        error = conn.execute(
            "SELECT last_error FROM outbox WHERE destination = ? AND state != 'sent'"
            " AND last_error IS NOT NULL ORDER BY next_attempt_at DESC, id DESC LIMIT 1",
            (name,)).fetchone()
        out.append(DestinationSummary(
            destination=name, counts=counts,
            oldest_pending_age_s=None if oldest is None else max(0.0, at - float(oldest)),
            last_sent_at=None if last_sent is None else float(last_sent),
            last_error=None if error is None else str(error[0])))
    return out


def backlog_stats(conn: Connection, now: float | None = None) -> BacklogStats:
    """Count pending and failed items and the age of the oldest pending one."""
    at = time.time() if now is None else now
    by_destination = {
        str(d): int(n)
        for d, n in conn.execute(
            "SELECT destination, COUNT(*) FROM outbox WHERE state = 'pending' GROUP BY destination"
        )
    }
    oldest = conn.execute(
        "SELECT MIN(created_at) FROM outbox WHERE state = 'pending'"
    ).fetchone()[0]
    failed = int(conn.execute("SELECT COUNT(*) FROM outbox WHERE state = 'failed'").fetchone()[0])
    return BacklogStats(
        pending=sum(by_destination.values()),
        failed=failed,
        oldest_age_s=0.0 if oldest is None else max(0.0, at - float(oldest)),
        pending_by_destination=by_destination,
    )
