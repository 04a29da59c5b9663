"""Senders of several nodes on one PostgreSQL: NOTIFY wake-ups, one association per PACS.

A worker on one node finishes a job with three outputs; an idle sender of
another node, whose polling interval is an hour, delivers them at once to a
real pynetdicom storage SCP: only the notification can have woken it. One
NOTIFY per job's outputs, never one per output (a pending NOTIFY takes a
global lock at commit). Polling stays the fallback: the sender's other tests
enqueue without any notification.

Two senders (two nodes) and one destination: while one holds its association
(the destination holds its answer), the other's pass claims nothing and opens
no second association; every output arrives once.
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


def test_senders_of_two_nodes_open_one_association_per_destination(
        rows: PostgresRows, destination: HoldingDestination, tmp_path: Path) -> None:
    from service.store import outbox
    from service.testing.samples import write_sr

    conn = rows.connect()
    uids = []
    for i in range(3):
        ds = write_sr(tmp_path / f"sr{i}.dcm")
        ds_uid = str(ds.SOPInstanceUID)
        with conn:
            outbox.enqueue(conn, 1, ["pacs"], tmp_path / f"sr{i}.dcm", ds.SOPClassUID, ds_uid)
        uids.append(ds_uid)
    policy = RetryPolicy(base_s=0.2, cap_s=0.8, give_up_after_s=3600)
    first, second = (Sender(PostgresRows(rows._dsn), [Dest(destination.port)], "DOPANODE",
                            policy, batch_size=1) for _ in range(2))
    destination.hold()
    passes: dict[str, Any] = {}
    holder = threading.Thread(target=lambda: passes.update(first=first.send_due("pacs")))
    try:
        holder.start()
        assert destination.stored.wait(30)  # the first sender's C-STORE is on the wire
        busy = second.send_due("pacs")  # batch of one: without the lock it would send one
        assert busy.elsewhere and (busy.sent, busy.retried, busy.failed) == (0, 0, 0)
        assert len(destination.received) == 1
    finally:
        destination.release()
        holder.join(60)
        conn.close()
    assert passes["first"].sent == 1 and not passes["first"].elsewhere
    while (report := second.send_due("pacs")).sent:  # the lock went with the first's session
        assert not report.elsewhere
    assert sorted(destination.received) == sorted(uids)  # each once


def test_a_pass_gives_its_destination_lock_back_before_it_returns(
        rows: PostgresRows, destination: HoldingDestination, tmp_path: Path) -> None:
    """Not only when its session closes (the server does that after the client has gone,
    so another node's pass started at once could still find the lock held)."""
    from service.store import outbox
    from service.store.dialect import release_destination_lock, try_destination_lock
    from service.testing.samples import write_sr

    conn = rows.connect()
    try:
        ds = write_sr(tmp_path / "sr.dcm")
        with conn:
            outbox.enqueue(conn, 1, ["pacs"], tmp_path / "sr.dcm", ds.SOPClassUID,
                           str(ds.SOPInstanceUID))
        sender = Sender(PostgresRows(rows._dsn), [Dest(destination.port)], "DOPANODE",
                        RetryPolicy(base_s=0.2, cap_s=0.8, give_up_after_s=3600))
        for _ in range(20):  # a pass with an item and passes with none: each gives it back
            sender.send_due("pacs")
            assert try_destination_lock(conn, "pacs")
            release_destination_lock(conn, "pacs")
        assert str(ds.SOPInstanceUID) in destination.received
    finally:
        conn.close()
