"""Run the API with uvicorn in a background thread of the node's process.

The node (``service.app.Node``) creates an :class:`ApiServer`, calls
:meth:`ApiServer.start` (returns once the socket listens) and
:meth:`ApiServer.stop` on shutdown. uvicorn's own signal handlers are not
installed: SIGTERM belongs to the node.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import h11
import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)

#: Longest request line plus headers h11 buffers, bytes (its default is 16 KiB too).
MAX_HEADER_BYTES = 16 * 1024
#: Seconds an idle keep-alive connection stays open between requests.
KEEP_ALIVE_S = 5


def bounded_protocol(max_connections: int, header_timeout_s: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a connection cap, a request-header deadline and
    a quiet answer to malformed requests.

    uvicorn's keep-alive timer runs only between requests, and its
    ``limit_concurrency`` answers 503 only once a request has arrived: a
    connection that sends half a request line stays open for ever and holds
    a file descriptor the SCP needs (audit D6). Here a connection over
    ``max_connections`` is closed as soon as it is made, and one whose
    request line and headers are not complete ``header_timeout_s`` after it
    opened (or after its previous response) is closed.
    """

    class BoundedH11Protocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                log.warning("api_connection_refused", extra={"fields": {
                    "reason": "connection_limit"}})
                transport.close()
                return
            self._arm_header_timer()

        def _arm_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            self._header_timer = self.loop.call_later(header_timeout_s, self._header_deadline)

        def _header_deadline(self) -> None:
            self._header_timer = None
            # IDLE: h11 has not seen a whole request line and headers yet
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm_header_timer()

        def send_400_response(self, msg: str) -> None:
            """The client broke HTTP (e.g. a malformed chunked body): its problem, not ours.

            uvicorn logs one warning line; then it would answer 400 even when a
            response is already on its way (h11 refuses: an asyncio traceback),
            and the request's app task, still running, answers into the closed
            cycle (an h11 traceback through every middleware). Here the 400 goes
            out only when no response has started, and the cycle counts as
            disconnected, so the app's late answer is dropped quietly.
            """
            if self.cycle is not None:
                self.cycle.disconnected = True
            if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                super().send_400_response(msg)
            else:
                self.transport.close()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None
            super().connection_lost(exc)

    return BoundedH11Protocol


class _ThreadServer(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # the node owns the signals
        return


class ApiServer:
    """uvicorn serving ``app`` on ``host:port`` in a daemon thread.

    Parameters
    ----------
    app : FastAPI
    host : str
        Bind address (``api.bind``).
    port : int
        TCP port (``api.port``); 0 picks a free one (see :attr:`port` after start).
    max_connections : int
        Open connections at most (``api.max_connections``); more are closed at once.
    header_timeout_s : float
        A request line and headers must arrive within this (``api.header_timeout_s``).
    """

    def __init__(self, app: FastAPI, host: str, port: int, max_connections: int = 64,
                 header_timeout_s: float = 10.0) -> None:
        config = uvicorn.Config(app, host=host, port=port, log_config=None,
                                access_log=False, lifespan="off",
                                http=bounded_protocol(max_connections, header_timeout_s),
                                limit_concurrency=max_connections,
                                timeout_keep_alive=KEEP_ALIVE_S,
                                h11_max_incomplete_event_size=MAX_HEADER_BYTES)
        self._server = _ThreadServer(config)
        self._thread: threading.Thread | None = None
        self.host = host
        self.port = port

    def start(self, timeout_s: float = 10.0) -> None:
        """Start serving; returns when the socket listens.

        Raises
        ------
        RuntimeError
            When uvicorn has not started within ``timeout_s`` (e.g. port in use).
        """
        self._thread = threading.Thread(target=self._server.run, name="api", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"API did not start on {self.host}:{self.port}")
            time.sleep(0.02)  # poll for uvicorn's started flag (no event is exposed)
        servers = getattr(self._server, "servers", [])
        if servers and servers[0].sockets:
            self.port = int(servers[0].sockets[0].getsockname()[1])
        log.info("api_started", extra={"fields": {"host": self.host, "port": self.port}})

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop accepting, finish open requests, join the thread."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout_s)
        log.info("api_stopped", extra={"fields": {"port": self.port}})
