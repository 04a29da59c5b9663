"""Running one claimed job to an outcome: its inputs loaded, its pipeline run, the result recorded.

The claim loop is :class:`service.worker.Worker`; while a job runs, a
:class:`LeaseKeeper` thread renews its claim. Outcomes:

* the job's pipeline is not enabled on this node: ``failed`` with that reason;
* an input file is not DICOM: ``failed`` (``not_dicom``);
* :class:`~service.errors.AnalysisError`: ``failed`` with its reason and code;
* a full disk or an unavailable object store: deferred with a growing wait
  (:class:`DeferPolicy`, the attempt not counted), ``failed`` at the bound;
* any other exception: logged with its traceback, the attempt counted, the
  job pending again until ``max_attempts`` (at once ``failed`` for
  :data:`DETERMINISTIC_ERRORS`);
* success: each output dataset saved atomically to the spool, queued in the
  outbox for every destination, the job ``done`` with its summary, all in one
  transaction whose finish is fenced by the claim's lease token (a superseded
  or re-leased job's outputs are dropped).

Every analysis, done or failed, leaves one audit record (:func:`audit_analysis`).
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from pydicom import dcmwrite
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException

from service import audit, metrics
from service.dicom.header import read_series
from service.errors import AnalysisError
from service.logs import safe_exc
from service.pipelines.base import JobContext, LoadedInputs, OutputRef, Pipeline, PipelineOutput
from service.store import db, jobs, outbox
from service.store.blobs import Blobs, BlobStoreError, output_key
from service.store.dialect import notify_outputs_queued
from service.store.rows import Connection, Rows
from service.store.spool import disk_full_cause, is_disk_full

__all__ = ["DETERMINISTIC_ERRORS", "DeferPolicy", "JobRunner", "LeaseKeeper", "audit_analysis",
           "defer_policy_from_settings"]

log = logging.getLogger(__name__)

#: Unexpected errors that the same inputs raise again on every attempt (malformed data
#: reaching code that did not expect it, or a bug): the job fails at once instead of
#: running ``max_attempts`` times (reliability audit D18). Anything else (OSError,
#: MemoryError, a locked database) may pass and is retried.
DETERMINISTIC_ERRORS: tuple[type[Exception], ...] = (
    RecursionError, AttributeError, TypeError, ValueError, KeyError, IndexError,
    NotImplementedError, ZeroDivisionError, struct.error, BytesLengthException,
)


@dataclass(frozen=True)
class DeferPolicy:
    """Delayed retries of a job that met a full disk (reliability audit D11).

    The n-th deferral (n = 1, 2, ...) makes the job wait
    ``min(cap_s, base_s * 2**(n-1))`` seconds; after ``max_deferrals`` of them
    the job fails with code ``disk_full`` (an operator retries it).

    Attributes
    ----------
    base_s, cap_s : float
        First and largest wait, seconds.
    max_deferrals : int
        Deferrals before the job fails (0: fail at the first full disk).
    """

    base_s: float = 60.0
    cap_s: float = 1800.0
    max_deferrals: int = 12

    def __post_init__(self) -> None:
        if not 0 < self.base_s <= self.cap_s:
            raise ValueError(f"DeferPolicy needs 0 < base_s <= cap_s, got {self.base_s}, "
                             f"{self.cap_s}")
        if self.max_deferrals < 0:
            raise ValueError(f"DeferPolicy.max_deferrals must be >= 0, got {self.max_deferrals}")

    def delay_s(self, deferral: int) -> float:
        """Wait before the job runs again after its ``deferral``-th deferral (>= 1), seconds."""
        return float(min(self.cap_s, self.base_s * 2.0 ** min(max(deferral - 1, 0), 62)))


def defer_policy_from_settings(worker_settings: Any) -> DeferPolicy:
    """:class:`DeferPolicy` from ``Settings.worker``."""
    return DeferPolicy(float(worker_settings.disk_full_retry_base_s),
                       float(worker_settings.disk_full_retry_cap_s),
                       int(worker_settings.disk_full_max_retries))


class JobRunner:
    """Runs claimed jobs to an outcome, one at a time (a worker's job in hand).

    Parameters
    ----------
    database : Rows
        The rows port; the lease keeper opens its own connection on it.
    connection : callable
        Returns the connection the outcome is written on (the worker's,
        which it replaces after a broken one).
    blobs : Blobs
        Where inputs are read and outputs written. Outputs are keyed by the
        claim's lease token (:func:`service.store.blobs.output_key`).
    pipelines : mapping of name to Pipeline
        The pipelines enabled on this node.
    destination_names : sequence of str
        Outbox destinations for every output (may be empty: outputs are kept).
    lease_s : float
        Lease length, seconds; renewed every third of it while a job runs.
    on_outputs : callable or None
        Called after a job queued outputs (the sender's ``wake``).
    defer_policy : DeferPolicy or None
        Delayed retries after a full disk (default :class:`DeferPolicy`).
    """

    def __init__(
        self,
        database: Rows,
        connection: Callable[[], Connection],
        blobs: Blobs,
        pipelines: Mapping[str, Pipeline],
        destination_names: Sequence[str] = (),
        lease_s: float = 300.0,
        on_outputs: Callable[[], None] | None = None,
        defer_policy: DeferPolicy | None = None,
    ) -> None:
        self.database = database
        self._connection = connection
        self.blobs = blobs
        self.pipelines = dict(pipelines)
        self.destination_names = tuple(destination_names)
        self.lease_s = lease_s
        self.on_outputs = on_outputs
        self.defer_policy = defer_policy or DeferPolicy()

    @property
    def conn(self) -> Connection:
        return self._connection()

    def process(self, job: jobs.Job) -> None:
        """Run one claimed job to an outcome (never raises for pipeline failures)."""
        fields: dict[str, Any] = {"job_id": job.id, "pipeline": job.pipeline,
                                  "attempt": job.attempts}
        log.info("job_started", extra={"fields": fields})
        started = time.perf_counter()
        pipeline = self.pipelines.get(job.pipeline)
        if pipeline is None:
            self._fail(job, f"pipeline {job.pipeline} is not enabled on this node",
                       "pipeline_disabled")
            return
        inputs: LoadedInputs | None = None
        with LeaseKeeper(self.database, job.id, self.token(job), self.lease_s):
            try:
                inputs = self._load(job)
                context = self._context(job)
                read_s = time.perf_counter() - started
                output = pipeline.run(inputs, context)
                if self._finish(job, output, time.perf_counter() - started, read_s):
                    audit_analysis(job, pipeline, inputs, output.summary, "done")
            except AnalysisError as exc:
                reports = self._failure_report(pipeline, job, exc) if exc.code != "not_dicom" else ()
                self._fail(job, exc.reason, exc.code, reports)
                audit_analysis(job, pipeline, inputs, None, exc.code, exc.reason)
            except Exception as exc:  # the job's edge (pipeline, saving outputs): count, retry
                if self.conn.in_transaction:
                    self.conn.rollback()
                if is_disk_full(exc) or isinstance(exc, BlobStoreError):
                    # the node's disk or object store, not the job: later, no traceback
                    code = self._defer_or_fail(job, exc)
                    audit_analysis(job, pipeline, inputs, None, code, "disk full"
                                   if is_disk_full(exc) else "object store unavailable")
                    return
                log.exception("job_error", extra={"fields": {**fields, "error": safe_exc(exc)}})
                self._retry_or_fail(job, exc)
                audit_analysis(job, pipeline, inputs, None, "internal_error",
                               f"internal error: {type(exc).__name__}")

    def _failure_report(self, pipeline: Pipeline, job: jobs.Job,
                        exc: AnalysisError) -> list[tuple[str, dict[str, str]]]:
        """Save the pipeline's "analysis not possible" objects (none when it has none)."""
        try:
            datasets = pipeline.failure_report(self._load(job), self._context(job), exc.reason)
            return [self._save_output(job, ds) for ds in datasets]
        except Exception:  # the edge: a broken failure report must not hide the failure
            log.exception("failure_report_error", extra={"fields": {"job_id": job.id}})
            return []

    def _load(self, job: jobs.Job) -> LoadedInputs:
        loaded: dict[str, tuple[Dataset, ...]] = {}
        for item in job.inputs:
            keys = db.instance_paths(self.conn, item.instance_uids)
            with ExitStack() as copies:  # S3: downloaded to the spool's tmp/, removed after
                paths = [copies.enter_context(self.blobs.local_copy(k)) for k in keys]
                loaded[item.role] = read_series(paths)
        return LoadedInputs(loaded)

    def _context(self, job: jobs.Job) -> JobContext:
        previous = tuple(OutputRef(o["sop_class_uid"], o["sop_instance_uid"], o["series_uid"],
                                   o["study_uid"])
                         for o in jobs.previous_sent_outputs(self.conn, job))
        return JobContext(job.content_hash, job.created_at, previous, job.note or "")

    def _finish(self, job: jobs.Job, output: PipelineOutput, total_s: float,
                read_s: float) -> bool:
        """Save and queue the outputs, finish the job; False when the lease was lost."""
        saved = [self._save_output(job, ds) for ds in output.datasets]
        durations = {"read": read_s, **output.stage_durations_s, "total": total_s}
        with self.conn:
            if not jobs.finish(self.conn, job.id, self.token(job), output.summary, durations,
                               [r for _, r in saved], time.time()):
                log.warning("job_lost_lease", extra={"fields": {"job_id": job.id}})
                return False
            self._queue(job, saved)
        if saved and self.destination_names and self.on_outputs is not None:
            self.on_outputs()
        for stage, seconds in durations.items():
            metrics.JOB_STAGE_DURATION.labels(pipeline=job.pipeline, stage=stage).observe(seconds)
        if not self.destination_names:
            log.warning("job_outputs_not_sent", extra={"fields": {
                "job_id": job.id, "reason": "no destinations configured"}})
        log.info("job_done", extra={"fields": {"job_id": job.id, "pipeline": job.pipeline,
                                               "outputs": len(saved),
                                               "duration_s": round(total_s, 3)}})
        return True

    def _queue(self, job: jobs.Job, saved: Sequence[tuple[str, dict[str, str]]]) -> None:
        """Queue a job's outputs for every destination, in the caller's transaction.

        One NOTIFY for all of them (PostgreSQL): idle senders of every node wake
        when the transaction commits; never one per output.
        """
        if not saved or not self.destination_names:
            return
        for path, ref in saved:
            outbox.enqueue(self.conn, job.id, self.destination_names, path,
                           ref["sop_class_uid"], ref["sop_instance_uid"])
        notify_outputs_queued(self.conn)

    def _save_output(self, job: jobs.Job, ds: Dataset) -> tuple[str, dict[str, str]]:
        """Write one output under this attempt's key (never replacing a blob); key and ref."""
        key = output_key(job.id, self.token(job), str(ds.SOPInstanceUID))
        ref = {"sop_class_uid": str(ds.SOPClassUID), "sop_instance_uid": str(ds.SOPInstanceUID),
               "series_uid": str(ds.SeriesInstanceUID), "study_uid": str(ds.StudyInstanceUID),
               "key": key}
        buffer = BytesIO()
        dcmwrite(buffer, ds, enforce_file_format=True)
        self.blobs.put_bytes(key, buffer.getbuffer(), if_absent=True)
        return key, ref

    def _fail(self, job: jobs.Job, reason: str, code: str,
              reports: Sequence[tuple[str, dict[str, str]]] = ()) -> None:
        """Fail the job; queue its "analysis not possible" objects in the same transaction."""
        with self.conn:
            if not jobs.fail(self.conn, job.id, self.token(job), reason, code, time.time(),
                             [r for _, r in reports]):
                return
            self._queue(job, reports)
        if reports and self.destination_names and self.on_outputs is not None:
            self.on_outputs()
        log.info("job_failed", extra={"fields": {"job_id": job.id, "pipeline": job.pipeline,
                                                 "reason_code": code, "reports": len(reports)}})

    def _retry_or_fail(self, job: jobs.Job, exc: Exception) -> None:
        reason = f"internal error: {type(exc).__name__}"
        if isinstance(exc, DETERMINISTIC_ERRORS):
            self._fail(job, f"{reason} while analysing these inputs (not retried: the same "
                            "input gives the same error; see the node's log)", "internal_error")
            return
        if job.attempts >= job.max_attempts:
            self._fail(job, f"{reason} (gave up after {job.attempts} attempts)", "internal_error")
            return
        with self.conn:
            jobs.requeue(self.conn, job.id, self.token(job), reason)

    def _defer_or_fail(self, job: jobs.Job, exc: Exception) -> str:
        """Put a job that met a full disk or an unavailable object store back with a
        growing wait, or fail it at the bound (the node's trouble, not the job's).

        Returns the audit outcome: ``deferred_<code>`` or ``<code>`` (``disk_full``,
        ``blob_store``).
        """
        policy = self.defer_policy
        if isinstance(exc, BlobStoreError):
            code, what, remedy = "blob_store", "object store unavailable", "repair the store"
            error = str(exc)
        else:
            code, what, remedy = "disk_full", "disk full", "free space on the node"
            error = disk_full_cause(exc) or type(exc).__name__
        if job.deferrals >= policy.max_deferrals:
            self._fail(job, f"{what} ({error}) in {job.deferrals + 1} tries; {remedy}, "
                            "then retry the job", code)
            return code
        delay_s = policy.delay_s(job.deferrals + 1)
        reason = (f"{what} ({error}): retried in {delay_s:.0f} s "
                  f"(deferral {job.deferrals + 1} of {policy.max_deferrals})")
        with self.conn:
            deferred = jobs.defer(self.conn, job.id, self.token(job), reason, code, delay_s)
        if deferred:
            metrics.JOBS_DEFERRED.labels(pipeline=job.pipeline, reason=code).inc()
        log.warning("job_deferred", extra={"fields": {
            "job_id": job.id, "pipeline": job.pipeline, "reason_code": code,
            "error": error, "delay_s": delay_s, "deferral": job.deferrals + 1,
            "lease_lost": not deferred}})
        return f"deferred_{code}"

    @staticmethod
    def token(job: jobs.Job) -> str:
        """The lease token of a job this worker claimed."""
        if job.lease_token is None:
            raise ValueError("job was not claimed (no lease token)")
        return job.lease_token


def audit_analysis(job: jobs.Job, pipeline: Pipeline, inputs: LoadedInputs | None,
                   summary: Mapping[str, Any] | None, result: str, reason: str = "") -> None:
    """The audit record of one analysis: who (algorithm, model checksum), on what (patient).

    A.5 "DICOM Instances Accessed" with action C: the inputs were read and
    result objects created. ``result`` is ``done`` or the failure's code.
    """
    algorithm = (summary or {}).get("algorithm") or getattr(pipeline, "algorithm", None)
    if algorithm is not None and not isinstance(algorithm, Mapping):
        algorithm = {k: getattr(algorithm, k, None)
                     for k in ("name", "version", "model_name", "model_sha256")}
    ids = {"study_uid": job.study_uid, "patient_id": None, "accession": None}
    if inputs is not None and inputs.series.get("primary"):
        ids = {**audit.patient_study(inputs.primary[0]), "study_uid": job.study_uid}
    outcome = audit.Outcome.SUCCESS if result == "done" else (
        audit.Outcome.SERIOUS_FAILURE if result == "internal_error" else audit.Outcome.MINOR_FAILURE)
    audit.emit("analysis", audit.INSTANCES_ACCESSED, action="C", outcome=outcome,
               outcome_text=result,
               objects=[{"kind": "study", **ids, "series_uid": job.series_uid,
                         "instances": len(job.instance_uids)}],
               details={"job_id": job.id, "attempt": job.attempts, "pipeline": job.pipeline,
                        "pipeline_version": getattr(pipeline, "version", None),
                        "algorithm": dict(algorithm) if algorithm else None,
                        "reason": reason})


class LeaseKeeper:
    """Extends a job's lease every ``lease_s / 3`` seconds while the job runs."""

    def __init__(self, database: Rows, job_id: int, token: str, lease_s: float) -> None:
        self.database = database
        self.job_id = job_id
        self.token = token
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
                with conn:  # on the database's clock
                    if not jobs.renew(conn, self.job_id, self.token, self.lease_s):
                        return  # taken over or superseded: the finish will be refused
        except Exception:  # the thread's edge (database errors of either adapter)
            log.exception("lease_renewal_failed", extra={"fields": {"job_id": self.job_id}})
        finally:
            conn.close()
