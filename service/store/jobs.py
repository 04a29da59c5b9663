"""The job queue: every SQL statement that writes ``jobs`` lives here (reads for the API:
:mod:`service.store.job_views`).

A job is one pipeline's analysis of one series content (its *primary*
series, plus any companion series the pipeline asked for). Life cycle::

    pending -> running (leased) -> done | failed
            \\-> superseded (a newer content of the same series for the same pipeline)
    running -> pending, not before a time (deferred: a transient cause, e.g. a full disk)

A claim carries a lease (its owner, a fresh token and an expiry on the
database's clock) that a keeper thread renews; every write after a claim
(renew, finish, fail, requeue) names the claim's token, so a worker whose
lease expired and was taken over cannot write over its successor. On SQLite
a claim takes the write lock (only when a cheap read found a job to take);
on PostgreSQL it locks one row with ``FOR UPDATE SKIP LOCKED``, so claimers
never wait for each other (:mod:`service.store.dialect`). Times are seconds
since the epoch. Functions take a connection and do not commit unless the
docstring says so.

The row types :class:`Job`, :class:`JobInput` and :data:`JOB_STATES` live in
:mod:`service.store.job_row` and are the queue's vocabulary: callers use them
as ``jobs.Job``, ``jobs.JobInput``, ``jobs.JOB_STATES``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from service.store.dialect import dialect_of, notify_job_created
from service.store.job_row import JOB_COLUMNS, JOB_STATES, Job, JobInput, job_from_row
from service.store.rows import Connection


def create(
    conn: Connection,
    pipeline: str,
    study_uid: str,
    inputs: Sequence[JobInput],
    content_hash: str,
    max_attempts: int,
    now: float,
    note: str = "",
) -> int | None:
    """Make a pending job; older jobs of the same pipeline whose primary series is one of its
    inputs are superseded.

    ``inputs[0]`` is the primary series. Superseded: the jobs of the same
    primary (a series received again, or the same primary with more
    companions), and those whose primary is now a companion of this one (an
    FDOPA dynamic-only job, once its static series arrived). Returns the new
    id, or None when a job for exactly this content already exists (a
    resend, a repeated sweep). Idle workers of every node are woken when the
    transaction commits.
    """
    primary = inputs[0]
    row = conn.execute(
        "INSERT INTO jobs (pipeline, series_uid, study_uid, content_hash, instance_uids_json,"
        " inputs_json, note, state, attempts, max_attempts, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', 0, ?, ?)"
        " ON CONFLICT (pipeline, series_uid, content_hash) DO NOTHING RETURNING id",
        (pipeline, primary.series_uid, study_uid, content_hash,
         json.dumps(list(primary.instance_uids)),
         json.dumps([{"role": i.role, "series_uid": i.series_uid,
                      "instance_uids": list(i.instance_uids)} for i in inputs]),
         note or None, max_attempts, now),
    ).fetchone()
    if row is None:
        return None
    job_id = int(row[0])
    series_uids = list(dict.fromkeys(i.series_uid for i in inputs))
    conn.execute(
        "UPDATE jobs SET state = 'superseded', lease_owner = NULL, lease_token = NULL,"
        " finished_at = COALESCE(finished_at, ?)"
        f" WHERE pipeline = ? AND series_uid IN ({', '.join('?' * len(series_uids))})"
        " AND id != ? AND state != 'superseded'",
        (now, pipeline, *series_uids, job_id),
    )
    notify_job_created(conn)
    return job_id


#: A job a claim may take: pending and due (``not_before`` passed), or running
#: under an expired lease. Two ``{clock}`` parameters.
_CLAIMABLE = ("(state = 'pending' AND (not_before IS NULL OR not_before <= {clock}))"
              " OR (state = 'running' AND lease_expires_at < {clock})")


def claim(conn: Connection, owner: str, lease_s: float,
          now: float | None = None) -> Job | None:
    """Take the oldest pending job (or one whose lease expired) under a new lease; commits.

    ``now`` (seconds since the epoch) is for tests; by default the lease runs
    on the database's clock, never the worker host's. The returned job
    carries its ``lease_token``. Jobs whose lease expired after their last
    allowed attempt are failed first, saying so. A deferred job waits for
    its ``not_before`` (:func:`defer`).

    SQLite: a plain read first, so idle workers take the write lock only
    when there is a job to claim. PostgreSQL: each statement locks only the
    rows it takes and skips those other claimers hold.
    """
    dialect = dialect_of(conn)
    clock = dialect.clock()
    if dialect.begin_write is not None:
        due = conn.execute(
            f"SELECT 1 FROM jobs WHERE {_CLAIMABLE.format(clock=clock)} LIMIT 1",
            (now, now)).fetchone()
        if conn.in_transaction:
            conn.commit()
        if due is None:
            return None
        conn.execute(dialect.begin_write)
    elif conn.in_transaction:
        conn.commit()
    token = uuid.uuid4().hex
    try:
        conn.execute(
            f"UPDATE jobs SET state = 'failed', lease_owner = NULL, lease_token = NULL,"
            f" finished_at = {clock},"
            " reason = 'worker stopped or crashed in each of ' || attempts || ' attempts',"
            " reason_code = 'lease_expired' WHERE id IN (SELECT id FROM jobs"
            f" WHERE state = 'running' AND lease_expires_at < {clock}"
            f" AND attempts >= max_attempts{dialect.lock_suffix()})",
            (now, now),
        )
        row = conn.execute(
            f"UPDATE jobs SET state = 'running', lease_owner = ?, lease_token = ?,"
            f" lease_expires_at = {clock} + ?, attempts = attempts + 1, started_at = {clock}"
            f" WHERE id = (SELECT id FROM jobs WHERE {_CLAIMABLE.format(clock=clock)}"
            f" ORDER BY id LIMIT 1{dialect.lock_suffix()}) RETURNING id",
            (owner, token, now, lease_s, now, now, now),
        ).fetchone()
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    return None if row is None else get(conn, int(row[0]))


def renew(conn: Connection, job_id: int, token: str, lease_s: float,
          now: float | None = None) -> bool:
    """Extend our lease on a running job; False once it is not ours."""
    cur = conn.execute(
        f"UPDATE jobs SET lease_expires_at = {dialect_of(conn).clock()} + ?"
        " WHERE id = ? AND state = 'running' AND lease_token = ?",
        (now, lease_s, job_id, token))
    return bool(cur.rowcount == 1)


def still_ours(conn: Connection, job_id: int, token: str) -> bool:
    """True while the job is running under the claim with this token."""
    row = conn.execute(
        "SELECT 1 FROM jobs WHERE id = ? AND state = 'running' AND lease_token = ?",
        (job_id, token),
    ).fetchone()
    return row is not None


def finish(
    conn: Connection,
    job_id: int,
    token: str,
    summary: Mapping[str, Any],
    durations_s: Mapping[str, float],
    outputs: Sequence[Mapping[str, str]],
    now: float,
) -> bool:
    """Mark a job we hold done with its summary, stage times and output references.

    Returns False (and changes nothing) when the job is no longer ours: its
    lease was taken over, or a newer content superseded it.
    """
    cur = conn.execute(
        "UPDATE jobs SET state = 'done', finished_at = ?, lease_owner = NULL, not_before = NULL,"
        " lease_token = NULL, lease_expires_at = NULL, reason = NULL, reason_code = NULL,"
        " result_json = ?, stage_durations_json = ?, outputs_json = ?"
        " WHERE id = ? AND state = 'running' AND lease_token = ?",
        (now, json.dumps(dict(summary)), json.dumps(dict(durations_s)),
         json.dumps([dict(o) for o in outputs]), job_id, token),
    )
    return bool(cur.rowcount == 1)


def fail(conn: Connection, job_id: int, token: str, reason: str, code: str,
         now: float, outputs: Sequence[Mapping[str, str]] = ()) -> bool:
    """Fail a job we hold with a reason (and the "not possible" objects it sends).

    Returns False when the job is no longer ours.
    """
    cur = conn.execute(
        "UPDATE jobs SET state = 'failed', reason = ?, reason_code = ?, finished_at = ?,"
        " lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL, outputs_json = ?"
        " WHERE id = ? AND state = 'running' AND lease_token = ?",
        (reason, code, now, json.dumps([dict(o) for o in outputs]) if outputs else None,
         job_id, token),
    )
    return bool(cur.rowcount == 1)


def requeue(conn: Connection, job_id: int, token: str, reason: str) -> bool:
    """Give a job we hold back to the queue after an internal error (attempt counted)."""
    cur = conn.execute(
        "UPDATE jobs SET state = 'pending', reason = ?, reason_code = 'internal_error',"
        " lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL"
        " WHERE id = ? AND state = 'running' AND lease_token = ?",
        (reason, job_id, token),
    )
    return bool(cur.rowcount == 1)


def defer(conn: Connection, job_id: int, token: str, reason: str, code: str,
          delay_s: float, now: float | None = None) -> bool:
    """Give a job we hold back to the queue, claimable again ``delay_s`` from now.

    For a transient cause outside the job (a full disk): the attempt is not
    counted, ``deferrals`` is; ``now`` for tests, else the database's clock.
    Returns False when the job is no longer ours.
    """
    cur = conn.execute(
        "UPDATE jobs SET state = 'pending', reason = ?, reason_code = ?,"
        " attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END,"
        f" deferrals = deferrals + 1, not_before = {dialect_of(conn).clock()} + ?,"
        " lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL"
        " WHERE id = ? AND state = 'running' AND lease_token = ?",
        (reason, code, now, float(delay_s), job_id, token),
    )
    return bool(cur.rowcount == 1)


def release_leases(conn: Connection, owner_prefix: str) -> int:
    """Give running jobs of a stopping process back to the queue (attempt not counted)."""
    with conn:
        cur = conn.execute(
            "UPDATE jobs SET state = 'pending', lease_owner = NULL, lease_token = NULL,"
            " lease_expires_at = NULL,"
            " attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END"
            " WHERE state = 'running' AND lease_owner LIKE ?",
            (owner_prefix + "%",),
        )
    return int(cur.rowcount)


def expire_leases(conn: Connection, owner_prefix: str) -> int:
    """Expire the leases of a process that is gone (it crashed): its jobs are claimable now.

    The attempt stays counted (a job that kills its process is not retried
    for ever); the next claim fails it when it has used ``max_attempts``.
    """
    with conn:
        cur = conn.execute(
            "UPDATE jobs SET lease_expires_at = 0 WHERE state = 'running' AND lease_owner LIKE ?",
            (owner_prefix + "%",))
    return cur.rowcount


def retry(conn: Connection, job_id: int) -> bool:
    """Put a failed (or done) job back in the queue with fresh attempts; commits.

    ``created_at`` is kept: the outputs' dates derive from it, so the retry
    writes the same objects. Returns False when the job does not exist or is
    pending, running or superseded (a superseded job's series has a newer job).
    """
    with conn:
        cur = conn.execute(
            "UPDATE jobs SET state = 'pending', attempts = 0, deferrals = 0, not_before = NULL,"
            " lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL, reason = NULL,"
            " reason_code = NULL, started_at = NULL, finished_at = NULL"
            " WHERE id = ? AND state IN ('failed', 'done')",
            (job_id,),
        )
    return bool(cur.rowcount == 1)


def get(conn: Connection, job_id: int) -> Job | None:
    """One job by id, or None."""
    row = conn.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return None if row is None else job_from_row(row)


def list_jobs(
    conn: Connection, state: str | None = None, limit: int = 100, offset: int = 0,
    pipeline: str | None = None,
) -> list[Job]:
    """Jobs, newest first, optionally of one state and one pipeline.

    Raises
    ------
    ValueError
        For an unknown state.
    """
    if state is not None and state not in JOB_STATES:
        raise ValueError(f"state must be one of {', '.join(JOB_STATES)}")
    where, params = [], []
    if state is not None:
        where.append("state = ?")
        params.append(state)
    if pipeline is not None:
        where.append("pipeline = ?")
        params.append(pipeline)
    sql = f"SELECT {JOB_COLUMNS} FROM jobs"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY id DESC LIMIT ? OFFSET ?"
    return [job_from_row(r) for r in conn.execute(sql, [*params, int(limit), int(offset)])]


def previous_sent_outputs(conn: Connection, job: Job) -> tuple[dict[str, str], ...]:
    """Outputs of the newest earlier job of this pipeline that reached a destination and whose
    primary series is one of this job's inputs (the jobs :func:`create` supersedes).

    These are the objects the new result replaces in the PACS (the new SR
    names them as predecessors).
    """
    series_uids = list(dict.fromkeys([job.series_uid, *(i.series_uid for i in job.inputs)]))
    for row in conn.execute(
            "SELECT j.outputs_json FROM jobs j WHERE j.pipeline = ? AND j.series_uid IN"
            f" ({', '.join('?' * len(series_uids))})"
            " AND j.id < ? AND j.outputs_json IS NOT NULL AND EXISTS (SELECT 1 FROM outbox o"
            " WHERE o.job_id = j.id AND o.state = 'sent') ORDER BY j.id DESC LIMIT 1",
            (job.pipeline, *series_uids, job.id)):
        return tuple(json.loads(row[0]))
    return ()
