"""The DUL side of the event acceptor: a reactor that waits in ``select()``, a PDU reader.

:class:`EventDUL` is pynetdicom 3.0's DUL reactor loop with its sleeps
replaced by a wait on the association's socket and a wake-up socket pair;
:class:`FastSocket` reads each PDU with ``recv_into`` into one growing buffer;
:class:`WakingQueue` wakes a waiting loop on every put. The association side
and the server are :mod:`service.net.acceptor` (its docstring has the why).
"""

from __future__ import annotations

import logging
import queue
import select
import socket
import ssl
import threading
import time
from typing import Any, cast

from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.transport import AssociationSocket

from service.net.guard import abort_from_dul

log = logging.getLogger(__name__)

#: Longest a waiting loop sleeps before it re-checks pynetdicom's timers, s.
IDLE_WAIT_S = 0.02
#: First allocation of a PDU read, bytes (the node's own maximum P-DATA is 1 MiB).
RECV_START_BYTES = 64 * 1024


class WakingQueue(queue.Queue):
    """A queue that calls ``wake`` after every put (wakes the waiting loop)."""

    def __init__(self, wake: Any) -> None:
        super().__init__()
        self._wake = wake

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._wake()


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
        self.to_provider_queue = WakingQueue(self.wake)

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


__all__ = ["IDLE_WAIT_S", "RECV_START_BYTES", "EventDUL", "FastSocket", "WakingQueue"]
