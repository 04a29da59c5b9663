"""The DICOM SCP: C-ECHO and C-STORE into the durable spool.

Thin handlers (style rule 3): pynetdicom streams each arriving dataset into
a file in the spool's ``tmp/`` (no copy in memory); the C-STORE handler
checks the SOP class and the limits, reads a handful of header values (never
pixel data), makes the file durable under a path of validated UIDs
(:meth:`Spool.adopt`), records it in SQLite together with the series
bookkeeping, and only then answers Success. Every failure is answered with a
precise status and an ErrorComment; nothing patient-related is logged
(pynetdicom's identifier logging is switched off).

Durability costs one flush per instance on ext4/XFS/btrfs with the default
``storage.spool_sync = "auto"`` (data written out, rename, fsync of the file),
else fsync, rename, fsync of the directory (see :mod:`service.store.spool`);
the row is committed with
``synchronous=NORMAL`` (safe against a crash of the process; after a power
loss :func:`service.store.series.recover_spool`, run at start-up, re-records
the durable files whose rows were lost).

The association machinery is pynetdicom's loops with event-driven waits and
the C-STORE served in the thread that received it (``node.acceptor =
"event"``, the default, :mod:`service.net.acceptor`) or pynetdicom's stock
acceptor (``"pynetdicom"``): bench/ingest.py measures the difference.
"""

from __future__ import annotations

import logging
import queue
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, _config, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.transport import ThreadedAssociationServer

from service import metrics
from service.config import Settings
from service.dicom import codes
from service.dicom import header as header_mod
from service.dicom.uids import validated_uid
from service.net import acceptor, audit_events
from service.net.status import Status
from service.store import db, series
from service.store.rows import Connection, Rows
from service.store.spool import MIB, Spool

log = logging.getLogger(__name__)

#: Uncompressed syntaxes first (preferred), then every compressed one pydicom
#: decodes with pylibjpeg / its own RLE and deflate support.
TRANSFER_SYNTAXES: tuple[str, ...] = (
    ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian, JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless,
    JPEGLosslessSV1, JPEGLSLossless, JPEGLSNearLossless, JPEG2000Lossless, JPEG2000,
    RLELossless,
)
DEFAULT_QUIET_S = 30.0
MAX_PDU_BYTES = 1024 * 1024


class StoreRefused(Exception):
    """An instance we answer with a failure status (expected, no traceback)."""

    def __init__(self, status: Status, comment: str, reason: str) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment
        self.reason = reason


@dataclass
class _ConnectionPool:
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
        finally:
            self.idle.put(conn)

    def close(self) -> None:
        while True:
            try:
                self.idle.get_nowait().close()
            except queue.Empty:
                return


class StorageSCP:
    """The node's listening AE.

    Parameters
    ----------
    settings : Settings
    database : Database
        Already migrated.
    spool : Spool
    """

    def __init__(self, settings: Settings, database: Rows, spool: Spool) -> None:
        self.settings = settings
        self.spool = spool
        self._pool = _ConnectionPool(database, queue.LifoQueue())
        self._server: ThreadedAssociationServer | None = None
        self._active: set[int] = set()
        self._active_lock = threading.Lock()
        self._saved_globals: dict[str, Any] | None = None
        self.ae = self._make_ae()

    def _make_ae(self) -> AE:
        ae = AE(ae_title=self.settings.node.ae_title)
        ae.maximum_associations = self.settings.node.max_associations
        ae.maximum_pdu_size = MAX_PDU_BYTES
        ae.require_calling_aet = sorted({c.ae_title for c in self.settings.allowed_callers})
        ae.add_supported_context(codes.VERIFICATION)
        for sop_class in codes.ACCEPTED_STORAGE_SOP_CLASSES:
            ae.add_supported_context(sop_class, list(TRANSFER_SYNTAXES))
        return ae

    # --- lifecycle -------------------------------------------------------------
    def start(self) -> None:
        """Listen (non-blocking); raises OSError when the port is taken."""
        handlers: list[Any] = [
            (evt.EVT_CONN_OPEN, self.handle_conn_open),
            (evt.EVT_REQUESTED, self.handle_requested),
            (evt.EVT_ACCEPTED, self.handle_accepted),
            (evt.EVT_REJECTED, audit_events.association_rejected_event),
            (evt.EVT_CONN_CLOSE, self.handle_conn_close),
            (evt.EVT_C_ECHO, self.handle_echo),
            (evt.EVT_C_STORE, self.handle_store),
        ]
        self._set_globals()
        node = self.settings.node
        try:
            if node.acceptor == "event":  # pynetdicom's loops, event-driven waits
                self._server = acceptor.make_server(self.ae, (node.bind, node.port), handlers)
            else:
                self._server = self.ae.start_server((node.bind, node.port), block=False,
                                                    evt_handlers=handlers)
        except BaseException:
            self._restore_globals()
            raise
        log.info("scp_listening", extra={"fields": {
            "ae_title": node.ae_title, "port": self.port, "acceptor": node.acceptor}})

    def _set_globals(self) -> None:
        """Set the process-wide switches the SCP needs; :meth:`stop` restores them.

        pynetdicom streams each arriving dataset into a file instead of joining
        it in memory, in tempfile's directory, the spool's tmp/, so the
        finished file is renamed into place, never copied. Identifier logging
        is off; pynetdicom's "standard" handlers would format debug text for
        every PDU under the AE-wide lock (its logger is at WARNING anyway).
        One SCP per process: the values hold only while it runs.
        """
        wanted: dict[str, Any] = {
            "STORE_RECV_CHUNKED_DATASET": True, "LOG_REQUEST_IDENTIFIERS": False,
            "LOG_RESPONSE_IDENTIFIERS": False, "LOG_HANDLER_LEVEL": "none"}
        missing = [name for name in wanted if not hasattr(_config, name)]
        if missing:  # setattr on the module would silently do nothing useful
            raise acceptor.UnsupportedPynetdicom(
                f"pynetdicom._config lacks {', '.join(missing)}")
        self._saved_globals = {name: getattr(_config, name) for name in wanted}
        self._saved_globals["tempfile.tempdir"] = tempfile.tempdir
        for name, value in wanted.items():
            setattr(_config, name, value)
        tempfile.tempdir = str(self.spool.tmp_dir)

    def _restore_globals(self) -> None:
        saved, self._saved_globals = self._saved_globals, None
        if saved is None:
            return
        tempfile.tempdir = saved.pop("tempfile.tempdir")
        for name, value in saved.items():
            setattr(_config, name, value)

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        if self._server is None:
            return self.settings.node.port
        return int(self._server.server_address[1])

    def is_listening(self) -> bool:
        """True while the server socket is open and its thread alive."""
        server = self._server
        return server is not None and server.socket is not None and server.socket.fileno() >= 0

    def stop(self) -> None:
        """Stop accepting associations and close the open ones."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        self.ae.shutdown()
        self._pool.close()
        self._restore_globals()
        log.info("scp_stopped")

    # --- association handlers --------------------------------------------------
    def handle_conn_open(self, event: evt.Event) -> None:
        assoc_socket = event.assoc.dul.socket
        sock = assoc_socket.socket if assoc_socket is not None else None
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def handle_requested(self, event: evt.Event) -> None:
        """Reject callers that are not configured (AE title and host)."""
        requestor = event.assoc.requestor
        primitive = requestor.primitive
        calling = primitive.calling_ae_title if primitive is not None else ""
        if self.settings.caller(calling, requestor.address) is None:
            metrics.ASSOCIATIONS.labels(result="rejected").inc()
            log.warning("association_rejected", extra={"fields": {"reason": "unknown_caller"}})
            audit_events.association_refused(event.assoc, "unknown_caller")
            # rejected-permanent, service-user, calling AE title not recognised
            event.assoc.acse.send_reject(0x01, 0x01, 0x03)
            # as pynetdicom does for its own rejections: let the DUL send the
            # A-ASSOCIATE-RJ before the socket is closed
            event.assoc.kill()

    def handle_accepted(self, event: evt.Event) -> None:
        metrics.ASSOCIATIONS.labels(result="accepted").inc()
        metrics.ASSOCIATIONS_ACTIVE.inc()
        audit_events.association_accepted(event.assoc)
        with self._active_lock:
            self._active.add(id(event.assoc))

    def handle_conn_close(self, event: evt.Event) -> None:
        audit_events.connection_closed(event.assoc)
        with self._active_lock:
            if id(event.assoc) not in self._active:
                return
            self._active.discard(id(event.assoc))
        metrics.ASSOCIATIONS_ACTIVE.dec()

    def handle_echo(self, event: evt.Event) -> int:
        return int(Status.SUCCESS)

    # --- C-STORE ---------------------------------------------------------------
    def handle_store(self, event: evt.Event) -> Dataset | int:
        """Store one instance durably, then answer; never raise into pynetdicom."""
        started = time.perf_counter()
        try:
            outcome = self._store(event)
        except StoreRefused as refused:
            metrics.INSTANCES_REJECTED.labels(reason=refused.reason).inc()
            audit_events.instance_refused(event.assoc, refused.reason)
            log.warning("store_refused", extra={"fields": {
                "reason": refused.reason, "status": f"0x{int(refused.status):04X}"}})
            return _status(refused.status, refused.comment)
        except Exception:  # edge of the association thread: log, answer precisely
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
        path = self.spool.instance_path(header.study_uid, header.series_uid, sop_uid)
        size = self.spool.adopt(received, path)
        rec = db.InstanceRecord(
            sop_instance_uid=sop_uid, study_uid=header.study_uid,
            series_uid=header.series_uid, sop_class_uid=sop_class,
            transfer_syntax=str(event.context.transfer_syntax),
            calling_ae=event.assoc.requestor.ae_title.strip(),
            path=self.spool.relative(path), size_bytes=size, received_at=time.time(),
        )
        caller = self.settings.caller(rec.calling_ae, event.assoc.requestor.address)
        quiet_s = caller.series_quiet_s if caller is not None else DEFAULT_QUIET_S
        with self._pool.connection() as conn, conn:
            if not series.record_instance(conn, rec, header.info, quiet_s):
                return "duplicate"
        audit_events.instance_stored(event.assoc, header)
        return "stored"

    def _check_limits(self, size_bytes: int) -> None:
        storage = self.settings.storage
        if size_bytes > storage.max_instance_mb * MIB:
            raise StoreRefused(Status.OUT_OF_RESOURCES,
                               f"instance larger than {storage.max_instance_mb} MiB limit",
                               "too_large")
        if self.spool.free_mb() - size_bytes / MIB < storage.min_free_mb:
            raise StoreRefused(Status.OUT_OF_RESOURCES,
                               "insufficient disk space on the node's spool", "out_of_space")


def _read_header(path: Path, sop_class: str, sop_uid: str) -> header_mod.ParsedHeader:
    """The received instance's UIDs and counts, or a precise refusal."""
    try:
        header = header_mod.read_header(path, sop_class)
    except ValueError as exc:  # invalid UID or count: the message names the attribute
        raise StoreRefused(Status.CANNOT_UNDERSTAND, str(exc)[:64], "bad_header") from None
    except header_mod.PARSE_ERRORS:
        raise StoreRefused(Status.CANNOT_UNDERSTAND, "dataset could not be parsed",
                           "unparsable") from None
    if header.sop_instance_uid != sop_uid:
        raise StoreRefused(Status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                           "SOP Instance UID differs from the request", "uid_mismatch")
    return header


def _status(status: Status, comment: str) -> Dataset:
    ds = Dataset()
    ds.Status = int(status)
    ds.ErrorComment = comment[:64]
    return ds
