"""The durable outbox: one row per (destination, output instance) to deliver.

The worker puts each output it has saved to the spool in here
(:func:`enqueue`, inside the transaction that finishes the job); the sender
(:mod:`service.net.scu`) claims what is due (:func:`claim_due`: a lease with a
token, as jobs have, so two senders never send one item; on PostgreSQL with
``FOR UPDATE SKIP LOCKED``), and records the outcome (:func:`mark_sent`,
:func:`mark_retry`, :func:`mark_failed`, fenced by that token).

Rows are unique per ``(destination, sop_instance_uid)``: a retried job derives
the same output UIDs, so enqueueing again replaces the row (pending again,
attempts reset) instead of adding a twin. Times are seconds since the epoch
(float, UTC). None of these functions commits: the caller owns the
transaction (``with conn:``).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from service.store.dialect import dialect_of
from service.store.rows import Connection

log = logging.getLogger(__name__)

STATES: tuple[str, ...] = ("pending", "sent", "failed")

#: The ``outbox`` table (schema version 1, :mod:`service.store.db`).
SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY,
    job_id INTEGER NOT NULL,
    destination TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'sent', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error TEXT,
    created_at REAL NOT NULL,
    sent_at REAL,
    UNIQUE (destination, sop_instance_uid)
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (state, destination, next_attempt_at);
CREATE INDEX IF NOT EXISTS outbox_job ON outbox (job_id);
"""


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential back-off for deliveries to a destination that is down.

    The n-th failed attempt (n = 1, 2, ...) waits ``min(cap_s, base_s * 2**(n-1))``
    seconds; an item still undelivered ``give_up_after_s`` seconds after it
    was enqueued is marked failed (visible in the API and on /metrics).

    Attributes
    ----------
    base_s : float
        First delay, seconds (default 10 s).
    cap_s : float
        Largest delay, seconds (default 10 min).
    give_up_after_s : float
        Time from enqueue after which an item is given up, seconds (default 72 h).
    """

    base_s: float = 10.0
    cap_s: float = 600.0
    give_up_after_s: float = 72 * 3600.0

    def __post_init__(self) -> None:
        if not self.base_s > 0:
            raise ValueError(f"RetryPolicy.base_s must be > 0, got {self.base_s}")
        if self.cap_s < self.base_s:
            raise ValueError(f"RetryPolicy.cap_s ({self.cap_s}) must be >= base_s ({self.base_s})")
        if not self.give_up_after_s > 0:
            raise ValueError(
                f"RetryPolicy.give_up_after_s must be > 0, got {self.give_up_after_s}"
            )

    def delay_s(self, attempts: int) -> float:
        """Delay after the ``attempts``-th failed attempt (attempts >= 1), seconds."""
        exponent = min(max(attempts - 1, 0), 62)  # 2**62 * base is beyond any cap
        return float(min(self.cap_s, self.base_s * (2.0**exponent)))


@dataclass(frozen=True)
class OutboxItem:
    """One output to deliver to one destination (a row of ``outbox``)."""

    id: int
    job_id: int
    destination: str
    sop_instance_uid: str
    sop_class_uid: str
    path: Path
    state: str
    attempts: int
    next_attempt_at: float
    last_error: str | None
    created_at: float
    sent_at: float | None
    lease_token: str | None = None
    in_flight_at: float | None = None


_COLUMNS = (
    "id, job_id, destination, sop_instance_uid, sop_class_uid, path, state, attempts, "
    "next_attempt_at, last_error, created_at, sent_at, lease_token, in_flight_at"
)


def _item(row: Sequence[object]) -> OutboxItem:
    return OutboxItem(
        id=int(row[0]),  # type: ignore[call-overload]
        job_id=int(row[1]),  # type: ignore[call-overload]
        destination=str(row[2]),
        sop_instance_uid=str(row[3]),
        sop_class_uid=str(row[4]),
        path=Path(str(row[5])),
        state=str(row[6]),
        attempts=int(row[7]),  # type: ignore[call-overload]
        next_attempt_at=float(row[8]),  # type: ignore[arg-type]
        last_error=None if row[9] is None else str(row[9]),
        created_at=float(row[10]),  # type: ignore[arg-type]
        sent_at=None if row[11] is None else float(row[11]),  # type: ignore[arg-type]
        lease_token=None if row[12] is None else str(row[12]),
        in_flight_at=None if row[13] is None else float(row[13]),  # type: ignore[arg-type]
    )


def enqueue(
    conn: Connection,
    job_id: int,
    destination_names: Sequence[str],
    path: Path | str,
    sop_class_uid: str,
    sop_instance_uid: str,
    now: float | None = None,
) -> list[int]:
    """Queue one saved output for every destination; due at once.

    An existing row for the same ``(destination, sop_instance_uid)`` is
    replaced: it becomes pending again with zero attempts, so a retried job
    resends its (identically identified) objects once, not twice.

    Parameters
    ----------
    conn : sqlite3.Connection
    job_id : int
        The job that produced the output.
    destination_names : sequence of str
        Configured destination names (not AE titles); at least one.
    path : Path or str
        The output's Part 10 file in the spool (absolute).
    sop_class_uid, sop_instance_uid : str

    Returns
    -------
    list of int
        The outbox row ids, one per destination.
    """
    if not destination_names:
        raise ValueError("enqueue needs at least one destination name")
    if not sop_instance_uid or not sop_class_uid:
        raise ValueError("enqueue needs sop_class_uid and sop_instance_uid")
    at = time.time() if now is None else now
    ids: list[int] = []
    for destination in dict.fromkeys(destination_names):  # de-duplicate, keep order
        row = conn.execute(
            "INSERT INTO outbox (job_id, destination, sop_instance_uid, sop_class_uid, path,"
            " state, attempts, next_attempt_at, last_error, created_at, sent_at)"
            " VALUES (?, ?, ?, ?, ?, 'pending', 0, ?, NULL, ?, NULL)"
            " ON CONFLICT (destination, sop_instance_uid) DO UPDATE SET"
            " job_id = excluded.job_id, sop_class_uid = excluded.sop_class_uid,"
            " path = excluded.path, state = 'pending', attempts = 0,"
            " next_attempt_at = excluded.next_attempt_at, last_error = NULL,"
            " created_at = excluded.created_at, sent_at = NULL, lease_token = NULL,"
            " lease_owner = NULL, in_flight_at = NULL,"
            " lease_expires_at = NULL"
            " RETURNING id",
            (job_id, destination, sop_instance_uid, sop_class_uid, str(path), at, at),
        ).fetchone()
        ids.append(int(row[0]))
    log.info(
        "outbox_enqueued",
        extra={"fields": {"job_id": job_id, "destinations": len(ids), "item_ids": ids}},
    )
    return ids


def due(
    conn: Connection,
    now: float | None = None,
    destination: str | None = None,
    limit: int = 100,
) -> list[OutboxItem]:
    """Pending items whose next attempt is due, oldest first.

    Parameters
    ----------
    now : float, optional
        Current time, seconds since the epoch.
    destination : str, optional
        Only this destination's items.
    limit : int
        At most this many items.
    """
    at = time.time() if now is None else now
    sql = f"SELECT {_COLUMNS} FROM outbox WHERE state = 'pending' AND next_attempt_at <= ?"
    params: list[object] = [at]
    if destination is not None:
        sql += " AND destination = ?"
        params.append(destination)
    sql += " ORDER BY next_attempt_at, id LIMIT ?"
    params.append(int(limit))
    return [_item(r) for r in conn.execute(sql, params)]


def claim_due(
    conn: Connection,
    destination: str,
    lease_s: float,
    now: float | None = None,
    limit: int = 100,
    owner: str | None = None,
) -> list[OutboxItem]:
    """Lease the due items of one destination to the caller, oldest first; commits.

    An item is due when it is pending, its next attempt is due (``now``, the
    clock that scheduled it) and no other sender holds an unexpired lease on
    it (the database's clock). The items carry the lease's token; recording
    an outcome with it fails once the lease was taken over. ``owner`` names
    the claiming process (:attr:`service.store.runs.NodeRun.owner_prefix`), so
    a restart can take back a dead process's claims (:func:`expire_leases`).
    """
    dialect = dialect_of(conn)
    clock = dialect.clock()
    at = time.time() if now is None else now
    if conn.in_transaction:
        conn.commit()
    try:
        rows = conn.execute(
            f"UPDATE outbox SET lease_token = ?, lease_expires_at = {clock} + ?, lease_owner = ?"
            " WHERE id IN (SELECT id FROM outbox WHERE state = 'pending'"
            " AND next_attempt_at <= ? AND destination = ?"
            f" AND (lease_expires_at IS NULL OR lease_expires_at < {clock})"
            f" ORDER BY next_attempt_at, id LIMIT ?{dialect.lock_suffix()})"
            f" RETURNING {_COLUMNS}",
            (uuid.uuid4().hex, None, lease_s, owner, at, destination, None, int(limit)),
        ).fetchall()
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    return sorted((_item(r) for r in rows), key=lambda i: (i.next_attempt_at, i.id))


def mark_in_flight(conn: Connection, item_id: int, token: str | None,
                   now: float | None = None) -> bool:
    """Note that the item's C-STORE goes on the wire now; commit before sending it.

    The mark stays until the outcome is recorded. An item claimed again while
    it still carries a mark was on the wire when its sender died: the
    destination may hold it already, and the new C-STORE (same SOP Instance
    UID) replaces it there. Returns False when the item is not ours.
    """
    fence, param = _fence(token)
    cur = conn.execute(
        f"UPDATE outbox SET in_flight_at = ? WHERE id = ? AND state = 'pending'{fence}",
        (time.time() if now is None else now, item_id, *param))
    return bool(cur.rowcount == 1)


def expire_leases(conn: Connection, owner_prefix: str) -> int:
    """Make the items claimed by a process that is gone (it crashed) claimable now; commits.

    Their ``in_flight_at`` marks stay (see :func:`mark_in_flight`). Returns
    how many items were taken back.
    """
    with conn:
        cur = conn.execute(
            "UPDATE outbox SET lease_expires_at = 0 WHERE state = 'pending'"
            " AND lease_expires_at IS NOT NULL AND lease_owner LIKE ?", (owner_prefix + "%",))
    return int(cur.rowcount)


def _fence(token: str | None) -> tuple[str, tuple[object, ...]]:
    """The WHERE clause (and parameter) that limits a write to the lease holder."""
    return (" AND lease_token = ?", (token,)) if token is not None else ("", ())


def next_due_at(conn: Connection, destination: str | None = None) -> float | None:
    """Earliest ``next_attempt_at`` among pending items (None when nothing is pending)."""
    sql = "SELECT MIN(next_attempt_at) FROM outbox WHERE state = 'pending'"
    params: tuple[object, ...] = ()
    if destination is not None:
        sql += " AND destination = ?"
        params = (destination,)
    value = conn.execute(sql, params).fetchone()[0]
    return None if value is None else float(value)


def get(conn: Connection, item_id: int) -> OutboxItem | None:
    """One item by id, or None."""
    row = conn.execute(f"SELECT {_COLUMNS} FROM outbox WHERE id = ?", (item_id,)).fetchone()
    return None if row is None else _item(row)


def items_for_job(conn: Connection, job_id: int) -> list[OutboxItem]:
    """All items of one job, by id."""
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM outbox WHERE job_id = ? ORDER BY id", (job_id,)
    )
    return [_item(r) for r in rows]


def mark_sent(conn: Connection, item_id: int, now: float | None = None,
              token: str | None = None) -> bool:
    """Record delivery (the destination answered Success); False if not ours or not pending.

    ``token``: the lease of :func:`claim_due` (None: no lease is checked).
    """
    at = time.time() if now is None else now
    fence, param = _fence(token)
    cur = conn.execute(
        "UPDATE outbox SET state = 'sent', sent_at = ?, attempts = attempts + 1,"
        " last_error = NULL, lease_token = NULL, lease_expires_at = NULL, lease_owner = NULL,"
        f" in_flight_at = NULL WHERE id = ? AND state = 'pending'{fence}",
        (at, item_id, *param),
    )
    return bool(cur.rowcount == 1)


def mark_failed(
    conn: Connection, item_id: int, error: str, now: float | None = None,
    token: str | None = None,
) -> bool:
    """Give an item up for good (e.g. its file is gone, its destination unconfigured)."""
    del now  # kept for a uniform signature; failed items keep their last attempt time
    fence, param = _fence(token)
    cur = conn.execute(
        "UPDATE outbox SET state = 'failed', last_error = ?, lease_token = NULL,"
        " lease_owner = NULL, in_flight_at = NULL,"
        f" lease_expires_at = NULL WHERE id = ? AND state = 'pending'{fence}",
        (error[:500], item_id, *param),
    )
    return bool(cur.rowcount == 1)


def mark_retry(
    conn: Connection,
    item_id: int,
    error: str,
    policy: RetryPolicy,
    now: float | None = None,
    token: str | None = None,
) -> str:
    """Record a failed attempt and schedule the next one with back-off.

    Returns
    -------
    str
        ``"pending"`` (retried later) or ``"failed"`` (given up: older than
        ``policy.give_up_after_s``), or ``"gone"`` if the item was not pending
        (or, with ``token``, no longer leased to the caller).
    """
    at = time.time() if now is None else now
    fence, param = _fence(token)
    row = conn.execute(
        f"SELECT attempts, created_at FROM outbox WHERE id = ? AND state = 'pending'{fence}",
        (item_id, *param),
    ).fetchone()
    if row is None:
        return "gone"
    attempts = int(row[0]) + 1
    if at - float(row[1]) >= policy.give_up_after_s:
        state, text, schedule = "failed", f"gave up: {error}", ""
        params: tuple[object, ...] = (state, attempts, text[:500])
    else:
        state, text, schedule = "pending", error, " next_attempt_at = ?,"
        params = (state, attempts, text[:500], at + policy.delay_s(attempts))
    cur = conn.execute(
        f"UPDATE outbox SET state = ?, attempts = ?, last_error = ?,{schedule}"
        " lease_token = NULL, lease_expires_at = NULL, lease_owner = NULL, in_flight_at = NULL"
        f" WHERE id = ? AND state = 'pending'{fence}",
        (*params, item_id, *param),
    )
    return state if cur.rowcount == 1 else "gone"
