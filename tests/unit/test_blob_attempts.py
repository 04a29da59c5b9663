"""Outputs per attempt through the blobs port, on both rows and both blobs adapters.

A worker whose lease was taken over (a stale attempt) finishes after its
successor: its outputs land under its own lease token, never on the
successor's keys, and the fenced finish keeps them out of the outbox; the
retention purge removes every attempt's outputs; the scheduler and the
worker read the instances through the port (S3: from the bucket).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pydicom
import pytest

from service.pipelines.base import JobContext, LoadedInputs, PipelineOutput
from service.scheduler import Scheduler
from service.store import db, jobs, outbox
from service.store import series as completion
from service.store.blobs import BlobExists, LocalBlobs, instance_key, output_prefix
from service.store.retention import purge_expired
from service.store.spool import Spool
from service.testing.nmdata import marker_image, write_marker_study
from service.testing.pipelines import FakeNmPipeline
from service.testing.scu import store_nm_file
from service.worker import Worker

NOW = 1_800_000_000.0


class Marked(FakeNmPipeline):
    """The fake NM pipeline; its SR says which attempt made it; may wait for a gate."""

    def __init__(self, marker: str, gate: threading.Event | None = None) -> None:
        super().__init__()
        self.marker, self.gate = marker, gate
        self.started = threading.Event()

    def run(self, inputs: LoadedInputs, context: JobContext) -> PipelineOutput:
        output = super().run(inputs, context)
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(60)
        for ds in output.datasets:
            ds.SeriesDescription = self.marker
        return output


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    img = marker_image((16, 16, 6), (4.0, 4.0, 4.0))
    root = tmp_path_factory.mktemp("nm")
    return write_marker_study(root / "mf", "multiframe", image=img, uid_seed="u-att")[0]


@pytest.fixture
def node(rows: Any, blobs: Any, tmp_path: Path) -> Any:
    """(rows, spool, blobs, connection) with one received multi-frame series routed."""
    spool = blobs.spool if isinstance(blobs, LocalBlobs) else Spool(tmp_path / "spool")
    conn = rows.connect()
    yield rows, spool, blobs, conn
    conn.close()


def receive(node: Any, path: Path) -> int:
    """What the SCP does (durable blob, then the row), then one routing round."""
    _, spool, blobs, conn = node
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    key = instance_key(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    size = blobs.put_bytes(key, path.read_bytes(), if_absent=True)
    rec = db.InstanceRecord(str(ds.SOPInstanceUID), str(ds.StudyInstanceUID),
                            str(ds.SeriesInstanceUID), str(ds.SOPClassUID), "1.2.840.10008.1.2.1",
                            "STORESCU", key, size, NOW)
    with conn:
        assert completion.record_instance(conn, rec, _header(ds), 10.0)
    scheduler = Scheduler(None, spool, {"fake_nm": FakeNmPipeline()},  # type: ignore[arg-type]
                          blobs=blobs)
    for row in completion.awaiting_routing(conn):
        with conn:
            assert scheduler.route(conn, row, NOW) == 1  # the header was read through the port
    [job] = jobs.list_jobs(conn)
    return job.id


def _header(ds: Any) -> Any:
    from service.dicom import header as header_mod

    return header_mod.InstanceHeader(str(ds.SOPClassUID), ds.get("NumberOfFrames"),
                                     ds.get("NumberOfSlices"), ds.get("ImagesInAcquisition"))


def worker(node: Any, pipeline: Any) -> Worker:
    rows, spool, blobs, _ = node
    return Worker(rows, spool, {"fake_nm": pipeline}, ("pacs",), lease_s=60, blobs=blobs)


def test_a_stale_attempt_never_replaces_or_sends_its_outputs(node: Any, study: Path) -> None:
    _, _, blobs, conn = node
    job_id = receive(node, study)
    gate = threading.Event()
    stale_pipe, next_pipe = Marked("stale", gate), Marked("successor")
    stale, successor = worker(node, stale_pipe), worker(node, next_pipe)
    thread = threading.Thread(target=stale.run_once)
    thread.start()
    try:
        assert stale_pipe.started.wait(60)  # the stale attempt has read its inputs
        assert jobs.expire_leases(conn, stale.owner) == 1  # its lease is taken over...
        assert successor.run_once()  # ...by the successor, which finishes first
    finally:
        gate.set()
        thread.join(60)
    job = jobs.get(conn, job_id)
    assert job is not None and job.state == "done" and job.attempts == 2
    [item] = outbox.items_for_job(conn, job_id)
    [ref] = job.outputs
    assert str(item.path) == ref["key"]  # the finish's attempt reaches the outbox
    with blobs.local_copy(ref["key"]) as path:
        assert pydicom.dcmread(path).SeriesDescription == "successor"
    keys = blobs.list(output_prefix(job_id))
    assert len(keys) == 2 and ref["key"] in keys  # the stale attempt wrote beside it
    [stale_key] = [k for k in keys if k != ref["key"]]
    assert stale_key.split("/")[-1] == ref["key"].split("/")[-1]  # same output UID
    with blobs.local_copy(stale_key) as path:
        assert pydicom.dcmread(path).SeriesDescription == "stale"
    with pytest.raises(BlobExists):  # and a write onto the winner's key is refused
        blobs.put_bytes(ref["key"], b"stale bytes", if_absent=True)
    assert blobs.get_bytes(ref["key"]) != b"stale bytes"


def test_purge_removes_every_attempt_and_the_instances(node: Any, study: Path) -> None:
    _, _, blobs, conn = node
    job_id = receive(node, study)
    first = worker(node, Marked("first"))
    assert first.run_once()
    with conn:
        conn.execute("UPDATE outbox SET state = 'sent'")
        conn.execute("UPDATE jobs SET finished_at = ?", (NOW,))
    [instance] = blobs.list("instances/")
    assert blobs.list(output_prefix(job_id))
    assert purge_expired(conn, blobs, cutoff=NOW + 86400) == 1
    assert blobs.list(output_prefix(job_id)) == [] and not blobs.exists(instance)
    assert conn.execute("SELECT COUNT(*) FROM instances").fetchone()[0] == 0


# --- the SCP's ack on S3 ---------------------------------------------------------------
def _scp(tmp_path: Path, blobs: Any) -> Any:
    from service.config import NodeSettings, Settings, StorageSettings
    from service.net.scp import StorageSCP
    from service.testing.ports import free_port

    settings = Settings().model_copy(update={
        "node": NodeSettings(port=free_port(), bind="127.0.0.1"),
        "storage": StorageSettings(spool_dir=tmp_path / "spool", db_path=tmp_path / "n.sqlite3",
                                   min_free_mb=0)})
    database = db.Database(settings.storage.db_path)
    database.migrate()
    scp = StorageSCP(settings, database, Spool(tmp_path / "spool"), blobs=blobs)
    scp.start()
    return scp, database


def test_scp_acks_only_once_the_object_is_in_the_store(tmp_path: Path, study: Path,
                                                      s3_server: Any, s3_bucket: str) -> None:
    """Store down: 0xA700, no row, nothing kept; store up: the object first, then Success."""
    from service.store.s3blobs import S3Blobs
    from service.testing.ports import free_port

    down = S3Blobs(s3_bucket, endpoint=f"http://127.0.0.1:{free_port()}",
                   tmp_dir=tmp_path / "a" / "spool" / "tmp")
    scp, database = _scp(tmp_path / "a", down)
    try:
        rsp = store_nm_file(scp.port, study)
        assert rsp.Status == 0xA700 and rsp.ErrorComment == "object store unavailable"
        conn = database.connect()
        assert conn.execute("SELECT COUNT(*) FROM instances").fetchone()[0] == 0
        conn.close()
        assert list((tmp_path / "a" / "spool" / "tmp").iterdir()) == []  # nothing kept
    finally:
        scp.stop()
    up = S3Blobs(s3_bucket, endpoint=s3_server.endpoint, tmp_dir=tmp_path / "b" / "spool" / "tmp")
    scp, database = _scp(tmp_path / "b", up)
    try:
        assert store_nm_file(scp.port, study).Status == 0x0000
        assert store_nm_file(scp.port, study).Status == 0x0000  # a resend: a duplicate, same object
        conn = database.connect()
        [(key,)] = conn.execute("SELECT path FROM instances").fetchall()
        conn.close()
        assert up.list("instances/") == [key]
        assert up.get_bytes(key)[128:132] == b"DICM"
        assert list((tmp_path / "b" / "spool" / "tmp").iterdir()) == []
        assert list((tmp_path / "b" / "spool" / "instances").rglob("*.dcm")) == []
    finally:
        scp.stop()


# --- the sender reads outputs through the port ------------------------------------------
class _Dest:
    name, ae_title, host = "pacs", "PACS", "127.0.0.1"

    def __init__(self, port: int) -> None:
        self.port = port


def test_sender_reads_outputs_from_the_store_and_retries_while_it_is_down(
        tmp_path: Path, study: Path, s3_server: Any, s3_bucket: str) -> None:
    from service.net.scu import Sender
    from service.store.blobs import output_key
    from service.store.s3blobs import S3Blobs
    from service.testing.destination import HoldingDestination
    from service.testing.ports import free_port

    database = db.Database(tmp_path / "node.sqlite3")
    database.migrate()
    spool = Spool(tmp_path / "spool")
    up = S3Blobs(s3_bucket, endpoint=s3_server.endpoint, tmp_dir=spool.tmp_dir)
    ds = pydicom.dcmread(study, stop_before_pixels=True)
    key = output_key(1, "b" * 32, str(ds.SOPInstanceUID))
    up.put_bytes(key, study.read_bytes(), if_absent=True)
    conn = database.connect()
    with conn:
        [item_id] = outbox.enqueue(conn, 1, ["pacs"], key, ds.SOPClassUID, ds.SOPInstanceUID)
    pacs = HoldingDestination()
    try:
        down = S3Blobs(s3_bucket, endpoint=f"http://127.0.0.1:{free_port()}",
                       tmp_dir=spool.tmp_dir)
        report = Sender(database, [_Dest(pacs.port)], "DOPANODE", blobs=down).send_due("pacs")
        assert (report.sent, report.retried, report.failed) == (0, 1, 0)
        item = outbox.get(conn, item_id)
        assert item is not None and item.state == "pending"
        assert item.last_error == "object store unreachable"
        with conn:  # due again now
            conn.execute("UPDATE outbox SET next_attempt_at = 0")
        report = Sender(database, [_Dest(pacs.port)], "DOPANODE", blobs=up).send_due("pacs")
        assert (report.sent, report.failed) == (1, 0)
        assert pacs.received == [str(ds.SOPInstanceUID)]
        assert list(spool.tmp_dir.iterdir()) == []  # the pass's download is gone
    finally:
        pacs.stop()
        conn.close()


def test_worker_defers_a_job_while_the_store_is_down(tmp_path: Path, study: Path,
                                                     s3_server: Any, s3_bucket: str) -> None:
    """The store's outage is the node's, not the job's: deferred, no attempt counted."""
    from service.store.s3blobs import S3Blobs
    from service.testing.ports import free_port

    database = db.Database(tmp_path / "node.sqlite3")
    database.migrate()
    spool = Spool(tmp_path / "spool")
    up = S3Blobs(s3_bucket, endpoint=s3_server.endpoint, tmp_dir=spool.tmp_dir)
    node = (database, spool, up, database.connect())
    try:
        job_id = receive(node, study)
        down = S3Blobs(s3_bucket, endpoint=f"http://127.0.0.1:{free_port()}",
                       tmp_dir=spool.tmp_dir)
        stuck = Worker(database, spool, {"fake_nm": FakeNmPipeline()}, ("pacs",), lease_s=60,
                       blobs=down)
        assert stuck.run_once()
        job = jobs.get(node[3], job_id)
        assert job is not None and (job.state, job.reason_code, job.deferrals) == (
            "pending", "blob_store", 1)
        assert "object store unavailable" in (job.reason or "") and job.attempts == 0
        assert list(spool.tmp_dir.iterdir()) == []
    finally:
        node[3].close()
