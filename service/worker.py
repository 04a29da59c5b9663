"""The worker: takes jobs from SQLite with leases, runs the pipeline, fills the outbox.

A job is claimed in one ``BEGIN IMMEDIATE`` transaction (state ``running``,
``attempts + 1``, a lease that a keeper thread extends while the pipeline
runs). A worker that dies leaves its lease to expire; the job is then taken
again, and once it has used ``max_attempts`` it ends ``failed`` with that
reason. Outcomes (issue 4, point 5):

* no pipeline installed: ``failed``, reason "no analysis pipeline installed";
* :class:`~service.errors.AnalysisError`: ``failed`` with its reason and code;
* any other exception: logged with its traceback, the attempt counted, the
  job pending again until ``max_attempts``;
* success: each output dataset saved atomically to the spool, queued in the
  outbox for every destination, job ``done`` with its result as JSON, all in
  one transaction that first checks the lease is still ours (a superseded or
  re-leased job's outputs are dropped).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom import dcmwrite
from pydicom.dataset import Dataset

from service import memory, metrics
from service.errors import AnalysisError
from service.pipelines.base import Pipeline, PipelineOutput
from service.pipelines.dat_spect.result import summary_dict
from service.store import db, outbox
from service.store import series as completion
from service.store.spool import Spool

log = logging.getLogger(__name__)

NO_PIPELINE_REASON = "no analysis pipeline installed"
PURGE_INTERVAL_S = 3600.0


class Worker:
    """One job-processing loop (run several for ``worker.count`` > 1).

    Parameters
    ----------
    database : Database
    spool : Spool
    pipeline : Pipeline or None
        None: every job fails with :data:`NO_PIPELINE_REASON`.
    destination_names : sequence of str
        Outbox destinations for every output (may be empty: outputs are kept).
    lease_s : float
        Lease length, seconds; renewed every third of it while a job runs.
    max_attempts : int
        Attempts before a job that keeps crashing is failed (new jobs get the
        value stored when they were made).
    poll_interval_s : float
        Idle wait between queue polls, seconds.
    name : str
        Short name, part of the lease owner id.
    on_outputs : callable or None
        Called after a job queued outputs (the sender's ``wake``).
    retention_days : float or None
        Series older than this are purged (see :func:`purge_expired`) once
        per :data:`PURGE_INTERVAL_S`; None keeps everything.
    """

    def __init__(
        self,
        database: db.Database,
        spool: Spool,
        pipeline: Pipeline | None,
        destination_names: Sequence[str] = (),
        lease_s: float = 300.0,
        max_attempts: int = 3,
        poll_interval_s: float = 0.2,
        name: str = "w0",
        on_outputs: Callable[[], None] | None = None,
        retention_days: float | None = None,
    ) -> None:
        self.database = database
        self.spool = spool
        self.pipeline = pipeline
        self.destination_names = tuple(destination_names)
        self.lease_s = lease_s
        self.max_attempts = max_attempts
        self.poll_interval_s = poll_interval_s
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{name}:{uuid.uuid4().hex[:8]}"
        self.on_outputs = on_outputs
        self.retention_days = retention_days
        self._next_purge_at = 0.0
        self._conn: sqlite3.Connection | None = None

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = self.database.connect()
        return self._conn

    def run(self, stop: threading.Event) -> None:
        """Process jobs until ``stop`` is set; the job in hand is finished first."""
        log.info("worker_started", extra={"fields": {"owner": self.owner}})
        while not stop.is_set():
            try:
                busy = self.run_once()
            except Exception:  # the thread's edge (e.g. database locked too long): keep going
                log.exception("worker_loop_error")
                if self._conn is not None and self._conn.in_transaction:
                    self._conn.rollback()
                busy = False
            if not busy:
                stop.wait(self.poll_interval_s)
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        log.info("worker_stopped", extra={"fields": {"owner": self.owner}})

    def run_once(self, now: float | None = None) -> bool:
        """Complete quiet series, then claim and process one job; True if one ran."""
        at = time.time() if now is None else now
        if self.retention_days is not None and at >= self._next_purge_at:
            purge_expired(self.conn, self.spool, at - self.retention_days * 86400.0)
            self._next_purge_at = at + PURGE_INTERVAL_S
        with self.conn:
            completion.sweep_quiet(self.conn, at, self.max_attempts)
        job = claim_job(self.conn, self.owner, self.lease_s, at)
        if job is None:
            return False
        try:
            self.process(job)
        finally:
            memory.trim()  # a job's arrays are freed: hand the pages back
        return True

    def process(self, job: db.Job) -> None:
        """Run one claimed job to an outcome (never raises for pipeline failures)."""
        fields: dict[str, Any] = {"job_id": job.id, "attempt": job.attempts}
        log.info("job_started", extra={"fields": fields})
        started = time.perf_counter()
        if self.pipeline is None:
            self._fail(job, NO_PIPELINE_REASON, "no_pipeline")
            return
        with LeaseKeeper(self.database, job.id, self.owner, self.lease_s):
            try:
                paths = self._instance_paths(job)
                output = self.pipeline.run(paths, job.content_hash)
                self._finish(job, output, time.perf_counter() - started)
            except AnalysisError as exc:
                self._fail(job, exc.reason, exc.code)
            except Exception as exc:  # the job's edge (pipeline, saving outputs): count, retry
                log.exception("job_error", extra={"fields": fields})
                if self.conn.in_transaction:
                    self.conn.rollback()
                self._retry_or_fail(job, exc)

    def _instance_paths(self, job: db.Job) -> list[Path]:
        relative = db.instance_paths(self.conn, job.instance_uids)
        return [self.spool.absolute(p) for p in relative]

    def _finish(self, job: db.Job, output: PipelineOutput, total_s: float) -> None:
        saved = [self._save_output(job.id, ds) for ds in output.datasets]
        durations = dict(output.stage_durations_s)
        durations["total"] = total_s
        with self.conn:
            if not _still_ours(self.conn, job.id, self.owner):
                log.warning("job_lost_lease", extra={"fields": {"job_id": job.id}})
                return
            for path, sop_class, sop_uid in saved:
                if self.destination_names:
                    outbox.enqueue(self.conn, job.id, self.destination_names, path,
                                   sop_class, sop_uid)
            self.conn.execute(
                "UPDATE jobs SET state = 'done', finished_at = ?, lease_owner = NULL,"
                " lease_expires_at = NULL, reason = NULL, reason_code = NULL,"
                " result_json = ?, stage_durations_json = ? WHERE id = ?",
                (time.time(), json.dumps(summary_dict(output.result)), json.dumps(durations), job.id),
            )
        if saved and self.destination_names and self.on_outputs is not None:
            self.on_outputs()
        for stage, seconds in durations.items():
            metrics.JOB_STAGE_DURATION.labels(stage=stage).observe(seconds)
        if not self.destination_names:
            log.warning("job_outputs_not_sent", extra={"fields": {
                "job_id": job.id, "reason": "no destinations configured"}})
        log.info("job_done", extra={"fields": {"job_id": job.id, "outputs": len(saved),
                                               "duration_s": round(total_s, 3)}})

    def _save_output(self, job_id: int, ds: Dataset) -> tuple[Path, str, str]:
        sop_uid = str(ds.SOPInstanceUID)
        path = self.spool.output_path(job_id, sop_uid)
        buffer = BytesIO()
        dcmwrite(buffer, ds, enforce_file_format=True)
        self.spool.write_atomic(path, [buffer.getbuffer()])
        return path, str(ds.SOPClassUID), sop_uid

    def _fail(self, job: db.Job, reason: str, code: str) -> None:
        with self.conn:
            if not _still_ours(self.conn, job.id, self.owner):
                return
            self.conn.execute(
                "UPDATE jobs SET state = 'failed', reason = ?, reason_code = ?, finished_at = ?,"
                " lease_owner = NULL, lease_expires_at = NULL WHERE id = ?",
                (reason, code, time.time(), job.id),
            )
        log.info("job_failed", extra={"fields": {"job_id": job.id, "reason_code": code}})

    def _retry_or_fail(self, job: db.Job, exc: Exception) -> None:
        reason = f"internal error: {type(exc).__name__}"
        if job.attempts >= job.max_attempts:
            self._fail(job, f"{reason} (gave up after {job.attempts} attempts)", "internal_error")
            return
        with self.conn:
            self.conn.execute(
                "UPDATE jobs SET state = 'pending', reason = ?, reason_code = 'internal_error',"
                " lease_owner = NULL, lease_expires_at = NULL"
                " WHERE id = ? AND state = 'running' AND lease_owner = ?",
                (reason, job.id, self.owner),
            )


def claim_job(
    conn: sqlite3.Connection, owner: str, lease_s: float, now: float
) -> db.Job | None:
    """Take the oldest pending job (or one whose lease expired); commits.

    Jobs whose lease expired after their last allowed attempt are failed
    here, with a reason saying so.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(
            "UPDATE jobs SET state = 'failed', lease_owner = NULL, finished_at = ?,"
            " reason = 'worker stopped or crashed in each of ' || attempts || ' attempts',"
            " reason_code = 'lease_expired'"
            " WHERE state = 'running' AND lease_expires_at < ? AND attempts >= max_attempts",
            (now, now),
        )
        row = conn.execute(
            "SELECT id FROM jobs WHERE state = 'pending'"
            " OR (state = 'running' AND lease_expires_at < ?) ORDER BY id LIMIT 1",
            (now,),
        ).fetchone()
        if row is None:
            conn.commit()
            return None
        conn.execute(
            "UPDATE jobs SET state = 'running', lease_owner = ?, lease_expires_at = ?,"
            " attempts = attempts + 1, started_at = ? WHERE id = ?",
            (owner, now + lease_s, now, row[0]),
        )
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    return db.get_job(conn, int(row[0]))


def purge_expired(conn: sqlite3.Connection, spool: Spool, cutoff: float) -> int:
    """Delete series last received before ``cutoff`` (files, then rows); returns how many.

    A series is kept while any of its jobs is pending or running, finished
    after ``cutoff``, or has an output still waiting in the outbox. Files go
    first: a crash in between leaves rows whose files are gone, removed by
    the next purge, never files that start-up recovery would bring back.
    """
    expired = [str(r[0]) for r in conn.execute(
        "SELECT s.series_uid FROM series s WHERE s.last_received_at < ? AND NOT EXISTS ("
        " SELECT 1 FROM jobs j WHERE j.series_uid = s.series_uid AND (j.state IN"
        " ('pending', 'running') OR COALESCE(j.finished_at, j.created_at) >= ?"
        " OR EXISTS (SELECT 1 FROM outbox o WHERE o.job_id = j.id AND o.state = 'pending')))",
        (cutoff, cutoff),
    )]
    for series_uid in expired:
        job_ids = [int(r[0]) for r in conn.execute(
            "SELECT id FROM jobs WHERE series_uid = ?", (series_uid,))]
        for _, relative in db.series_instances(conn, series_uid):
            spool.absolute(relative).unlink(missing_ok=True)
        for job_id in job_ids:
            outputs = spool.root / "outputs" / str(job_id)
            for item in outputs.glob("*.dcm"):
                item.unlink()
            if outputs.is_dir():
                outputs.rmdir()
        with conn:
            conn.executemany("DELETE FROM outbox WHERE job_id = ?", [(j,) for j in job_ids])
            conn.execute("DELETE FROM jobs WHERE series_uid = ?", (series_uid,))
            conn.execute("DELETE FROM instances WHERE series_uid = ?", (series_uid,))
            conn.execute("DELETE FROM series WHERE series_uid = ?", (series_uid,))
    if expired:
        log.info("retention_purged", extra={"fields": {"series": len(expired)}})
    return len(expired)


def release_leases(conn: sqlite3.Connection, owner_prefix: str) -> int:
    """Give running jobs of a stopping process back to the queue (attempt not counted)."""
    with conn:
        cur = conn.execute(
            "UPDATE jobs SET state = 'pending', lease_owner = NULL, lease_expires_at = NULL,"
            " attempts = MAX(attempts - 1, 0) WHERE state = 'running' AND lease_owner LIKE ?",
            (owner_prefix + "%",),
        )
    return cur.rowcount


def _still_ours(conn: sqlite3.Connection, job_id: int, owner: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM jobs WHERE id = ? AND state = 'running' AND lease_owner = ?",
        (job_id, owner),
    ).fetchone()
    return row is not None


class LeaseKeeper:
    """Extends a job's lease every ``lease_s / 3`` seconds while the job runs."""

    def __init__(self, database: db.Database, job_id: int, owner: str, lease_s: float) -> None:
        self.database = database
        self.job_id = job_id
        self.owner = owner
        self.lease_s = lease_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{job_id}", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        conn = self.database.connect()
        try:
            while not self._stop.wait(self.lease_s / 3):
                with conn:
                    conn.execute(
                        "UPDATE jobs SET lease_expires_at = ? WHERE id = ? AND state = 'running'"
                        " AND lease_owner = ?",
                        (time.time() + self.lease_s, self.job_id, self.owner),
                    )
        except sqlite3.Error:
            log.exception("lease_renewal_failed", extra={"fields": {"job_id": self.job_id}})
        finally:
            conn.close()
