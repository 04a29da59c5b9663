"""What one C-STORE attempt of the sender leaves behind: row, metric, audit record, log line.

:func:`mark_in_flight` commits the in-flight mark before a C-STORE goes out;
:func:`record_outcome` commits its outcome as soon as the response is read,
before the metric, the audit record and the log line, and counts it in the
pass's :class:`PassReport` (the at-least-once window this keeps small is in
:mod:`service.net.scu`'s docstring). Every write names the pass's lease.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from service import metrics
from service.net import audit_events
from service.net.scu_association import DestinationLike
from service.store import outbox
from service.store.outbox import OutboxItem, RetryPolicy

log = logging.getLogger(__name__)

#: Statuses after which the destination holds the object (PS3.4 Table B.2-1).
DELIVERED_STATUSES = frozenset({0x0000, 0x0001, 0xB000, 0xB006, 0xB007})


@dataclass
class PassReport:
    """What one pass over a destination did (counts of items)."""

    destination: str
    sent: int = 0
    retried: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    #: Another node's sender holds the destination (PostgreSQL): nothing was claimed.
    elsewhere: bool = False


def mark_in_flight(conn: Any, item: OutboxItem, now: float) -> bool:
    """Commit the in-flight mark before the C-STORE; False when the item is not ours.

    An item already in flight was on the wire when its sender died (maybe
    stored): its re-send is counted and logged.
    """
    if item.in_flight_at is not None:  # on the wire when its sender died: maybe stored
        metrics.OUTPUTS_RESENT.labels(destination=item.destination).inc()
        log.warning("output_resent_after_interruption", extra={"fields": {
            "item_id": item.id, "job_id": item.job_id, "destination": item.destination}})
    with conn:
        if outbox.mark_in_flight(conn, item.id, item.lease_token, now):
            return True
    log.warning("outbox_item_changed", extra={"fields": {"item_id": item.id}})
    return False


def record_outcome(conn: Any, item: OutboxItem, report: PassReport, status: int | None,
                   error: str | None, *, retry: bool, policy: RetryPolicy, now: float,
                   calling_ae: str, destination: DestinationLike | None) -> None:
    """Write one outcome to the database at once (so a crash loses at most this one).

    Every write names the pass's lease: an item whose lease was taken over
    (or that a retried job queued again) is left to its new state. ``error``
    None means delivered (``status`` one of :data:`DELIVERED_STATUSES`);
    otherwise the item is retried with ``policy`` (``retry``) or failed.
    ``destination`` is the configured one, for the audit record.
    """
    fields = {"item_id": item.id, "job_id": item.job_id, "destination": item.destination,
              "attempt": item.attempts + 1}
    with conn:
        token = item.lease_token
        if error is None:
            if not outbox.mark_sent(conn, item.id, now, token):
                log.warning("outbox_item_changed", extra={"fields": fields})
            result = "sent"  # the destination has it, whatever the row says now
        elif retry:
            result = outbox.mark_retry(conn, item.id, error, policy, now, token)
            result = "retry" if result == "pending" else result
        else:
            result = "failed" if outbox.mark_failed(conn, item.id, error, now, token) else "gone"
    metrics.DELIVERIES.labels(destination=item.destination, result=result).inc()
    audit_events.output_sent(calling_ae, destination, item, status, result, error)
    if result == "sent":
        report.sent += 1
        log.info("output_delivered", extra={"fields": {**fields, "status": f"0x{status:04X}"}})
        return
    report.errors.append(error or "")
    if result == "retry":
        report.retried += 1
    else:
        report.failed += 1
    log.warning("output_not_delivered", extra={"fields": {**fields, "result": result,
                                                          "error": error}})
