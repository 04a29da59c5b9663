"""SQLite state of the node: instances, series, jobs (and the outbox's table).

One file, WAL journal, ``synchronous=FULL`` (a committed row survives power
loss), foreign keys on, a busy timeout so concurrent threads and processes
wait instead of failing. Times are seconds since the epoch (float, UTC).

Connections are not shared between threads: every thread calls
:meth:`Database.connect` once and keeps its own. Functions here take a
connection and do not commit unless their docstring says so; the caller owns
the transaction (``with conn:``), except :func:`retry_job`, which commits.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.store import outbox

JOB_STATES: tuple[str, ...] = ("pending", "running", "done", "failed", "superseded")
SERIES_STATES: tuple[str, ...] = ("receiving", "complete")

SCHEMA_VERSION = 1

_SCHEMA = """
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

_JOB_COLUMNS = (
    "id, series_uid, study_uid, content_hash, state, attempts, max_attempts, lease_owner,"
    " lease_expires_at, reason, reason_code, created_at, started_at, finished_at,"
    " result_json, stage_durations_json, instance_uids_json"
)


class Database:
    """The node's SQLite file.

    Parameters
    ----------
    path : Path
        Database file; its directory is created if missing.
    busy_timeout_s : float
        How long a connection waits for a lock held by another writer.
    """

    def __init__(self, path: Path, busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self.busy_timeout_s = busy_timeout_s

    def connect(self, check_same_thread: bool = True) -> sqlite3.Connection:
        """A new connection with the node's pragmas set.

        One thread at a time may use it; ``check_same_thread=False`` only for
        a pool that hands a connection to one thread after another.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self.path, timeout=self.busy_timeout_s, isolation_level="DEFERRED",
            check_same_thread=check_same_thread,
        )
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    def migrate(self) -> None:
        """Create every table (ours and the outbox) if missing; idempotent."""
        conn = self.connect()
        try:
            with conn:
                conn.executescript(_SCHEMA)
                outbox.create_schema(conn)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        finally:
            conn.close()


@dataclass(frozen=True)
class Job:
    """One row of ``jobs``; times are seconds since the epoch."""

    id: int
    series_uid: str
    study_uid: str
    content_hash: str
    state: str
    attempts: int
    max_attempts: int
    lease_owner: str | None
    lease_expires_at: float | None
    reason: str | None
    reason_code: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    result_json: str | None
    stage_durations_json: str | None
    instance_uids: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view (result and durations parsed, no instance list)."""
        return {
            "id": self.id,
            "series_uid": self.series_uid,
            "study_uid": self.study_uid,
            "content_hash": self.content_hash,
            "state": self.state,
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
            "reason": self.reason,
            "reason_code": self.reason_code,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "instance_count": len(self.instance_uids),
            "result": None if self.result_json is None else json.loads(self.result_json),
            "stage_durations_s": None
            if self.stage_durations_json is None
            else json.loads(self.stage_durations_json),
        }


_JOB_FIELDS = tuple(c.strip() for c in _JOB_COLUMNS.split(","))[:16]


def _job(row: tuple[Any, ...]) -> Job:
    values: dict[str, Any] = dict(zip(_JOB_FIELDS, row[:16], strict=True))
    return Job(**values, instance_uids=tuple(json.loads(row[16])))


def list_jobs(
    conn: sqlite3.Connection, state: str | None = None, limit: int = 100, offset: int = 0
) -> list[Job]:
    """Jobs, newest first, optionally of one state.

    Raises
    ------
    ValueError
        For an unknown state.
    """
    if state is not None and state not in JOB_STATES:
        raise ValueError(f"state must be one of {', '.join(JOB_STATES)}")
    sql = f"SELECT {_JOB_COLUMNS} FROM jobs"
    params: list[Any] = []
    if state is not None:
        sql += " WHERE state = ?"
        params.append(state)
    sql += " ORDER BY id DESC LIMIT ? OFFSET ?"
    params += [int(limit), int(offset)]
    return [_job(r) for r in conn.execute(sql, params)]


def get_job(conn: sqlite3.Connection, job_id: int) -> Job | None:
    """One job by id, or None."""
    row = conn.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return None if row is None else _job(row)


def latest_done_job_for_study(conn: sqlite3.Connection, study_uid: str) -> Job | None:
    """The newest job of a study in state done (what the API serves as its result)."""
    row = conn.execute(
        f"SELECT {_JOB_COLUMNS} FROM jobs WHERE study_uid = ? AND state = 'done'"
        " ORDER BY finished_at DESC, id DESC LIMIT 1",
        (study_uid,),
    ).fetchone()
    return None if row is None else _job(row)


def retry_job(conn: sqlite3.Connection, job_id: int, now: float | None = None) -> bool:
    """Put a failed (or done) job back in the queue with fresh attempts; commits.

    Returns False when the job does not exist or is pending, running or
    superseded (a superseded job's series has a newer job already).
    """
    with conn:
        cur = conn.execute(
            "UPDATE jobs SET state = 'pending', attempts = 0, lease_owner = NULL,"
            " lease_expires_at = NULL, reason = NULL, reason_code = NULL, started_at = NULL,"
            " finished_at = NULL, created_at = ? WHERE id = ? AND state IN ('failed', 'done')",
            (time.time() if now is None else now, job_id),
        )
    return cur.rowcount == 1


def job_counts(conn: sqlite3.Connection) -> dict[str, int]:
    """Number of jobs per state (every state present, zero when none)."""
    counts = dict.fromkeys(JOB_STATES, 0)
    for state, n in conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state"):
        counts[str(state)] = int(n)
    return counts


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


def instance_exists(conn: sqlite3.Connection, sop_instance_uid: str) -> bool:
    """True when this SOP instance is already stored (a resend)."""
    row = conn.execute(
        "SELECT 1 FROM instances WHERE sop_instance_uid = ?", (sop_instance_uid,)
    ).fetchone()
    return row is not None


def insert_instance(conn: sqlite3.Connection, rec: InstanceRecord) -> bool:
    """Insert an instance row; False if it was already there (deduplicated)."""
    cur = conn.execute(
        "INSERT INTO instances (sop_instance_uid, study_uid, series_uid, sop_class_uid,"
        " transfer_syntax, calling_ae, path, size_bytes, received_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (sop_instance_uid) DO NOTHING",
        (rec.sop_instance_uid, rec.study_uid, rec.series_uid, rec.sop_class_uid,
         rec.transfer_syntax, rec.calling_ae, rec.path, rec.size_bytes, rec.received_at),
    )
    return cur.rowcount == 1


def series_instances(conn: sqlite3.Connection, series_uid: str) -> list[tuple[str, str]]:
    """``(sop_instance_uid, spool-relative path)`` of a series, sorted by UID."""
    return [
        (str(u), str(p))
        for u, p in conn.execute(
            "SELECT sop_instance_uid, path FROM instances WHERE series_uid = ?"
            " ORDER BY sop_instance_uid",
            (series_uid,),
        )
    ]


def instance_paths(conn: sqlite3.Connection, sop_instance_uids: tuple[str, ...]) -> list[str]:
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
