"""The event acceptor's wait sees TLS records already decrypted into the SSL buffer."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from service.net import event_dul, tls
from service.testing import certs

pytestmark = pytest.mark.no_storage  # never opens the node's rows: not rerun on PostgreSQL


@pytest.fixture(scope="module")
def server_pair(tmp_path_factory: pytest.TempPathFactory) -> certs.Pair:
    root = tmp_path_factory.mktemp("pki")
    return certs.make_leaf(root, certs.make_ca(root, "ca"), "server", "CN=node")


def tls_pair(pair: certs.Pair) -> tuple[ssl.SSLSocket, ssl.SSLSocket]:
    a, b = socket.socketpair()
    server_ctx = tls.server_context(pair.cert, pair.key, None, False)
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname, client_ctx.verify_mode = False, ssl.CERT_NONE
    result: dict[str, ssl.SSLSocket] = {}
    thread = threading.Thread(target=lambda: result.update(
        server=server_ctx.wrap_socket(a, server_side=True)))
    thread.start()
    client = client_ctx.wrap_socket(b)
    thread.join(10)
    return result["server"], client


def test_wait_returns_at_once_when_the_ssl_buffer_holds_data(server_pair, monkeypatch):
    monkeypatch.setattr(event_dul, "IDLE_WAIT_S", 5.0)
    server, client = tls_pair(server_pair)
    wake_rx, wake_tx = socket.socketpair()
    wake_rx.setblocking(False)
    try:
        client.sendall(b"two PDUs in one TLS record")  # one record
        assert server.recv(3) == b"two"  # the rest is decrypted, in the SSL buffer
        assert server.pending() > 0
        dul = SimpleNamespace(_wake_rx=wake_rx, socket=SimpleNamespace(socket=server))
        started = time.monotonic()
        event_dul.EventDUL._wait(dul)  # type: ignore[arg-type]
        assert time.monotonic() - started < 1.0  # not the 5 s idle wait
    finally:
        for s in (server, client, wake_rx, wake_tx):
            s.close()


def test_certs_module_writes_pem(server_pair):
    assert Path(server_pair.cert).read_text().startswith("-----BEGIN CERTIFICATE-----")
