"""Readiness checks behind GET /ready: each one really checks something.

* ``database``: a row is written and committed (the file is writable, the
  lock can be taken within the busy timeout).
* ``spool_disk``: free space on the spool's file system is at least
  ``storage.min_free_mb``.
* ``models_<pipeline>``, one per enabled pipeline: every model file it
  serves is present and its SHA-256 matches (the pipeline's
  ``check_models``; a DaT node with the CNN off passes as SBR scoring only).
* ``scp``: the node's probe (is the DICOM listener accepting?); when the
  API runs without the SCP in its process, a TCP connect to the configured
  SCP port.
* ``blob_store`` (only with ``storage.blobs = "s3"``): the bucket answers a
  HEAD request with these credentials.
* ``outbox``: the oldest undelivered output is younger than
  ``ReadyLimits.outbox_max_oldest_s`` and fewer than ``outbox_max_pending``
  wait.

:func:`refresh_metrics` feeds the spool-disk and model checks to the
Prometheus gauges at scrape time, so the alert rules see what /ready sees.
"""

from __future__ import annotations

import logging
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service import metrics
from service.pipelines.registry import check_enabled_models
from service.store import outbox_views
from service.store.spool import FREE_SPACE_FLOOR_MB

log = logging.getLogger(__name__)
MIB = 1024 * 1024



@dataclass(frozen=True)
class Check:
    """One named readiness check."""

    name: str
    ok: bool
    detail: str
    data: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "detail": self.detail, **self.data}


@dataclass(frozen=True)
class ReadyLimits:
    """Outbox thresholds above which the node reports not ready."""

    outbox_max_oldest_s: float = 3600.0
    outbox_max_pending: int = 10_000


@dataclass(frozen=True)
class Probes:
    """Probes the node passes to the API.

    Attributes
    ----------
    scp_listening : callable returning bool, or None
        True while the SCP accepts associations. None: probe the configured
        SCP address with a TCP connect instead.
    """

    scp_listening: Callable[[], bool] | None = None


def tcp_listening(host: str, port: int, timeout_s: float = 1.0) -> bool:
    """True when something accepts TCP connections at ``host:port``."""
    target = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    try:
        with socket.create_connection((target, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def check_database(db: Any) -> Check:
    conn = db.connect()
    try:
        with conn:
            conn.execute("INSERT INTO node_probe (id, checked_at) VALUES (1, ?) ON CONFLICT (id)"
                         " DO UPDATE SET checked_at = excluded.checked_at",
                         (time.time(),))
    finally:
        conn.close()
    return Check("database", True, "writable")


def spool_free_bytes(spool_dir: Path) -> int:
    """Free bytes on the file system that holds (or will hold) ``spool_dir``."""
    path = Path(spool_dir)
    while not path.exists() and path != path.parent:
        path = path.parent  # the spool may not exist yet: measure where it will be
    return shutil.disk_usage(path).free


def check_spool_disk(spool_dir: Path, min_free_mb: float) -> Check:
    """Free space at least ``min_free_mb`` and never below :data:`FREE_SPACE_FLOOR_MB`.

    The floor holds with ``storage.min_free_mb = 0`` too (audit D20): a spool
    with no room left cannot take an instance, whatever was configured.
    """
    free_mb = spool_free_bytes(spool_dir) / MIB
    need_mb = max(float(min_free_mb), FREE_SPACE_FLOOR_MB)
    ok = free_mb >= need_mb
    detail = (f"{free_mb:.0f} MiB free" if ok
              else f"only {free_mb:.0f} MiB free, below {need_mb:g} MiB (storage.min_free_mb"
                   f" = {min_free_mb:g}, floor {FREE_SPACE_FLOOR_MB})")
    return Check("spool_disk", ok, detail, {"free_mb": round(free_mb, 1),
                                            "min_free_mb": need_mb})


def check_blob_store(storage: Any) -> Check:
    """The S3 bucket answers (HEAD bucket), through the process's shared client."""
    from service.store.s3blobs import S3Blobs

    S3Blobs(storage.s3_bucket, endpoint=storage.s3_endpoint, prefix=storage.s3_prefix,
            region=storage.s3_region).check()
    return Check("blob_store", True, f"bucket {storage.s3_bucket} reachable")


def check_models(pipelines: Any) -> list[Check]:
    """One check per enabled pipeline: every model file it serves is there and intact."""
    checks = []
    for name, statuses in check_enabled_models(pipelines).items():
        ok = all(m.ok for m in statuses)
        detail = "; ".join(f"{m.name}: {m.detail}" for m in statuses) or "no model files"
        checks.append(Check(f"models_{name}", ok, detail,
                            {m.name: {"ok": m.ok, "sha256": m.sha256} for m in statuses}))
    return checks


def check_scp(probes: Probes, host: str, port: int) -> Check:
    if probes.scp_listening is not None:
        ok = bool(probes.scp_listening())
        return Check("scp", ok, "listening" if ok else "SCP is not accepting associations")
    ok = tcp_listening(host, port)
    return Check("scp", ok, f"port {port} accepting" if ok else f"nothing listens on port {port}")


def check_outbox(db: Any, limits: ReadyLimits) -> Check:
    conn = db.connect()
    try:
        stats = outbox_views.backlog_stats(conn)
    finally:
        conn.close()
    problems = []
    if stats.oldest_age_s > limits.outbox_max_oldest_s:
        problems.append(f"oldest undelivered output waits {stats.oldest_age_s:.0f} s"
                        f" (limit {limits.outbox_max_oldest_s:g} s)")
    if stats.pending > limits.outbox_max_pending:
        problems.append(f"{stats.pending} outputs undelivered (limit {limits.outbox_max_pending})")
    detail = "; ".join(problems) or f"{stats.pending} pending, {stats.failed} failed"
    return Check("outbox", not problems, detail, {
        "pending": stats.pending, "failed": stats.failed,
        "oldest_age_s": round(stats.oldest_age_s, 1)})


#: ``GET /ready?part=...``: the checks one part of a split deployment needs. A
#: listener (``scp``) must keep receiving while the return path is down, so an
#: outbox backlog or a missing model does not take it out of the DICOM Service
#: (the backlog has its own alert); the whole node (no part) runs every check.
PARTS = {"scp": frozenset({"database", "spool_disk", "scp", "blob_store"})}


def run_checks(settings: Any, db: Any, probes: Probes, limits: ReadyLimits,
               part: str | None = None) -> list[Check]:
    """The readiness checks (all, or those of ``part``, see :data:`PARTS`).

    A check that raises counts as failed (and is logged).
    """
    steps: list[tuple[str, Callable[[], Check]]] = [
        ("database", lambda: check_database(db)),
        ("spool_disk", lambda: check_spool_disk(settings.storage.spool_dir,
                                                settings.storage.min_free_mb)),
        ("scp", lambda: check_scp(probes, settings.node.bind, settings.node.port)),
        ("outbox", lambda: check_outbox(db, limits)),
    ]
    if settings.storage.blobs == "s3":
        steps.append(("blob_store", lambda: check_blob_store(settings.storage)))
    wanted = PARTS[part] if part is not None else None
    if wanted is not None:
        steps = [(name, step) for name, step in steps if name in wanted]
    results = []
    try:
        if wanted is None:
            results.extend(check_models(settings.pipelines))
    except Exception as exc:  # the edge: a broken check means not ready
        log.error("ready_check_error", exc_info=exc, extra={"fields": {"check": "models"}})
        results.append(Check("models", False, f"check failed: {type(exc).__name__}"))
    for name, step in steps:
        try:
            results.append(step())
        except Exception as exc:  # the edge: a broken check means not ready
            log.error("ready_check_error", exc_info=exc, extra={"fields": {"check": name}})
            results.append(Check(name, False, f"check failed: {type(exc).__name__}"))
    return results


def refresh_metrics(settings: Any) -> None:
    """Set the scrape-time gauges of the spool disk and the model checks.

    Same measurements as the ``spool_disk`` and ``models_<pipeline>`` checks
    of /ready (the model gauge is 1 only when every enabled pipeline's models pass); a
    check that raises is logged and reads as failed (model) or unknown (NaN
    free space), never as healthy.
    """
    storage = settings.storage
    try:
        free_bytes = float(spool_free_bytes(storage.spool_dir))
    except OSError as exc:
        log.error("metrics_check_error", exc_info=exc, extra={"fields": {"check": "spool_disk"}})
        free_bytes = float("nan")
    try:
        model_ok = all(c.ok for c in check_models(settings.pipelines))
    except Exception as exc:  # the edge (a scrape): a broken check means failing
        log.error("metrics_check_error", exc_info=exc, extra={"fields": {"check": "model"}})
        model_ok = False
    metrics.set_node_checks(free_bytes, storage.min_free_mb * MIB, model_ok)
