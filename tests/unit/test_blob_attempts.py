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
