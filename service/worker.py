"""The worker: the claim loop. It claims a job, runs it to an outcome, and claims the next.

The queue is :mod:`service.store.jobs` (claims with leases). Running one
claimed job (its inputs loaded, its pipeline run, the outcome recorded, its
lease renewed meanwhile) is :class:`service.job_runner.JobRunner`; the
outcomes are listed there.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence

from service import memory
from service.job_runner import (
    DETERMINISTIC_ERRORS,
    DeferPolicy,
    JobRunner,
    LeaseKeeper,
    audit_analysis,
    defer_policy_from_settings,
)
from service.pipelines.base import Pipeline
from service.store import jobs
from service.store.blobs import Blobs, as_blobs
from service.store.rows import Connection, Rows
from service.store.spool import Spool

__all__ = ["DETERMINISTIC_ERRORS", "DeferPolicy", "JobRunner", "LeaseKeeper", "Worker",
           "audit_analysis", "defer_policy_from_settings"]

log = logging.getLogger(__name__)


class Worker:
    """One job-processing loop (run several for ``worker.count`` > 1).

    Parameters
    ----------
    database : Rows
        The rows port (SQLite file or PostgreSQL server).
    spool : Spool
    pipelines : mapping of name to Pipeline
        The pipelines enabled on this node.
    destination_names : sequence of str
        Outbox destinations for every output (may be empty: outputs are kept).
    lease_s : float
        Lease length, seconds; renewed every third of it while a job runs.
    poll_interval_s : float
        Idle wait between queue polls, seconds.
    owner_prefix : str
        Names this process in lease owners (:attr:`service.store.runs.NodeRun.owner_prefix`).
    name : str
        Short name, part of the lease owner id.
    on_outputs : callable or None
        Called after a job queued outputs (the sender's ``wake``).
    defer_policy : DeferPolicy or None
        Delayed retries after a full disk (default :class:`DeferPolicy`).
    blobs : Blobs or None
        The blob store (default: the spool folder). Outputs are keyed by the
        claim's lease token (:func:`service.store.blobs.output_key`).
    """

    def __init__(
        self,
        database: Rows,
        spool: Spool,
        pipelines: Mapping[str, Pipeline],
        destination_names: Sequence[str] = (),
        lease_s: float = 300.0,
        poll_interval_s: float = 0.2,
        owner_prefix: str = "local:0:",
        name: str = "w0",
        on_outputs: Callable[[], None] | None = None,
        defer_policy: DeferPolicy | None = None,
        blobs: Blobs | None = None,
    ) -> None:
        self.database = database
        self.spool = spool
        self.lease_s = lease_s
        self.poll_interval_s = poll_interval_s
        self.owner = f"{owner_prefix}{name}:{uuid.uuid4().hex[:8]}"
        self.wake = threading.Event()
        self._conn: Connection | None = None
        #: Runs each claimed job on this worker's connection; inputs are read and
        #: outputs written in ``blobs`` (default: the spool folder).
        self.runner = JobRunner(database, lambda: self.conn,
                                blobs if blobs is not None else as_blobs(spool), pipelines,
                                destination_names, lease_s, on_outputs, defer_policy)

    @property
    def conn(self) -> Connection:
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
                self._drop_connection()  # a fresh one next time (a server restart broke it)
                busy = False
            if not busy:
                self.wake.wait(self.poll_interval_s)
                self.wake.clear()
        self._drop_connection()
        log.info("worker_stopped", extra={"fields": {"owner": self.owner}})

    def _drop_connection(self) -> None:
        """Close the worker's connection (its open transaction rolls back)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # already broken: nothing left to close
                log.debug("worker_close_failed", exc_info=True)

    def run_once(self, now: float | None = None) -> bool:
        """Claim and process one job; True if one ran."""
        job = jobs.claim(self.conn, self.owner, self.lease_s, now)  # None: the database's clock
        if job is None:
            return False
        try:
            self.process(job)
        finally:
            memory.trim()  # a job's arrays are freed: hand the pages back
        return True

    def process(self, job: jobs.Job) -> None:
        """Run one claimed job to an outcome (never raises for pipeline failures)."""
        self.runner.process(job)
