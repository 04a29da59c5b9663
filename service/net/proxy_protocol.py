"""The PROXY protocol (v1 text, v2 binary) a TCP load balancer puts before DICOM.

Behind a TCP balancer (HAProxy ``send-proxy-v2``, AWS NLB, the Kubernetes
ingress controllers) the node's socket peer is the balancer, so the
allow-list's calling-host check and the per-host connection slots would see
the balancer's address for every PACS. The balancer can instead send, before
the first byte of the client's stream, a header naming the client's address
(HAProxy's "The PROXY protocol", versions 1 and 2, haproxy.org/download/2.6/doc/
proxy-protocol.txt). The node reads that header only from the addresses in
``node.proxy_protocol_from`` (a header from anyone else would let any peer
claim any address) and from those it *requires* one; a connection from
elsewhere is served as before, without reading a header.

:func:`parse_v1` and :func:`parse_v2` are pure; :func:`read_header` reads
exactly one header from a socket and not a byte more (the DICOM PDU that
follows stays in the socket for pynetdicom).
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import time
from dataclasses import dataclass

#: The 12-byte signature that starts a version 2 header (section 2.2).
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
#: Longest version 1 line, CRLF included (section 2.1).
V1_MAX_BYTES = 107
#: Longest version 2 address block the node accepts, bytes (TLVs included).
V2_MAX_BODY_BYTES = 1024
_V1_PREFIX = b"PROXY "
_AF_INET, _AF_INET6 = 0x1, 0x2
_STREAM = 0x1


class ProxyHeaderError(ValueError):
    """A missing, malformed or unsupported PROXY header (reason has no address)."""


@dataclass(frozen=True)
class ProxyHeader:
    """What a PROXY header says about the connection.

    Attributes
    ----------
    source : (str, int) or None
        The client's IP address (canonical text) and TCP port; ``None`` for a
        connection the balancer opened itself (v2 ``LOCAL``, a health check,
        or v1 ``UNKNOWN``): the socket's own peer stands.
    length : int
        Bytes the header took on the wire.
    """

    source: tuple[str, int] | None
    length: int


def _address(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ProxyHeaderError("PROXY v1: not an IP address") from None


def _port(text: str) -> int:
    if not text.isdigit() or len(text) > 5 or int(text) > 65535:
        raise ProxyHeaderError("PROXY v1: not a TCP port")
    return int(text)


def parse_v1(line: bytes) -> ProxyHeader:
    """Parse a version 1 line, ``b"PROXY TCP4 src dst sport dport\\r\\n"``.

    Raises
    ------
    ProxyHeaderError
        When ``line`` is not one complete, valid version 1 line.
    """
    if len(line) > V1_MAX_BYTES or not line.startswith(_V1_PREFIX) or not line.endswith(b"\r\n"):
        raise ProxyHeaderError("PROXY v1: not a header line")
    try:
        fields = line[:-2].decode("ascii").split(" ")
    except UnicodeDecodeError:
        raise ProxyHeaderError("PROXY v1: not ASCII") from None
    if fields[1:2] == ["UNKNOWN"]:
        return ProxyHeader(None, len(line))
    if len(fields) != 6 or fields[1] not in ("TCP4", "TCP6"):
        raise ProxyHeaderError("PROXY v1: expected TCP4 or TCP6 and four fields")
    source = _address(fields[2])
    _address(fields[3])
    if (":" in source) != (fields[1] == "TCP6"):
        raise ProxyHeaderError("PROXY v1: address family does not match")
    return ProxyHeader((source, _port(fields[4])), len(line))


def v2_body_length(fixed: bytes) -> int:
    """Length of the address block announced by the first 16 bytes of a v2 header."""
    if len(fixed) != 16 or not fixed.startswith(V2_SIGNATURE):
        raise ProxyHeaderError("PROXY v2: bad signature")
    if fixed[12] >> 4 != 2:
        raise ProxyHeaderError("PROXY v2: unsupported version")
    length = int(struct.unpack("!H", fixed[14:16])[0])
    if length > V2_MAX_BODY_BYTES:
        raise ProxyHeaderError("PROXY v2: address block too long")
    return length


def parse_v2(header: bytes) -> ProxyHeader:
    """Parse a complete version 2 header (16 fixed bytes plus the address block).

    TLVs after the addresses are skipped. Raises :class:`ProxyHeaderError`.
    """
    length = v2_body_length(header[:16])
    if len(header) != 16 + length:
        raise ProxyHeaderError("PROXY v2: length does not match")
    command, family, transport = header[12] & 0x0F, header[13] >> 4, header[13] & 0x0F
    if command == 0x0:  # LOCAL: the balancer's own connection
        return ProxyHeader(None, len(header))
    if command != 0x1:
        raise ProxyHeaderError("PROXY v2: unknown command")
    if transport != _STREAM or family not in (_AF_INET, _AF_INET6):
        return ProxyHeader(None, len(header))  # UNSPEC, UDP, UNIX: keep the socket's peer
    size = 4 if family == _AF_INET else 16
    if length < 2 * size + 4:
        raise ProxyHeaderError("PROXY v2: address block too short")
    body = header[16:]
    source = ipaddress.ip_address(body[:size])
    port = int(struct.unpack("!H", body[2 * size:2 * size + 2])[0])
    return ProxyHeader((str(source), port), len(header))


def _recv_exactly(sock: socket.socket, count: int, deadline: float) -> bytes:
    data = bytearray()
    while len(data) < count:
        remaining_s = deadline - time.monotonic()
        if remaining_s <= 0:
            raise ProxyHeaderError("PROXY header not complete within the receive timeout")
        sock.settimeout(remaining_s)
        try:
            chunk = sock.recv(count - len(data))
        except TimeoutError:
            raise ProxyHeaderError("PROXY header not complete within the receive timeout") from None
        if not chunk:
            raise ProxyHeaderError("connection closed before a complete PROXY header")
        data += chunk
    return bytes(data)


def read_header(sock: socket.socket, timeout_s: float) -> ProxyHeader:
    """Read one PROXY header (v1 or v2) from ``sock``, exactly its bytes.

    The socket's own timeout is restored afterwards. Raises
    :class:`ProxyHeaderError` for anything but a valid header within
    ``timeout_s`` (a peer that starts with a DICOM PDU included).
    """
    saved = sock.gettimeout()
    deadline = time.monotonic() + timeout_s
    try:
        # 12 bytes: the v2 signature, and less than the shortest v1 line (15)
        start = _recv_exactly(sock, 12, deadline)
        if start == V2_SIGNATURE:
            fixed = start + _recv_exactly(sock, 4, deadline)
            return parse_v2(fixed + _recv_exactly(sock, v2_body_length(fixed), deadline))
        if not start.startswith(_V1_PREFIX):
            raise ProxyHeaderError("no PROXY header from a configured balancer")
        line = start
        while not line.endswith(b"\r\n"):  # byte by byte: never read past the line
            if len(line) >= V1_MAX_BYTES:
                raise ProxyHeaderError("PROXY v1: line too long")
            line += _recv_exactly(sock, 1, deadline)
        return parse_v1(line)
    finally:
        sock.settimeout(saved)


def is_trusted(address: str, balancers: tuple[str, ...]) -> bool:
    """Whether ``address`` is one of ``balancers`` (IP addresses or networks)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(entry, strict=False) for entry in balancers)


__all__ = ["V1_MAX_BYTES", "V2_SIGNATURE", "ProxyHeader", "ProxyHeaderError", "is_trusted",
           "parse_v1", "parse_v2", "read_header", "v2_body_length"]
