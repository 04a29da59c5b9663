"""Orthanc as the PACS: the fixture, Orthanc -> node SCP, and sender -> Orthanc.

The SCP standing in for the node here is a bare pynetdicom SCP with the
node's AE title (the node's own SCP is tested by the ingress tests); the full
round trip with the SR levels is assembled at integration.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread
from pynetdicom import AE, evt

from service.dicom import codes
from service.net.scu import Sender
from service.store import outbox
from service.store.outbox import RetryPolicy
from service.store.rows import open_rows
from service.testing.nmdata import write_marker_study
from service.testing.orthanc import OrthancPeer
from service.testing.ports import free_port
from service.testing.samples import write_sr
from service.testing.storage import node_rows, storage_settings

pytestmark = pytest.mark.slow  # each test starts its own Orthanc


class RecordingSCP:
    """A pynetdicom SCP as 'DOPANODE' that records (calling AE, SOP Instance UID)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.received: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        ae = AE(ae_title="DOPANODE")
        ae.add_supported_context(codes.VERIFICATION)
        ae.add_supported_context(codes.NM_IMAGE_STORAGE)
        self._server = ae.start_server(("127.0.0.1", self.port), block=False,
                                       evt_handlers=[(evt.EVT_C_STORE, self._store)])

    def _store(self, event: evt.Event) -> int:
        calling = event.assoc.requestor.ae_title.strip()
        with self._lock:
            self.received.append((calling, str(event.request.AffectedSOPInstanceUID)))
        return 0x0000

    def stop(self) -> None:
        self._server.shutdown()


@pytest.fixture
def scp() -> Iterator[RecordingSCP]:
    server = RecordingSCP()
    yield server
    server.stop()


@pytest.fixture
def nm_file(tmp_path: Path) -> Path:
    (path,) = write_marker_study(tmp_path / "nm", "multiframe", uid_seed="orthanc-peer")
    return path


def test_fixture_starts_orthanc_with_dopanode_as_modality(tmp_path):
    with OrthancPeer(tmp_path / "pacs", {"dopanode": ("DOPANODE", "127.0.0.1", 11112)}) as pacs:
        assert pacs.get("/system")["DicomAet"] == "ORTHANC"
        assert pacs.get("/modalities") == ["dopanode"]
        url = pacs.url
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/system", timeout=2)


def test_orthanc_echoes_and_stores_to_the_node(tmp_path, scp, nm_file):
    with OrthancPeer(tmp_path / "pacs",
                     {"dopanode": ("DOPANODE", "127.0.0.1", scp.port)}) as pacs:
        pacs.post("/modalities/dopanode/echo", json={})
        instance_id = pacs.upload(nm_file.read_bytes())
        pacs.post("/modalities/dopanode/store",
                  json={"Resources": [instance_id], "Synchronous": True})
    uid = str(dcmread(nm_file, stop_before_pixels=True).SOPInstanceUID)
    assert scp.received == [("ORTHANC", uid)]


def test_orthanc_echo_fails_when_the_node_is_down(tmp_path):
    with OrthancPeer(tmp_path / "pacs",
                     {"dopanode": ("DOPANODE", "127.0.0.1", free_port())}) as pacs:
        with pytest.raises(httpx.HTTPStatusError):
            pacs.post("/modalities/dopanode/echo", json={})


class _Dest:
    def __init__(self, port: int) -> None:
        self.name, self.ae_title, self.host, self.port = "pacs", "ORTHANC", "127.0.0.1", port


def test_sender_delivers_to_orthanc(tmp_path):
    db = node_rows(tmp_path / "node.sqlite3")
    db.migrate()
    ds = write_sr(tmp_path / "sr.dcm")
    conn = db.connect()
    with conn:
        outbox.enqueue(conn, 1, ["pacs"], tmp_path / "sr.dcm", ds.SOPClassUID,
                       ds.SOPInstanceUID)
    with OrthancPeer(tmp_path / "pacs") as pacs:
        sender = Sender(db, [_Dest(pacs.dicom_port)], "DOPANODE", RetryPolicy())
        report = sender.send_due("pacs")
        assert (report.sent, report.failed, report.retried) == (1, 0, 0)
        assert pacs.instance_uids() == {str(ds.SOPInstanceUID)}
    assert conn.execute("SELECT state FROM outbox").fetchone()[0] == "sent"
    conn.close()


def test_orthanc_stores_to_the_node_scp(tmp_path, nm_file):
    """Orthanc -> the node's own StorageSCP: the instance is spooled and recorded."""
    from service.config import NodeSettings, Settings
    from service.net.scp import StorageSCP
    from service.store.spool import Spool

    port = free_port()
    settings = Settings().model_copy(update={
        "node": NodeSettings(port=port, bind="127.0.0.1"),
        "storage": storage_settings(spool_dir=tmp_path / "spool",
                                   db_path=tmp_path / "node.sqlite3", min_free_mb=1)})
    db = open_rows(settings.storage)
    db.migrate()
    scp = StorageSCP(settings, db, Spool(settings.storage.spool_dir))
    scp.start()
    try:
        with OrthancPeer(tmp_path / "pacs", {"dopanode": ("DOPANODE", "127.0.0.1", port)}) as pacs:
            pacs.post("/modalities/dopanode/echo", json={})
            instance_id = pacs.upload(nm_file.read_bytes())
            pacs.post("/modalities/dopanode/store",
                      json={"Resources": [instance_id], "Synchronous": True})
    finally:
        scp.stop()
    uid = str(dcmread(nm_file, stop_before_pixels=True).SOPInstanceUID)
    conn = db.connect()
    try:
        row = conn.execute("SELECT calling_ae, path FROM instances WHERE sop_instance_uid = ?",
                           (uid,)).fetchone()
    finally:
        conn.close()
    assert row is not None and row[0] == "ORTHANC"
    stored = Path(row[1]) if Path(row[1]).is_absolute() else settings.storage.spool_dir / row[1]
    assert dcmread(stored).SOPInstanceUID == uid
