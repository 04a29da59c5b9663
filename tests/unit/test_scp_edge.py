"""The SCP's edge under bad peers, for both acceptors (reliability audit D4-D9, D15, D19, D20).

Real pynetdicom SCUs and raw sockets on loopback against an in-process
:class:`StorageSCP`: a C-STORE of an unknown SOP class (D4) and an
undecodable C-STORE command set (D7) are answered and leave no thread or
descriptor behind; half-open and garbage connections do not lock out other
hosts, and the node closes them (D5); malformed data is 0xC000 (D8); an
oversized instance is refused before it reaches the handler and the disk,
and storage associations are refused while the spool is short of space
(D9); a wrong Called AE Title is rejected (D15); a data set whose SOP class
differs from the command's is 0xA900 (D19); rejections are counted (D20).
No sleeps as synchronisation: every wait is a poll with a deadline.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.pdu_primitives import P_DATA
from test_acceptor import RecordingSCP, nm_instance, wait_for_no_acceptor_threads

from service import metrics
from service.config import NodeSettings, Settings
from service.dicom import codes
from service.store.rows import open_rows
from service.store.spool import Spool
from service.testing.peers import require_tool
from service.testing.polling import wait_until
from service.testing.ports import free_port
from service.testing.scu import reactor_paused, send_echo
from service.testing.storage import storage_settings


def poll(predicate: Any, timeout_s: float = 10.0) -> Any:
    """Wait until ``predicate`` holds (the shared polling helper, fast interval)."""
    return wait_until(predicate, timeout_s, "a condition", 0.01)


pytestmark = pytest.mark.slow  # real associations, timeouts and a few hundred bad inputs

ACCEPTORS = ["event", "pynetdicom"]


def start_scp(tmp_path: Path, acceptor_kind: str, **node: Any) -> RecordingSCP:
    storage = node.pop("storage", {})
    settings = Settings().model_copy(update={
        "node": NodeSettings(port=free_port(), bind="127.0.0.1", acceptor=acceptor_kind, **node),
        "storage": storage_settings(spool_dir=tmp_path / "spool",
                                   db_path=tmp_path / "node.sqlite3", min_free_mb=1,
                                   **storage)})
    database = open_rows(settings.storage)
    database.migrate()
    scp = RecordingSCP(settings, database, Spool(settings.storage.spool_dir, False))
    scp.served_in = []
    scp.database = database
    scp.start()
    return scp


@pytest.fixture(params=ACCEPTORS)
def scp(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[RecordingSCP]:
    node = start_scp(tmp_path, request.param)
    try:
        yield node
    finally:
        node.stop()
        wait_for_no_acceptor_threads(15)  # stop ends every association


def open_assoc(scp: RecordingSCP, called: str = "DOPANODE", bind: str | None = None,
               syntax: str = ExplicitVRLittleEndian) -> Any:
    ae = AE(ae_title="STORESCU")
    ae.dimse_timeout = 10
    ae.add_requested_context(codes.VERIFICATION)
    ae.add_requested_context(codes.NM_IMAGE_STORAGE, syntax)
    return ae.associate("127.0.0.1", scp.port, ae_title=called,
                        bind_address=(bind, 0) if bind else None)


def nm_context_id(assoc: Any) -> int:
    return next(cx.context_id for cx in assoc.accepted_contexts
                if cx.abstract_syntax == codes.NM_IMAGE_STORAGE)


def send_store(assoc: Any, dataset_bytes: bytes, sop_class: str, sop_instance: str,
               message_id: int = 7) -> Any:
    """A C-STORE-RQ built by hand (any command UIDs); the response or None."""
    req = C_STORE()
    req.MessageID = message_id
    req.AffectedSOPClassUID = sop_class
    req.AffectedSOPInstanceUID = sop_instance
    req.Priority = 2
    req.DataSet = BytesIO(dataset_bytes)
    with reactor_paused(assoc):
        assoc.dimse.send_msg(req, nm_context_id(assoc))
        _, rsp = assoc.dimse.get_msg(block=True)
    return rsp


def _element(tag: int, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\0"
    return struct.pack("<HHI", 0, tag, len(value)) + value


def send_raw_command(assoc: Any, elements: dict[int, bytes], data: bytes) -> Any:
    """A C-STORE-RQ whose command set is encoded here (may be undecodable)."""
    body = b"".join(_element(tag, value) for tag, value in sorted(elements.items()))
    command = _element(0x0000, struct.pack("<I", len(body))) + body
    cx = nm_context_id(assoc)
    first, second = P_DATA(), P_DATA()
    first.presentation_data_value_list = [[cx, b"\x03" + command]]
    second.presentation_data_value_list = [[cx, b"\x02" + data]]
    with reactor_paused(assoc):
        assoc.dul.send_pdu(first)
        assoc.dul.send_pdu(second)
        _, rsp = assoc.dimse.get_msg(block=True)
    return rsp


def store_command(instance_uid: bytes | None) -> dict[int, bytes]:
    elements = {0x0002: codes.NM_IMAGE_STORAGE.encode(), 0x0100: struct.pack("<H", 1),
                0x0110: struct.pack("<H", 9), 0x0700: struct.pack("<H", 2),
                0x0800: struct.pack("<H", 0)}
    if instance_uid is not None:
        elements[0x1000] = instance_uid
    return elements


def nm_bytes(seed: str, index: int = 0) -> tuple[bytes, str]:
    ds = nm_instance(seed, index, slices=1)
    return encode(ds, False, True), str(ds.SOPInstanceUID)


def wait_closed(peer: socket.socket) -> None:
    """Read until the node closes the connection (an A-ABORT may come first)."""
    try:
        while peer.recv(4096):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        raise AssertionError("the node kept a half-open connection") from None
    finally:
        peer.close()


def counter(metric: Any, **labels: str) -> float:
    return float(metric.labels(**labels)._value.get())


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# --- D4: unknown SOP class ----------------------------------------------------------------
def test_unknown_sop_class_is_answered_0122_and_leaves_nothing(scp: RecordingSCP) -> None:
    assoc = open_assoc(scp)
    data, uid = nm_bytes("unknown-class")
    rsp = send_store(assoc, data, "1.2.3.4.5.6", uid)
    assert rsp is not None and rsp.Status == 0x0122 and rsp.ErrorComment
    assert send_echo(assoc).Status == 0x0000  # the association still works
    assoc.release()
    wait_for_no_acceptor_threads()  # no thread stuck in abort
    assert list(scp.spool.tmp_dir.iterdir()) == []


# --- D7: undecodable command set -------------------------------------------------------
@pytest.mark.parametrize("instance_uid", [None, b"1." * 40], ids=["missing", "too-long"])
def test_undecodable_store_command_gets_a_status(scp: RecordingSCP,
                                                 instance_uid: bytes | None) -> None:
    assoc = open_assoc(scp)
    data, _ = nm_bytes("bad-command")
    rsp = send_raw_command(assoc, store_command(instance_uid), data)
    assert rsp is not None, "no answer (the DUL thread died)"
    assert rsp.Status == 0xC000 and rsp.ErrorComment
    assert send_echo(assoc).Status == 0x0000
    assoc.release()
    wait_for_no_acceptor_threads()
    assert list(scp.spool.tmp_dir.iterdir()) == []


@pytest.mark.parametrize("acceptor_kind", ACCEPTORS)
def test_bad_inputs_leak_no_thread_and_no_descriptor(tmp_path: Path, acceptor_kind: str) -> None:
    """200 bad inputs (40 x 5 kinds): threads and descriptors back to where they were."""
    scp = start_scp(tmp_path, acceptor_kind, artim_timeout_s=0.2, receive_timeout_s=1.0)
    try:
        _leak_round(scp)
    finally:
        scp.stop()


def _leak_round(scp: RecordingSCP) -> None:
    warm = open_assoc(scp)
    warm.release()
    wait_for_no_acceptor_threads()
    threads, fds = threading.active_count(), open_fds()
    data, uid = nm_bytes("leak")
    for i in range(40):
        assoc = open_assoc(scp)
        assert send_store(assoc, data, "1.2.3.4.5.6", uid, message_id=1).Status == 0x0122
        assert send_raw_command(assoc, store_command(None), data).Status == 0xC000
        assert send_raw_command(assoc, store_command(b"9" * 70), data).Status == 0xC000
        assoc.release()
        with socket.create_connection(("127.0.0.1", scp.port), timeout=5) as peer:
            peer.sendall(b"\x07\x00" + (4).to_bytes(4, "big") + bytes([i % 256]) * 4)
        with socket.create_connection(("127.0.0.1", scp.port), timeout=5) as peer:
            peer.sendall(os.urandom(106))
        wait_for_no_acceptor_threads(15)  # ARTIM (0.2 s) ends the garbage
    wait_for_no_acceptor_threads(30)
    poll(lambda: threading.active_count() <= threads and open_fds() <= fds, timeout_s=15)
    assert list(scp.spool.tmp_dir.iterdir()) == []
    again = open_assoc(scp)
    assert send_echo(again).Status == 0x0000
    again.release()


# --- D5: half-open and garbage connections ------------------------------------------------
def test_half_open_and_garbage_connections_do_not_lock_out_others(scp: RecordingSCP) -> None:
    """Ten half-open and ten garbage connections from one host; another host still gets in."""
    half_open = []
    for _ in range(10):
        peer = socket.create_connection(("127.0.0.1", scp.port), timeout=5)
        peer.sendall(b"\x01\x00" + (200).to_bytes(4, "big") + b"\x00\x01")  # 8 of 206 bytes
        half_open.append(peer)
    for _ in range(10):
        with socket.create_connection(("127.0.0.1", scp.port), timeout=5) as peer:
            peer.sendall(os.urandom(106))
    try:
        other = open_assoc(scp, bind="127.0.0.2")
        assert other.is_established, "another host was locked out"
        assert other.send_c_echo().Status == 0x0000
        other.release()
    finally:
        for peer in half_open:
            peer.close()


def half_open(scp: RecordingSCP) -> socket.socket:
    """A connection that sends 8 bytes of a 206-byte A-ASSOCIATE-RQ, then nothing."""
    peer = socket.create_connection(("127.0.0.1", scp.port), timeout=30)
    peer.sendall(b"\x01\x00" + (200).to_bytes(4, "big") + b"\x00\x01")
    return peer


@pytest.mark.parametrize("acceptor_kind", ACCEPTORS)
def test_connections_over_the_host_slots_are_refused_at_once(tmp_path: Path,
                                                             acceptor_kind: str) -> None:
    """Five half-open connections hold the host's slots; more are refused before a byte
    is read, and the host gets in again once its connections close.

    The node's timeouts (60 s) outlast the test: the five are counted together
    whatever the machine's load (with 6 s, a loaded VM or a multi-second pause of
    this process let the first ones time out before the fifth was counted).
    """
    scp = start_scp(tmp_path, acceptor_kind, receive_timeout_s=60.0, artim_timeout_s=60.0)
    before = counter(metrics.ASSOCIATIONS, result="rejected", reason="host_limit")
    peers = []
    try:
        for _ in range(5):  # one at a time: each counted before the next
            peers.append(half_open(scp))
            poll(lambda: scp._server._connections_from("127.0.0.1") == len(peers), 30)
        extra = [half_open(scp) for _ in range(2)]
        over = open_assoc(scp)  # over the host's slots: refused, nothing of it read
        assert not over.is_established
        if over.is_rejected:  # usually; the close may reset it before the RJ is read
            rj = over.acceptor.primitive
            assert (rj.result, rj.result_source, rj.diagnostic) == (2, 3, 2)
        for peer in extra:  # closed at once by the node, not after its 60 s
            wait_closed(peer)
        assert counter(metrics.ASSOCIATIONS, result="rejected", reason="host_limit") >= before + 3
        assert scp._server._connections_from("127.0.0.1") == 5  # the five still hold them
        for peer in peers:
            peer.close()
        wait_for_no_acceptor_threads(30)
        assoc = open_assoc(scp)  # the same host gets in again
        assert assoc.is_established
        assoc.release()
    finally:
        for peer in peers:
            peer.close()
        scp.stop()


@pytest.mark.parametrize("acceptor_kind", ACCEPTORS)
def test_half_open_connection_is_closed_by_the_node(tmp_path: Path, acceptor_kind: str) -> None:
    """Half an A-ASSOCIATE-RQ, then silence: the node closes it after its receive timeout
    (1 s; the peer waits 30 s), and the host's slot is free again."""
    scp = start_scp(tmp_path, acceptor_kind, receive_timeout_s=1.0, artim_timeout_s=1.0,
                    max_associations_per_host=1)
    try:
        wait_closed(half_open(scp))
        wait_for_no_acceptor_threads(30)
        assoc = open_assoc(scp)  # the host's one slot is free again
        assert assoc.is_established
        assoc.release()
    finally:
        scp.stop()


# --- D8 / D19: precise statuses ----------------------------------------------------------
def test_undecodable_data_set_is_0xc000_not_0xa700(scp: RecordingSCP) -> None:
    """A plain data set on the Deflated context: zlib cannot read it."""
    assoc = open_assoc(scp, syntax=DeflatedExplicitVRLittleEndian)
    data, uid = nm_bytes("not-deflated")
    rsp = send_store(assoc, data, codes.NM_IMAGE_STORAGE, uid)
    assoc.release()
    assert rsp.Status == 0xC000 and rsp.ErrorComment == "dataset could not be parsed"


def test_sop_class_mismatch_is_0xa900(scp: RecordingSCP) -> None:
    assoc = open_assoc(scp)
    ds = nm_instance("class-mismatch", 0, slices=1)
    ds.SOPClassUID = codes.PET_IMAGE_STORAGE  # the command will say NM
    rsp = send_store(assoc, encode(ds, False, True), codes.NM_IMAGE_STORAGE,
                     str(ds.SOPInstanceUID))
    assoc.release()
    assert rsp.Status == 0xA900 and "SOP Class" in str(rsp.ErrorComment)
    assert list(scp.spool.tmp_dir.iterdir()) == []


# --- D9: limits while receiving ---------------------------------------------------------
@pytest.mark.parametrize("acceptor_kind", ACCEPTORS)
def test_oversized_instance_is_refused_while_it_arrives(tmp_path: Path,
                                                        acceptor_kind: str) -> None:
    scp = start_scp(tmp_path, acceptor_kind, storage={"max_instance_mb": 1})
    try:
        assoc = open_assoc(scp)
        ds = nm_instance("too-big", 0, slices=1)
        ds.Rows = ds.Columns = 1024  # 2 MiB of pixels
        ds.PixelData = bytes(2 * 1024 * 1024)
        rsp = send_store(assoc, encode(ds, False, True), codes.NM_IMAGE_STORAGE,
                         str(ds.SOPInstanceUID))
        assert rsp.Status == 0xA700 and "1 MiB" in str(rsp.ErrorComment)
        assert scp.served_in == []  # refused before the handler: never written in full
        assert list(scp.spool.tmp_dir.iterdir()) == []
        small = nm_instance("after-big", 0, slices=1)  # the association goes on:
        assert send_store(assoc, encode(small, False, True), codes.NM_IMAGE_STORAGE,
                          str(small.SOPInstanceUID)).Status == 0x0000
        assoc.release()
    finally:
        scp.stop()


def test_storage_association_refused_when_spool_is_short(scp: RecordingSCP,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    before = counter(metrics.ASSOCIATIONS, result="rejected", reason="disk_space")
    monkeypatch.setattr(scp.spool, "free_mb", lambda: 10.0)  # below the 64 MiB floor
    assoc = open_assoc(scp)
    assert assoc.is_rejected
    rj = assoc.acceptor.primitive
    assert (rj.result, rj.result_source, rj.diagnostic) == (0x02, 0x03, 0x02)
    assert counter(metrics.ASSOCIATIONS, result="rejected", reason="disk_space") == before + 1
    echo_only = AE(ae_title="ECHOSCU")
    echo_only.add_requested_context(codes.VERIFICATION)
    echo = echo_only.associate("127.0.0.1", scp.port, ae_title="DOPANODE")
    assert echo.is_established and echo.send_c_echo().Status == 0x0000  # monitoring works
    echo.release()


def test_space_running_out_while_receiving_is_0xa700(scp: RecordingSCP,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    assoc = open_assoc(scp)  # accepted while there is room
    monkeypatch.setattr(scp.spool, "free_mb", lambda: 10.0)  # then the disk fills
    rsp = assoc.send_c_store(nm_instance("disk-fills", 0, slices=1))
    assoc.release()
    assert rsp.Status == 0xA700 and "disk space" in str(rsp.ErrorComment)
    assert scp.served_in == [] and list(scp.spool.tmp_dir.iterdir()) == []


# --- D15 / D20: called AE title, counted ------------------------------------------------
def test_wrong_called_ae_title_is_rejected_and_counted(scp: RecordingSCP) -> None:
    before = counter(metrics.ASSOCIATIONS, result="rejected", reason="called_ae")
    assoc = open_assoc(scp, called="WRONG")
    assert assoc.is_rejected
    rj = assoc.acceptor.primitive
    assert (rj.result, rj.result_source, rj.diagnostic) == (0x01, 0x01, 0x07)
    echoscu = require_tool("echoscu")
    run = subprocess.run([echoscu, "-aet", "ECHOSCU", "-aec", "WRONG", "127.0.0.1",
                          str(scp.port)], capture_output=True, text=True, timeout=30)
    assert run.returncode != 0
    assert "Called AE Title Not Recognized" in run.stdout + run.stderr
    # the peer can read the rejection before the node's thread has counted it
    poll(lambda: counter(metrics.ASSOCIATIONS, result="rejected", reason="called_ae")
         >= before + 2)
    assert counter(metrics.ASSOCIATIONS, result="rejected", reason="called_ae") == before + 2
    right = subprocess.run([echoscu, "-aet", "ECHOSCU", "-aec", "DOPANODE", "127.0.0.1",
                            str(scp.port)], capture_output=True, text=True, timeout=30)
    assert right.returncode == 0


def test_association_limit_rejections_are_counted(tmp_path: Path) -> None:
    scp = start_scp(tmp_path, "event", max_associations=1)
    try:
        before = counter(metrics.ASSOCIATIONS, result="rejected", reason="association_limit")
        first = open_assoc(scp)
        second = open_assoc(scp, bind="127.0.0.2")
        assert first.is_established and second.is_rejected
        first.release()
        assert counter(metrics.ASSOCIATIONS, result="rejected",
                       reason="association_limit") == before + 1
    finally:
        scp.stop()


def test_ready_fails_below_the_floor_even_with_min_free_mb_0(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from service.api import readiness

    monkeypatch.setattr(readiness, "spool_free_bytes", lambda _: 10 * 1024 * 1024)
    check = readiness.check_spool_disk(tmp_path, 0)
    assert not check.ok and "floor 64" in check.detail
    monkeypatch.setattr(readiness, "spool_free_bytes", lambda _: 100 * 1024 * 1024)
    assert readiness.check_spool_disk(tmp_path, 0).ok
    assert not readiness.check_spool_disk(tmp_path, 200).ok


def test_trickled_pdu_is_bounded_by_the_receive_timeout(tmp_path: Path) -> None:
    """A byte every 0.1 s never finishes a PDU: the event acceptor ends it (whole-PDU deadline).

    The stock acceptor reads in 4 KiB pieces, each with the socket timeout:
    there ARTIM and the per-host slots are the bound.
    """
    scp = start_scp(tmp_path, "event", receive_timeout_s=1.0, artim_timeout_s=1.0)
    try:
        with socket.create_connection(("127.0.0.1", scp.port), timeout=10) as peer:
            peer.sendall(b"\x01\x00" + (200).to_bytes(4, "big"))
            started = time.monotonic()
            closed = False
            while time.monotonic() - started < 8 and not closed:
                try:
                    peer.sendall(b"\x00")
                    time.sleep(0.1)  # the trickle itself, not synchronisation
                except OSError:
                    closed = True
                    break
                readable, _, _ = select.select([peer], [], [], 0)
                if readable:
                    try:
                        closed = peer.recv(4096) == b"" or closed
                    except ConnectionResetError:
                        closed = True
            assert closed, "the node kept reading a trickled PDU"
            assert time.monotonic() - started < 4
        wait_for_no_acceptor_threads()
    finally:
        scp.stop()
