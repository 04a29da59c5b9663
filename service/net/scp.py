"""The DICOM SCP: C-ECHO and C-STORE into the durable spool.

Thin handlers (style rule 3): pynetdicom streams each arriving dataset into
a file in the spool's ``tmp/`` (no copy in memory); the C-STORE handler
(:class:`service.net.instance_store.InstanceStore`) checks the SOP class and the limits, reads a handful of header values (never
pixel data), makes the file durable under a path of validated UIDs
(:meth:`Spool.adopt`), records it in SQLite together with the series
bookkeeping, and only then answers Success. Every failure is answered with a
precise status and an ErrorComment; nothing patient-related is logged
(pynetdicom's identifier logging is switched off).

Bounds and refusals that must act before the handler (per-host connection
slots, socket receive timeouts, size and free-space limits while a data set
arrives, unknown SOP classes, undecodable commands) live in
:mod:`service.net.bounded_server` (at TCP accept) and :mod:`service.net.guard`
(within an association), the same for both acceptors.

Durability costs one flush per instance on ext4/XFS/btrfs with the default
``storage.spool_sync = "auto"`` (data written out, rename, fsync of the file),
else fsync, rename, fsync of the directory (see :mod:`service.store.spool`);
the row is committed with
``synchronous=NORMAL`` (safe against a crash of the process; after a power
loss :func:`service.store.series.recover_spool`, run at start-up, re-records
the durable files whose rows were lost). With ``storage.blobs = "s3"`` the
instance is instead PUT to the object store (``If-None-Match: *``) before
the row is written and Success answered: acknowledged means readable by
every node (docs/storage.md).

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
from collections.abc import Callable
from typing import Any

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
from pynetdicom.transport import ThreadedAssociationServer

from service import metrics
from service.config import Settings
from service.dicom import codes
from service.net import acceptor, audit_events, tls, tls_port
from service.net.bounded_server import bounded_server_class, end_waiting_acceptor
from service.net.guard import AssociationGuard
from service.net.instance_store import (  # noqa: F401 - re-exported (older import path)
    DEFAULT_QUIET_S,
    FREE_FLOOR_MB,
    ConnectionPool,
    InstanceStore,
    StoreRefused,
)
from service.net.status import Status
from service.store.blobs import Blobs, LocalBlobs
from service.store.rows import Rows
from service.store.spool import Spool

log = logging.getLogger(__name__)

#: Uncompressed syntaxes first (preferred), then every compressed one pydicom
#: decodes with pylibjpeg / its own RLE and deflate support.
TRANSFER_SYNTAXES: tuple[str, ...] = (
    ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian, JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless,
    JPEGLosslessSV1, JPEGLSLossless, JPEGLSNearLossless, JPEG2000Lossless, JPEG2000,
    RLELossless,
)
MAX_PDU_BYTES = 1024 * 1024
#: A-ASSOCIATE-RJ (source, reason) of pynetdicom's own rejections -> metrics reason.
_REJECT_REASONS: dict[tuple[Any, Any], str] = {(0x01, 0x03): "unknown_caller", (0x01, 0x07): "called_ae",
                   (0x03, 0x02): "association_limit", (0x02, 0x01): "user_identity"}


class StorageSCP:
    """The node's listening AE.

    Parameters
    ----------
    settings : Settings
    database : Database
        Already migrated.
    spool : Spool
        Its ``tmp/`` receives the arriving data sets.
    on_series_complete : callable or None
        Called after an instance completed its series.
    blobs : Blobs or None
        Where received instances are made durable before the answer
        (default: the spool folder itself, :class:`LocalBlobs`).
    """

    def __init__(self, settings: Settings, database: Rows, spool: Spool,
                 on_series_complete: Callable[[], None] | None = None,
                 blobs: Blobs | None = None) -> None:
        self.settings = settings
        self.spool = spool
        #: Where instances go: the spool itself (default) or the object store.
        self.blobs: Blobs = blobs if blobs is not None else LocalBlobs(spool.root, spool)
        self._pool = ConnectionPool(database, queue.LifoQueue())
        #: The C-STORE path (limits, durable write, row, answer).
        self.store = InstanceStore(settings, spool, self.blobs, self._pool, on_series_complete)
        self._server: ThreadedAssociationServer | None = None
        self._tls_server: ThreadedAssociationServer | None = None
        self._tls_contexts: tls.ReloadingContext | None = None
        self._active: set[int] = set()
        self._active_lock = threading.Lock()
        self._saved_globals: dict[str, Any] | None = None
        self.ae = self._make_ae()

    @property
    def on_series_complete(self) -> Callable[[], None] | None:
        """Called after an instance completed its series (set on the store path)."""
        return self.store.on_series_complete

    @on_series_complete.setter
    def on_series_complete(self, callback: Callable[[], None] | None) -> None:
        self.store.on_series_complete = callback

    def _make_ae(self) -> AE:
        node = self.settings.node
        ae = AE(ae_title=node.ae_title)
        ae.maximum_associations = node.max_associations
        ae.maximum_pdu_size = MAX_PDU_BYTES
        ae.require_calling_aet = sorted({c.ae_title for c in self.settings.allowed_callers})
        ae.require_called_aet = node.require_called_ae
        ae.acse_timeout = node.artim_timeout_s  # pynetdicom's ARTIM timer
        ae.network_timeout = node.network_timeout_s
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
            (evt.EVT_REJECTED, self.handle_rejected),
            (evt.EVT_CONN_CLOSE, self.handle_conn_close),
            (evt.EVT_C_ECHO, self.handle_echo),
            (evt.EVT_C_STORE, self.handle_store),
        ]
        self._set_globals()
        node = self.settings.node
        server_class = bounded_server_class(
            min(node.max_associations_per_host, node.max_associations), node.receive_timeout_s,
            _count_rejected, node.proxy_protocol_from)
        try:
            if node.plain:
                self._server = self._listen(node.port, handlers, server_class)
            if node.tls is not None:
                self._tls_contexts = tls_port.scp_contexts(self.settings)
                tls_class = tls_port.tls_server_class(server_class, self._tls_contexts)
                self._tls_server = self._listen(node.tls.port, handlers, tls_class)
                self._server = self._server or self._tls_server
        except BaseException:
            self.ae.shutdown()
            self._restore_globals()
            raise
        log.info("scp_listening", extra={"fields": {
            "ae_title": node.ae_title, "port": self.port if node.plain else None,
            "acceptor": node.acceptor, "tls_port": self.tls_port}})

    def _listen(self, port: int, handlers: list[Any],
                server_class: type[ThreadedAssociationServer]) -> ThreadedAssociationServer:
        address = (self.settings.node.bind, port)
        if self.settings.node.acceptor == "event":  # pynetdicom's loops, event-driven waits
            return acceptor.make_server(self.ae, address, handlers, server_class)
        return _start_stock_server(self.ae, address, handlers, server_class)

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

    @property
    def tls_port(self) -> int | None:
        """The bound TLS port, None without ``[node.tls]``."""
        if self._tls_server is None:
            tls_settings = self.settings.node.tls
            return None if tls_settings is None else tls_settings.port
        return int(self._tls_server.server_address[1])

    def reload_tls(self) -> bool | None:
        """Re-read the TLS port's certificate, key and CA now (SIGHUP).

        Returns None without a TLS port, False when the new files do not load
        (the old pair keeps serving; logged), True when reloaded.
        """
        if self._tls_contexts is None:
            return None
        return self._tls_contexts.reload("sighup")

    def is_listening(self) -> bool:
        """True while the server socket is open and its thread alive."""
        server = self._server
        return server is not None and server.socket is not None and server.socket.fileno() >= 0

    def stop(self) -> None:
        """Stop accepting associations and close the open ones."""
        for server in {id(s): s for s in (self._server, self._tls_server) if s}.values():
            server.shutdown()
        self._server = self._tls_server = None
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
        AssociationGuard(event.assoc, codes.ACCEPTED_STORAGE_SOP_CLASSES,
                         self.store.receive_limit).install()

    def handle_requested(self, event: evt.Event) -> None:
        """Reject callers that are not configured (AE title and host), and
        storage while the spool is short of space."""
        requestor = event.assoc.requestor
        primitive = requestor.primitive
        calling = primitive.calling_ae_title if primitive is not None else ""
        caller = self.settings.caller(calling, requestor.address)
        if caller is None:
            # rejected-permanent, service-user, calling AE title not recognised
            self._reject(event, (0x01, 0x01, 0x03), "unknown_caller")
        elif caller.tls_subject is not None and not tls.same_subject(
                caller.tls_subject, audit_events.tls_subject(event.assoc) or ""):
            # the caller is tied to a certificate subject: not this connection's
            self._reject(event, (0x01, 0x01, 0x03), "tls_subject")
        elif self._proposes_storage(primitive) and self.store.short_of_space(0):
            # rejected-transient, service-provider (presentation), local limit exceeded
            self._reject(event, (0x02, 0x03, 0x02), "disk_space")

    @staticmethod
    def _reject(event: evt.Event, result_source_reason: tuple[int, int, int],
                reason: str) -> None:
        _count_rejected(reason)
        audit_events.association_refused(event.assoc, reason)
        event.assoc.acse.send_reject(*result_source_reason)
        # as pynetdicom does for its own rejections: let the DUL send the
        # A-ASSOCIATE-RJ before the socket is closed
        event.assoc.kill()

    @staticmethod
    def _proposes_storage(primitive: Any) -> bool:
        contexts = getattr(primitive, "presentation_context_definition_list", None) or []
        return any(str(cx.abstract_syntax) in codes.ACCEPTED_STORAGE_SOP_CLASSES
                   for cx in contexts)

    def handle_rejected(self, event: evt.Event) -> None:
        """Count pynetdicom's own rejections (called AE, association limit)."""
        rj = event.assoc.acceptor.primitive
        key = (getattr(rj, "result_source", None), getattr(rj, "diagnostic", None))
        reason = _REJECT_REASONS.get(key, "other")
        _count_rejected(reason)
        audit_events.association_refused(event.assoc, reason)

    def handle_accepted(self, event: evt.Event) -> None:
        metrics.ASSOCIATIONS.labels(result="accepted", reason="").inc()
        metrics.ASSOCIATIONS_ACTIVE.inc()
        audit_events.association_accepted(event.assoc)
        with self._active_lock:
            self._active.add(id(event.assoc))

    def handle_conn_close(self, event: evt.Event) -> None:
        end_waiting_acceptor(event.assoc)  # its host's slot is free now, not after ARTIM
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
        """Store one instance durably, then answer (:class:`InstanceStore`)."""
        return self.store.handle(event)

def _count_rejected(reason: str) -> None:
    metrics.ASSOCIATIONS.labels(result="rejected", reason=reason).inc()
    log.warning("association_rejected", extra={"fields": {"reason": reason}})


def _start_stock_server(ae: AE, address: tuple[str, int], handlers: list[Any],
                        server_class: type[ThreadedAssociationServer]
                        ) -> ThreadedAssociationServer:
    """``ae.start_server(block=False)``, with our server class (pynetdicom's acceptor)."""
    server = ae.make_server(address, evt_handlers=handlers, server_class=server_class)
    thread = threading.Thread(target=server.serve_forever, name="AcceptorServer", daemon=True)
    thread.start()
    ae._servers.append(server)  # as start_server does: ae.shutdown() stops it
    return server


