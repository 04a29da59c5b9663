"""The audit file: one append-only JSON-lines file with rotation, retention and fsync.

:class:`AuditTrail` owns the file that :func:`service.audit.emit` writes to;
:mod:`service.audit` says what goes into a record and keeps the process's trail.

File handling
-------------
* created ``0600`` in a folder created ``0700``; a folder that group or
  others may write is refused at start-up (anyone could swap the file);
* opened ``O_APPEND``, never truncated; each record is one ``write()`` of a
  whole line, so records of several threads or processes never interleave;
* a record is in the kernel when :meth:`AuditTrail.write` returns, so a
  crash of the process (kill -9) loses nothing written; ``fsync`` runs every
  ``fsync_interval_s`` while records are waiting (0: after every record), on
  rotation and on close, so a power loss loses at most that interval;
* a hash chain makes an edit, a removal or a reordering visible
  (:mod:`service.audit_verify`, ``dopanode audit verify``): every record ends
  with ``"hash"``, the SHA-256 of its own text up to that field, and carries
  ``"prev"``, the hash of the record it follows: this writer's previous
  record, or for a writer's first record the newest record in the trail when
  it started (under the rotation lock; ``""`` when the trail holds no chained
  record). The chain has no secret: whoever can rewrite the whole file can
  rewrite the chain, and removing the newest records leaves no trace in it;
  the copy at an audit record repository (syslog over TLS) is out of their reach;
* rotation renames the file to ``<stem>-<UTC time>.jsonl`` when it reaches
  ``rotate_mb`` or is ``rotate_hours`` old; a rotated file is deleted only
  once that time is more than ``retention_days`` ago, never earlier. Another
  process writing the same path notices the rename and reopens.

Opening the trail at start-up raises (:class:`AuditError`, :class:`OSError`),
and the node then refuses to start; a failed write or fsync after that is
counted by :func:`count_write_failure`.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from service import metrics
from service.paths import fsync_dir

log = logging.getLogger(__name__)

MIB = 1024 * 1024
_STAMP = "%Y%m%dT%H%M%SZ"


class AuditError(Exception):
    """The trail cannot be opened as required (start-up refuses)."""

    log_safe = True  # paths and modes only, no identifiers


def utc_iso(seconds: float) -> str:
    """``2026-11-30T19:10:00.123456Z`` for seconds since the epoch."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class AuditTrail:
    """The append-only audit file of this process (see the module docstring).

    Parameters
    ----------
    path : Path
        The current file, e.g. ``var/audit/audit.jsonl``.
    retention_days : int
        Rotated files whose rotation time is older than this are deleted.
    rotate_mb : float
        Rotate when the current file reaches this size, MiB.
    rotate_hours : float
        Rotate when the current file's first record is this old, hours.
    fsync_interval_s : float
        Longest time a written record waits for ``fsync``, seconds (0: each record).
    source : mapping
        The A.5 Audit Source Identification fields put in every record.
    clock : callable
        Seconds since the epoch (tests pass a fake one).
    """

    path: Path
    retention_days: int = 365
    rotate_mb: float = 64.0
    rotate_hours: float = 24.0
    fsync_interval_s: float = 1.0
    source: Mapping[str, Any] | None = None
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._started_at = 0.0
        self._dirty = False
        self._seq = 0
        self._last_hash: str | None = None  # this writer's newest record; None: none yet
        self._closing = threading.Event()
        self._syncer: threading.Thread | None = None
        # run: this writer's own random id, so that two writers with one host name and
        # pid (pid 1 in two containers) stay apart in the chain
        self._source = {"node_id": socket.gethostname(), "pid": os.getpid(),
                        "run": os.urandom(4).hex(), **dict(self.source or {})}

    # --- lifecycle -------------------------------------------------------------
    def open(self) -> AuditTrail:
        """Create the folder and file (or append to the existing one), purge expired files.

        Raises
        ------
        AuditError
            The folder is writable by group or others, or cannot be made.
        OSError
            The file cannot be opened.
        """
        folder = self.path.parent
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise AuditError(f"audit folder {folder} cannot be created: "
                             f"{errno.errorcode.get(exc.errno or 0, exc.errno)}") from None
        mode = folder.stat().st_mode
        if mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise AuditError(f"audit folder {folder} is writable by group or others "
                             f"(mode {stat.S_IMODE(mode):04o}); make it 0700")
        with self._lock:
            self._open_file()
        self.purge()
        if self.fsync_interval_s > 0:
            self._syncer = threading.Thread(target=self._sync_loop, name="audit-sync",
                                            daemon=True)
            self._syncer.start()
        return self

    def close(self) -> None:
        """fsync and close (idempotent)."""
        self._closing.set()
        if self._syncer is not None:
            self._syncer.join(5.0)
            self._syncer = None
        with self._lock:
            if self._fd is not None:
                os.fsync(self._fd)
                os.close(self._fd)
                self._fd = None

    def _open_file(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        os.fchmod(fd, 0o600)  # an older file may have been made under a looser umask
        if self._fd is not None:
            os.close(self._fd)
        self._fd = fd
        self._started_at = self._first_record_time()
        fsync_dir(self.path.parent)

    def _first_record_time(self) -> float:
        try:
            with self.path.open("rb") as f:
                first = f.readline()
            if not first:
                return self.clock()
            return datetime.strptime(json.loads(first)["time"],
                                     "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()
        except (OSError, ValueError, KeyError, TypeError):
            return self.path.stat().st_mtime

    # --- writing ---------------------------------------------------------------
    def write(self, record: Mapping[str, Any]) -> None:
        """Append one record (``time`` and ``source`` added); raises OSError on failure."""
        with self._lock:
            if self._fd is None:
                raise OSError(errno.EBADF, "audit trail is closed")
            now = self.clock()
            self._reopen_if_moved()
            if self._due_for_rotation(now):
                self._rotate(now)
            self._seq += 1
            if self._last_hash is None:  # the first record links to the trail's newest
                with self._trail_lock():
                    self._reopen_if_moved()
                    self._last_hash = trail_tail_hash(self.path, self.rotated_files())
                    self._append(now, record)
            else:
                self._append(now, record)
            if self.fsync_interval_s <= 0:
                os.fsync(self._fd)
            else:
                self._dirty = True

    def _append(self, now: float, record: Mapping[str, Any]) -> None:
        """Write one chained line (:func:`chained_line`) and remember its hash."""
        assert self._fd is not None and self._last_hash is not None
        line, self._last_hash = chained_line(
            {"time": utc_iso(now), **record, "source": {**self._source, "seq": self._seq},
             "prev": self._last_hash})
        _write_all(self._fd, (line + "\n").encode("ascii"))

    @contextmanager
    def _trail_lock(self) -> Iterator[None]:
        """The cross-process lock of rotation (and of a writer's first record)."""
        lock_path = self.path.with_name(f".{self.path.name}.lock")
        lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(lock_fd)  # releases the flock

    def _reopen_if_moved(self) -> None:
        """Another process rotated the file: follow the path to the new one."""
        assert self._fd is not None
        try:
            moved = os.stat(self.path).st_ino != os.fstat(self._fd).st_ino
        except FileNotFoundError:
            moved = True
        if moved:
            os.fsync(self._fd)
            self._open_file()

    def _due_for_rotation(self, now: float) -> bool:
        assert self._fd is not None
        size = os.fstat(self._fd).st_size
        if size == 0:
            return False
        return (size >= self.rotate_mb * MIB
                or now - self._started_at >= self.rotate_hours * 3600.0)

    def rotate(self) -> Path | None:
        """Rotate now (tests, operators); returns the rotated file's path."""
        with self._lock:
            return self._rotate(self.clock())

    def _rotate(self, now: float) -> Path | None:
        """Rename the current file aside and start a new one, under a cross-process lock."""
        assert self._fd is not None
        with self._trail_lock():
            if os.stat(self.path).st_ino != os.fstat(self._fd).st_ino:
                self._open_file()  # another process rotated it meanwhile
                return None
            os.fsync(self._fd)
            target = self._rotated_name(now)
            os.rename(self.path, target)
            self._open_file()
        self._purge_locked(now)
        return target

    def _rotated_name(self, now: float) -> Path:
        stamp = datetime.fromtimestamp(now, UTC).strftime(_STAMP)
        candidate = self.path.with_name(f"{self.path.stem}-{stamp}{self.path.suffix}")
        n = 1
        while candidate.exists():
            candidate = self.path.with_name(f"{self.path.stem}-{stamp}-{n}{self.path.suffix}")
            n += 1
        return candidate

    # --- retention -------------------------------------------------------------
    def rotated_files(self) -> list[tuple[float, Path]]:
        """Rotated files with their rotation time (seconds since the epoch), oldest first."""
        found = []
        prefix, suffix = f"{self.path.stem}-", self.path.suffix
        for candidate in self.path.parent.glob(f"{prefix}*{suffix}"):
            stamp, _, n = candidate.name[len(prefix):len(candidate.name) - len(suffix)
                                         ].partition("-")
            try:
                when = datetime.strptime(stamp, _STAMP).replace(tzinfo=UTC).timestamp()
                order = int(n or 0)
            except ValueError:
                continue  # not ours: never touched
            found.append((when, order, candidate))
        return [(when, path) for when, _, path in sorted(found)]

    def purge(self) -> list[Path]:
        """Delete rotated files older than ``retention_days``; returns what was deleted."""
        with self._lock:
            return self._purge_locked(self.clock())

    def _purge_locked(self, now: float) -> list[Path]:
        cutoff = now - self.retention_days * 86400.0
        deleted = []
        for rotated_at, path in self.rotated_files():
            if rotated_at < cutoff:  # its newest record is older than the retention
                path.unlink(missing_ok=True)
                deleted.append(path)
        if deleted:
            log.info("audit_files_purged", extra={"fields": {"files": len(deleted)}})
        return deleted

    # --- fsync timer -------------------------------------------------------------
    def _sync_loop(self) -> None:
        while not self._closing.wait(self.fsync_interval_s):
            self.sync_pending()

    def sync_pending(self) -> None:
        """fsync what was written since the last sync, without holding the write lock.

        The fsync runs on a duplicate of the descriptor, outside the lock: a
        slow fsync (a busy disk flushing other files' data first) never makes
        an association thread wait to append its record. A rotation meanwhile
        closes only the original descriptor; the duplicate still syncs the
        file it was taken from.
        """
        with self._lock:
            if not self._dirty or self._fd is None:
                return
            fd = os.dup(self._fd)
            self._dirty = False
        try:
            os.fsync(fd)
        except OSError as exc:
            with self._lock:
                self._dirty = True
            count_write_failure(exc)
        finally:
            os.close(fd)


#: How a chained line ends: ``,"hash":"<64 hex digits>"}``.
HASH_SUFFIX = re.compile(r',"hash":"([0-9a-f]{64})"\}$')


def chained_line(body: Mapping[str, Any]) -> tuple[str, str]:
    """``body`` as one JSON line ending with its ``"hash"``, and that hash.

    The hash is the SHA-256 of the line's own text without the hash field
    (``{...}`` up to and including ``"prev"``), so a verifier checks the bytes
    as written, without re-encoding JSON.
    """
    text = json.dumps(dict(body), ensure_ascii=True, separators=(",", ":"), default=str)
    digest = hashlib.sha256(text.encode("ascii")).hexdigest()
    return f'{text[:-1]},"hash":"{digest}"}}', digest


def trail_tail_hash(path: Path, rotated: list[tuple[float, Path]]) -> str:
    """The hash of the trail's newest complete record (current file, then the rotated
    ones newest first); ``""`` when that record has no hash or the trail is empty."""
    for candidate in [path, *(p for _, p in reversed(rotated))]:
        line = _last_complete_line(candidate)
        if line:
            found = HASH_SUFFIX.search(line)
            return found.group(1) if found else ""
    return ""


def _last_complete_line(path: Path, block: int = 65536) -> str:
    """The last newline-terminated line of ``path`` (``""`` if none or unreadable)."""
    try:
        with path.open("rb") as f:
            end = f.seek(0, os.SEEK_END)
            data, pos = b"", end
            while pos > 0:
                pos = max(0, pos - block)
                f.seek(pos)
                data = f.read(end - pos)
                complete = data[:data.rfind(b"\n") + 1]
                if complete.count(b"\n") >= 2 or (pos == 0 and complete):
                    break
    except OSError:
        return ""
    lines = data[:data.rfind(b"\n") + 1].splitlines()
    return lines[-1].decode("ascii", "replace") if lines else ""


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def count_write_failure(exc: OSError) -> None:
    """Log (errno only) and count a record or fsync the trail could not write."""
    metrics.AUDIT_WRITE_ERRORS.inc()
    log.error("audit_write_failed", extra={"fields": {
        "errno": errno.errorcode.get(exc.errno or 0, str(exc.errno))}})

