"""Bounds and refusals at the socket edge, the same for both acceptors.

pynetdicom leaves several ways for a peer to hold a thread, a socket or disk
space that the node cannot take back (reliability audit D4, D5, D7, D9):

* :func:`bounded_server_class` makes the association server answer a
  connection at TCP accept with an A-ASSOCIATE-RJ (transient, local limit
  exceeded) and close it, before a byte is read, when its IP address
  already holds ``max_per_host`` connections, and gives every accepted
  socket a receive timeout (a half-sent PDU no longer blocks a thread);
  behind a TCP balancer of ``node.proxy_from`` the address is the client's,
  read from the balancer's PROXY header (:mod:`service.net.proxy_protocol`)
  in the connection's thread before the association starts;
  :func:`end_waiting_acceptor` hands a slot back as soon as a connection
  closes before its A-ASSOCIATE-RQ (not after the ARTIM time);
* :class:`AssociationGuard` wraps, per association, the two places where a
  peer's message enters pynetdicom:

  - ``dimse.receive_primitive`` (the DUL thread, both acceptors): a C-STORE
    data set that outgrows ``storage.max_instance_mb``, or the spool's free
    space, stops being written to disk at once; the rest of it is read and
    dropped and the request answered 0xA700 with an ErrorComment. A C-STORE
    command set pynetdicom cannot decode (empty or over-long UID) is answered
    0xC000 the same way; anything else undecodable ends in an A-ABORT sent
    from the DUL thread itself. The partial temporary file is closed and
    removed either way (pynetdicom would leave it open);
  - ``_serve_request``: a C-STORE naming a SOP class the node does not
    accept is answered 0x0122 before pynetdicom looks for a service class
    (for a class it does not know, pynetdicom aborts, which in the DUL
    thread waited for itself forever).

Nothing here decodes a data set: only the command set pynetdicom decoded.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import socket
import threading
from collections import Counter
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, NamedTuple, cast

from pydicom.dataset import Dataset
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.transport import ThreadedAssociationServer

from service import metrics
from service.net.proxy_protocol import ProxyHeaderError, is_trusted, read_header
from service.net.status import Status
from service.store.spool import is_disk_full

log = logging.getLogger(__name__)

#: Accept-loop rounds (a connection, or 0.5 s idle) between young garbage collections.
GC_EVERY_ROUNDS = 60
#: Free space is re-checked each time a data set grows by this much, bytes.
FREE_CHECK_BYTES = 16 * 1024 * 1024
#: A-ASSOCIATE-RJ PDU: rejected-transient, service-provider (presentation), local
#: limit exceeded (PS3.8 9.3.4), sent unasked to a connection over its host's slots.
REJECT_LOCAL_LIMIT = bytes((0x03, 0, 0, 0, 0, 4, 0, 0x02, 0x03, 0x02))
#: C-STORE-RQ in Command Field (0000,0100).
C_STORE_RQ = 0x0001
#: Command Data Set Type (0000,0800) meaning "no data set follows".
NO_DATA_SET = 0x0101


class Refusal(NamedTuple):
    """A failure status to answer, its ErrorComment and a metrics reason slug."""

    status: Status
    comment: str
    reason: str


#: The answer to a C-STORE whose data set met a full disk (ENOSPC, EDQUOT) while it
#: was written to the spool: 0xA700, transient, so the sender retries later.
DISK_FULL = Refusal(Status.OUT_OF_RESOURCES, "insufficient disk space on the node's spool",
                    "out_of_space")


def count_refusal(refusal: Refusal) -> None:
    """The metric and the log line of one refused C-STORE (no header values)."""
    metrics.INSTANCES_REJECTED.labels(reason=refusal.reason).inc()
    log.warning("store_refused", extra={"fields": {
        "reason": refusal.reason, "status": f"0x{int(refusal.status):04X}"}})


# --- TCP accept ------------------------------------------------------------------------
class BoundedServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with per-address slots and socket timeouts.

    Class attributes are set by :func:`bounded_server_class` (the server
    starts serving before an instance could be configured).
    """

    max_per_host: int = 5
    receive_timeout_s: float | None = 30.0
    on_refused: Callable[[str], None] | None = None
    #: Balancer addresses (IPs or networks) whose connections start with a PROXY header.
    proxy_from: tuple[str, ...] = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._slots_lock = threading.Lock()
        self._starting: Counter[str] = Counter()
        self._rounds = 0
        super().__init__(*args, **kwargs)

    def service_actions(self) -> None:
        """A young garbage collection every :data:`GC_EVERY_ROUNDS` accept rounds.

        pynetdicom forces a *full* one every 60 rounds: a stop-the-world pause of
        every association that grows with the heap (4-11 s measured with 3 million
        objects). Ended associations' cycles are young; the interpreter's own
        full collections take the rest.
        """
        self._rounds += 1
        if self._rounds >= GC_EVERY_ROUNDS:
            self._rounds = 0
            gc.collect(1)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        request, address = super().get_request()
        request.settimeout(self.receive_timeout_s)
        return request, address

    def _connections_from(self, host: str) -> int:
        live = sum(1 for assoc in self.active_associations
                   if assoc.is_alive() and assoc.requestor.address == host)
        return live + self._starting[host]

    def _take_slot(self, request: Any, host: str) -> bool:
        """Count a connection from ``host``; refuse (reject PDU, metric) when over."""
        with self._slots_lock:
            refused = self._connections_from(host) >= self.max_per_host
            if not refused:
                self._starting[host] += 1
        if refused:
            # counted first, so a peer that has read the rejection finds it counted
            if self.on_refused is not None:
                self.on_refused("host_limit")
            # the peer reads this as a transient rejection once it has sent its
            # A-ASSOCIATE-RQ, as for pynetdicom's association limit; best effort
            with contextlib.suppress(OSError):
                request.send(REJECT_LOCAL_LIMIT)
        return not refused

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Refuse (close at once) a connection over the address's slots.

        A connection from a balancer of ``proxy_from`` is counted in its own
        thread, once its PROXY header has named the client.
        """
        host = str(client_address[0])
        if self.proxy_from and is_trusted(host, self.proxy_from):
            return True
        return self._take_slot(request, host)

    def _client_behind_proxy(self, request: Any, client_address: Any) -> Any:
        """The client's address from the balancer's PROXY header, slot taken; or None."""
        try:
            header = read_header(request, self.receive_timeout_s or 30.0)
        except (ProxyHeaderError, OSError) as exc:
            log.warning("proxy_header_refused", extra={"fields": {"reason": str(exc)}})
            if self.on_refused is not None:
                self.on_refused("proxy_header")
            return None
        address = header.source or (str(client_address[0]), int(client_address[1]))
        return address if self._take_slot(request, address[0]) else None

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        if self.proxy_from and is_trusted(str(client_address[0]), self.proxy_from):
            client_address = self._client_behind_proxy(request, client_address)
            if client_address is None:
                self.shutdown_request(request)
                return
        host = str(client_address[0])
        # Under the slots lock, so _take_slot never sees the connection twice (its
        # association already live, its start not yet released): a burst of connections
        # was refused one slot early. Returns once the association's thread runs.
        with self._slots_lock:
            try:
                super().process_request_thread(request, client_address)
            finally:
                self._starting[host] -= 1
                if self._starting[host] <= 0:
                    del self._starting[host]


def bounded_server_class(max_per_host: int, receive_timeout_s: float | None,
                         on_refused: Callable[[str], None] | None = None,
                         proxy_from: Collection[str] = ()) -> type[BoundedServer]:
    """A :class:`BoundedServer` subclass carrying these bounds."""
    return type("BoundedServer", (BoundedServer,), {
        "max_per_host": max_per_host, "receive_timeout_s": receive_timeout_s,
        "proxy_from": tuple(proxy_from),
        "on_refused": staticmethod(on_refused) if on_refused is not None else None})


def end_waiting_acceptor(assoc: Any) -> bool:
    """On a closed connection, end an acceptor still waiting for its A-ASSOCIATE-RQ.

    pynetdicom's association thread waits ``acse_timeout`` (the ARTIM time,
    10 s) for the request even after the peer has closed the connection (the
    DUL goes back to idle without telling it), and holds the address's slot
    meanwhile: a few raw connections that send nothing, garbage or half a PDU
    and close locked their host out for 10 s (fuzz finding). A ``None`` on the
    DUL's user queue is what that wait returns on a timeout: the thread closes
    the association at once. Call from ``EVT_CONN_CLOSE``; True when it did.
    """
    dul = getattr(assoc, "dul", None)
    queue = getattr(dul, "to_user_queue", None)
    if (queue is None or not assoc.is_acceptor or assoc.is_established
            or assoc.requestor.primitive is not None or not queue.empty()):
        return False
    queue.put(None)
    return True


# --- one association ---------------------------------------------------------------------
def abort_from_dul(assoc: Any) -> None:
    """Send an A-ABORT and stop the DUL, from inside the DUL thread.

    ``Association.abort()`` would wait for the DUL thread to end: called in
    that thread it waits forever (audit D4). This is what pynetdicom's own
    reactor does when it fails.
    """
    pdu = A_ABORT_RQ()
    pdu.source = 0x02  # service-provider
    pdu.reason_diagnostic = 0x00
    with contextlib.suppress(Exception):  # the peer may be gone already
        assoc.dul.socket.send(pdu.encode())
    assoc.is_aborted = True
    assoc.is_established = False
    assoc.dul._kill_thread = True


def _discard_file(owner: Any, file_attr: str, path_attr: str) -> None:
    """Close and remove a partial data set file pynetdicom opened."""
    handle = getattr(owner, file_attr, None)
    path = getattr(owner, path_attr, None)
    if handle is not None:
        with contextlib.suppress(OSError):
            handle.close()
    if path:
        with contextlib.suppress(OSError):
            os.unlink(Path(path))


def _data_bytes(primitive: P_DATA) -> int:
    return sum(len(data) - 1 for _, data in primitive.presentation_data_value_list
               if data and not data[0] & 1)


def _command_uids_fit(command: Dataset) -> bool:
    """False for a C-STORE-RQ whose command UIDs pynetdicom cannot take (over 64 chars)."""
    if "MessageID" not in command or command.get("CommandField") != C_STORE_RQ:
        return True
    return all(len(str(command.get(keyword) or "").rstrip("\x00 ")) <= 64
               for keyword in ("AffectedSOPClassUID", "AffectedSOPInstanceUID"))


class AssociationGuard:
    """Per-association wrappers of ``dimse.receive_primitive`` and ``_serve_request``.

    Parameters
    ----------
    assoc : pynetdicom.association.Association
    accepted_classes : collection of str
        SOP Class UIDs the node stores; others are answered 0x0122.
    limit : callable
        ``limit(data_bytes, check_free)`` returns a :class:`Refusal` when a
        data set of ``data_bytes`` may not be received further; ``check_free``
        says whether to look at the spool's free space this time.
    """

    def __init__(self, assoc: Any, accepted_classes: Collection[str],
                 limit: Callable[[int, bool], Refusal | None]) -> None:
        self.assoc = assoc
        self.accepted_classes = frozenset(accepted_classes)
        self.limit = limit
        self._receive = assoc.dimse.receive_primitive
        self._serve = assoc._serve_request
        self._data_bytes = 0
        self._refusal: Refusal | None = None
        self._command: Dataset | None = None
        self._context_id = 0

    def install(self) -> None:
        self.assoc.dimse.receive_primitive = self.receive_primitive
        self.assoc._serve_request = self.serve_request

    # -- _serve_request -----------------------------------------------------------
    def serve_request(self, msg: Any, context_id: int) -> None:
        """Answer 0x0122 to a C-STORE of a class the node does not store."""
        if (isinstance(msg, C_STORE) and msg.is_valid_request and not self.assoc._sent_release
                and str(msg.AffectedSOPClassUID or "") not in self.accepted_classes):
            _discard_file(msg, "_dataset_file", "_dataset_path")
            refusal = Refusal(Status.SOP_CLASS_NOT_SUPPORTED, "SOP class not supported",
                              "sop_class")
            command = Dataset()
            command.MessageID = msg.MessageID
            command.AffectedSOPClassUID = msg.AffectedSOPClassUID
            command.AffectedSOPInstanceUID = msg.AffectedSOPInstanceUID
            self._answer(command, context_id, refusal)
            return
        self._serve(msg, context_id)

    # -- receive_primitive (DUL thread) ---------------------------------------------
    def receive_primitive(self, primitive: P_DATA) -> None:
        if self._refusal is not None:
            self._drop(primitive)
            return
        message = self.assoc.dimse.message
        added = _data_bytes(primitive)
        if added and message is not None and "MessageID" in message.command_set:
            before, self._data_bytes = self._data_bytes, self._data_bytes + added
            check_free = before == 0 or before // FREE_CHECK_BYTES != (
                self._data_bytes // FREE_CHECK_BYTES)
            refusal = self.limit(self._data_bytes, check_free)
            if refusal is not None:
                self._start_dropping(refusal)
                self._drop(primitive)
                return
        try:
            self._receive(primitive)
        except Exception as exc:  # undecodable command set: a status if we can, else abort
            if is_disk_full(exc):  # writing the data set to tmp/: the node's disk, no traceback
                log.warning("store_disk_full", extra={"fields": {"error": type(exc).__name__}})
                self._refuse_current(primitive, DISK_FULL)
                return
            log.warning("dimse_decode_failed", exc_info=True)
            self._refuse_current(primitive, Refusal(
                Status.CANNOT_UNDERSTAND, "C-STORE command set could not be decoded",
                "bad_command"))
            return
        message = self.assoc.dimse.message
        if message is None:  # a message completed
            self._data_bytes = 0
        elif self._data_bytes == 0 and not _command_uids_fit(message.command_set):
            # pynetdicom would abort when the data set is complete (no status)
            self._start_dropping(Refusal(
                Status.CANNOT_UNDERSTAND, "C-STORE command set could not be decoded",
                "bad_command"))

    def _start_dropping(self, refusal: Refusal) -> None:
        """Stop writing the current message; answer ``refusal`` after its last fragment."""
        message = self.assoc.dimse.message
        _discard_file(message, "_data_set_file", "_data_set_path")
        self._refusal = refusal
        self._command = message.command_set
        self._context_id = int(message.context_id or 0)
        self.assoc.dimse.message = None
        self._data_bytes = 0

    def _drop(self, primitive: P_DATA) -> None:
        pdvs = list(primitive.presentation_data_value_list)
        for i, (_, data) in enumerate(pdvs):
            if not data or data[0] & 1:  # a command while a data set is due: not DICOM
                log.warning("dimse_protocol_error", extra={"fields": {"reason": "command_in_data"}})
                self._refusal = None
                abort_from_dul(self.assoc)
                return
            if data[0] & 2:  # the data set's last fragment: answer now
                refusal, self._refusal = self._refusal, None
                if refusal is not None and self._command is not None:
                    self._answer(self._command, self._context_id, refusal)
                rest = pdvs[i + 1:]
                if rest:
                    tail = P_DATA()
                    tail.presentation_data_value_list = cast(Any, [list(pdv) for pdv in rest])
                    self.receive_primitive(tail)
                return

    def _refuse_current(self, primitive: P_DATA, refusal: Refusal) -> None:
        """The current message failed in pynetdicom: answer a C-STORE-RQ, abort otherwise."""
        message = self.assoc.dimse.message
        command = getattr(message, "command_set", None)
        if message is None or command is None or "MessageID" not in command:
            self._abort(message)
            return
        if command.get("CommandField") != C_STORE_RQ or (
                command.get("CommandDataSetType") == NO_DATA_SET):
            self._abort(message)
            return
        self._start_dropping(refusal)
        # the data fragments of this P-DATA (those after its command fragments)
        pdvs = list(primitive.presentation_data_value_list)
        data_from = next((i + 1 for i in range(len(pdvs) - 1, -1, -1)
                          if pdvs[i][1] and pdvs[i][1][0] & 1), 0)
        if data_from < len(pdvs):
            tail = P_DATA()
            tail.presentation_data_value_list = cast(
                Any, [list(pdv) for pdv in pdvs[data_from:]])
            self._drop(tail)

    def _abort(self, message: Any) -> None:
        if message is not None:
            _discard_file(message, "_data_set_file", "_data_set_path")
        self.assoc.dimse.message = None
        metrics.INSTANCES_REJECTED.labels(reason="undecodable").inc()
        abort_from_dul(self.assoc)

    def _answer(self, command: Dataset, context_id: int, refusal: Refusal) -> None:
        """Send a C-STORE-RSP with ``refusal`` for the request ``command``."""
        count_refusal(refusal)
        rsp = C_STORE()
        rsp.MessageIDBeingRespondedTo = int(command.MessageID)
        for keyword in ("AffectedSOPClassUID", "AffectedSOPInstanceUID"):
            with contextlib.suppress(Exception):  # an invalid UID is left out
                setattr(rsp, keyword, command.get(keyword))
        rsp.Status = int(refusal.status)
        rsp.ErrorComment = refusal.comment[:64]  # type: ignore[assignment]
        self.assoc.dimse.send_msg(rsp, context_id)


__all__ = ["DISK_FULL", "AssociationGuard", "BoundedServer", "Refusal", "abort_from_dul",
           "end_waiting_acceptor",
           "bounded_server_class", "count_refusal"]
