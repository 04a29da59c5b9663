"""Logging set-up: one logger per module, configured once, structured fields.

Use ``log.info("job_done", extra={"fields": {"job_id": 3, "duration_s": 1.2}})``.
Never put datasets, names, patient IDs, dates or accession numbers in a log
record: only UIDs' hashes, job ids, counts, durations and statuses.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any


class KeyValueFormatter(logging.Formatter):
    """``time level logger event key=value ...`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        base = f"{self.formatTime(record)} {record.levelname} {record.name} {record.getMessage()}"
        fields: dict[str, Any] = getattr(record, "fields", {}) or {}
        if fields:
            base += " " + " ".join(f"{k}={json.dumps(v, default=str)}" for k, v in fields.items())
        if record.exc_info:
            base += "\n" + self.formatException(record.exc_info)
        return base


_configured = False


def configure(level: str = "INFO") -> None:
    """Configure the root logger once (idempotent)."""
    global _configured
    if _configured:
        logging.getLogger().setLevel(level.upper())
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # pynetdicom logs whole datasets (patient names) at DEBUG: keep it quiet.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    _configured = True
