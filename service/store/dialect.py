"""Where the SQLite and PostgreSQL adapters differ: the one list, in one module.

The store's SQL is written once, in SQLite's spelling with ``?`` placeholders,
and runs unchanged on both engines except for the items below (also in
docs/storage.md). Everything else (``ON CONFLICT ... DO UPDATE ... excluded``,
``RETURNING``, ``||``, ``COALESCE``, ``LIMIT/OFFSET``) is the same on both.

=====================  ==================================  =====================================
item                   SQLite                              PostgreSQL
=====================  ==================================  =====================================
placeholders           ``?``                               ``%s`` (``?`` rewritten, ``%`` doubled,
                                                           in :class:`service.store.postgres.PgConnection`)
ids, floats            ``INTEGER PRIMARY KEY``, ``REAL``   ``BIGINT ... IDENTITY``, ``DOUBLE PRECISION``
                                                           (two schema texts, one per adapter)
schema version         ``PRAGMA user_version``             ``schema_migrations`` table, under
                                                           ``pg_advisory_xact_lock``
the clock (``now``)    ``julianday('now')``, the host's    ``clock_timestamp()``, the server's
                                                           (:attr:`Dialect.now_sql`)
claiming a job         ``BEGIN IMMEDIATE`` (one writer)    ``FOR UPDATE SKIP LOCKED``
                                                           (:attr:`Dialect.begin_write`,
                                                           :attr:`Dialect.skip_locked`)
JSON arrays            ``json_each`` / ``json_extract``    ``jsonb_array_elements`` / ``->>``
                                                           (:meth:`Dialect.json_items`)
singletons             the process is the only one         ``pg_try_advisory_lock`` per session
                                                           (:func:`try_singleton`); one sender
                                                           pass per destination
                                                           (:func:`try_destination_lock`)
orphan sweep vs. SCP   ``BEGIN IMMEDIATE`` (write lock)    ``pg_advisory_xact_lock`` (sweep),
                                                           ``..._shared`` (a listener adopting
                                                           an object it did not write)
                                                           (:func:`lock_blob_keys`)
wake-ups               in-process events                   ``NOTIFY`` when a job is made
                                                           (:func:`notify_job_created`) and when
                                                           a job's outputs are queued
                                                           (:func:`notify_outputs_queued`)
commit durability      SCP and sender rows                 always durable (``synchronous_commit``)
                       ``synchronous=NORMAL``
                                                           (:attr:`Dialect.ingest_setup`)
=====================  ==================================  =====================================

Written portably instead of per dialect: the scalar maximum (``MAX(a, b)`` in
SQLite, ``GREATEST`` in PostgreSQL) is a ``CASE``; a new row's id comes from
``RETURNING id`` (SQLite has it since 3.35), never ``lastrowid``; columns of
the conflicting row in ``DO UPDATE`` are qualified with the table name
(PostgreSQL calls a bare name ambiguous).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

#: The channel that wakes idle workers (PostgreSQL only).
JOBS_CHANNEL = "dopanode_jobs"
#: The channel that wakes idle senders (PostgreSQL only).
OUTBOX_CHANNEL = "dopanode_outbox"
#: Every channel a node LISTENs on (:meth:`service.store.rows.Rows.start_wakeups`).
CHANNELS = frozenset({JOBS_CHANNEL, OUTBOX_CHANNEL})


@dataclass(frozen=True)
class Dialect:
    """What the store's SQL needs to know about the engine under it.

    Attributes
    ----------
    name : str
        ``"sqlite"`` or ``"postgres"``.
    now_sql : str
        SQL expression for the database's clock, seconds since the epoch (float).
    begin_write : str or None
        Statement that takes the write lock before a claim (None: row locks suffice).
    skip_locked : bool
        Claims lock the chosen row and skip rows other claimers hold.
    ingest_setup : tuple of str
        Statements run once on each SCP and sender connection (rows whose loss on
        a power failure costs a re-send, never data: the instance file is already
        durable, a lost "sent" mark means the object is sent again).
    """

    name: str
    now_sql: str
    begin_write: str | None
    skip_locked: bool
    ingest_setup: tuple[str, ...]

    def clock(self) -> str:
        """``COALESCE(?, now)``: the caller's time when it passes one, else the database's."""
        return f"COALESCE(CAST(? AS DOUBLE PRECISION), {self.now_sql})"

    def json_items(self, column: str, alias: str) -> str:
        """FROM item over the elements of a JSON array column, one row per element."""
        if self.name == "postgres":
            return f"jsonb_array_elements({column}::jsonb) AS {alias}(value)"
        return f"json_each({column}) AS {alias}"

    def json_field(self, alias: str, key: str) -> str:
        """Text of ``key`` in the element ``alias`` of :meth:`json_items`."""
        if self.name == "postgres":
            return f"({alias}.value ->> '{key}')"
        return f"json_extract({alias}.value, '$.{key}')"

    def lock_suffix(self) -> str:
        """Suffix of a SELECT that picks rows to claim."""
        return " FOR UPDATE SKIP LOCKED" if self.skip_locked else ""


SQLITE = Dialect(
    name="sqlite",
    now_sql="((julianday('now') - 2440587.5) * 86400.0)",
    begin_write="BEGIN IMMEDIATE",
    skip_locked=False,
    # the instance file is already fsynced when its row is written;
    # series.recover_spool re-records rows a power loss took back
    ingest_setup=("PRAGMA synchronous = NORMAL",),
)

POSTGRES = Dialect(
    name="postgres",
    now_sql="(extract(epoch from clock_timestamp())::double precision)",
    begin_write=None,
    skip_locked=True,
    ingest_setup=(),
)


def dialect_of(conn: Any) -> Dialect:
    """The dialect of a connection (a bare ``sqlite3.Connection`` is SQLite)."""
    dialect: Dialect = getattr(conn, "dialect", SQLITE)
    return dialect


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for a singleton's name."""
    digest = hashlib.sha256(f"dopanode:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def try_singleton(conn: Any, name: str) -> bool:
    """True when this connection runs the singleton ``name`` (sweep, routing, purge).

    SQLite: always (one node, one file). PostgreSQL: the session that holds
    ``pg_try_advisory_lock`` for the name; it keeps it until its connection
    closes, then another node's attempt succeeds. Commits.
    """
    if dialect_of(conn).name != "postgres":
        return True
    held: set[str] = conn.singletons
    if name not in held:
        got = conn.execute("SELECT pg_try_advisory_lock(?)", (lock_key(name),)).fetchone()[0]
        conn.commit()
        if got:
            held.add(name)
    return name in held


def _destination_lock_key(destination: str) -> int:
    return lock_key(f"sender:{destination}")


def try_destination_lock(conn: Any, destination: str) -> bool:
    """True when this session may open the association to ``destination`` now.

    PostgreSQL: ``pg_try_advisory_lock`` per destination, held by the sender
    pass's session until the pass gives it back (:func:`release_destination_lock`)
    or the session closes, so the senders of every node open one
    association to a destination at a time, as one node does. SQLite: always
    (the one process has one thread per destination). Commits.
    """
    if dialect_of(conn).name != "postgres":
        return True
    got = conn.execute("SELECT pg_try_advisory_lock(?)",
                       (_destination_lock_key(destination),)).fetchone()[0]
    conn.commit()
    return bool(got)


def release_destination_lock(conn: Any, destination: str) -> None:
    """Give back :func:`try_destination_lock`'s lock now (PostgreSQL; SQLite: nothing).

    Closing the session releases it too, but the server does that after the
    client has gone, so another node's pass started at once could still find it
    held. A session that can no longer talk to the server is left to close.
    """
    if dialect_of(conn).name != "postgres":
        return
    try:
        conn.execute("SELECT pg_advisory_unlock(?)", (_destination_lock_key(destination),))
        conn.commit()
    except Exception:  # noqa: BLE001 - a broken session releases the lock when it closes
        log.debug("destination_lock_release_failed", exc_info=True)


def notify_job_created(conn: Any) -> None:
    """Wake idle workers of every node when this transaction commits (PostgreSQL).

    Called only where a job is made, never per instance: a pending NOTIFY
    takes a global lock at commit.
    """
    if dialect_of(conn).name == "postgres":
        conn.execute("SELECT pg_notify(?, '')", (JOBS_CHANNEL,))


def notify_outputs_queued(conn: Any) -> None:
    """Wake idle senders of every node when this transaction commits (PostgreSQL).

    Called once per job whose outputs were queued (its finish or its
    failure), never per output: a pending NOTIFY takes a global lock at
    commit, and one pass of a sender sends every due item anyway.
    """
    if dialect_of(conn).name == "postgres":
        conn.execute("SELECT pg_notify(?, '')", (OUTBOX_CHANNEL,))


def lock_blob_keys(conn: Any, exclusive: bool) -> None:
    """Serialise the orphan sweep with a listener adopting an object it did not write.

    Call first in the transaction. The sweep (``exclusive``) checks rows and
    deletes objects under it; a listener whose conditional PUT found the
    object already stored takes it shared around its row, then checks the
    object is still there (:mod:`service.store.orphans`). PostgreSQL: a
    transaction-scoped advisory lock. SQLite: the sweep takes the write lock
    (``BEGIN IMMEDIATE``); the listener needs nothing, its insert takes the
    same lock.
    """
    dialect = dialect_of(conn)
    if dialect.name == "postgres":
        function = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
        conn.execute(f"SELECT {function}(?)", (lock_key("blob_keys"),))
    elif exclusive and dialect.begin_write is not None:
        if conn.in_transaction:
            conn.commit()
        conn.execute(dialect.begin_write)
