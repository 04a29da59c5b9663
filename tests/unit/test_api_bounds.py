"""The API cannot starve the process of file descriptors (reliability audit D6).

A real uvicorn server on a free loopback port: connections over
``api.max_connections`` are closed at once, connections that never finish
their request headers are closed after ``api.header_timeout_s``, a complete
request is still answered, and every descriptor comes back. The node raises
its soft descriptor limit to the hard one at start-up.
"""

from __future__ import annotations

import os
import resource
import socket
import time
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from service.api.server import ApiServer
from service.app import raise_open_files_limit


def poll(predicate: Callable[[], Any], timeout_s: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.01)  # polling interval with a deadline
    return value


def closed_by_server(peer: socket.socket) -> bool:
    try:
        return peer.recv(4096) == b""
    except ConnectionResetError:
        return True


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_idle_and_half_sent_connections_are_bounded_and_closed() -> None:
    app = FastAPI()

    @app.get("/ping")
    def ping() -> dict[str, str]:
        return {"ok": "yes"}

    server = ApiServer(app, "127.0.0.1", 0, max_connections=8, header_timeout_s=0.5)
    server.start()
    try:
        fds = open_fds()
        peers = []
        for _ in range(40):
            peer = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            peer.sendall(b"GET /ping HT")  # half a request line, then nothing
            peers.append(peer)
        connections = server._server.server_state.connections
        poll(lambda: len(connections) <= 8)
        assert len(connections) <= 8  # the cap holds while they are open
        for peer in peers:  # over the cap at once, the rest after the header deadline
            assert closed_by_server(peer)
            peer.close()
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as client:
            client.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := client.recv(4096):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200") and b'"ok":"yes"' in answer
        poll(lambda: open_fds() <= fds and not connections)
    finally:
        server.stop()


def test_open_files_soft_limit_raised_to_hard() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lower = min(256, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lower, hard))
    try:
        got = raise_open_files_limit()
        now = resource.getrlimit(resource.RLIMIT_NOFILE)
        assert got == now and now[1] == hard
        assert now[0] == hard or hard == resource.RLIM_INFINITY and now[0] > lower
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
