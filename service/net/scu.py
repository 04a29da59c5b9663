"""The sender: delivers outbox items to every destination by C-STORE.

One thread per destination, so a destination that is down (or slow to refuse
a connection) never holds back the others. Each pass claims the destination's
due items (:func:`service.store.outbox.claim_due`: a lease, so another sender
process on the same database never sends them too), opens one association for
them, sends each spooled Part 10 file as it is (no decode), and records the
outcome in the database right after each response:

* Success (0x0000) or a Warning status (0x0001, 0xB000, 0xB006, 0xB007: the
  SCP stored the object, PS3.4 B.2.3) -> ``sent``; never sent again.
* A failure status, no response, a refused or aborted association ->
  retried later with exponential back-off (:class:`RetryPolicy`), and given
  up (``failed``) only after ``give_up_after_s`` (hours).
* A missing or unreadable output file, or a destination no longer
  configured -> ``failed`` at once (retrying cannot help).

Delivery is at-least-once, and the window for a second copy is one object
per destination and crash (reliability audit D12): each item is marked in
flight (committed) before its C-STORE goes out, and its outcome is committed
as soon as the response is read, before anything else (metrics, audit, log).
Sender connections commit like the SCP's (SQLite ``synchronous=NORMAL``): a
process crash keeps every commit, and only a power loss can take back the
last marks, which means a re-send, never a loss. What remains is the time
the destination takes between storing an object and answering, plus one
commit: a crash there leaves the object stored at the destination but not
marked sent, and it is sent again after the restart with the same SOP
Instance UID, so the PACS sees a replacement (output UIDs are deterministic),
never a twin; such re-sends are counted (``dopanode_outputs_resent_total``)
and logged (``output_resent_after_interruption``). A restarted node takes
back the claims of its own dead processes at once (:func:`outbox.expire_leases`
with the run's owner prefix); a claim of another node's process waits for its
lease (:attr:`Sender.lease_s`, the longest a pass may take).

On PostgreSQL a pass holds its destination's advisory lock: the senders of all
nodes open one association to a destination at a time, as one node does.
Idle threads wake on :meth:`Sender.wake` (this process's workers) and, on
PostgreSQL, on the NOTIFY a job's finish sends on
:data:`~service.store.dialect.OUTBOX_CHANNEL` (any node); polling is the fallback.

The association itself (presentation contexts, TLS, time limits) is
:mod:`service.net.scu_association`, what each attempt leaves behind (the
outbox row, metric, audit record and log line) :mod:`service.net.scu_outcome`;
this module is the send and retry policy.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import replace
from typing import Any, Protocol

from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pynetdicom.association import Association

from service import metrics
from service.logs import safe_text
from service.net import tls
from service.net.scu_association import (
    MAX_CONTEXTS,
    DestinationLike,
    Timeouts,
    associate,
    tls_args,
    tls_destinations_checked,
)
from service.net.scu_outcome import DELIVERED_STATUSES, PassReport, mark_in_flight, record_outcome
from service.store import outbox
from service.store.blobs import Blobs, BlobStoreError
from service.store.dialect import (
    OUTBOX_CHANNEL,
    dialect_of,
    release_destination_lock,
    try_destination_lock,
)
from service.store.outbox import OutboxItem, RetryPolicy

__all__ = [
    "DELIVERED_STATUSES", "MAX_CONTEXTS", "DestinationLike", "PassReport", "Sender", "Timeouts",
    "retry_policy_from_settings", "sender_from_settings", "tls_destinations_checked",
]

log = logging.getLogger(__name__)


class DatabaseLike(Protocol):
    """What the sender needs of the database (``service.store.rows.Rows``)."""

    def connect(self) -> Any: ...


def retry_policy_from_settings(sender_settings: Any) -> RetryPolicy:
    """:class:`RetryPolicy` from ``Settings.sender`` (base/cap seconds, give-up hours)."""
    return RetryPolicy(
        base_s=float(sender_settings.retry_base_s),
        cap_s=float(sender_settings.retry_cap_s),
        give_up_after_s=float(sender_settings.give_up_after_h) * 3600.0,
    )


class Sender:
    """Delivers the outbox to the configured destinations.

    Parameters
    ----------
    db : Database-like
        Has ``connect()`` (a rows-port connection); each thread opens its own.
    destinations : sequence of Destination-like
        ``name``, ``ae_title``, ``host``, ``port``.
    calling_ae : str
        Our AE title on outgoing associations.
    policy : RetryPolicy
    poll_interval_s : float
        Longest idle wait between passes (new items from a worker in another
        process are seen within this time; :meth:`wake` is immediate).
    batch_size : int
        Items per association.
    clock : callable
        Returns seconds since the epoch (tests may pass a fake clock).
    owner_prefix : str
        Names this process in outbox claims (:attr:`service.store.runs.NodeRun.owner_prefix`).
    blobs : Blobs or None
        Where outputs are read: an outbox ``path`` that is a blob key is read
        through it (S3: downloaded for the pass); an absolute path (rows of
        older releases, tests) is read as a file.
    """

    def __init__(
        self,
        db: DatabaseLike,
        destinations: Sequence[DestinationLike],
        calling_ae: str,
        policy: RetryPolicy | None = None,
        poll_interval_s: float = 1.0,
        batch_size: int = 50,
        timeouts: Timeouts | None = None,
        clock: Callable[[], float] = time.time,
        owner_prefix: str = "local:0:",
        blobs: Blobs | None = None,
    ) -> None:
        self._db = db
        self._blobs = blobs
        self._destinations = {d.name: d for d in destinations}
        self._calling_ae = calling_ae
        self._policy = policy or RetryPolicy()
        self._poll_interval_s = poll_interval_s
        self._batch_size = batch_size
        self._timeouts = timeouts or Timeouts()
        t = self._timeouts
        #: How long a pass's claim lasts: every item of a batch at the DIMSE limit.
        self.lease_s = t.connect_s + t.acse_s + batch_size * max(t.dimse_s, t.network_s) + 60.0
        self._clock = clock
        self._owner_prefix = owner_prefix
        self._stop = threading.Event()
        self._wake = {name: threading.Event() for name in self._destinations}
        self._threads: list[threading.Thread] = []
        self._wakeups: threading.Thread | None = None

    # --- one pass ------------------------------------------------------------
    def fail_unconfigured(self) -> int:
        """Give up pending items whose destination is no longer configured."""
        conn = self._db.connect()
        try:
            with conn:
                rows = conn.execute(
                    "SELECT id, destination FROM outbox WHERE state = 'pending'"
                ).fetchall()
                gone = [int(r[0]) for r in rows if str(r[1]) not in self._destinations]
                for item_id in gone:
                    outbox.mark_failed(conn, item_id, "destination no longer configured")
        finally:
            conn.close()
        if gone:
            log.warning("outbox_unconfigured_destination", extra={"fields": {"items": len(gone)}})
        return len(gone)

    def send_due(self, destination_name: str) -> PassReport:
        """Send every due item of one destination over one association."""
        destination = self._destinations[destination_name]
        report = PassReport(destination=destination_name)
        conn = self._db.connect()
        locked = False
        try:
            for statement in dialect_of(conn).ingest_setup:  # SQLite: synchronous=NORMAL
                conn.execute(statement)
            locked = try_destination_lock(conn, destination_name)  # one association per PACS
            if not locked:
                report.elsewhere = True
                return report
            items = outbox.claim_due(conn, destination_name, self.lease_s, self._clock(),
                                     self._batch_size,
                                     owner=f"{self._owner_prefix}sender-{destination_name}")
            if not items:
                return report
            with ExitStack() as copies:  # S3: the outputs' local copies last the pass
                sendable = self._readable(conn, items, report, copies)
                if sendable:
                    self._deliver(conn, destination, sendable, report)
        finally:
            if locked:
                release_destination_lock(conn, destination_name)
            conn.close()
        log.info(
            "outbox_pass",
            extra={"fields": {"destination": destination_name, "sent": report.sent,
                              "retried": report.retried, "failed": report.failed}},
        )
        return report

    def _readable(
        self, conn: Any, items: list[OutboxItem], report: PassReport, copies: ExitStack
    ) -> list[tuple[OutboxItem, str]]:
        """Items whose file is there (``path`` now a local file), with its transfer
        syntax; the others fail."""
        sendable: list[tuple[OutboxItem, str]] = []
        for item in items:
            try:
                if self._blobs is not None and not item.path.is_absolute():
                    local = copies.enter_context(self._blobs.local_copy(str(item.path)))
                    item = replace(item, path=local)
            except (OSError, ValueError) as exc:
                self._record(conn, item, report, None, f"output file unreadable: {type(exc).__name__}")
                continue
            except BlobStoreError as exc:  # the object store's edge: retried later
                log.warning("outbox_blob_unreachable", extra={"fields": {
                    "item_id": item.id, "error": str(exc)}})  # status or class: no identifier
                self._record(conn, item, report, None, "object store unreachable", retry=True)
                continue
            try:
                meta = read_file_meta_info(item.path)
                sendable.append((item, str(meta.TransferSyntaxUID)))
            except (OSError, InvalidDicomError, AttributeError) as exc:
                self._record(conn, item, report, None, f"output file unreadable: {type(exc).__name__}")
        return sendable

    def _associate(self, destination: DestinationLike, sendable: list[tuple[OutboxItem, str]]
                   ) -> Association:
        needed: dict[str, set[str]] = {}
        for item, ts in sendable:
            needed.setdefault(item.sop_class_uid, set()).add(ts)
        return associate(self._calling_ae, destination, needed, self._timeouts)

    def _deliver(self, conn: Any, destination: DestinationLike,
                 sendable: list[tuple[OutboxItem, str]], report: PassReport) -> None:
        try:
            assoc = self._associate(destination, sendable)
        except tls.CertificateError as exc:  # a file changed after start-up: retried later
            for item, _ in sendable:
                self._record(conn, item, report, None, f"TLS {exc.key}: {exc}", retry=True)
            return
        if not assoc.is_established:
            # pynetdicom reports a refused TCP connection as an abort as well.
            reason = ("association rejected" if assoc.is_rejected
                      else "destination unreachable or association aborted")
            metrics.DELIVERIES.labels(destination=destination.name, result="unreachable").inc()
            for item, _ in sendable:
                self._record(conn, item, report, None, reason, retry=True)
            return
        try:
            for item, _ in sendable:
                if self._stop.is_set():  # stopping: the rest is handed back (Node.stop)
                    break
                if not assoc.is_established:
                    self._record(conn, item, report, None, "association lost", retry=True)
                    continue
                self._send_one(conn, assoc, item, report)
        finally:
            if assoc.is_established:
                assoc.release()

    def _send_one(self, conn: Any, assoc: Association, item: OutboxItem,
                  report: PassReport) -> None:
        if not self._mark_in_flight(conn, item):
            return
        try:
            status_ds = assoc.send_c_store(item.path)
        except (ValueError, RuntimeError, OSError, InvalidDicomError) as exc:
            # e.g. no accepted presentation context for this SOP class/syntax.
            self._record(conn, item, report, None, f"not sent: {exc}"[:200], retry=True)
            return
        status = getattr(status_ds, "Status", None) if status_ds is not None else None
        if status is None:
            self._record(conn, item, report, None, "no response to C-STORE", retry=True)
        elif int(status) in DELIVERED_STATUSES:
            self._record(conn, item, report, int(status), None)
        else:
            # the peer's free text may quote the instance's header: keep the status
            comment = safe_text(getattr(status_ds, "ErrorComment", ""))
            error = f"C-STORE status 0x{int(status):04X}" + (
                f", comment {comment}" if comment else "")
            self._record(conn, item, report, int(status), error, retry=True)

    def _mark_in_flight(self, conn: Any, item: OutboxItem) -> bool:
        """Commit the in-flight mark (:func:`~service.net.scu_outcome.mark_in_flight`)."""
        return mark_in_flight(conn, item, self._clock())

    def _record(self, conn: Any, item: OutboxItem, report: PassReport, status: int | None,
                error: str | None, retry: bool = False) -> None:
        """Commit one outcome at once (:func:`~service.net.scu_outcome.record_outcome`)."""
        record_outcome(conn, item, report, status, error, retry=retry, policy=self._policy,
                       now=self._clock(), calling_ae=self._calling_ae,
                       destination=self._destinations.get(item.destination))

    # --- threads ---------------------------------------------------------------
    def start(self) -> None:
        """Start one delivery thread per destination (idempotent)."""
        if self._threads:
            return
        self._stop.clear()
        self.fail_unconfigured()
        for name in self._destinations:
            t = threading.Thread(target=self._loop, args=(name,), name=f"sender-{name}",
                                 daemon=True)
            t.start()
            self._threads.append(t)
        start_wakeups = getattr(self._db, "start_wakeups", None)
        if start_wakeups is not None and self._destinations:  # outputs queued on other nodes
            self._wakeups = start_wakeups(self._stop, self.wake, OUTBOX_CHANNEL)
        log.info("sender_started", extra={"fields": {"destinations": list(self._destinations)}})

    def wake(self) -> None:
        """Look at the outbox now (e.g. after a worker enqueued outputs)."""
        for event in self._wake.values():
            event.set()

    @property
    def running_threads(self) -> int:
        """Delivery threads still alive (after :meth:`stop`: those that did not end in time)."""
        return sum(1 for t in self._threads if t.is_alive())

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the threads after their current item; waits up to ``timeout_s``."""
        self._stop.set()
        self.wake()
        deadline = time.monotonic() + timeout_s
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        if self._wakeups is not None:  # ends within its wait for notifications
            self._wakeups.join(max(0.0, deadline - time.monotonic()))
            self._wakeups = None
        self._threads = [t for t in self._threads if t.is_alive()]
        log.info("sender_stopped", extra={"fields": {"still_running": len(self._threads)}})

    def _loop(self, name: str) -> None:
        wake = self._wake[name]
        while not self._stop.is_set():
            try:
                report = self.send_due(name)
                wait_s = self._poll_interval_s if report.elsewhere else self._idle_wait_s(name)
            except Exception:  # the edge: log and keep the thread alive
                log.exception("sender_pass_failed", extra={"fields": {"destination": name}})
                wait_s = self._poll_interval_s
            wake.wait(wait_s)
            wake.clear()

    def _idle_wait_s(self, name: str) -> float:
        conn = self._db.connect()
        try:
            next_at = outbox.next_due_at(conn, name)
        finally:
            conn.close()
        if next_at is None:
            return self._poll_interval_s
        # A short floor keeps a clock skew from turning this into a busy loop.
        return min(self._poll_interval_s, max(0.05, next_at - self._clock()))


def sender_from_settings(settings: Any, db: DatabaseLike, owner_prefix: str = "local:0:",
                         blobs: Blobs | None = None) -> Sender:
    """A :class:`Sender` for ``service.config.Settings`` (destinations, sender, node)."""
    for destination in settings.destinations:  # the expiry metric from start-up on
        if destination.tls and destination.cert_file is not None:
            tls_args(destination)
    return Sender(
        db,
        settings.destinations,
        calling_ae=settings.node.ae_title,
        policy=retry_policy_from_settings(settings.sender),
        owner_prefix=owner_prefix,
        blobs=blobs,
    )

