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
from service.store.rows import open_rows
from service.testing.storage import storage_settings


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


def test_malformed_chunked_body_is_one_warning_line_without_a_traceback(
        tmp_path: Any, caplog: Any) -> None:
    """A bad chunk size, sent with the headers or after the response, through the real API.

    Before: an h11 LocalProtocolError traceback (the route's late answer after
    uvicorn's 400, through AccessAudit and the problem handler, logged twice)
    or an asyncio "data_received() call failed" traceback (a 400 after a
    response). Now: uvicorn's one warning line per request, nothing else.
    """
    import logging

    from service.api.app import create_app
    from service.api.readiness import Probes
    from service.config import ApiSettings, Settings

    token = "t" * 40
    settings = Settings().model_copy(update={
        "storage": storage_settings(spool_dir=tmp_path / "spool", db_path=tmp_path / "n.sqlite3"),
        "api": ApiSettings(token=token)})
    database = open_rows(settings.storage)
    database.migrate()
    server = ApiServer(create_app(settings, database, Probes(scp_listening=lambda: True)),
                       "127.0.0.1", 0)
    auth = f"Authorization: Bearer {token}\r\n".encode()
    head = b"Host: x\r\n" + auth + b"Transfer-Encoding: chunked\r\n\r\n"
    cases = {  # name: the parts, sent 50 ms apart
        "with_headers_off_api": [b"POST /jobs/1/retry HTTP/1.1\r\n" + head + b"ZZ\r\n"],
        "with_headers_api": [b"POST /api/jobs/1/retry HTTP/1.1\r\n" + head + b"ZZ\r\n"],
        "after_the_response": [b"POST /api/jobs/1/retry HTTP/1.1\r\n" + head, b"ZZ\r\n"],
    }
    server.start()
    try:
        with caplog.at_level(logging.INFO):
            for name, parts in cases.items():
                for _ in range(3):
                    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as peer:
                        for part in parts:
                            peer.sendall(part)
                            time.sleep(0.05)  # the server reads each part on its own
                        answer = peer.recv(4096)
                        assert answer.startswith(b"HTTP/1.1 4"), (name, answer[:40])
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as peer:
                peer.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                assert peer.recv(4096).startswith(b"HTTP/1.1 200")  # still serving
            time.sleep(0.3)  # the app tasks of the bad requests have ended
    finally:
        server.stop()
    noisy = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert noisy == [], [f"{r.name} {r.getMessage()}" for r in noisy]
    warnings = [r for r in caplog.records if r.getMessage() == "Invalid HTTP request received."]
    assert len(warnings) == 9
