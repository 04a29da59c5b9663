"""The node checks its own audit trail's hash chain and says so in metrics and the log.

The process serving the API (the one whose ``/metrics`` Prometheus reads)
runs :class:`ChainWatch` in a thread: a check of the whole trail
(:func:`service.audit_verify.verify`) shortly after start and then every
``[audit] verify_interval_h``. Each check sets
``dopanode_audit_chain_problems``, ``dopanode_audit_chain_records`` and
``dopanode_audit_chain_checked_timestamp_seconds`` and logs
``audit_chain_checked``; a broken chain also logs ``audit_chain_broken`` (at
error level, with the first few places by file and line: never an
identifier) and fires the alert ``DopanodeAuditChainBroken``. A check that
cannot read the trail logs ``audit_chain_check_failed`` (errno only) and
leaves the gauges as they were.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from service import metrics
from service.audit_verify import Report, verify

log = logging.getLogger(__name__)

#: Seconds after start before the first check (the start-up records are written first).
FIRST_CHECK_DELAY_S = 5.0
#: Places named in the log line of a broken chain.
LOGGED_PROBLEMS = 5


class ChainWatch:
    """Checks the trail at ``path`` every ``interval_s`` seconds (:meth:`run`)."""

    def __init__(self, path: Path, interval_s: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.interval_s = interval_s
        self.clock = clock

    def check(self) -> Report | None:
        """One check: gauges and log set from its report (None when the trail is unreadable)."""
        started = time.monotonic()
        try:
            report = verify(self.path)
        except OSError as exc:
            log.error("audit_chain_check_failed", extra={"fields": {
                "errno": errno.errorcode.get(exc.errno or 0, str(exc.errno))}})
            return None
        metrics.AUDIT_CHAIN_PROBLEMS.set(len(report.problems))
        metrics.AUDIT_CHAIN_RECORDS.set(report.records)
        metrics.AUDIT_CHAIN_CHECKED.set(self.clock())
        fields = {"files": len(report.files), "records": report.records,
                  "writers": report.writers, "problems": len(report.problems),
                  "seconds": round(time.monotonic() - started, 3)}
        log.info("audit_chain_checked", extra={"fields": fields})
        if report.problems:
            log.error("audit_chain_broken", extra={"fields": {
                "problems": len(report.problems),
                "first": [str(p) for p in report.problems[:LOGGED_PROBLEMS]]}})
        return report

    def run(self, stop: threading.Event) -> None:
        """Check after :data:`FIRST_CHECK_DELAY_S`, then every ``interval_s``, until ``stop``."""
        if stop.wait(FIRST_CHECK_DELAY_S):
            return
        while True:
            self.check()
            if stop.wait(self.interval_s):
                return
