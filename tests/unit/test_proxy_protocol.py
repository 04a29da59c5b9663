"""The PROXY protocol reader: v1 and v2 headers, exactly their bytes, refusals."""

from __future__ import annotations

import ipaddress
import socket
import struct

import pytest

from service.config import NodeSettings
from service.net.proxy_protocol import (
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderError,
    is_trusted,
    parse_v1,
    parse_v2,
    read_header,
)

PDU_START = b"\x01\x00\x00\x00\x00\xcd"  # an A-ASSOCIATE-RQ begins right after the header


def v2(command: int, family: int, body: bytes) -> bytes:
    """A v2 header as HAProxy writes it (spec section 2.2)."""
    return V2_SIGNATURE + bytes((0x20 | command, family)) + struct.pack("!H", len(body)) + body


def v2_inet(src: str, sport: int, tlv: bytes = b"") -> bytes:
    ip = ipaddress.ip_address(src)
    dst = ipaddress.ip_address("127.0.0.1" if ip.version == 4 else "::1")
    family = 0x11 if ip.version == 4 else 0x21
    return v2(0x1, family, ip.packed + dst.packed + struct.pack("!HH", sport, 11112) + tlv)


def test_v1_tcp4_tcp6_and_unknown() -> None:
    line = b"PROXY TCP4 10.1.2.3 10.0.0.1 40000 11112\r\n"
    assert parse_v1(line) == ProxyHeader(("10.1.2.3", 40000), len(line))
    line6 = b"PROXY TCP6 2001:db8::0001 2001:db8::2 1 11112\r\n"
    assert parse_v1(line6).source == ("2001:db8::1", 1)
    assert parse_v1(b"PROXY UNKNOWN\r\n") == ProxyHeader(None, 15)


@pytest.mark.parametrize("line", [
    b"PROXY TCP4 10.1.2.3 10.0.0.1 40000\r\n",  # a field short
    b"PROXY TCP4 10.1.2.3 10.0.0.1 40000 11112\n",  # no CR
    b"PROXY TCP4 not-an-ip 10.0.0.1 40000 11112\r\n",
    b"PROXY TCP4 10.1.2.3 10.0.0.1 70000 11112\r\n",  # port out of range
    b"PROXY TCP6 10.1.2.3 10.0.0.1 1 2\r\n",  # family mismatch
    b"PROXY UDP4 10.1.2.3 10.0.0.1 1 2\r\n",
    b"PROXY TCP4 10.1.2.3 10.0.0.1 1 " + b"2" * 80 + b"\r\n",  # over 107 bytes
])
def test_v1_malformed_is_refused(line: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        parse_v1(line)


def test_v2_inet_inet6_local_and_tlvs() -> None:
    header = v2_inet("192.0.2.7", 51000, tlv=b"\x04\x00\x01\x00")  # a NOOP TLV is skipped
    assert parse_v2(header) == ProxyHeader(("192.0.2.7", 51000), len(header))
    assert parse_v2(v2_inet("2001:db8::7", 2)).source == ("2001:db8::7", 2)
    assert parse_v2(v2(0x0, 0x00, b"")).source is None  # LOCAL: a balancer health check
    assert parse_v2(v2(0x1, 0x31, bytes(216))).source is None  # AF_UNIX: keep the peer


@pytest.mark.parametrize("header", [
    V2_SIGNATURE[:-1] + b"X" + b"\x21\x11\x00\x0c" + bytes(12),  # bad signature
    V2_SIGNATURE + b"\x11\x11\x00\x0c" + bytes(12),  # version 1 in a v2 header
    V2_SIGNATURE + b"\x2f\x11\x00\x0c" + bytes(12),  # unknown command
    V2_SIGNATURE + b"\x21\x11\x00\x04" + bytes(4),  # inet block too short
    V2_SIGNATURE + b"\x21\x11\x10\x00" + bytes(4096),  # over the node's bound
])
def test_v2_malformed_is_refused(header: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        parse_v2(header)


@pytest.mark.parametrize("header", [
    b"PROXY TCP4 10.9.8.7 10.0.0.1 1234 11112\r\n", v2_inet("10.9.8.7", 1234)])
def test_read_header_takes_exactly_the_header(header: bytes) -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(header + PDU_START)
        ours.settimeout(7.0)
        assert read_header(ours, timeout_s=5.0).source == ("10.9.8.7", 1234)
        assert ours.gettimeout() == 7.0  # restored
        assert ours.recv(64) == PDU_START  # the PDU is left for pynetdicom


def test_read_header_refuses_dicom_first_closed_and_silent_peers() -> None:
    for data, close in ((PDU_START + bytes(20), False), (b"PROXY TCP4 1.2", True), (b"", False)):
        ours, theirs = socket.socketpair()
        with ours, theirs:
            theirs.sendall(data)
            if close:
                theirs.shutdown(socket.SHUT_WR)
            with pytest.raises(ProxyHeaderError):
                read_header(ours, timeout_s=0.2)


def test_trusted_balancers_and_setting() -> None:
    assert is_trusted("10.0.3.4", ("10.0.0.0/16",))
    assert not is_trusted("10.1.3.4", ("10.0.0.0/16", "127.0.0.1"))
    assert not is_trusted("not-an-ip", ("0.0.0.0/0",))
    assert NodeSettings(proxy_protocol_from=("127.0.0.1", "fd00::/8")).proxy_protocol_from == (
        "127.0.0.1", "fd00::/8")
    with pytest.raises(ValueError, match="IP addresses or networks"):
        NodeSettings(proxy_protocol_from=("balancer.local",))
