"""Once per node: complete quiet series, route completed series to pipelines, purge, sweep.

Routing happens before any job exists. A completed series is offered to
every enabled pipeline (:meth:`service.pipelines.base.Pipeline.select`, on
the header of one instance, no pixels):

* each pipeline that takes it names its input series
  (:meth:`~service.pipelines.base.Pipeline.inputs`); a job is made per
  pipeline, or the series waits (state ``complete``) while the pipeline
  waits for a companion series, until the deadline it gave;
* a series no pipeline takes is recorded ``ignored``, with each pipeline's
  reason (the API and /metrics show it; no job, nothing is sent back);
* every pipeline's decision is kept on the series row (``routing``).

One :class:`Scheduler` thread runs per ``dopanode serve`` process that runs
workers; its steps are idempotent transactions, so two processes against
one database do not make twin jobs. On PostgreSQL only one of them works at
a time: the one whose session holds the scheduler's advisory lock
(:func:`service.store.dialect.try_singleton`); the others take over when
its connection goes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping

from pydicom.dataset import Dataset

from service import metrics
from service.dicom.header import READ_ERRORS, read_header_prefix, read_series_header
from service.pipelines.base import InputSeries, Pipeline, SeriesView
from service.store import db, jobs, retention, series
from service.store.blobs import Blobs, as_blobs
from service.store.dialect import try_singleton
from service.store.orphans import OrphanSweep
from service.store.rows import Connection, Rows
from service.store.spool import Spool

log = logging.getLogger(__name__)

PURGE_INTERVAL_S = 3600.0
#: Bytes of an instance read for its routing header before falling back to the whole
#: file (NM and PET headers are a few KiB; an Enhanced multi-frame one may be more).
HEADER_PREFIX_BYTES = 256 * 1024
NO_PIPELINE_REASON = "no analysis pipeline enabled on this node"


class Scheduler:
    """The node's housekeeping loop (see the module docstring).

    Parameters
    ----------
    database : Rows
    spool : Spool
    pipelines : mapping of name to Pipeline
        The enabled pipelines, in registry order.
    max_attempts : int
        Attempts given to each new job.
    interval_s : float
        Time between rounds, seconds.
    retention_days : float or None
        Series older than this are purged once per :data:`PURGE_INTERVAL_S`.
    on_jobs : callable or None
        Called after a round made jobs (wakes idle workers).
    blobs : Blobs or None
        The blob store of the instances (default: the spool folder).
    orphan_grace_s : float or None
        Sweep blobs no row refers to once they are this old (seconds), one
        batch per round (:class:`service.store.orphans.OrphanSweep`); None: no sweep.
    """

    def __init__(self, database: Rows, spool: Spool, pipelines: Mapping[str, Pipeline],
                 max_attempts: int = 3, interval_s: float = 0.2,
                 retention_days: float | None = None,
                 on_jobs: Callable[[], None] | None = None,
                 blobs: Blobs | None = None, orphan_grace_s: float | None = None) -> None:
        self.database = database
        self.spool = spool
        #: Where instances are read (routing) and purged; default the spool folder.
        self.blobs: Blobs = blobs if blobs is not None else as_blobs(spool)
        self.pipelines = dict(pipelines)
        self.max_attempts = max_attempts
        self.interval_s = interval_s
        self.retention_days = retention_days
        self.on_jobs = on_jobs
        self._next_purge_at = 0.0
        #: The sweep of blobs without rows (None: off).
        self.orphans = OrphanSweep(self.blobs, orphan_grace_s) if orphan_grace_s else None
        #: Set by the SCP of this process when a series completes by count.
        self.wake = threading.Event()

    def run(self, stop: threading.Event) -> None:
        """Run rounds until ``stop`` is set."""
        conn: Connection | None = None
        try:
            while not stop.is_set():
                try:
                    conn = conn or self.database.connect()
                    if self.run_once(conn) and self.on_jobs is not None:
                        self.on_jobs()
                except Exception:  # the thread's edge (database locked too long, server gone)
                    log.exception("scheduler_error")
                    _closed(conn)
                    conn = None
                self.wake.wait(self.interval_s)  # a completed series (same process) wakes it
                self.wake.clear()
        finally:
            _closed(conn)

    def run_once(self, conn: Connection, now: float | None = None) -> int:
        """One round: purge (when due), complete quiet series, route; jobs made.

        Does nothing while another node's scheduler holds the singleton lock.
        """
        if not try_singleton(conn, "scheduler"):
            return 0
        at = time.time() if now is None else now
        if self.retention_days is not None and at >= self._next_purge_at:
            retention.purge_expired(conn, self.blobs, at - self.retention_days * 86400.0)
            self._next_purge_at = at + PURGE_INTERVAL_S
        if self.orphans is not None:
            self.orphans.step(conn, at)  # one batch per round, when a sweep is due
        with conn:
            series.sweep_quiet(conn, at)
        made = 0
        for row in series.awaiting_routing(conn):
            with conn:
                made += self.route(conn, row, at)
        if conn.in_transaction:
            conn.commit()  # nothing left open between rounds (PostgreSQL: no locks held idle)
        return made

    def _header(self, key: str) -> Dataset:
        """The routing header of one instance: its first bytes (S3: a ranged GET), else all."""
        header = read_header_prefix(self.blobs.get_head(key, HEADER_PREFIX_BYTES))
        if header is not None:
            return header
        with self.blobs.local_copy(key) as path:  # a long header, or no pixel data
            return read_series_header(path)

    def _view(self, row: series.SeriesRow) -> SeriesView | None:
        if row.first_path is None:
            return None
        try:
            header = self._header(row.first_path)
        except READ_ERRORS as exc:
            log.warning("series_header_unreadable", extra={"fields": {
                "error": type(exc).__name__}})
            return None
        return SeriesView(row.study_uid, row.series_uid, str(header.get("SOPClassUID", "")),
                          row.instance_count, header, row.state != "receiving", row.completed_at)

    def route(self, conn: Connection, row: series.SeriesRow, now: float) -> int:
        """Offer one completed series to the pipelines; jobs made (0 when waiting or ignored)."""
        view = self._view(row)
        if view is None or not self.pipelines:
            why = NO_PIPELINE_REASON if view is not None else "series header unreadable"
            self._record(conn, row, {"node": why}, taken=False, made=0)
            return 0
        decisions: dict[str, str] = {}
        taken, waiting, made = False, False, 0
        for name, pipeline in self.pipelines.items():
            try:
                selection = pipeline.select(view)
            except Exception as exc:  # a pipeline's bug must not stop routing for the others
                log.exception("select_failed", extra={"fields": {"pipeline": name}})
                decisions[name] = f"declined: select failed ({type(exc).__name__})"
                continue
            decisions[name] = ("taken: " if selection.taken else "declined: ") + selection.reason
            if not selection.taken:
                continue
            plan = pipeline.inputs(view, self._study(conn, view), now)
            if not plan.series:  # taken by its header, but its study holds nothing to analyse
                decisions[name] = f"declined: {plan.note}"
                continue
            taken = True
            if plan.wait_until is not None and now < plan.wait_until:
                waiting = True
                continue
            made += self._make_job(conn, name, view, plan.series, plan.note, now)
        if not waiting:
            self._record(conn, row, decisions, taken, made)
        return made

    def _record(self, conn: Connection, row: series.SeriesRow,
                decisions: dict[str, str], taken: bool, made: int) -> None:
        series.mark_routed(conn, row.series_uid, row.content_hash or "", decisions, taken)
        outcome = "taken" if taken else "ignored"
        metrics.SERIES_ROUTED.labels(outcome=outcome).inc()
        log.info("series_routed", extra={"fields": {
            "outcome": outcome, "jobs": made,
            "pipelines": {k: v.split(":")[0] for k, v in decisions.items()}}})

    def _study(self, conn: Connection, primary: SeriesView) -> list[SeriesView]:
        views = []
        for row in series.study_series(conn, primary.study_uid):
            if row.series_uid != primary.series_uid:
                view = self._view(row)
                if view is not None:
                    views.append(view)
        return views

    def _make_job(self, conn: Connection, pipeline: str, view: SeriesView,
                  plan: tuple[InputSeries, ...], note: str, now: float) -> int:
        inputs = [jobs.JobInput(item.role, item.series_uid,
                                tuple(u for u, _ in db.series_instances(conn, item.series_uid)))
                  for item in plan]
        every_uid = [u for item in inputs for u in item.instance_uids]
        job_id = jobs.create(conn, pipeline, view.study_uid, inputs,
                             series.content_hash(every_uid), self.max_attempts, now, note)
        if job_id is None:
            return 0
        log.info("job_created", extra={"fields": {
            "job_id": job_id, "pipeline": pipeline, "inputs": len(inputs),
            "instances": len(every_uid)}})
        return 1


def _closed(conn: Connection | None) -> None:
    """Close a connection after an error; the next round opens a fresh session.

    Closing rolls back and, on PostgreSQL, gives up the singleton lock:
    whichever scheduler asks first next takes it.
    """
    if conn is not None:
        try:
            conn.close()
        except Exception:  # already broken: nothing left to close
            log.debug("scheduler_close_failed", exc_info=True)
