"""Raw-protocol fuzz cases and their senders: malformed PDUs and HTTP requests.

The bytes go straight onto the node's sockets, below pynetdicom and the HTTP
server: :func:`pdu_cases` and :func:`http_cases` build them (seeded, so a
failing case is reproduced from (seed, index)), :func:`send_raw` and
:func:`send_http` write one and report how the node ended the connection.
:class:`service.testing.fuzz.Fuzzer` hands these out beside its data set cases.
"""

from __future__ import annotations

import random
import socket
import struct
import time
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass

from pydicom.uid import ExplicitVRLittleEndian

from service.dicom import codes


@dataclass
class PduCase:
    """Raw bytes written to the DICOM port; ``associate`` first if set."""

    index: int
    name: str
    chunks: list[bytes]
    associate: bool = False


@dataclass
class HttpCase:
    index: int
    name: str
    raw: bytes



def pdu_cases(seed: int, n: int, called: str, calling: str = "STORESCU") -> Iterator[PduCase]:
    """``n`` raw PDU cases: each name once in turn, then names drawn from ``(seed, index)``."""
    names = ["garbage", "bad_type", "header_only_huge", "truncated_rq", "rq_bad_length",
             "rq_bad_items", "pdata_before_assoc", "release_before_assoc", "zero_length",
             "after_assoc_garbage", "after_assoc_second_rq", "after_assoc_pdata_bad_pdv",
             "after_assoc_truncated_pdata", "after_assoc_huge_length",
             "after_assoc_unknown_context", "after_assoc_release_rp", "after_assoc_abort"]
    for i in range(n):
        rng = random.Random(f"{seed}-pdu-{i}")
        name = names[i % len(names)] if i < len(names) else rng.choice(names)
        rq = associate_rq(called, calling)
        assoc = name.startswith("after_assoc")
        junk = bytes(rng.randrange(256) for _ in range(rng.choice([1, 6, 64, 2000])))
        chunks: list[bytes] = {
            "garbage": [junk],
            "bad_type": [bytes([rng.choice([0, 8, 9, 0x7F, 0xFF]), 0]) + struct.pack(">I", 4) + b"abcd"],
            "header_only_huge": [bytes([rng.choice([1, 4]), 0]) + struct.pack(">I", rng.choice(
                [0xFFFFFFFF, 0x40000000, 0x10000000]))],
            "truncated_rq": [rq[: rng.randrange(1, len(rq))]],
            "rq_bad_length": [rq[:2] + struct.pack(">I", rng.choice([0, 3, len(rq) + 500]))
                              + rq[6:]],
            "rq_bad_items": [_corrupt_items(rq, rng)],
            "pdata_before_assoc": [p_data(1, b"\x03" + junk)],
            "release_before_assoc": [b"\x05\x00" + struct.pack(">I", 4) + b"\0\0\0\0"],
            "zero_length": [b"\x04\x00\x00\x00\x00\x00"],
            "after_assoc_garbage": [junk],
            "after_assoc_second_rq": [rq],
            "after_assoc_pdata_bad_pdv": [b"\x04\x00" + struct.pack(">I", 10)
                                          + struct.pack(">I", rng.choice([0, 1, 0xFFFF, 200]))
                                          + b"\x01\x03" + b"\0" * 4],
            "after_assoc_truncated_pdata": [p_data(1, b"\x03" + junk)[: rng.randrange(3, 20)]],
            "after_assoc_huge_length": [b"\x04\x00" + struct.pack(">I", 0xFFFFFFF0) + junk[:8]],
            "after_assoc_unknown_context": [p_data(rng.choice([3, 99, 255]), b"\x03" + junk)],
            "after_assoc_release_rp": [b"\x06\x00" + struct.pack(">I", 4) + b"\0\0\0\0"],
            "after_assoc_abort": [b"\x07\x00" + struct.pack(">I", 4) + b"\0\0\0\0", junk],
        }[name]
        yield PduCase(i, name, chunks, associate=assoc)


def http_cases(n: int, token: str) -> Iterator[HttpCase]:
    """``n`` malformed or unauthorised HTTP requests, cycling through a fixed list."""
    auth = f"Authorization: Bearer {token}\r\n".encode()
    base: list[tuple[str, bytes]] = [
        ("garbage_line", b"\x00\xff GARBAGE\r\n\r\n"),
        ("no_version", b"GET /health\r\n\r\n"),
        ("huge_header", b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: " + b"A" * 200_000 + b"\r\n\r\n"),
        ("bad_content_length", b"POST /jobs/1/retry HTTP/1.1\r\nHost: x\r\n" + auth
         + b"Content-Length: -5\r\n\r\n"),
        ("short_body", b"POST /jobs/1/retry HTTP/1.1\r\nHost: x\r\n" + auth
         + b"Content-Length: 100\r\n\r\n{"),
        ("traversal", b"GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n"),
        ("no_token", b"GET /jobs HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("bad_token", b"GET /jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer x\r\n\r\n"),
        ("int_overflow", b"GET /jobs?limit=99999999999999999999 HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n"),
        ("negative", b"GET /jobs/-1 HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n"),
        ("bad_json", b"POST /jobs/1/retry HTTP/1.1\r\nHost: x\r\n" + auth
         + b"Content-Type: application/json\r\nContent-Length: 5\r\n\r\n{{{{{"),
        ("unicode_path", "GET /jobs/\u00e9\u4e2d HTTP/1.1\r\nHost: x\r\n".encode() + auth + b"\r\n"),
        ("method", b"BREW /health HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("chunked_bad", b"POST /jobs/1/retry HTTP/1.1\r\nHost: x\r\n" + auth
         + b"Transfer-Encoding: chunked\r\n\r\nZZ\r\n"),
        ("many_headers", b"GET /health HTTP/1.1\r\n" + b"X: y\r\n" * 5000 + b"\r\n"),
        ("nul_in_path", b"GET /jobs/\x00 HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n"),
    ]
    for i in range(n):
        name, raw = base[i % len(base)]
        yield HttpCase(i, name, raw)


# --- PDU helpers -------------------------------------------------------------------------
def _item(item_type: int, value: bytes) -> bytes:
    return bytes([item_type, 0]) + struct.pack(">H", len(value)) + value


def associate_rq(called: str, calling: str,
                 abstract: str = codes.NM_IMAGE_STORAGE) -> bytes:
    """A well-formed A-ASSOCIATE-RQ with one presentation context (id 1), explicit VR LE."""
    app = _item(0x10, b"1.2.840.10008.3.1.1.1")
    pc = _item(0x20, bytes([1, 0, 0, 0]) + _item(0x30, abstract.encode())
               + _item(0x40, ExplicitVRLittleEndian.encode()))
    user = _item(0x50, _item(0x51, struct.pack(">I", 16384)) + _item(0x52, b"1.2.3.4"))
    body = (struct.pack(">HH", 1, 0) + called.ljust(16).encode() + calling.ljust(16).encode()
            + b"\0" * 32 + app + pc + user)
    return b"\x01\x00" + struct.pack(">I", len(body)) + body


def _corrupt_items(rq: bytes, rng: random.Random) -> bytes:
    buf = bytearray(rq)
    pos = rng.randrange(74, len(buf) - 2)
    struct.pack_into(">H", buf, pos, rng.choice([0, 0xFFFF, 1, 500]))
    return bytes(buf)


def p_data(context_id: int, pdv: bytes) -> bytes:
    item = struct.pack(">I", len(pdv) + 1) + bytes([context_id]) + pdv
    return b"\x04\x00" + struct.pack(">I", len(item)) + item


def send_raw(port: int, case: PduCase, called: str, timeout_s: float = 10.0) -> str:
    """Write a raw case; returns how the node ended it: closed, abort, reject, or no_close."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        try:
            if case.associate:
                sock.sendall(associate_rq(called, "STORESCU"))
                first = sock.recv(6)
                if not first or first[0] != 0x02:
                    return f"assoc_refused_{first[:1].hex() or 'closed'}"
                (length,) = struct.unpack(">I", first[2:6])
                _recv_exact(sock, length)
            for chunk in case.chunks:
                sock.sendall(chunk)
            sock.shutdown(socket.SHUT_WR) if case.name.startswith("truncated") else None
            start, answer = time.monotonic(), b""
            while time.monotonic() - start < timeout_s:
                got = sock.recv(65536)
                if not got:
                    break
                answer += got
            else:
                return "no_close"
        except TimeoutError:
            return "no_close"
        except OSError:  # reset, broken pipe, ENOTCONN: the node closed it first
            return "reset"
        kinds = {0x02: "accept", 0x03: "reject", 0x06: "release", 0x07: "abort"}
        return kinds.get(answer[0], "other") if answer else "closed"


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        got = sock.recv(n - len(data))
        if not got:
            break
        data += got
    return data


def send_http(port: int, case: HttpCase, timeout_s: float = 10.0) -> str:
    """Write raw request bytes; returns the HTTP status line's code, or closed/timeout."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
            with suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(case.raw)
            data = b""
            with suppress(ConnectionResetError):
                while b"\r\n" not in data:
                    got = sock.recv(4096)
                    if not got:
                        break
                    data += got
    except TimeoutError:
        return "timeout"
    if not data.startswith(b"HTTP/"):
        return "closed"
    parts = data.split(b" ", 2)
    return parts[1].decode("ascii", "replace") if len(parts) > 1 else "closed"
