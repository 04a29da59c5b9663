"""SQLite adapter of the rows port (:mod:`service.store.rows`), and instances.

The embedded default: instances, series, jobs (and the outbox's table) in
one file, WAL journal, ``synchronous=FULL`` (a committed row survives power
loss), foreign keys on, a busy timeout so concurrent threads and processes
wait instead of failing. Times are seconds since the epoch (float, UTC).

Connections are not shared between threads: every thread calls
:meth:`Database.connect` once and keeps its own. Functions here take a
connection and do not commit unless their docstring says so; the caller owns
the transaction (``with conn:``), except :func:`retry_job`, which commits.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from service.store import outbox
from service.store.dialect import SQLITE, Dialect
from service.store.rows import Connection

log = logging.getLogger(__name__)

SERIES_STATES: tuple[str, ...] = ("receiving", "complete", "routed", "ignored")

#: Release 0.1's schema, kept as it was: a fresh database is built by running
#: every migration in order, so the path an existing var/ takes is the one
#: every test exercises.
_SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS instances (
    sop_instance_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    transfer_syntax TEXT NOT NULL,
    calling_ae TEXT NOT NULL,
    path TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    received_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_series ON instances (series_uid);
CREATE TABLE IF NOT EXISTS series (
    series_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    calling_ae TEXT NOT NULL,
    first_received_at REAL NOT NULL,
    last_received_at REAL NOT NULL,
    instance_count INTEGER NOT NULL DEFAULT 0,
    expected_count INTEGER,
    quiet_s REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'receiving' CHECK (state IN ('receiving', 'complete'))
);
CREATE INDEX IF NOT EXISTS series_state ON series (state, last_received_at);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    series_uid TEXT NOT NULL REFERENCES series (series_uid),
    study_uid TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    instance_uids_json TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'running', 'done', 'failed', 'superseded')),
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    lease_owner TEXT,
    lease_expires_at REAL,
    reason TEXT,
    reason_code TEXT,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    result_json TEXT,
    stage_durations_json TEXT,
    UNIQUE (series_uid, content_hash)
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, id);
CREATE INDEX IF NOT EXISTS jobs_study ON jobs (study_uid, state);
"""

#: Version 2: routing and pipelines. Series gain the states ``routed`` (jobs
#: made) and ``ignored`` (no pipeline took it; reasons kept), their completion
#: time and content hash; jobs gain the pipeline, their input series and the
#: outputs they produced, and become unique per (pipeline, series, content).
#: Release-0.1 rows were all DaT jobs of one series each. The readiness probe's
#: one-row table (created by /ready itself in 0.1) joins the schema.
_SCHEMA_V2 = """
CREATE TABLE series_v2 (
    series_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    calling_ae TEXT NOT NULL,
    first_received_at REAL NOT NULL,
    last_received_at REAL NOT NULL,
    instance_count INTEGER NOT NULL DEFAULT 0,
    expected_count INTEGER,
    quiet_s REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'receiving'
        CHECK (state IN ('receiving', 'complete', 'routed', 'ignored')),
    completed_at REAL,
    content_hash TEXT,
    routing_json TEXT
);
INSERT INTO series_v2 SELECT series_uid, study_uid, calling_ae, first_received_at,
    last_received_at, instance_count, expected_count, quiet_s,
    CASE state WHEN 'complete' THEN 'routed' ELSE state END, NULL, NULL, NULL FROM series;
DROP TABLE series;
ALTER TABLE series_v2 RENAME TO series;
CREATE INDEX series_state ON series (state, last_received_at);
CREATE INDEX series_study ON series (study_uid);
CREATE TABLE jobs_v2 (
    id INTEGER PRIMARY KEY,
    pipeline TEXT NOT NULL,
    series_uid TEXT NOT NULL REFERENCES series (series_uid),
    study_uid TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    instance_uids_json TEXT NOT NULL,
    inputs_json TEXT NOT NULL,
    note TEXT,
    state TEXT NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'running', 'done', 'failed', 'superseded')),
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    lease_owner TEXT,
    lease_expires_at REAL,
    reason TEXT,
    reason_code TEXT,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    result_json TEXT,
    stage_durations_json TEXT,
    outputs_json TEXT,
    UNIQUE (pipeline, series_uid, content_hash)
);
INSERT INTO jobs_v2 SELECT id, 'dat_spect', series_uid, study_uid, content_hash,
    instance_uids_json,
    json_array(json_object('role', 'primary', 'series_uid', series_uid,
                           'instance_uids', json(instance_uids_json))),
    NULL, state, attempts, max_attempts, lease_owner, lease_expires_at, reason, reason_code,
    created_at, started_at, finished_at, result_json, stage_durations_json, NULL FROM jobs;
DROP TABLE jobs;
ALTER TABLE jobs_v2 RENAME TO jobs;
CREATE INDEX jobs_state ON jobs (state, id);
CREATE INDEX jobs_study ON jobs (study_uid, pipeline, state);
CREATE INDEX jobs_series ON jobs (pipeline, series_uid);
CREATE TABLE IF NOT EXISTS node_probe (id INTEGER PRIMARY KEY, checked_at REAL NOT NULL);
"""


#: Version 3: the lease token. A claim draws a fresh token (uuid4); renewing,
#: finishing, failing and requeueing a job need the token of the claim they
#: follow, so a worker whose lease expired cannot write over its successor.
#: The partial index keeps the claim's scan to the waiting jobs.
_SCHEMA_V3 = """
ALTER TABLE jobs ADD COLUMN lease_token TEXT;
CREATE INDEX jobs_claimable ON jobs (id) WHERE state IN ('pending', 'running');
"""


#: Version 4: outbox leases. A sender claims the due items it is about to
#: send (token and expiry, as jobs), so two senders never send one item.
_SCHEMA_V4 = """
ALTER TABLE outbox ADD COLUMN lease_token TEXT;
ALTER TABLE outbox ADD COLUMN lease_expires_at REAL
"""


#: Version 5: delayed retries and the re-send window after a crash. A job given
#: back to the queue for a transient cause (the disk was full, audit D11) waits
#: until ``not_before`` (seconds since the epoch, the database's clock);
#: ``deferrals`` counts such returns, bounded apart from ``attempts``
#: (:mod:`service.store.jobs`). An outbox claim names its owner (so a restarted
#: node takes back the claims of its dead processes at once), and the item
#: whose C-STORE is on the wire carries ``in_flight_at`` (audit D12,
#: :mod:`service.store.outbox`).
_SCHEMA_V5 = """
ALTER TABLE jobs ADD COLUMN not_before REAL;
ALTER TABLE jobs ADD COLUMN deferrals INTEGER NOT NULL DEFAULT 0;
ALTER TABLE outbox ADD COLUMN lease_owner TEXT;
ALTER TABLE outbox ADD COLUMN in_flight_at REAL
"""


def _v1(conn: sqlite3.Connection) -> None:
    _execute_script(conn, _SCHEMA_V1)
    _execute_script(conn, outbox.SCHEMA)


def _v2(conn: sqlite3.Connection) -> None:
    _execute_script(conn, _SCHEMA_V2)


def _v3(conn: sqlite3.Connection) -> None:
    _execute_script(conn, _SCHEMA_V3)


def _v4(conn: sqlite3.Connection) -> None:
    _execute_script(conn, _SCHEMA_V4)


def _v5(conn: sqlite3.Connection) -> None:
    _execute_script(conn, _SCHEMA_V5)


#: (version, migration), applied in order to a database whose
#: ``PRAGMA user_version`` is below the version.
MIGRATIONS: tuple[tuple[int, Callable[[sqlite3.Connection], None]], ...] = (
    (1, _v1), (2, _v2), (3, _v3), (4, _v4), (5, _v5))
SCHEMA_VERSION = MIGRATIONS[-1][0]


class SqliteConnection(sqlite3.Connection):
    """``sqlite3.Connection`` that names its dialect (nothing else changes)."""

    dialect: Dialect = SQLITE


class Database:
    """The node's SQLite file (the rows port's embedded adapter).

    Parameters
    ----------
    path : Path
        Database file; its directory is created if missing.
    busy_timeout_s : float
        How long a connection waits for a lock held by another writer.
    """

    dialect: Dialect = SQLITE

    def __init__(self, path: Path, busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self.busy_timeout_s = busy_timeout_s

    def connect(self, check_same_thread: bool = True) -> SqliteConnection:
        """A new connection with the node's pragmas set.

        One thread at a time may use it; ``check_same_thread=False`` only for
        a pool that hands a connection to one thread after another.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self.path, timeout=self.busy_timeout_s, isolation_level="DEFERRED",
            check_same_thread=check_same_thread, factory=SqliteConnection,
        )
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    def start_wakeups(self, stop: threading.Event, on_job: Callable[[], None],
                      channel: str = "") -> None:
        """Nothing to start: on one node the scheduler and workers wake in process."""
        del stop, on_job, channel

    def migrate(self) -> int:
        """Bring the schema to :data:`SCHEMA_VERSION`; returns the version found.

        Each migration runs in one exclusive transaction with foreign keys
        off (tables are rebuilt) and sets ``user_version`` in it, so a crash
        leaves the database at the previous version, never half-way. Two
        processes starting together serialise on the write lock; the second
        finds the work done.

        Raises
        ------
        RuntimeError
            The database is newer than this release (a downgrade).
        """
        conn = self.connect()
        try:
            conn.execute("PRAGMA foreign_keys = OFF")
            conn.execute("BEGIN EXCLUSIVE")
            found = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if found > SCHEMA_VERSION:
                conn.rollback()
                raise RuntimeError(f"database schema {found} is newer than this release "
                                   f"({SCHEMA_VERSION}): refusing to downgrade")
            for version, step in MIGRATIONS:
                if version > found:
                    step(conn)
                    conn.execute(f"PRAGMA user_version = {version}")
            conn.commit()
            if found < SCHEMA_VERSION:
                log.info("database_migrated", extra={"fields": {
                    "from_version": found, "to_version": SCHEMA_VERSION}})
            return found
        except BaseException:
            if conn.in_transaction:
                conn.rollback()
            raise
        finally:
            conn.close()


def _execute_script(conn: sqlite3.Connection, script: str) -> None:
    """Run statements inside the caller's open transaction.

    ``executescript`` would commit first; statements are split on ';' and run
    one by one (none of the schema's literals holds a ';').
    """
    for statement in (s.strip() for s in script.split(";")):
        if statement:
            conn.execute(statement)


@dataclass(frozen=True)
class InstanceRecord:
    """What the SCP records for one stored instance (UIDs validated by the caller)."""

    sop_instance_uid: str
    study_uid: str
    series_uid: str
    sop_class_uid: str
    transfer_syntax: str
    calling_ae: str
    path: str
    size_bytes: int
    received_at: float


def instance_exists(conn: Connection, sop_instance_uid: str) -> bool:
    """True when this SOP instance is already stored (a resend)."""
    row = conn.execute(
        "SELECT 1 FROM instances WHERE sop_instance_uid = ?", (sop_instance_uid,)
    ).fetchone()
    return row is not None


def insert_instance(conn: Connection, rec: InstanceRecord) -> bool:
    """Insert an instance row; False if it was already there (deduplicated)."""
    cur = conn.execute(
        "INSERT INTO instances (sop_instance_uid, study_uid, series_uid, sop_class_uid,"
        " transfer_syntax, calling_ae, path, size_bytes, received_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (sop_instance_uid) DO NOTHING",
        (rec.sop_instance_uid, rec.study_uid, rec.series_uid, rec.sop_class_uid,
         rec.transfer_syntax, rec.calling_ae, rec.path, rec.size_bytes, rec.received_at),
    )
    return cur.rowcount == 1


def series_instances(conn: Connection, series_uid: str) -> list[tuple[str, str]]:
    """``(sop_instance_uid, spool-relative path)`` of a series, sorted by UID."""
    return [
        (str(u), str(p))
        for u, p in conn.execute(
            "SELECT sop_instance_uid, path FROM instances WHERE series_uid = ?"
            " ORDER BY sop_instance_uid",
            (series_uid,),
        )
    ]


def instance_paths(conn: Connection, sop_instance_uids: tuple[str, ...]) -> list[str]:
    """Spool-relative paths of these instances, in the given order.

    Raises
    ------
    LookupError
        If any of them is not recorded.
    """
    paths: list[str] = []
    for uid in sop_instance_uids:
        row = conn.execute(
            "SELECT path FROM instances WHERE sop_instance_uid = ?", (uid,)
        ).fetchone()
        if row is None:
            raise LookupError("an instance of the job is not recorded")
        paths.append(str(row[0]))
    return paths
