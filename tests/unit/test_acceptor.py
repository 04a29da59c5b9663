"""Both acceptors and both spool adoptions, in process with a pynetdicom SCU.

Every SCP test runs against each ``node.acceptor`` (``"event"``:
:mod:`service.net.acceptor`; ``"pynetdicom"``: its stock acceptor) with each
``storage.spool_sync`` (``"auto"``: one flush on ext4/XFS/btrfs; ``"posix"``).
Covers: C-ECHO and C-STORE answered (with the event acceptor the store is
served in the DUL thread), a request sent while the acceptance is still being
recorded (before pynetdicom marks the association established) answered,
several instances on one association, a resend deduplicated, release and
abort by the peer, the network idle timeout, associations' threads ending,
the one-flush and the POSIX adoption paths, start-up recovery of a file
whose row was lost (``completion.recover_spool``) for files written this way,
the refusal to start on an unsupported pynetdicom or a missing private name,
and the process-wide switches restored after stop.
No sleeps: every wait is a poll with a deadline.
"""

from __future__ import annotations

import socket
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pynetdicom
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config, evt
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider

from service.config import NodeSettings, Settings
from service.dicom import codes
from service.net import acceptor
from service.net.scp import StorageSCP
from service.store import db
from service.store import series as completion
from service.store import spool as spool_mod
from service.store.rows import open_rows
from service.store.spool import Spool, filesystem_type
from service.testing.polling import wait_until
from service.testing.ports import free_port
from service.testing.storage import storage_settings


def nm_instance(seed: str, index: int, slices: int = 3) -> Dataset:
    """A small per-slice NM instance (16x16 uint16) of series ``seed``."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = codes.NM_IMAGE_STORAGE
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[seed, str(index)])
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[seed, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[seed, "series"])
    ds.Modality = "NM"
    ds.PatientName = "ACCEPTOR^TEST"
    ds.NumberOfFrames = 1
    ds.NumberOfSlices = slices
    ds.Rows = ds.Columns = 16
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = np.full((16, 16), index, dtype=np.uint16).tobytes()
    return ds


class RecordingSCP(StorageSCP):
    """The SCP, noting which kind of thread served each C-STORE."""

    served_in: list[str]
    database: db.Database
    completions: list[float]

    def handle_store(self, event: evt.Event) -> Dataset | int:
        self.served_in.append(type(threading.current_thread()).__name__)
        return super().handle_store(event)


def make_scp(tmp_path: Path, acceptor_kind: str, spool_sync: str = "posix") -> RecordingSCP:
    settings = Settings().model_copy(update={
        "node": NodeSettings(port=free_port(), bind="127.0.0.1", acceptor=acceptor_kind),
        "storage": storage_settings(spool_dir=tmp_path / "spool",
                                   db_path=tmp_path / "node.sqlite3", min_free_mb=1,
                                   spool_sync=spool_sync)})
    database = open_rows(settings.storage)
    database.migrate()
    one_flush = None if spool_sync == "auto" else False  # as service.app.Node does
    scp = RecordingSCP(settings, database, Spool(settings.storage.spool_dir, one_flush))
    scp.served_in = []
    scp.database = database
    scp.completions = []
    scp.on_series_complete = lambda: scp.completions.append(time.monotonic())
    return scp


@pytest.fixture(params=[("event", "auto"), ("event", "posix"), ("pynetdicom", "auto"),
                        ("pynetdicom", "posix")], ids=lambda p: "-".join(p))
def node(tmp_path: Path, request: pytest.FixtureRequest
         ) -> Iterator[tuple[RecordingSCP, db.Database]]:
    scp = make_scp(tmp_path, *request.param)
    scp.start()
    try:
        yield scp, scp.database
    finally:
        scp.stop()


def associate(scp: StorageSCP, aet: str = "STORESCU", dimse_timeout_s: float = 30.0
              ) -> Any:
    ae = AE(ae_title=aet)
    ae.dimse_timeout = dimse_timeout_s
    ae.add_requested_context(codes.VERIFICATION)
    ae.add_requested_context(codes.NM_IMAGE_STORAGE, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="DOPANODE")
    assert assoc.is_established
    return assoc


def rows(database: db.Database, sql: str) -> list[tuple[Any, ...]]:
    conn = database.connect()
    try:
        return list(conn.execute(sql))
    finally:
        conn.close()


def acceptor_threads() -> list[threading.Thread]:
    """Association and DUL threads of either acceptor still alive."""
    return [t for t in threading.enumerate() if isinstance(t, Association | DULServiceProvider)]


def describe_threads(threads: list[threading.Thread]) -> str:
    """Which association and DUL threads are alive, and in which state (for a failure)."""
    parts = []
    for t in threads:
        if isinstance(t, Association):
            role = "requestor" if t.is_requestor else "acceptor"
            flags = [f for f in ("is_established", "is_released", "is_aborted", "is_rejected")
                     if getattr(t, f, False)]
            parts.append(f"{t.name}: Association ({role}, {', '.join(flags) or 'no flag'}, "
                         f"paused={getattr(t, '_is_paused', '?')})")
        else:
            state = getattr(getattr(t, "state_machine", None), "current_state", "?")
            parts.append(f"{t.name}: {type(t).__name__} (state {state})")
    return "; ".join(parts)


def wait_for_no_acceptor_threads(timeout_s: float = 10.0) -> None:
    """Wait until no association or DUL thread is alive; on expiry name the ones left."""
    try:
        wait_until(lambda: not acceptor_threads(), timeout_s, "the association threads to end", 0.01)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; still alive: {describe_threads(acceptor_threads())}") from None


def test_echo_store_resend_and_release(node: tuple[RecordingSCP, db.Database]) -> None:
    scp, database = node
    assoc = associate(scp)
    assert assoc.send_c_echo().Status == 0x0000
    instances = [nm_instance("series-a", i) for i in range(3)]
    for ds in instances:
        assert assoc.send_c_store(ds).Status == 0x0000
    assert len(scp.completions) == 1  # the third slice completed the series: routing woken
    assert assoc.send_c_store(instances[0]).Status == 0x0000  # resend: deduplicated
    assert len(scp.completions) == 1
    assoc.release()
    assert assoc.is_released
    # event: served where it arrived, no hand-off; stock: in the association thread
    thread = "EventDUL" if scp.settings.node.acceptor == "event" else "Association"
    assert scp.served_in == [thread] * 4
    one_flush = scp.settings.storage.spool_sync == "auto" and filesystem_type(
        scp.spool.root) in spool_mod.ONE_FLUSH_FILESYSTEMS
    assert scp.spool.one_flush is one_flush
    stored = rows(database, "SELECT sop_instance_uid, path FROM instances")
    assert {u for u, _ in stored} == {str(ds.SOPInstanceUID) for ds in instances}
    for uid, relative in stored:
        assert dcmread(scp.spool.absolute(relative)).SOPInstanceUID == uid
    assert rows(database, "SELECT state FROM series") == [("complete",)]  # 3 of 3 slices
    assert list(scp.spool.tmp_dir.iterdir()) == []
    wait_for_no_acceptor_threads()


def test_abort_by_peer_ends_the_association(node: tuple[RecordingSCP, db.Database]) -> None:
    scp, database = node
    assoc = associate(scp)
    assert assoc.send_c_store(nm_instance("series-b", 0)).Status == 0x0000
    assoc.abort()
    wait_for_no_acceptor_threads()
    assert rows(database, "SELECT COUNT(*) FROM instances") == [(1,)]
    # the server still accepts the next caller
    again = associate(scp)
    assert again.send_c_echo().Status == 0x0000
    again.release()


def test_idle_association_times_out(node: tuple[RecordingSCP, db.Database]) -> None:
    scp, _ = node
    scp.ae.network_timeout = 0.3
    assoc = associate(scp)
    wait_until(lambda: assoc.is_aborted or not assoc.is_established, 10,
               "the association to end", 0.01)
    wait_for_no_acceptor_threads()


@pytest.mark.parametrize("version", ["3.1.0", "4.0.0", "2.1.1"])
def test_event_acceptor_refuses_other_pynetdicom_minor(monkeypatch: pytest.MonkeyPatch,
                                                       version: str) -> None:
    monkeypatch.setattr(pynetdicom, "__version__", version)
    with pytest.raises(acceptor.UnsupportedPynetdicom, match=r"written for pynetdicom 3\.0\.x"):
        acceptor.make_server(AE(), ("127.0.0.1", 0), [])


def test_private_names_all_present_in_the_pinned_pynetdicom() -> None:
    ae = AE()
    ae.add_supported_context(codes.VERIFICATION)
    server = ae.make_server(("127.0.0.1", 0), evt_handlers=[])
    try:
        assert acceptor.missing_private_names(ae, server) == []
    finally:
        server.server_close()
    assert len(acceptor.PRIVATE_NAMES) == 26


@pytest.mark.parametrize(("owner", "name"), [(DULServiceProvider, "_process_recv_primitive"),
                                             (Association, "_serve_request")])
def test_missing_private_name_refuses_start_not_associations(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, owner: type, name: str) -> None:
    """A renamed private stops the node at start-up with the name, never later."""
    monkeypatch.delattr(owner, name)
    scp = make_scp(tmp_path, "event")
    before = {k: getattr(_config, k) for k in ("STORE_RECV_CHUNKED_DATASET", "LOG_HANDLER_LEVEL")}
    with pytest.raises(acceptor.UnsupportedPynetdicom, match=f"{owner.__name__}.{name}"):
        scp.start()
    assert not scp.is_listening()
    with pytest.raises(OSError):  # nothing listens on the port
        socket.create_connection(("127.0.0.1", scp.settings.node.port), timeout=1).close()
    assert {k: getattr(_config, k) for k in before} == before
    scp.stop()


@pytest.mark.parametrize("acceptor_kind", ["event", "pynetdicom"])
def test_process_globals_are_restored_after_stop(tmp_path: Path, acceptor_kind: str) -> None:
    names = ("STORE_RECV_CHUNKED_DATASET", "LOG_REQUEST_IDENTIFIERS", "LOG_RESPONSE_IDENTIFIERS",
             "LOG_HANDLER_LEVEL")
    before = ({n: getattr(_config, n) for n in names}, tempfile.tempdir)
    scp = make_scp(tmp_path, acceptor_kind)
    assert ({n: getattr(_config, n) for n in names}, tempfile.tempdir) == before  # not yet
    scp.start()
    try:
        assert _config.STORE_RECV_CHUNKED_DATASET is True
        assert _config.LOG_HANDLER_LEVEL == "none"
        assert tempfile.tempdir == str(scp.spool.tmp_dir)
        assoc = associate(scp)
        assert assoc.send_c_store(nm_instance("series-g", 0, slices=1)).Status == 0x0000
        assoc.release()
    finally:
        scp.stop()
    assert ({n: getattr(_config, n) for n in names}, tempfile.tempdir) == before


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc/self/status")


def test_declared_pdu_length_allocates_nothing(node: tuple[RecordingSCP, db.Database]) -> None:
    """A 6-byte PDU header declaring 1 GiB must not make the node commit 1 GiB (audit D1)."""
    scp, _ = node
    scp.ae.acse_timeout = scp.ae.network_timeout = 0.5  # ARTIM ends the half-read PDU
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS to the current RSS
    before = peak_rss_mb()
    with socket.create_connection(("127.0.0.1", scp.port), timeout=5) as peer:
        peer.sendall(b"\x01\x00" + (1 << 30).to_bytes(4, "big") + b"\x00" * 1000)
        wait_until(acceptor_threads, 10, "the association to read the PDU", 0.01)
    wait_for_no_acceptor_threads()
    assert peak_rss_mb() - before < 256
    again = associate(scp)  # and the node still serves
    assert again.send_c_echo().Status == 0x0000
    again.release()


# --- the spool's two adoption paths --------------------------------------------------
@pytest.mark.parametrize("one_flush", [True, False])
def test_adopt_paths_move_complete_files(tmp_path: Path, one_flush: bool) -> None:
    spool = Spool(tmp_path / "s", one_flush=one_flush)
    assert spool.one_flush is one_flush
    source = spool.tmp_dir / "tmp123.dcm"
    payload = bytes(range(256)) * 1000
    source.write_bytes(payload)
    target = spool.instance_path("1.2.3", "1.2.3.4", "1.2.3.4.5")
    assert spool.adopt(source, target) == len(payload)
    assert target.read_bytes() == payload and not source.exists()


def test_one_flush_needs_sync_file_range(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spool_mod, "_SYNC_FILE_RANGE", None)
    with pytest.raises(ValueError, match="sync_file_range"):
        Spool(tmp_path / "s", one_flush=True)
    assert Spool(tmp_path / "t").one_flush is False  # auto: falls back to POSIX


def test_one_flush_chosen_by_filesystem(tmp_path: Path) -> None:
    fs_type = filesystem_type(tmp_path.resolve())
    assert fs_type  # /proc/self/mounts names the file system of any path
    expected = fs_type in spool_mod.ONE_FLUSH_FILESYSTEMS
    assert Spool(tmp_path / "s").one_flush is expected
    assert filesystem_type(Path("/proc/self")) == "proc"


def test_write_out_reports_errors() -> None:
    with pytest.raises(OSError):
        spool_mod._write_out(-1)


def test_lost_rows_are_recovered_at_start_up(node: tuple[RecordingSCP, db.Database]) -> None:
    """Files adopted by the SCP whose rows a power loss took back are re-recorded."""
    scp, database = node
    assoc = associate(scp)
    instances = [nm_instance("series-c", i) for i in range(3)]
    for ds in instances:
        assert assoc.send_c_store(ds).Status == 0x0000
    assoc.release()
    conn = database.connect()
    try:
        with conn:  # what synchronous=NORMAL may lose on power loss: the rows
            conn.execute("DELETE FROM jobs")
            conn.execute("DELETE FROM series")
            conn.execute("DELETE FROM instances")
        assert completion.recover_spool(conn, scp.spool, quiet_s=5.0) == 3
        got = {str(r[0]) for r in conn.execute("SELECT sop_instance_uid FROM instances")}
        assert got == {str(ds.SOPInstanceUID) for ds in instances}
        assert conn.execute("SELECT state FROM series").fetchall() == [("complete",)]
    finally:
        conn.close()


def test_no_connection_leak_between_associations(
        node: tuple[RecordingSCP, db.Database]) -> None:
    scp, database = node
    for i in range(3):
        assoc = associate(scp)
        assert assoc.send_c_store(nm_instance(f"series-d{i}", 0, slices=1)).Status == 0x0000
        assoc.release()
    wait_for_no_acceptor_threads()
    assert scp._pool.idle.qsize() <= 2
    pooled, fresh = scp._pool.idle.get_nowait(), database.connect()
    try:  # a connection of the node's own adapter (SQLite, or PostgreSQL under the switch)
        assert type(pooled) is type(fresh)
    finally:
        fresh.close()
        pooled.close()


def test_a_connection_that_failed_a_store_is_not_pooled_again(
        node: tuple[RecordingSCP, db.Database], monkeypatch: pytest.MonkeyPatch) -> None:
    """A PostgreSQL session cut by a server restart stays broken: reused, it would
    refuse every later store of the process (found by test_postgres_failures)."""
    scp, _ = node
    assoc = associate(scp)
    assert assoc.send_c_store(nm_instance("pool-a", 0, slices=1)).Status == 0x0000
    [pooled] = list(scp._pool.idle.queue)

    def cut(*_: Any, **__: Any) -> Any:
        raise ConnectionError("server closed the connection unexpectedly")

    monkeypatch.setattr(completion, "record_instance", cut)
    assert assoc.send_c_store(nm_instance("pool-b", 0, slices=1)).Status == 0xA700
    assert pooled not in list(scp._pool.idle.queue)
    monkeypatch.undo()
    assert assoc.send_c_store(nm_instance("pool-b", 0, slices=1)).Status == 0x0000
    assoc.release()


@pytest.mark.parametrize(("status", "comment", "instance_uid"), [
    (0x0000, None, "1.2.3.4"),
    (0xA700, "insufficient disk space on the node's spool", "1.2.3.45"),
    (0xC000, "odd", "1.2.840.113619.2.55.3.604688119.868.1234567890.123"),
])
def test_store_rsp_encoding_equals_pynetdicom(status: int, comment: str | None,
                                              instance_uid: str) -> None:
    from pynetdicom.dimse_messages import C_STORE_RSP
    from pynetdicom.dimse_primitives import C_STORE

    from service.net.store_rsp import LAST_COMMAND_FRAGMENT, encode_store_rsp

    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = 513
    rsp.AffectedSOPClassUID = codes.NM_IMAGE_STORAGE
    rsp.AffectedSOPInstanceUID = instance_uid
    rsp.Status = status
    rsp.ErrorComment = comment  # type: ignore[assignment]
    message = C_STORE_RSP()
    message.primitive_to_message(rsp)
    (pdata,) = list(message.encode_msg(1, 0))
    (context_id, pdv), = pdata.presentation_data_value_list
    ours = encode_store_rsp(513, codes.NM_IMAGE_STORAGE, instance_uid, status, comment)
    assert context_id == 1 and pdv == LAST_COMMAND_FRAGMENT + ours


def test_failure_status_and_comment_reach_the_scu(node: tuple[RecordingSCP, db.Database]) -> None:
    scp, database = node
    assoc = associate(scp)
    ds = nm_instance("series-e", 0)
    with warnings.catch_warnings():  # pydicom warns about the invalid UID we send
        warnings.simplefilter("ignore")
        ds.StudyInstanceUID = "1.2.3.04"  # invalid UID (leading zero): refused, with a reason
        rsp = assoc.send_c_store(ds)
    assoc.release()
    assert rsp.Status == 0xC000 and "StudyInstanceUID" in str(rsp.ErrorComment)
    assert rows(database, "SELECT COUNT(*) FROM instances") == [(0,)]


def test_concurrent_associations_complete_one_series(
        node: tuple[RecordingSCP, db.Database]) -> None:
    """Three SCUs at once, each storing 4 slices of one 12-slice series: one job."""
    scp, database = node
    statuses: list[int] = []
    lock = threading.Lock()

    def sender(part: int) -> None:
        assoc = associate(scp)
        for i in range(4):
            rsp = assoc.send_c_store(nm_instance("series-f", 4 * part + i, slices=12))
            with lock:
                statuses.append(int(rsp.Status))
        assoc.release()

    threads = [threading.Thread(target=sender, args=(p,)) for p in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert statuses == [0x0000] * 12
    assert rows(database, "SELECT COUNT(*) FROM instances") == [(12,)]
    assert rows(database, "SELECT instance_count, state FROM series") == [(12, "complete")]
    wait_for_no_acceptor_threads()


@pytest.mark.parametrize("acceptor_kind", ["event", "pynetdicom"])
def test_requests_sent_while_the_acceptance_is_still_being_recorded_are_answered(
        tmp_path: Path, acceptor_kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A request that arrives before the association thread has marked it established.

    pynetdicom sends the A-ASSOCIATE-AC, runs the EVT_ACCEPTED handlers (the
    node's audit record) and only then sets ``is_established``; its service
    classes answer nothing on an association not established ("the handler
    aborted"). The event acceptor served a C-ECHO or C-STORE arriving in that
    window at once in the DUL thread: no response, the SCU waited until its
    own timeout (CI: echoscu hung 60 s, a pynetdicom SCU got no C-ECHO status).
    A slow acceptance record widens the window here to half a second.
    """
    scp = make_scp(tmp_path, acceptor_kind)
    recorded = scp.handle_accepted

    def slow_record(event: evt.Event) -> None:
        time.sleep(0.5)
        recorded(event)

    monkeypatch.setattr(scp, "handle_accepted", slow_record)
    scp.start()
    try:
        for request in ("echo", "store"):
            assoc = associate(scp, dimse_timeout_s=5)
            if request == "echo":
                answer = assoc.send_c_echo()
            else:
                answer = assoc.send_c_store(nm_instance("early", 0, slices=1))
            assert answer.get("Status") == 0x0000, request
            assoc.release()
        assert len(rows(scp.database, "SELECT * FROM instances")) == 1
    finally:
        scp.stop()
