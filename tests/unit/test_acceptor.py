"""The event-driven acceptor and the one-flush spool, in process with a pynetdicom SCU.

Covers: C-ECHO and C-STORE answered (the store served in the DUL thread),
several instances on one association, a resend deduplicated, release and
abort by the peer, the network idle timeout, associations' threads ending,
the one-flush and the POSIX adoption paths, and start-up recovery of a file
whose row was lost (``completion.recover_spool``) for files written this way.
No sleeps: every wait is a poll with a deadline.
"""

from __future__ import annotations

import sqlite3
import threading
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
from pynetdicom import AE, evt

from service.config import NodeSettings, Settings, StorageSettings
from service.dicom import codes
from service.net import acceptor
from service.net.scp import StorageSCP
from service.store import db
from service.store import series as completion
from service.store import spool as spool_mod
from service.store.spool import Spool, filesystem_type
from service.testing.polling import wait_until
from service.testing.ports import free_port


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

    def handle_store(self, event: evt.Event) -> Dataset | int:
        self.served_in.append(type(threading.current_thread()).__name__)
        return super().handle_store(event)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[RecordingSCP, db.Database]]:
    settings = Settings().model_copy(update={
        "node": NodeSettings(port=free_port(), bind="127.0.0.1"),
        "storage": StorageSettings(spool_dir=tmp_path / "spool",
                                   db_path=tmp_path / "node.sqlite3", min_free_mb=1)})
    database = db.Database(settings.storage.db_path)
    database.migrate()
    scp = RecordingSCP(settings, database, Spool(settings.storage.spool_dir))
    scp.served_in = []
    scp.start()
    try:
        yield scp, database
    finally:
        scp.stop()


def associate(scp: StorageSCP, aet: str = "STORESCU") -> Any:
    ae = AE(ae_title=aet)
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
    return [t for t in threading.enumerate()
            if isinstance(t, acceptor.EventAssociation | acceptor.EventDUL)]


def test_echo_store_resend_and_release(node: tuple[RecordingSCP, db.Database]) -> None:
    scp, database = node
    assoc = associate(scp)
    assert assoc.send_c_echo().Status == 0x0000
    instances = [nm_instance("series-a", i) for i in range(3)]
    for ds in instances:
        assert assoc.send_c_store(ds).Status == 0x0000
    assert assoc.send_c_store(instances[0]).Status == 0x0000  # resend: deduplicated
    assoc.release()
    assert assoc.is_released
    assert scp.served_in == ["EventDUL"] * 4  # served where it arrived, no hand-off
    stored = rows(database, "SELECT sop_instance_uid, path FROM instances")
    assert {u for u, _ in stored} == {str(ds.SOPInstanceUID) for ds in instances}
    for uid, relative in stored:
        assert dcmread(scp.spool.absolute(relative)).SOPInstanceUID == uid
    assert rows(database, "SELECT state FROM series") == [("complete",)]  # 3 of 3 slices
    assert list(scp.spool.tmp_dir.iterdir()) == []
    wait_until(lambda: not acceptor_threads(), 10, "the acceptor threads to end", 0.01)


def test_abort_by_peer_ends_the_association(node: tuple[RecordingSCP, db.Database]) -> None:
    scp, database = node
    assoc = associate(scp)
    assert assoc.send_c_store(nm_instance("series-b", 0)).Status == 0x0000
    assoc.abort()
    wait_until(lambda: not acceptor_threads(), 10, "the acceptor threads to end", 0.01)
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
    wait_until(lambda: not acceptor_threads(), 10, "the acceptor threads to end", 0.01)


def test_refuses_other_pynetdicom_major(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pynetdicom, "__version__", "4.0.0")
    with pytest.raises(RuntimeError, match="pynetdicom 3"):
        acceptor.make_server(AE(), ("127.0.0.1", 0), [])


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


def test_no_sqlite_connection_leak_between_associations(
        node: tuple[RecordingSCP, db.Database]) -> None:
    scp, _ = node
    for i in range(3):
        assoc = associate(scp)
        assert assoc.send_c_store(nm_instance(f"series-d{i}", 0, slices=1)).Status == 0x0000
        assoc.release()
    wait_until(lambda: not acceptor_threads(), 10, "the acceptor threads to end", 0.01)
    assert scp._pool.idle.qsize() <= 2
    assert isinstance(scp._pool.idle.get_nowait(), sqlite3.Connection)


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
    wait_until(lambda: not acceptor_threads(), 10, "the acceptor threads to end", 0.01)
