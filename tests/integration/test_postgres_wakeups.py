"""NOTIFY wakes the senders of every node when a job's outputs are queued (PostgreSQL).

A worker on one node finishes a job with three outputs; an idle sender of
another node, whose polling interval is an hour, delivers them at once to a
real pynetdicom storage SCP: only the notification can have woken it. One
NOTIFY per job's outputs, never one per output (a pending NOTIFY takes a
global lock at commit). Polling stays the fallback: the sender's other tests
enqueue without any notification.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest

from service.dicom.header import InstanceHeader
from service.net.scu import Sender
from service.pipelines.base import JobContext, LoadedInputs, PipelineOutput
from service.scheduler import Scheduler
from service.store import db, jobs, series
from service.store.blobs import LocalBlobs, instance_key
from service.store.dialect import OUTBOX_CHANNEL, notify_outputs_queued
from service.store.outbox import RetryPolicy
from service.store.postgres import PostgresRows
from service.store.spool import Spool
from service.testing.destination import HoldingDestination
from service.testing.nmdata import marker_image, write_marker_study
from service.testing.pipelines import FakeNmPipeline, small_sr
from service.testing.polling import wait_until
from service.worker import Worker

pytestmark = pytest.mark.slow  # a real server, a sender thread and a storage SCP

NOW = 1_800_000_000.0


class ThreeOutputs(FakeNmPipeline):
    """The fake NM pipeline with three objects per job."""

    def run(self, inputs: LoadedInputs, context: JobContext) -> PipelineOutput:
        output = super().run(inputs, context)
        source = inputs.primary[0]
        extra = tuple(small_sr(source, context.job_key, kind) for kind in ("second", "third"))
        return dataclasses.replace(output, datasets=(*output.datasets, *extra))


class Dest:
    def __init__(self, port: int) -> None:
        self.name, self.ae_title, self.host, self.port = "pacs", "PACS", "127.0.0.1", port


@pytest.fixture
def rows(postgres_dsn: str) -> PostgresRows:
    database = PostgresRows(postgres_dsn)
    database.migrate()
    return database


@pytest.fixture
def destination() -> Iterator[HoldingDestination]:
    dest = HoldingDestination()
    yield dest
    dest.server.shutdown()


def _listeners(conn: Any) -> int:
    count = int(conn.execute("SELECT COUNT(*) FROM pg_stat_activity WHERE query = ?",
                             (f"LISTEN {OUTBOX_CHANNEL}",)).fetchone()[0])
    conn.commit()
    return count


def _routed_job(rows: PostgresRows, spool: Spool, study: Path) -> int:
    """What a listener and the scheduler of a third node do: one job."""
    blobs = LocalBlobs(spool.root, spool)
    ds = pydicom.dcmread(study, stop_before_pixels=True)
    key = instance_key(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    size = blobs.put_bytes(key, study.read_bytes(), if_absent=True)
    rec = db.InstanceRecord(str(ds.SOPInstanceUID), str(ds.StudyInstanceUID),
                            str(ds.SeriesInstanceUID), str(ds.SOPClassUID),
                            "1.2.840.10008.1.2.1", "STORESCU", key, size, NOW)
    conn = rows.connect()
    try:
        with conn:
            series.record_instance(conn, rec, InstanceHeader(
                str(ds.SOPClassUID), ds.get("NumberOfFrames"), ds.get("NumberOfSlices"),
                ds.get("ImagesInAcquisition")), 10.0)
        scheduler = Scheduler(rows, spool, {"fake_nm": ThreeOutputs()}, blobs=blobs)
        for row in series.awaiting_routing(conn):
            with conn:
                assert scheduler.route(conn, row, NOW) == 1
        [job] = jobs.list_jobs(conn)
        return job.id
    finally:
        conn.close()


def test_outputs_queued_on_one_node_wake_an_idle_sender_on_another(
        rows: PostgresRows, destination: HoldingDestination, tmp_path: Path) -> None:
    study = write_marker_study(tmp_path / "nm", "multiframe",
                               image=marker_image((16, 16, 6), (4.0, 4.0, 4.0)),
                               uid_seed="u-wake")[0]
    spool = Spool(tmp_path / "spool")  # shared by the nodes (the NFS layout)
    stop, notified = threading.Event(), threading.Semaphore(0)
    calls: list[int] = []

    def on_outputs() -> None:
        calls.append(1)
        notified.release()

    counting = rows.start_wakeups(stop, on_outputs, OUTBOX_CHANNEL)
    sender = Sender(PostgresRows(rows._dsn), [Dest(destination.port)], "DOPANODE",
                    RetryPolicy(base_s=0.2, cap_s=0.8, give_up_after_s=3600),
                    poll_interval_s=3600.0, blobs=LocalBlobs(spool.root, spool))
    conn = rows.connect()
    try:
        sender.start()  # its first pass finds nothing; then it waits an hour
        wait_until(lambda: _listeners(conn) == 2, 20, "the sender and the counter to LISTEN")
        job_id = _routed_job(rows, spool, study)
        worker = Worker(PostgresRows(rows._dsn), spool, {"fake_nm": ThreeOutputs()}, ("pacs",),
                        lease_s=60, blobs=LocalBlobs(spool.root, spool))  # no in-process wake
        assert worker.run_once()
        done = jobs.get(conn, job_id)
        conn.commit()
        assert done is not None and done.state == "done" and len(done.outputs) == 3
        wait_until(lambda: len(destination.received) == 3, 30,
                   "the idle sender to deliver the three outputs")
        assert sorted(destination.received) == sorted(o["sop_instance_uid"] for o in done.outputs)
        assert notified.acquire(timeout=10)
        with conn:  # a sentinel after the job's: notifications arrive in commit order
            notify_outputs_queued(conn)
        assert notified.acquire(timeout=10)
        assert len(calls) == 2  # the job's three outputs sent one NOTIFY, the sentinel one
    finally:
        sender.stop()
        stop.set()
        counting.join(10)
        conn.close()
    assert not counting.is_alive() and sender.running_threads == 0
    check = rows.connect()
    try:  # both LISTEN sessions end with their threads
        wait_until(lambda: _listeners(check) == 0, 20, "the LISTEN sessions to close")
    finally:
        check.close()
