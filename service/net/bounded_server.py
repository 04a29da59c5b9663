"""The association server's bounds at TCP accept, the same for both acceptors.

pynetdicom's server lets a peer hold threads and sockets that the node cannot
take back (reliability audit, :mod:`service.net.guard`):

* :func:`bounded_server_class` makes the association server answer a
  connection at TCP accept with an A-ASSOCIATE-RJ (transient, local limit
  exceeded) and close it, before a byte is read, when its IP address
  already holds ``max_per_host`` connections, and gives every accepted
  socket a receive timeout (a half-sent PDU no longer blocks a thread);
  behind a TCP balancer of ``node.proxy_from`` the address is the client's,
  read from the balancer's PROXY header (:mod:`service.net.proxy_protocol`)
  in the connection's thread before the association starts;
  :func:`end_waiting_acceptor` hands a slot back as soon as a connection
  closes before its A-ASSOCIATE-RQ (not after the ARTIM time).

The bounds of one association once it runs (sizes, free space, unknown SOP
classes, undecodable commands) are :mod:`service.net.guard`.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import socket
import threading
from collections import Counter
from collections.abc import Callable, Collection
from typing import Any

from pynetdicom.transport import ThreadedAssociationServer

from service.net.proxy_protocol import ProxyHeaderError, is_trusted, read_header

log = logging.getLogger(__name__)

#: Accept-loop rounds (a connection, or 0.5 s idle) between young garbage collections.
GC_EVERY_ROUNDS = 60
#: A-ASSOCIATE-RJ PDU: rejected-transient, service-provider (presentation), local
#: limit exceeded (PS3.8 9.3.4), sent unasked to a connection over its host's slots.
REJECT_LOCAL_LIMIT = bytes((0x03, 0, 0, 0, 0, 4, 0, 0x02, 0x03, 0x02))


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


__all__ = ["REJECT_LOCAL_LIMIT", "BoundedServer", "bounded_server_class", "end_waiting_acceptor"]
