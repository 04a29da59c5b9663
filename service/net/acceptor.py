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

* :class:`~service.net.event_dul.EventDUL` waits in ``select()`` on the association's socket and a
  wake-up socket pair instead of sleeping: it runs as soon as the peer sends
  data or the local user queues a primitive (a C-STORE response);
* :class:`EventAssociation` waits on a :class:`threading.Event` set when a
  complete DIMSE message (or an A-RELEASE / A-ABORT) is queued for it;
* :class:`~service.net.event_dul.FastSocket` reads each PDU with ``recv_into`` into one buffer;
* C-STORE responses are encoded with ``struct`` (:mod:`service.net.store_rsp`)
  instead of two pydicom encodings of a Dataset;
* a complete C-STORE or C-ECHO request is served at once in the DUL thread
  (:class:`_InlineRequests`) instead of being handed to the association
  thread and its response handed back: no thread wake-ups per instance,
  which on a busy machine cost a scheduler time slice each. The DUL reads
  nothing while the handler runs, as before: the SCU waits for the response.

Both loops still wake every :data:`~service.net.event_dul.IDLE_WAIT_S` to
check pynetdicom's timers (ARTIM, network idle), so nothing busy-loops while
idle. The DUL side (reactor, socket reader) is :mod:`service.net.event_dul`;
this module has the association side and the server.

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
import socket
import threading
from copy import deepcopy
from datetime import datetime
from typing import Any, cast

import pynetdicom
from pynetdicom import _globals, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from service.net.event_dul import IDLE_WAIT_S, EventDUL, FastSocket, WakingQueue
from service.net.pynetdicom_private import (
    PRIVATE_NAMES,
    SUPPORTED_PYNETDICOM,
    UnsupportedPynetdicom,
    missing_private_names,
)
from service.net.store_rsp import LAST_COMMAND_FRAGMENT, encode_store_rsp

log = logging.getLogger(__name__)


class _InlineRequests(queue.Queue):
    """DIMSE's message queue: C-STORE and C-ECHO requests are served on put.

    ``DIMSEServiceProvider.receive_primitive`` puts each complete request
    here from the DUL thread; serving it right there runs the handler and
    queues the response for the same thread, which sends it when the state
    machine action returns. Anything else (other services, unknown contexts,
    requests during release) goes to the association thread as usual, so no
    abort is ever started from inside the DUL thread. So does a request that
    arrives before the association thread has marked the association
    established (it sends the A-ASSOCIATE-AC, runs the EVT_ACCEPTED handlers,
    then sets ``is_established``): pynetdicom's service classes answer nothing
    on an association not established, and the SCU would wait for a response
    until its own timeout. The association thread serves it once its loop runs.
    """

    def __init__(self, assoc: EventAssociation) -> None:
        super().__init__()
        self._assoc = assoc

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        context_id, primitive = item
        assoc = self._assoc
        if (isinstance(primitive, C_STORE | C_ECHO) and primitive.is_valid_request
                and assoc.is_established and context_id in assoc._accepted_cx
                and not assoc._sent_release):
            # the association thread may check the network idle timer while
            # the handler runs here: count our handler time as activity
            assoc.dul._idle_timer.restart()
            assoc._serve_request(primitive, context_id)
            assoc.dul._idle_timer.restart()
            return
        super().put(item, block, timeout)
        assoc.wake()



class EventAssociation(Association):
    """An acceptor :class:`Association` whose reactor waits on an event."""

    def __init__(self, ae: Any, mode: str) -> None:
        self._work = threading.Event()
        super().__init__(ae, mode)
        self.dul = EventDUL(self)
        self.dul.to_user_queue = WakingQueue(self.wake)
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


__all__ = ["PRIVATE_NAMES", "EventAssociation", "UnsupportedPynetdicom", "make_server",
           "missing_private_names"]
