"""Series completion: when a received series becomes a job.

Rules (issue 4, point 4):

* a multi-frame NM instance (Number of Frames > 1) completes its series at
  once (expected count 1);
* a per-slice series completes when as many instances as its Number of
  Slices (0054,0081) or Images in Acquisition (0020,1002) says are there;
* any series not complete by count completes after its caller's quiet time
  (no new instance for ``quiet_s`` seconds), e.g. a CT or a series whose
  header does not say how many slices to expect;
* exactly one job per series content: the content hash is the SHA-256 over
  the sorted SOP Instance UIDs. Instances arriving after a job was made put
  the series back to ``receiving``; its next completion makes a new job and
  marks the older jobs of the series ``superseded``.

Functions take a connection and do not commit: the SCP calls
:func:`note_instance` and :func:`complete_if_ready` in the transaction that
records the instance, so an acknowledged instance and its job appear
together or not at all.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3

from service.dicom.header import READ_ERRORS, expected_count, read_header
from service.store import db
from service.store.spool import Spool

log = logging.getLogger(__name__)


def content_hash(sop_instance_uids: list[str] | tuple[str, ...]) -> str:
    """SHA-256 (hex) over the sorted SOP Instance UIDs, newline-separated."""
    joined = "\n".join(sorted(sop_instance_uids))
    return hashlib.sha256(joined.encode("ascii")).hexdigest()


def note_instance(
    conn: sqlite3.Connection,
    rec: db.InstanceRecord,
    expected: int | None,
    quiet_s: float,
) -> None:
    """Count a newly inserted instance into its series (creating the row)."""
    conn.execute(
        "INSERT INTO series (series_uid, study_uid, calling_ae, first_received_at,"
        " last_received_at, instance_count, expected_count, quiet_s, state)"
        " VALUES (?, ?, ?, ?, ?, 1, ?, ?, 'receiving')"
        " ON CONFLICT (series_uid) DO UPDATE SET"
        " last_received_at = MAX(last_received_at, excluded.last_received_at),"
        " instance_count = instance_count + 1,"
        " expected_count = COALESCE(excluded.expected_count, expected_count),"
        " quiet_s = excluded.quiet_s, state = 'receiving'",
        (rec.series_uid, rec.study_uid, rec.calling_ae, rec.received_at, rec.received_at,
         expected, quiet_s),
    )


def complete_if_ready(
    conn: sqlite3.Connection, series_uid: str, now: float, max_attempts: int
) -> int | None:
    """Make the job if the series is complete by count; returns the new job id."""
    row = conn.execute(
        "SELECT instance_count, expected_count, state FROM series WHERE series_uid = ?",
        (series_uid,),
    ).fetchone()
    if row is None or row[2] != "receiving" or row[1] is None or row[0] < row[1]:
        return None
    return complete_series(conn, series_uid, now, max_attempts, trigger="count")


def sweep_quiet(conn: sqlite3.Connection, now: float, max_attempts: int) -> list[int]:
    """Complete every receiving series whose quiet time has passed; new job ids."""
    due = [
        str(r[0])
        for r in conn.execute(
            "SELECT series_uid FROM series WHERE state = 'receiving'"
            " AND last_received_at + quiet_s <= ?",
            (now,),
        )
    ]
    made: list[int] = []
    for series_uid in due:
        job_id = complete_series(conn, series_uid, now, max_attempts, trigger="quiet")
        if job_id is not None:
            made.append(job_id)
    return made


def complete_series(
    conn: sqlite3.Connection, series_uid: str, now: float, max_attempts: int, trigger: str
) -> int | None:
    """Mark the series complete and make one job for its current content.

    Returns the new job's id, or None when a job for exactly this content
    already exists (a resend or a repeated sweep).
    """
    members = db.series_instances(conn, series_uid)
    uids = [u for u, _ in members]
    digest = content_hash(uids)
    study_uid = conn.execute(
        "SELECT study_uid FROM series WHERE series_uid = ?", (series_uid,)
    ).fetchone()[0]
    conn.execute("UPDATE series SET state = 'complete' WHERE series_uid = ?", (series_uid,))
    cur = conn.execute(
        "INSERT INTO jobs (series_uid, study_uid, content_hash, instance_uids_json, state,"
        " attempts, max_attempts, created_at) VALUES (?, ?, ?, ?, 'pending', 0, ?, ?)"
        " ON CONFLICT (series_uid, content_hash) DO NOTHING",
        (series_uid, study_uid, digest, json.dumps(uids), max_attempts, now),
    )
    if cur.rowcount != 1:
        return None
    job_id = int(cur.lastrowid or 0)
    superseded = conn.execute(
        "UPDATE jobs SET state = 'superseded', lease_owner = NULL,"
        " finished_at = COALESCE(finished_at, ?)"
        " WHERE series_uid = ? AND id != ? AND state != 'superseded'",
        (now, series_uid, job_id),
    ).rowcount
    log.info(
        "series_complete",
        extra={"fields": {"job_id": job_id, "instances": len(uids), "trigger": trigger,
                          "superseded_jobs": superseded}},
    )
    return job_id


def recover_spool(conn: sqlite3.Connection, spool: Spool, quiet_s: float,
                  max_attempts: int) -> int:
    """Record spooled instances that the database does not know; returns how many.

    The SCP's connections commit with ``synchronous=NORMAL`` (a commit
    survives a process crash, not necessarily a power loss), while each
    instance file is fsynced and renamed into place before its row is
    written. After a power loss the files are therefore the truth: this
    re-records the ones whose rows were lost and redoes their series
    bookkeeping, so no acknowledged instance is forgotten. Run it before
    the SCP starts.
    """
    known = {str(r[0]) for r in conn.execute("SELECT path FROM instances")}
    recovered = 0
    for path in sorted((spool.root / "instances").glob("*/*/*.dcm")):
        relative = spool.relative(path)
        if relative in known:
            continue
        try:
            header = read_header(path)
            if spool.instance_path(header.study_uid, header.series_uid,
                                   header.sop_instance_uid) != path:
                raise ValueError("file is not where its UIDs put it")
        except READ_ERRORS as exc:
            log.warning("spool_file_skipped", extra={"fields": {"error": type(exc).__name__}})
            continue
        rec = db.InstanceRecord(
            header.sop_instance_uid, header.study_uid, header.series_uid,
            header.info.sop_class_uid, header.transfer_syntax, "RECOVERED", relative,
            path.stat().st_size, path.stat().st_mtime,
        )
        with conn:
            if db.insert_instance(conn, rec):
                note_instance(conn, rec, expected_count(header.info), quiet_s)
                complete_if_ready(conn, rec.series_uid, rec.received_at, max_attempts)
                recovered += 1
    if recovered:
        log.warning("spool_recovered", extra={"fields": {"instances": recovered}})
    return recovered
