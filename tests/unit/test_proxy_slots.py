"""Behind a balancer the per-host slots count the client the PROXY header names.

In-process SCP (both acceptors), one slot per host, ``proxy_protocol_from``
= 127.0.0.1 (the "balancer"); raw connections send PROXY v1 headers. The
balancer's own address is never counted, a second connection of one client
is refused with the A-ASSOCIATE-RJ of the slot limit, another client gets its
own slot, and a peer that is not a listed balancer cannot claim an address.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import cast

import pytest
from test_acceptor import wait_for_no_acceptor_threads
from test_scp_edge import start_scp

from service.net.bounded_server import REJECT_LOCAL_LIMIT, BoundedServer
from service.testing.polling import wait_until


def _header(client: str, port: int) -> bytes:
    return f"PROXY TCP4 {client} 127.0.0.1 {40000 + port} {port}\r\n".encode("ascii")


@pytest.mark.parametrize("acceptor_kind", ["event", "pynetdicom"])
def test_slots_follow_the_proxy_header(tmp_path: Path, acceptor_kind: str) -> None:
    scp = start_scp(tmp_path, acceptor_kind, max_associations_per_host=1,
                    proxy_protocol_from=("127.0.0.1",))
    server = cast(BoundedServer, scp._server)
    peers: list[socket.socket] = []

    def connect(header: bytes, source: str = "127.0.0.1") -> socket.socket:
        peer = socket.create_connection(("127.0.0.1", scp.port), timeout=10,
                                        source_address=(source, 0))
        peer.sendall(header)
        peers.append(peer)
        return peer

    try:
        connect(_header("10.9.9.9", 1))
        wait_until(lambda: server._connections_from("10.9.9.9") == 1, 5.0, "the first slot")
        refused = connect(_header("10.9.9.9", 2))
        assert refused.recv(64) == REJECT_LOCAL_LIMIT  # same client: over its one slot
        connect(_header("10.9.9.8", 3))  # another client behind the same balancer
        wait_until(lambda: server._connections_from("10.9.9.8") == 1, 5.0, "its own slot")
        connect(_header("10.9.9.7", 4), source="127.0.0.2")  # not a balancer: no header read
        wait_until(lambda: server._connections_from("127.0.0.2") == 1, 5.0, "a direct peer")
        assert server._connections_from("10.9.9.7") == 0
        assert server._connections_from("127.0.0.1") == 0  # the balancer is never counted
        assert server._connections_from("10.9.9.9") == 1
    finally:
        for peer in peers:
            peer.close()
        scp.stop()
        wait_for_no_acceptor_threads(15.0)
