"""Prometheus metrics of the node: one registry, the metric objects, a refresh.

Event counters (instances, associations, deliveries) and the stage-duration
histogram are incremented where things happen (the SCP, the worker, the
sender). Numbers that live in SQLite (jobs by state, outbox backlog) are read
from the database at scrape time by :func:`refresh_from_db`, so they are right
after a restart and whichever process did the work. The spool's free space
and the model check are set at scrape time too, from the same checks /ready
runs (:func:`service.api.readiness.refresh_metrics`).

The alert and recording rules over these names live in
``deploy/prometheus/rules/`` (documented in ``docs/operations.md``): renaming
a metric or a label here breaks them, and their tests say so.

Usage from other modules::

    from service import metrics
    metrics.INSTANCES_RECEIVED.inc()
    metrics.INSTANCES_REJECTED.labels(reason="out_of_space").inc()
    metrics.ASSOCIATIONS.labels(result="accepted", reason="").inc()
    with metrics.ASSOCIATIONS_ACTIVE.track_inprogress(): ...
    metrics.JOB_STAGE_DURATION.labels(pipeline="dat_spect", stage="volume").observe(0.8)

Labels are low-cardinality slugs only: never AE titles of patients' devices,
UIDs or anything patient-related.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from service.store import job_views, jobs, outbox_views, series
from service.store.rows import Connection

#: The node's own registry (not the process-global default one), so tests and
#: several nodes in one process do not collide with library metrics.
REGISTRY = CollectorRegistry(auto_describe=True)

INSTANCES_RECEIVED = Counter(
    "dopanode_instances_received_total",
    "DICOM instances stored and answered Success by the SCP.",
    registry=REGISTRY,
)
INSTANCES_REJECTED = Counter(
    "dopanode_instances_rejected_total",
    "C-STORE requests answered with a failure status, by reason slug.",
    ["reason"],
    registry=REGISTRY,
)
INSTANCES_DUPLICATE = Counter(
    "dopanode_instances_duplicate_total",
    "Resent instances that were already stored (answered Success, not stored twice).",
    registry=REGISTRY,
)
ASSOCIATIONS = Counter(
    "dopanode_associations_total",
    "Association requests and connections, by result (accepted, rejected) and, for"
    " rejections, reason (unknown_caller, called_ae, association_limit, host_limit,"
    " disk_space, user_identity, other; empty when accepted).",
    ["result", "reason"],
    registry=REGISTRY,
)
ASSOCIATIONS_ACTIVE = Gauge(
    "dopanode_associations_active",
    "Associations currently open on the SCP.",
    registry=REGISTRY,
)
JOBS = Gauge(
    "dopanode_jobs",
    "Jobs in the database, by pipeline and state (read at scrape time).",
    ["pipeline", "state"],
    registry=REGISTRY,
)
SERIES = Gauge(
    "dopanode_series",
    "Received series by state: receiving, complete (awaiting routing), routed, ignored"
    " (no pipeline took it); read at scrape time.",
    ["state"],
    registry=REGISTRY,
)
SERIES_ROUTED = Counter(
    "dopanode_series_routed_total",
    "Completed series offered to the pipelines, by outcome (taken, ignored).",
    ["outcome"],
    registry=REGISTRY,
)
JOBS_DEFERRED = Counter(
    "dopanode_jobs_deferred_total",
    "Jobs given back to the queue for a delayed retry, by pipeline and reason (disk_full:"
    " the spool, the database or a quota was full).",
    ["pipeline", "reason"],
    registry=REGISTRY,
)
JOB_STAGE_DURATION = Histogram(
    "dopanode_job_stage_duration_seconds",
    "Wall time of each pipeline stage (and 'total') per job, seconds.",
    ["pipeline", "stage"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 120.0),
    registry=REGISTRY,
)
OUTBOX_BACKLOG = Gauge(
    "dopanode_outbox_backlog",
    "Outputs not yet delivered (state pending), per destination (read at scrape time).",
    ["destination"],
    registry=REGISTRY,
)
OUTBOX_OLDEST_AGE = Gauge(
    "dopanode_outbox_oldest_age_seconds",
    "Age of the oldest undelivered output, seconds; 0 when the outbox is empty.",
    registry=REGISTRY,
)
OUTBOX_FAILED = Gauge(
    "dopanode_outbox_failed",
    "Outputs given up on after the configured give-up time (read at scrape time).",
    registry=REGISTRY,
)
DELIVERIES = Counter(
    "dopanode_deliveries_total",
    "C-STORE attempts of outputs, by destination and result (sent, retry, failed).",
    ["destination", "result"],
    registry=REGISTRY,
)
ORPHAN_BLOBS_DELETED = Counter(
    "dopanode_orphan_blobs_deleted_total",
    "Blobs no row referred to, older than storage.orphan_grace_h, deleted by the sweep"
    " (instance: a PUT whose row never committed; output: an attempt whose finish lost).",
    ["kind"],
    registry=REGISTRY,
)
OUTPUTS_RESENT = Counter(
    "dopanode_outputs_resent_total",
    "Outputs sent again after their previous C-STORE was interrupted (the sender died"
    " while it was on the wire): the destination may hold them already; the same SOP"
    " Instance UID, so it sees a replacement.",
    ["destination"],
    registry=REGISTRY,
)
SPOOL_FREE_BYTES = Gauge(
    "dopanode_spool_free_bytes",
    "Free bytes on the spool's file system (read at scrape time).",
    registry=REGISTRY,
)
SPOOL_MIN_FREE_BYTES = Gauge(
    "dopanode_spool_min_free_bytes",
    "storage.min_free_mb in bytes: below this free space instances are refused.",
    registry=REGISTRY,
)
MODEL_CHECK_OK = Gauge(
    "dopanode_model_check_ok",
    "1 when the model check of /ready passes (file present, SHA-256 matches, or no"
    " model configured), else 0 (checked at scrape time).",
    registry=REGISTRY,
)
TLS_CERTIFICATE_EXPIRY = Gauge(
    "dopanode_tls_certificate_expiry_timestamp_seconds",
    "notAfter of a DICOM TLS certificate of the node (POSIX seconds): role scp for the"
    " TLS port's, scu for a destination's client certificate (name: the destination).",
    ["role", "name"],
    registry=REGISTRY,
)

AUDIT_WRITE_ERRORS = Counter(
    "dopanode_audit_write_errors_total",
    "Audit records that could not be written (disk full, I/O error); the work went on.",
    registry=REGISTRY,
)
AUDIT_CHAIN_PROBLEMS = Gauge(
    "dopanode_audit_chain_problems",
    "Places where the audit trail's hash chain did not hold at the last check (0: intact;"
    " the node checks every audit.verify_interval_h; details: dopanode audit verify).",
    registry=REGISTRY,
)
AUDIT_CHAIN_RECORDS = Gauge(
    "dopanode_audit_chain_records",
    "Chained audit records the last check of the hash chain read.",
    registry=REGISTRY,
)
AUDIT_CHAIN_CHECKED = Gauge(
    "dopanode_audit_chain_checked_timestamp_seconds",
    "When the last check of the audit trail's hash chain finished (POSIX seconds; 0: not"
    " yet, or the check is off).",
    registry=REGISTRY,
)


def refresh_from_db(conn: Connection, now: float | None = None,
                    pipelines: Iterable[str] = ()) -> None:
    """Set the gauges that mirror database state (jobs, series, outbox).

    Parameters
    ----------
    conn : service.store.rows.Connection
        A connection to the node's database.
    now : float, optional
        Current time, seconds since the epoch (default: ``time.time()``).
    pipelines : iterable of str
        Enabled pipelines: each gets every job state, zero when it has none.
    """
    counts = {(p, state): 0 for p in pipelines for state in jobs.JOB_STATES}
    counts.update(job_views.counts(conn))
    JOBS.clear()
    for (pipeline, state), n in counts.items():
        JOBS.labels(pipeline=pipeline, state=state).set(n)
    for state, n in series.state_counts(conn).items():
        SERIES.labels(state=state).set(n)
    stats = outbox_views.backlog_stats(conn, time.time() if now is None else now)
    OUTBOX_BACKLOG.clear()
    for destination, n in stats.pending_by_destination.items():
        OUTBOX_BACKLOG.labels(destination=destination).set(n)
    OUTBOX_OLDEST_AGE.set(stats.oldest_age_s)
    OUTBOX_FAILED.set(stats.failed)


def set_node_checks(spool_free_bytes: float, spool_min_free_bytes: float,
                    model_ok: bool) -> None:
    """Set the gauges fed by the node's own checks (spool disk, model file).

    Parameters
    ----------
    spool_free_bytes : float
        Free bytes on the spool's file system; NaN when it could not be measured.
    spool_min_free_bytes : float
        ``storage.min_free_mb`` in bytes.
    model_ok : bool
        Outcome of the model check (:func:`service.inference.manifest.check_model`).
    """
    SPOOL_FREE_BYTES.set(spool_free_bytes)
    SPOOL_MIN_FREE_BYTES.set(spool_min_free_bytes)
    MODEL_CHECK_OK.set(1 if model_ok else 0)


def render() -> tuple[bytes, str]:
    """The Prometheus text exposition of :data:`REGISTRY` and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
