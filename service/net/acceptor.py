"""An event-driven association acceptor for pynetdicom (the SCP's receive path).

pynetdicom 3's acceptor polls: the DUL thread sleeps 1 ms whenever it finds
nothing to do, the association thread sleeps 1 ms on every loop, and the
socket is read in 4 KiB pieces. With a C-STORE SCU that waits for each
response before sending the next instance (storescu, most PACS) those
sleeps add several milliseconds to every instance, more than the fsyncs
the durable spool needs (measured with bench/ingest.py: 200 per-slice
instances, DUL and reactor polling about 3 ms per instance of 12 ms).

The classes here keep pynetdicom's state machine, timers and handlers
untouched and change only *how the threads wait*:

* :class:`EventDUL` waits in ``select()`` on the association's socket and a
  wake-up socket pair instead of sleeping: it runs as soon as the peer sends
  data or the local user queues a primitive (a C-STORE response);
* :class:`EventAssociation` waits on a :class:`threading.Event` set when a
  complete DIMSE message (or an A-RELEASE / A-ABORT) is queued for it;
* :class:`FastSocket` reads each PDU with ``recv_into`` into one buffer;
* C-STORE responses are encoded with ``struct`` (:mod:`service.net.store_rsp`)
  instead of two pydicom encodings of a Dataset;
* a complete C-STORE or C-ECHO request is served at once in the DUL thread
  (:class:`_InlineRequests`) instead of being handed to the association
  thread and its response handed back: no thread wake-ups per instance,
  which on a busy machine cost a scheduler time slice each. The DUL reads
  nothing while the handler runs, as before: the SCU waits for the response.

Both loops still wake every :data:`IDLE_WAIT_S` to check pynetdicom's
timers (ARTIM, network idle), so nothing busy-loops while idle.

The loops are the ones of pynetdicom 3.0 (``DULServiceProvider.run_reactor``,
``Association._run_reactor``) with only the waits replaced. pyproject.toml
pins pynetdicom to 3.0.x, and :func:`make_server` refuses to start (never
aborts associations later) on another minor version or when any name of
:data:`PRIVATE_NAMES` is missing. ``node.acceptor = "pynetdicom"`` uses
pynetdicom's own acceptor instead (``ae.start_server``).
"""

from __future__ import annotations

import logging
import queue
import select
import socket
import ssl
import threading
import time
from copy import deepcopy
from datetime import datetime
from typing import Any, cast

import pynetdicom
from pynetdicom import _globals, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from service.net.guard import abort_from_dul
from service.net.pynetdicom_private import (
    PRIVATE_NAMES,
    SUPPORTED_PYNETDICOM,
    UnsupportedPynetdicom,
    missing_private_names,
)
from service.net.store_rsp import LAST_COMMAND_FRAGMENT, encode_store_rsp

log = logging.getLogger(__name__)

#: Longest a waiting loop sleeps before it re-checks pynetdicom's timers, s.
IDLE_WAIT_S = 0.02
#: First allocation of a PDU read, bytes (the node's own maximum P-DATA is 1 MiB).
RECV_START_BYTES = 64 * 1024
class _WakingQueue(queue.Queue):
    """A queue that calls ``wake`` after every put (wakes the waiting loop)."""

    def __init__(self, wake: Any) -> None:
        super().__init__()
        self._wake = wake

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._wake()


class _InlineRequests(queue.Queue):
    """DIMSE's message queue: C-STORE and C-ECHO requests are served on put.

    ``DIMSEServiceProvider.receive_primitive`` puts each complete request
    here from the DUL thread; serving it right there runs the handler and
    queues the response for the same thread, which sends it when the state
    machine action returns. Anything else (other services, unknown contexts,
    requests during release) goes to the association thread as usual, so no
    abort is ever started from inside the DUL thread.
    """

    def __init__(self, assoc: EventAssociation) -> None:
        super().__init__()
        self._assoc = assoc

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        context_id, primitive = item
        assoc = self._assoc
        if (isinstance(primitive, C_STORE | C_ECHO) and primitive.is_valid_request
                and context_id in assoc._accepted_cx and not assoc._sent_release):
            # the association thread may check the network idle timer while
            # the handler runs here: count our handler time as activity
            assoc.dul._idle_timer.restart()
            assoc._serve_request(primitive, context_id)
            assoc.dul._idle_timer.restart()
            return
        super().put(item, block, timeout)
        assoc.wake()


class FastSocket(AssociationSocket):
    """An :class:`AssociationSocket` that reads a PDU in as few calls as possible."""

    def recv(self, nr_bytes: int) -> bytearray:
        """Read ``nr_bytes`` (fewer only when the peer closes the connection).

        The buffer starts at :data:`RECV_START_BYTES` and doubles as data
        arrives: memory follows what the peer sends, never the length its
        6-byte PDU header declares (up to 4 GiB, before any AE check).
        """
        sock = cast(socket.socket, self.socket)
        timeout_s = sock.gettimeout()
        # the socket's receive timeout bounds the whole read, not each piece: a
        # peer trickling a byte at a time cannot hold the thread (audit D5)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        buffer = bytearray(min(nr_bytes, RECV_START_BYTES))
        got = 0
        try:
            while got < nr_bytes:
                if deadline is not None:
                    remaining_s = deadline - time.monotonic()
                    if remaining_s <= 0:
                        raise TimeoutError("PDU not complete within the receive timeout")
                    sock.settimeout(remaining_s)
                if got == len(buffer):
                    buffer.extend(bytes(min(len(buffer), nr_bytes - got)))
                with memoryview(buffer)[got:] as free:
                    n = sock.recv_into(free, len(free))
                if n == 0:  # connection closed: return what arrived, as pynetdicom does
                    del buffer[got:]
                    return buffer
                got += n
            return buffer
        finally:
            if deadline is not None:
                sock.settimeout(timeout_s)


class EventDUL(DULServiceProvider):
    """pynetdicom's DUL reactor, waiting in ``select()`` instead of sleeping."""

    def __init__(self, assoc: Association) -> None:
        self._wake_rx, self._wake_tx = socket.socketpair()
        self._wake_rx.setblocking(False)
        self._wake_tx.setblocking(False)
        super().__init__(assoc)
        self.to_provider_queue = _WakingQueue(self.wake)

    # pynetdicom sets ``_kill_thread`` from other threads to stop the loop
    @property
    def _kill_thread(self) -> bool:
        return bool(self.__dict__.get("_kill_flag", False))

    @_kill_thread.setter
    def _kill_thread(self, value: bool) -> None:
        self.__dict__["_kill_flag"] = value
        if value:
            self.wake()

    def wake(self) -> None:
        """Make the reactor loop run now (callable from any thread)."""
        if threading.get_ident() == self.ident:  # the loop itself: it is not waiting
            return
        try:
            self._wake_tx.send(b"\0")
        except OSError:  # buffer full (a wake-up is pending anyway) or closed
            pass

    def _wait(self) -> None:
        """Block until data arrives, a wake-up, or :data:`IDLE_WAIT_S` passes."""
        readable: list[Any] = [self._wake_rx]
        raw = self.socket.socket if self.socket is not None else None
        if raw is not None and raw.fileno() >= 0:
            readable.append(raw)
        # TLS: records already decrypted into the SSL buffer do not make the
        # raw socket readable; waiting would stall the association until the
        # idle timeout (pynetdicom's AssociationSocket.ready checks the same)
        pending = isinstance(raw, ssl.SSLSocket) and raw.fileno() >= 0 and raw.pending() > 0
        try:
            select.select(readable, [], [], 0 if pending else IDLE_WAIT_S)
        except (OSError, ValueError):  # socket closed under us: the loop notices
            pass
        try:
            while self._wake_rx.recv(4096):
                pass
        except OSError:  # drained (BlockingIOError) or closed
            pass

    def run_reactor(self) -> None:
        try:
            self._reactor_loop()
        finally:
            self._wake_rx.close()
            self._wake_tx.close()
            wake = getattr(self.assoc, "wake", None)
            if wake is not None:  # the association checks dul.is_alive()
                wake()

    def _reactor_loop(self) -> None:
        """``DULServiceProvider.run_reactor`` of pynetdicom 3.0, waits replaced."""
        self._idle_timer.start()
        sock = cast(AssociationSocket, self.socket)
        idle = False
        while True:
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()
                idle = True
            if idle:
                self._wait()
            if self._kill_thread:
                break
            if self.artim_timer.expired:
                self.event_queue.put("Evt18")
            try:
                if self._process_recv_primitive():
                    pass
                elif self._is_transport_event():
                    self._idle_timer.restart()
            except Exception:  # as pynetdicom: abort on any error in the reactor
                log.exception("dul_reactor_failed")
                abort_pdu = A_ABORT_RQ()
                abort_pdu.source = 0x02
                abort_pdu.reason_diagnostic = 0x00
                sock.send(abort_pdu.encode())
                self.assoc.is_aborted = True
                self.assoc.is_established = False
                self.assoc._kill = True
                self._kill_thread = True
                return
            try:
                event = self.event_queue.get(block=False)
            except queue.Empty:
                idle = True
                continue
            try:
                self.state_machine.do_action(event)
            except Exception:  # pynetdicom lets this kill the thread silently (audit D7)
                log.exception("dul_action_failed")
                abort_from_dul(self.assoc)
                return
            idle = False


class EventAssociation(Association):
    """An acceptor :class:`Association` whose reactor waits on an event."""

    def __init__(self, ae: Any, mode: str) -> None:
        self._work = threading.Event()
        super().__init__(ae, mode)
        self.dul = EventDUL(self)
        self.dul.to_user_queue = _WakingQueue(self.wake)
        self.dimse.msg_queue = _InlineRequests(self)
        self._pynetdicom_send_msg = self.dimse.send_msg
        self.dimse.send_msg = self._send_msg  # type: ignore[method-assign]
        # timeouts are pushed into the DUL's timers: apply them to the new one
        self.acse_timeout = self.acse_timeout
        self.network_timeout = self.network_timeout

    def wake(self) -> None:
        """Make the reactor loop run now (callable from any thread)."""
        self._work.set()

    def _send_msg(self, primitive: Any, context_id: int) -> None:
        """``DIMSEServiceProvider.send_msg``, C-STORE responses encoded directly.

        Any other message, or a response with an Offending Element, goes
        through pynetdicom's encoder.
        """
        fast = (isinstance(primitive, C_STORE) and primitive.MessageIDBeingRespondedTo is not None
                and primitive.Status is not None and primitive.OffendingElement is None
                and primitive.AffectedSOPClassUID and primitive.AffectedSOPInstanceUID)
        if not fast:
            self._pynetdicom_send_msg(primitive, context_id)
            return
        command = encode_store_rsp(
            int(primitive.MessageIDBeingRespondedTo), str(primitive.AffectedSOPClassUID),
            str(primitive.AffectedSOPInstanceUID), int(primitive.Status),
            primitive.ErrorComment or None)
        peer_max = self.dimse.maximum_pdu_size
        if peer_max and len(command) + 12 > peer_max:  # would need fragments: pynetdicom
            self._pynetdicom_send_msg(primitive, context_id)
            return
        pdata = P_DATA()
        pdata.presentation_data_value_list.append((context_id, LAST_COMMAND_FRAGMENT + command))
        self.dul.send_pdu(pdata)

    def kill(self) -> None:
        self.wake()
        if threading.get_ident() == self.dul.ident:
            # called from the DUL thread (an abort inside a served request):
            # pynetdicom's kill would wait for this very thread to end
            self._reactor_checkpoint.set()
            self._kill = True
            self.is_established = False
            self.dul._kill_thread = True
            return
        super().kill()

    def _run_reactor(self) -> None:
        """``Association._run_reactor`` of pynetdicom 3.0, its sleep replaced."""
        self._is_paused = False
        idle = False
        while not self._kill:
            if idle:
                self._work.wait(IDLE_WAIT_S)
            self._work.clear()
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False
            context_id, msg = self.dimse.get_msg(block=False)
            idle = msg is None
            if msg:
                self._serve_request(msg, cast(int, context_id))
            if self._finished():
                return

    def _finished(self) -> bool:
        """Release, abort, DUL gone or network timeout: the tail of pynetdicom's loop."""
        if self.is_established and self.acse.is_release_requested():
            self.acse.send_release(is_response=True)
            self.is_released = True
            self.is_established = False
            evt.trigger(self, evt.EVT_RELEASED, {})
            self.kill()
            return True
        if self.acse.is_aborted():
            self.dul.receive_pdu(wait=False)
            self.is_aborted = True
            self.is_established = False
            evt.trigger(self, evt.EVT_ABORTED, {})
            self.kill()
            return True
        if not self.dul.is_alive():
            self.kill()
            return True
        if self.dul.idle_timer_expired():
            log.warning("association_network_timeout")
            if self.network_timeout_response == "A-RELEASE":
                self._is_paused = True
                self._reactor_checkpoint.wait()
                self.release()
                self._is_paused = False
            else:
                self.abort()
            self.kill()
            return True
        return False


class EventRequestHandler(RequestHandler):
    """pynetdicom's request handler, building an :class:`EventAssociation`."""

    def _create_association(self) -> Association:
        server = cast(ThreadedAssociationServer, self.server)
        assoc = EventAssociation(self.ae, _globals.MODE_ACCEPTOR)
        assoc._server = server
        stamp = datetime.strftime(datetime.now(), "%Y%m%d%H%M%S")
        assoc.name = f"AcceptorThread@{stamp}"
        assoc.set_socket(FastSocket(assoc, client_socket=cast(socket.socket, self.request)))
        assoc.acceptor.maximum_length = self.ae.maximum_pdu_size
        assoc.acceptor.ae_title = server.ae_title
        assoc.acceptor.address_info = self.local
        assoc.acceptor.implementation_class_uid = self.ae.implementation_class_uid
        assoc.acceptor.implementation_version_name = self.ae.implementation_version_name
        assoc.acceptor.supported_contexts = deepcopy(server.contexts)
        assoc.requestor.address_info = self.remote
        for event in server._handlers:
            if event.is_intervention and server._handlers[event]:
                assoc.bind(event, *server._handlers[event])
            elif isinstance(event, evt.NotificationEvent):
                for handler in cast(list[Any], server._handlers[event]):
                    assoc.bind(event, handler[0], handler[1])
        return assoc


def make_server(ae: pynetdicom.AE, address: tuple[str, int], handlers: list[Any],
                server_class: type[ThreadedAssociationServer] = ThreadedAssociationServer
                ) -> ThreadedAssociationServer:
    """Start a non-blocking server like ``ae.start_server(block=False)``, event-driven.

    Raises
    ------
    UnsupportedPynetdicom
        For another pynetdicom minor version, or when a name of
        :data:`PRIVATE_NAMES` is missing (the message lists them); nothing
        is left listening.
    OSError
        When the address cannot be bound.
    """
    found = ".".join(pynetdicom.__version__.split(".")[:2])
    if found != SUPPORTED_PYNETDICOM:
        raise UnsupportedPynetdicom(
            f"the event acceptor is written for pynetdicom {SUPPORTED_PYNETDICOM}.x, found"
            f" {pynetdicom.__version__}; install pynetdicom>={SUPPORTED_PYNETDICOM}.4,"
            f"<3.1 or set node.acceptor = \"pynetdicom\"")
    server = ae.make_server(address, evt_handlers=handlers,
                            server_class=server_class, request_handler=EventRequestHandler)
    missing = missing_private_names(ae, server)
    if missing:
        server.server_close()
        raise UnsupportedPynetdicom(
            f"the event acceptor needs pynetdicom names that pynetdicom"
            f" {pynetdicom.__version__} lacks: {', '.join(missing)};"
            f" set node.acceptor = \"pynetdicom\"")
    thread = threading.Thread(target=server.serve_forever, name="AcceptorServer", daemon=True)
    thread.start()
    ae._servers.append(server)  # as start_server does: ae.shutdown() stops it
    return server


__all__ = ["PRIVATE_NAMES", "EventAssociation", "EventDUL", "FastSocket",
           "UnsupportedPynetdicom", "make_server", "missing_private_names"]
