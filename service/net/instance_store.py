"""Storing one received C-STORE instance durably, then answering it (the SCP's store path).

:class:`InstanceStore` is what :class:`service.net.scp.StorageSCP` calls for
each C-STORE: it checks the SOP class and the limits, reads a handful of
header values (never pixel data), makes the file durable under a key of
validated UIDs (the spool, or the object store with ``If-None-Match: *``),
records it with the series bookkeeping, and only then answers Success.
Every failure is answered with a precise status and an ErrorComment; the
refusal is counted and audited; nothing patient-related is logged.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.dimse_primitives import C_STORE

from service import metrics
from service.config import Settings
from service.dicom import codes
from service.dicom import header as header_mod
from service.dicom.uids import validated_uid
from service.net import audit_events
from service.net.guard import DISK_FULL, Refusal, count_refusal
from service.net.status import Status
from service.store import db, series
from service.store.blobs import BlobExists, Blobs, BlobStoreError, instance_key
from service.store.dialect import lock_blob_keys
from service.store.rows import Connection, Rows
from service.store.spool import FREE_SPACE_FLOOR_MB, MIB, Spool, is_disk_full

log = logging.getLogger(__name__)

DEFAULT_QUIET_S = 30.0
#: Free spool space below which nothing is stored, whatever ``storage.min_free_mb``
#: says (SQLite's journal and the node's outputs need room too), MiB.
FREE_FLOOR_MB = FREE_SPACE_FLOOR_MB


class StoreRefused(Exception):
    """An instance we answer with a failure status (expected, no traceback)."""

    def __init__(self, status: Status, comment: str, reason: str) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment
        self.reason = reason


@dataclass
class ConnectionPool:
    """Database connections handed to one association thread at a time."""

    database: Rows
    idle: queue.LifoQueue[Connection]

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        try:
            conn = self.idle.get_nowait()
        except queue.Empty:
            conn = self.database.connect(check_same_thread=False)
            for statement in conn.dialect.ingest_setup:  # SQLite: synchronous=NORMAL
                conn.execute(statement)
        try:
            yield conn
        except BaseException:
            # The connection may be the cause (a PostgreSQL session cut by a server
            # restart stays broken): never hand it to the next store; a new one is cheap.
            _close_quietly(conn)
            raise
        self.idle.put(conn)

    def close(self) -> None:
        while True:
            try:
                self.idle.get_nowait().close()
            except queue.Empty:
                return


def _close_quietly(conn: Connection) -> None:
    try:
        conn.close()
    except Exception:  # noqa: BLE001 - closing a broken session may fail too; it is dropped
        log.debug("store_connection_close_failed")


class InstanceStore:
    """The C-STORE handler's work for one node (thread-safe; one per SCP).

    Parameters
    ----------
    settings : Settings
    spool : Spool
        Its ``tmp/`` holds the arriving data sets; its free space is checked.
    blobs : Blobs
        Where instances are made durable before the answer.
    pool : ConnectionPool
        Database connections for the association threads.
    on_series_complete : callable or None
        Called after an instance completed its series.
    """

    def __init__(self, settings: Settings, spool: Spool, blobs: Blobs, pool: ConnectionPool,
                 on_series_complete: Callable[[], None] | None = None) -> None:
        self.settings = settings
        self.spool = spool
        self.blobs = blobs
        self._pool = pool
        self.on_series_complete = on_series_complete

    def handle(self, event: evt.Event) -> Dataset | int:
        """Store one instance durably, then answer; never raise into pynetdicom."""
        started = time.perf_counter()
        try:
            outcome = self._store(event)
        except StoreRefused as refused:
            count_refusal(Refusal(refused.status, refused.comment, refused.reason))
            audit_events.instance_refused(event.assoc, refused.reason)
            return _status(refused.status, refused.comment)
        except Exception as exc:  # edge of the association thread: log, answer precisely
            if is_disk_full(exc):  # transient: 0xA700, the sender retries; nothing kept
                count_refusal(DISK_FULL)
                audit_events.instance_refused(event.assoc, DISK_FULL.reason)
                return _status(DISK_FULL.status, DISK_FULL.comment)
            metrics.INSTANCES_REJECTED.labels(reason="internal_error").inc()
            log.exception("store_failed", extra={"fields": {"status": "0xA700"}})
            return _status(Status.OUT_OF_RESOURCES, "internal error while storing")
        if outcome == "duplicate":
            metrics.INSTANCES_DUPLICATE.inc()
        else:
            metrics.INSTANCES_RECEIVED.inc()
        log.debug("stored", extra={"fields": {"outcome": outcome,
                                              "ms": round(1e3 * (time.perf_counter() - started), 2)}})
        return int(Status.SUCCESS)

    def _store(self, event: evt.Event) -> str:
        request = cast(C_STORE, event.request)
        sop_class = str(request.AffectedSOPClassUID or "")
        if sop_class not in codes.ACCEPTED_STORAGE_SOP_CLASSES:
            raise StoreRefused(Status.SOP_CLASS_NOT_SUPPORTED, "SOP class not supported",
                               "sop_class")
        try:
            sop_uid = validated_uid(str(request.AffectedSOPInstanceUID or ""), "SOPInstanceUID")
        except ValueError:
            raise StoreRefused(Status.CANNOT_UNDERSTAND, "invalid SOP Instance UID",
                               "invalid_uid") from None
        with self._pool.connection() as conn:
            if db.instance_exists(conn, sop_uid):
                return "duplicate"
        # pynetdicom has streamed the dataset (with a file meta header) into tmp/
        received = Path(event.dataset_path)
        self._check_limits(received.stat().st_size)
        header = _read_header(received, sop_class, sop_uid)
        key = instance_key(header.study_uid, header.series_uid, sop_uid)
        try:
            recorded = self._adopt_and_record(event, received, key, header, sop_class)
        except Exception as exc:
            if is_disk_full(exc) and self.blobs.kind == "local":
                self._drop_unrecorded(key, sop_uid)
            raise
        if not recorded:
            return "duplicate"
        if recorded is series.Recorded.COMPLETED and self.on_series_complete is not None:
            self.on_series_complete()  # committed: routing can start now, not at its next poll
        audit_events.instance_stored(event.assoc, header)
        return "stored"

    def _adopt_and_record(self, event: evt.Event, received: Path, key: str,
                          header: header_mod.ParsedHeader, sop_class: str) -> series.Recorded:
        """Make the received file durable under ``key``, then record it (falsy: a duplicate).

        Locally the file is adopted into the spool; on S3 it is PUT with
        ``If-None-Match: *`` before the answer (docs/storage.md, "the ack"):
        a 412 means another listener stored the same instance first, or an
        earlier attempt left it without a row (an orphan the sweep may be
        removing), and the row decides whether this one is a duplicate.
        """
        sop_uid = header.sop_instance_uid
        found = False  # the object was there already: this listener did not write it
        try:
            size = self.blobs.put_file(key, received, if_absent=self.blobs.kind != "local")
        except BlobExists:
            size, found = received.stat().st_size, True
        except BlobStoreError as exc:  # transient: the sender retries; nothing recorded
            raise _blob_store_unavailable(exc) from None
        rec = db.InstanceRecord(
            sop_instance_uid=sop_uid, study_uid=header.study_uid,
            series_uid=header.series_uid, sop_class_uid=sop_class,
            transfer_syntax=str(event.context.transfer_syntax),
            calling_ae=event.assoc.requestor.ae_title.strip(),
            path=key, size_bytes=size, received_at=time.time(),
        )
        caller = self.settings.caller(rec.calling_ae, event.assoc.requestor.address)
        quiet_s = caller.series_quiet_s if caller is not None else DEFAULT_QUIET_S
        try:
            with self._pool.connection() as conn, conn:
                if found:  # the orphan sweep may be deleting it: check, under its lock
                    lock_blob_keys(conn, exclusive=False)
                recorded = series.record_instance(conn, rec, header.info, quiet_s)
                if found and recorded:
                    self._put_back_if_swept(key, received)
                return recorded
        finally:
            if found:
                received.unlink(missing_ok=True)

    def _put_back_if_swept(self, key: str, received: Path) -> None:
        """Our row names an object we did not write: store our copy if it is gone."""
        try:
            if not self.blobs.exists(key):
                self.blobs.put_file(key, received, if_absent=True)
                log.info("store_object_put_back", extra={"fields": {"reason": "swept"}})
        except BlobExists:  # another listener put it back first: the same instance
            pass
        except BlobStoreError as exc:  # the row is rolled back: the sender retries
            raise _blob_store_unavailable(exc) from None

    def _drop_unrecorded(self, key: str, sop_uid: str) -> None:
        """Remove a file moved into place whose row could not be written (disk full).

        Kept when the check itself fails: ``series.recover_spool`` records it
        at the next start, and the sender's retry is then a duplicate.
        """
        try:
            with self._pool.connection() as conn:
                if not db.instance_exists(conn, sop_uid):
                    self.blobs.delete(key)
        except Exception:  # noqa: BLE001 - the database is unwell too: keep the file
            log.warning("store_cleanup_skipped", extra={"fields": {"reason": "database"}})

    def _check_limits(self, size_bytes: int) -> None:
        storage = self.settings.storage
        if size_bytes > storage.max_instance_mb * MIB:
            raise StoreRefused(Status.OUT_OF_RESOURCES,
                               f"instance larger than {storage.max_instance_mb} MiB limit",
                               "too_large")
        if self.short_of_space(size_bytes):
            raise StoreRefused(Status.OUT_OF_RESOURCES,
                               "insufficient disk space on the node's spool", "out_of_space")

    def short_of_space(self, size_bytes: int) -> bool:
        """Would ``size_bytes`` more leave the spool below its free-space floor?"""
        floor_mb = max(self.settings.storage.min_free_mb, FREE_FLOOR_MB)
        return self.spool.free_mb() - size_bytes / MIB < floor_mb

    def receive_limit(self, data_bytes: int, check_free: bool) -> Refusal | None:
        """Whether a C-STORE data set may grow to ``data_bytes`` while it arrives."""
        max_mb = self.settings.storage.max_instance_mb
        if data_bytes > max_mb * MIB:
            return Refusal(Status.OUT_OF_RESOURCES, f"instance larger than {max_mb} MiB limit",
                           "too_large")
        if check_free and self.short_of_space(data_bytes):
            return Refusal(Status.OUT_OF_RESOURCES,
                           "insufficient disk space on the node's spool", "out_of_space")
        return None



def _blob_store_unavailable(exc: BlobStoreError) -> StoreRefused:
    log.warning("store_blob_unavailable", extra={"fields": {"error": str(exc)}})
    return StoreRefused(Status.OUT_OF_RESOURCES, "object store unavailable", "blob_store")


def _read_header(path: Path, sop_class: str, sop_uid: str) -> header_mod.ParsedHeader:
    """The received instance's UIDs and counts, or a precise refusal."""
    try:
        header = header_mod.read_header(path, sop_class)
    except ValueError as exc:  # invalid UID or count: the message names the attribute
        raise StoreRefused(Status.CANNOT_UNDERSTAND, str(exc)[:64], "bad_header") from None
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - anything pydicom raises on bad bytes
        # (RecursionError, zlib.error, BytesLengthException, ...) is the data's fault:
        # 0xC000, never 0xA700 (audit D8); the type only, a traceback would be pydicom's
        log.info("header_unparsable", extra={"fields": {"error": type(exc).__name__}})
        raise StoreRefused(Status.CANNOT_UNDERSTAND, "dataset could not be parsed",
                           "unparsable") from None
    if header.sop_instance_uid != sop_uid:
        raise StoreRefused(Status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                           "SOP Instance UID differs from the request", "uid_mismatch")
    if header.dataset_sop_class_uid != sop_class:
        raise StoreRefused(Status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                           "SOP Class UID differs from the request", "class_mismatch")
    return header


def _status(status: Status, comment: str) -> Dataset:
    ds = Dataset()
    ds.Status = int(status)
    ds.ErrorComment = comment[:64]
    return ds
