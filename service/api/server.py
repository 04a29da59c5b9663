"""Run the API with uvicorn in a background thread of the node's process.

The node (``service.app.Node``) creates an :class:`ApiServer`, calls
:meth:`ApiServer.start` (returns once the socket listens) and
:meth:`ApiServer.stop` on shutdown. uvicorn's own signal handlers are not
installed: SIGTERM belongs to the node.
"""

from __future__ import annotations

import logging
import threading
import time

import uvicorn
from fastapi import FastAPI

log = logging.getLogger(__name__)


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
    """

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        config = uvicorn.Config(app, host=host, port=port, log_config=None,
                                access_log=False, lifespan="off")
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
