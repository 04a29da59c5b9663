"""Per-host association slots come back when a raw connection closes (fuzz finding).

Real sockets on loopback against an in-process SCP (both acceptors) with two
slots per host and the shipped 10 s ARTIM time: a peer that connects and
closes after sending nothing, garbage, half an A-ASSOCIATE-RQ, an A-ABORT or
an A-RELEASE-RQ used to hold its slot until ARTIM ran out (9.8 s measured for
every case), locking its host out. Now the slot is free within a fraction of
a second and the same host's next association is accepted. A connection that
stays open silently keeps its slot until ARTIM / the receive timeout (the
bound from audit D5, tested in test_scp_edge.py). The TLS port: a failed handshake
frees its slot at once (it never had an association), a TLS session that closes
before its A-ASSOCIATE-RQ too.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
from test_acceptor import wait_for_no_acceptor_threads
from test_scp_edge import open_assoc, start_scp

from service.testing.polling import wait_until

#: What each raw peer sends before it closes.
PATTERNS = {
    "nothing": b"",
    "garbage": bytes(range(7, 113)),
    "half_a_request": b"\x01\x00" + (200).to_bytes(4, "big") + b"\x00\x01",
    "a_abort": bytes((7, 0, 0, 0, 0, 4, 0, 0, 0, 0)),
    "a_release_rq": bytes((5, 0, 0, 0, 0, 4, 0, 0, 0, 0)),
    "random": os.urandom(64),
}
#: Longest a slot may stay taken after its connection closed, s (ARTIM is 10 s).
FREED_WITHIN_S = 2.0


@pytest.mark.parametrize("acceptor_kind", ["event", "pynetdicom"])
def test_slots_are_free_as_soon_as_raw_connections_close(tmp_path: Path,
                                                         acceptor_kind: str) -> None:
    scp = start_scp(tmp_path, acceptor_kind, max_associations_per_host=2,
                    artim_timeout_s=10.0, receive_timeout_s=30.0)
    server = scp._server
    try:
        for name, data in PATTERNS.items():
            peers = [socket.create_connection(("127.0.0.1", scp.port), timeout=5)
                     for _ in range(2)]
            for peer in peers:
                if data:
                    peer.sendall(data)
            time.sleep(0.2)  # the node has accepted them and read what they sent
            for peer in peers:
                peer.close()
            closed_at = time.monotonic()
            wait_until(lambda: server._connections_from("127.0.0.1") == 0, FREED_WITHIN_S,
                       f"slots free after '{name}'", 0.005)
            held_s = time.monotonic() - closed_at
            assert held_s < FREED_WITHIN_S, (name, held_s)
            assoc = open_assoc(scp)  # the same host gets in at once
            assert assoc.is_established, name
            assert assoc.send_c_echo().Status == 0x0000
            assoc.release()
        wait_for_no_acceptor_threads(5.0)
    finally:
        scp.stop()


@pytest.mark.parametrize("acceptor_kind", ["event", "pynetdicom"])
def test_tls_port_slots_are_free_as_soon_as_connections_close(
        tmp_path: Path, acceptor_kind: str) -> None:
    """The TLS port's paths: a failed handshake (plain bytes, EOF) and a TLS session
    that closes before or after sending garbage."""
    import ssl

    from service.config import TlsSettings
    from service.testing import certs
    from service.testing.ports import free_port

    ca = certs.make_ca(tmp_path / "pki", "ca")
    pair = certs.make_leaf(tmp_path / "pki", ca, "node", "CN=localhost")
    scp = start_scp(tmp_path, acceptor_kind, max_associations_per_host=2, artim_timeout_s=10.0,
                    tls=TlsSettings(port=free_port(), cert_file=pair.cert, key_file=pair.key))
    server = scp._tls_server
    client = ssl.create_default_context(cafile=str(ca.cert))
    client.check_hostname = False

    def plain(data: bytes) -> socket.socket:
        peer = socket.create_connection(("127.0.0.1", scp.tls_port), timeout=5)
        if data:
            peer.sendall(data)
        return peer

    def over_tls(data: bytes) -> socket.socket:
        peer = client.wrap_socket(socket.create_connection(("127.0.0.1", scp.tls_port),
                                                           timeout=5))
        if data:
            peer.sendall(data)
        return peer

    cases = {"tcp_only": lambda: plain(b""), "plain_bytes": lambda: plain(PATTERNS["garbage"]),
             "tls_nothing": lambda: over_tls(b""),
             "tls_garbage": lambda: over_tls(PATTERNS["garbage"]),
             "tls_half_request": lambda: over_tls(PATTERNS["half_a_request"])}
    try:
        for name, open_peer in cases.items():
            peers = [open_peer() for _ in range(2)]
            time.sleep(0.2)
            for peer in peers:
                peer.close()
            wait_until(lambda: server._connections_from("127.0.0.1") == 0, FREED_WITHIN_S,
                       f"TLS slots free after '{name}'", 0.005)
    finally:
        scp.stop()
