"""Logging set-up: one logger per module, configured once, structured fields.

Use ``log.info("job_done", extra={"fields": {"job_id": 3, "duration_s": 1.2}})``.
Never put datasets, names, patient IDs, dates or accession numbers in a log
record: only UIDs' hashes, job ids, counts, durations and statuses.

Text the node does not write itself can still carry header values, so the
one handler :func:`configure` installs withholds it:

* records of pydicom, highdicom and Python's ``warnings`` (pydicom's
  ``warn_and_log`` prints e.g. ``Invalid value for VR DA: '1959-01-01'``)
  become ``library_message_withheld`` with the logger, level and a digest;
  so do those of the S3 client stack (botocore, boto3, s3transfer, urllib3:
  botocore's DEBUG records quote every request's parameters, among them the
  blob key ``instances/<study UID>/...`` and a PUT's body) and of psycopg
  (a server error's DETAIL quotes the row's values), and :func:`configure`
  keeps the S3 client stack at WARNING;
* the message of every exception in a logged traceback is replaced by
  :func:`safe_text` (frames and exception types stay; an ``OSError`` keeps
  its errno text, a type with ``log_safe = True`` its message);
* pydicom's reading validation is switched off (``IGNORE``): an invalid value
  is read as it is, exactly as with the default ``WARN``, but not echoed.

Free text from outside (a peer's ErrorComment, an exception message) that a
module wants to log goes through :func:`safe_text` or :func:`safe_exc`.

The handler also rate-limits (:class:`RateLimit`): a peer sending garbage
must not be able to fill the disk with the node's log.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

#: Loggers whose messages may quote header values; their text is withheld.
WITHHELD_LOGGERS = ("pydicom", "highdicom", "py.warnings", "botocore", "boto3", "s3transfer",
                    "urllib3", "psycopg")
#: Loggers kept at WARNING whatever the node's level: their DEBUG records narrate
#: datasets (pynetdicom), copied attributes (highdicom) or S3 requests with their
#: keys and bodies (botocore and the rest of the S3 client stack); openjpeg's INFO
#: is one line per encoded tile (thousands per simulated benchmark).
QUIET_LOGGERS = ("pynetdicom", "highdicom", "botocore", "boto3", "s3transfer", "urllib3",
                 "openjpeg")
#: Per-process key: digests correlate within one run, and a digest of a
#: low-entropy value (a birth date) cannot be looked up in a table.
_DIGEST_KEY = os.urandom(16)
_VR_RE = re.compile(r"Invalid value for VR ([A-Z]{2})")
_CATEGORY_RE = re.compile(r"\b(\w+Warning)\b")


def safe_text(text: object) -> str:
    """A log-safe stand-in for free text that may hold header values.

    Parameters
    ----------
    text : object
        Anything whose ``str()`` came from outside the node (an ErrorComment,
        an exception message).

    Returns
    -------
    str
        ``""`` for empty text, else ``"<withheld len=N #xxxxxxxx>"``: the
        length and a keyed 32-bit digest (equal texts give equal digests
        within one process, nothing across processes).
    """
    value = str(text or "")
    if not value:
        return ""
    digest = hmac.new(_DIGEST_KEY, value.encode("utf-8", "replace"), hashlib.sha256)
    return f"<withheld len={len(value)} #{digest.hexdigest()[:8]}>"


def safe_exc(exc: BaseException) -> str:
    """``"ValueError: <withheld ...>"``: an exception's type, its message withheld."""
    message = safe_text(exc)
    return type(exc).__name__ + (f": {message}" if message else "")


def format_exception_safely(exc: BaseException) -> str:
    """A traceback like Python's, each exception message through :func:`safe_text`."""
    chain: list[BaseException] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append(current)
        current = current.__cause__ or (
            None if current.__suppress_context__ else current.__context__)
    parts: list[str] = []
    for i, item in enumerate(reversed(chain)):
        if i:
            parts.append("\nThe above exception led to the following one:\n\n")
        parts.append("Traceback (most recent call last):\n")
        parts.extend(traceback.format_tb(item.__traceback__))
        kind = type(item)
        name = kind.__qualname__ if kind.__module__ == "builtins" else (
            f"{kind.__module__}.{kind.__qualname__}")
        message = _exception_message(item)
        parts.append(name + (f": {message}" if message else "") + "\n")
    return "".join(parts).rstrip("\n")


def _exception_message(exc: BaseException) -> str:
    """The message, withheld unless the type vouches for it (``log_safe = True``).

    An ``OSError`` keeps its errno and system text; its file names are withheld.
    """
    if getattr(exc, "log_safe", False):
        return str(exc)
    if isinstance(exc, OSError) and exc.errno is not None and exc.strerror:
        names = " ".join(safe_text(n) for n in (exc.filename, exc.filename2) if n)
        return f"[Errno {exc.errno}] {exc.strerror}" + (f": {names}" if names else "")
    return safe_text(exc)


class KeyValueFormatter(logging.Formatter):
    """``time level logger event key=value ...`` on one line; tracebacks withheld."""

    def format(self, record: logging.LogRecord) -> str:
        base = f"{self.formatTime(record)} {record.levelname} {record.name} {record.getMessage()}"
        fields: dict[str, Any] = getattr(record, "fields", {}) or {}
        if fields:
            base += " " + " ".join(f"{k}={json.dumps(v, default=str)}" for k, v in fields.items())
        if record.exc_info and record.exc_info[1] is not None:
            base += "\n" + format_exception_safely(record.exc_info[1])
        return base


class WithholdLibraryText(logging.Filter):
    """Replace the text of :data:`WITHHELD_LOGGERS`' records (never drops a record)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(WITHHELD_LOGGERS):
            return True
        text = record.getMessage()
        fields: dict[str, Any] = {"logger": record.name, "text": safe_text(text)}
        if match := _VR_RE.search(text):
            fields["vr"] = match.group(1)
        if record.name == "py.warnings" and (match := _CATEGORY_RE.search(text)):
            fields["category"] = match.group(1)
        record.msg, record.args = "library_message_withheld", ()
        record.fields = fields
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


class RateLimit(logging.Filter):
    """Drop repeats of one event beyond ``burst`` per ``interval_s``; summarise them.

    An event is (logger, message, level): ``store_refused`` from
    ``service.net.scp`` at WARNING is one event whatever its fields. Within
    each window of ``interval_s`` the first ``burst`` records of an event
    pass; the rest are dropped and counted, and when the window has passed
    (checked on every record, so a quiet log still gets it with the next
    line) one ``log_suppressed`` record names the event and how many were
    dropped (audit D17: 2,000 bad inputs made 20 MB of log).

    Parameters
    ----------
    burst : int
        Records of one event let through per window.
    interval_s : float
        Window length, seconds.
    clock : callable, optional
        Monotonic seconds (tests pass a fake one).
    """

    def __init__(self, burst: int = 20, interval_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.burst = burst
        self.interval_s = interval_s
        self.clock = clock
        self.sink: Callable[[logging.LogRecord], Any] | None = None
        self._lock = threading.Lock()
        #: event -> [window start, records in window, dropped in window]
        self._events: dict[tuple[str, str, int], list[float]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == "log_suppressed" and record.name == __name__:
            return True
        now = self.clock()
        key = (record.name, str(record.msg), record.levelno)
        with self._lock:
            summaries = self._expire(now)
            state = self._events.setdefault(key, [now, 0.0, 0.0])
            state[1] += 1
            keep = state[1] <= self.burst
            if not keep:
                state[2] += 1
        for summary in summaries:
            self._emit(summary)
        return keep

    def _expire(self, now: float) -> list[logging.LogRecord]:
        """Close the windows that have passed; a summary for each that dropped records."""
        summaries = []
        for key, (start, _, dropped) in list(self._events.items()):
            if now - start < self.interval_s:
                continue
            del self._events[key]
            if dropped:
                name, event, level = key
                summary = logging.LogRecord(__name__, max(level, logging.WARNING), __file__, 0,
                                            "log_suppressed", (), None)
                summary.fields = {"logger": name, "event": event,
                                  "level": logging.getLevelName(level), "dropped": int(dropped),
                                  "window_s": self.interval_s}
                summaries.append(summary)
        return summaries

    def _emit(self, record: logging.LogRecord) -> None:
        if self.sink is not None:
            self.sink(record)

    def flush(self) -> None:
        """Emit the summaries of every window with dropped records now (at shutdown)."""
        with self._lock:
            summaries = self._expire(float("inf"))
        for summary in summaries:
            self._emit(summary)


def quiet_pydicom() -> None:
    """Read invalid values without echoing them (no warning, no log record).

    ``IGNORE`` differs from pydicom's default ``WARN`` only in not reporting:
    values are read and kept the same way, so nothing accepted today is
    refused or changed.
    """
    from pydicom import config

    config.settings.reading_validation_mode = config.IGNORE


_configured = False


class StderrHandler(logging.StreamHandler):
    """A stream handler that writes to whatever ``sys.stderr`` is when a record is
    emitted, not what it was when the handler was made (as ``logging.lastResort``):
    a replaced stderr (a test's capture that has since been closed, a redirection)
    never leaves a library thread writing to a closed file."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        """``StreamHandler`` sets it; the property always answers ``sys.stderr``."""


def configure(level: str = "INFO") -> None:
    """Configure the root logger once (idempotent)."""
    global _configured
    if _configured:
        logging.getLogger().setLevel(level.upper())
        return
    handler = StderrHandler()
    handler.setFormatter(KeyValueFormatter())
    handler.addFilter(WithholdLibraryText())
    limit = RateLimit()
    limit.sink = handler.handle
    handler.addFilter(limit)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # pynetdicom logs whole datasets (patient names) at DEBUG, botocore every
    # request's key (a study UID) and body: keep them quiet (and withheld above).
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    # warnings.warn() would print straight to stderr, past the filter above
    logging.captureWarnings(True)
    quiet_pydicom()
    _configured = True
