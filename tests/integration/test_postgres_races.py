"""The queue and series bookkeeping under concurrency, on a real PostgreSQL on loopback.

What several nodes sharing one server must get right: claims (SKIP LOCKED,
one claimer per job), lease fencing on the server's clock, one scheduler at a
time (advisory lock), a series recorded through two listeners completing
once, and NOTIFY waking workers when a job is made (never per instance).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from service.dicom import codes
from service.dicom.header import InstanceHeader
from service.dicom.uids import content_hash
from service.scheduler import Scheduler
from service.store import db, jobs, series
from service.store.dialect import try_singleton
from service.store.postgres import PostgresRows
from service.store.spool import Spool

pytestmark = pytest.mark.slow  # real node processes or servers

STUDY = "1.2.826.0.1.3680043.8.498.80"
T0 = 1_800_000_000.0


@pytest.fixture
def rows(postgres_dsn: str) -> PostgresRows:
    database = PostgresRows(postgres_dsn)
    database.migrate()
    return database


@pytest.fixture
def conn(rows: PostgresRows) -> Iterator[Any]:
    c = rows.connect()
    yield c
    c.close()


def make_jobs(conn: Any, n: int, first: int = 0) -> list[int]:
    """``n`` pending jobs, one series each (one instance per series)."""
    made = []
    for i in range(first, first + n):
        uid = f"1.2.826.0.1.3680043.8.498.81.{i}"
        rec = db.InstanceRecord(f"{uid}.1", STUDY, uid, codes.NM_IMAGE_STORAGE,
                                "1.2.840.10008.1.2.1", "STORESCU", f"p/{i}", 1, T0)
        with conn:
            series.record_instance(conn, rec, InstanceHeader(codes.NM_IMAGE_STORAGE, 1, 1), 30.0)
            job_id = jobs.create(conn, "fake_nm", STUDY, [jobs.JobInput("primary", uid, (
                rec.sop_instance_uid,))], content_hash([rec.sop_instance_uid]), 3, T0)
        assert job_id is not None
        made.append(job_id)
    return made


def test_four_workers_race_and_each_job_is_claimed_once(rows: PostgresRows, conn: Any) -> None:
    made = make_jobs(conn, 40)
    gate, all_hold_one = threading.Barrier(4), threading.Barrier(4)
    claimed: dict[str, list[int]] = {}
    refused: list[int] = []

    def worker(name: str) -> None:
        c = rows.connect()
        mine = claimed.setdefault(name, [])
        try:
            gate.wait(10)
            while (job := jobs.claim(c, name, 60.0)) is not None:
                if not mine:
                    all_hold_one.wait(10)  # four claims held at once, then the race goes on
                mine.append(job.id)
                with c:
                    if not jobs.finish(c, job.id, job.lease_token or "", {"by": name}, {}, [],
                                       time.time()):
                        refused.append(job.id)
        finally:
            c.close()

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    every = [job_id for ids in claimed.values() for job_id in ids]
    assert sorted(every) == sorted(made)  # each job exactly once, none lost
    assert refused == []
    assert all(claimed.values())  # every worker took part
    done = jobs.list_jobs(conn, state="done", limit=100)
    assert len(done) == 40 and {j.attempts for j in done} == {1}


def test_an_expired_lease_cannot_finish_after_its_successor_claimed(
        rows: PostgresRows, conn: Any) -> None:
    [job_id] = make_jobs(conn, 1)
    stale = jobs.claim(conn, "stale", 0.2)  # the server's clock, a short lease
    assert stale is not None and stale.lease_token is not None
    server_now = conn.execute("SELECT extract(epoch from clock_timestamp())::float8").fetchone()[0]
    conn.commit()
    assert stale.lease_expires_at is not None
    assert abs(stale.lease_expires_at - (server_now + 0.2)) < 1.0
    other = rows.connect()
    try:
        deadline = time.monotonic() + 20
        successor = None
        while successor is None and time.monotonic() < deadline:  # until the lease expired
            successor = jobs.claim(other, "successor", 60.0)
        assert successor is not None and successor.id == job_id and successor.attempts == 2
        assert successor.lease_token != stale.lease_token
        with conn:  # every write of the stale worker is refused
            assert not jobs.renew(conn, job_id, stale.lease_token, 60.0)
            assert not jobs.still_ours(conn, job_id, stale.lease_token)
            assert not jobs.finish(conn, job_id, stale.lease_token, {"by": "stale"}, {}, [], T0)
            assert not jobs.fail(conn, job_id, stale.lease_token, "x", "x", T0)
            assert not jobs.requeue(conn, job_id, stale.lease_token, "x")
        with other:
            assert jobs.finish(other, job_id, successor.lease_token or "", {"by": "successor"},
                               {}, [], T0)
    finally:
        other.close()
    job = jobs.get(conn, job_id)
    assert job is not None and job.state == "done" and job.to_dict()["result"] == {
        "by": "successor"}


def test_two_schedulers_only_one_sweeps(rows: PostgresRows, tmp_path: Any) -> None:
    a, b = rows.connect(), rows.connect()
    spool = Spool(tmp_path / "spool")
    first, second = (Scheduler(rows, spool, {}) for _ in range(2))
    try:
        assert first.run_once(a, now=T0) == 0  # takes the singleton lock and keeps it
        rec = db.InstanceRecord("1.2.3.9.1", STUDY, "1.2.3.9", codes.CT_IMAGE_STORAGE,
                                "1.2.840.10008.1.2.1", "STORESCU", "p/ct", 1, T0)
        with a:
            series.record_instance(a, rec, InstanceHeader(codes.CT_IMAGE_STORAGE, 1, 1), 5.0)
        second.run_once(b, now=T0 + 100)  # quiet time long past, but not its turn
        assert [r.state for r in series.list_series(b)] == ["receiving"]
        first.run_once(a, now=T0 + 100)
        assert [r.state for r in series.list_series(b)] == ["ignored"]
        assert not try_singleton(b, "scheduler")
        a.close()  # the first node goes away: its session's lock with it
        # the server ends the closed session's backend (and frees its lock) asynchronously
        deadline = time.monotonic() + 10.0
        while not (taken := try_singleton(b, "scheduler")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert taken
    finally:
        a.close()
        b.close()


def test_a_series_recorded_through_two_listeners_completes_once(
        rows: PostgresRows, monkeypatch: pytest.MonkeyPatch) -> None:
    completions: list[str] = []
    real = series.complete_series

    def counting(conn: Any, series_uid: str, now: float, trigger: str) -> bool:
        done = real(conn, series_uid, now, trigger)
        if done:
            completions.append(series_uid)
        return done

    monkeypatch.setattr(series, "complete_series", counting)
    rng = random.Random(20261130)
    n = 40
    for trial in range(5):
        uid = f"1.2.826.0.1.3680043.8.498.82.{trial}"
        header = InstanceHeader(codes.NM_IMAGE_STORAGE, 1, n)  # per slice, n announced
        records = [db.InstanceRecord(f"{uid}.{i}", STUDY, uid, codes.NM_IMAGE_STORAGE,
                                     "1.2.840.10008.1.2.1", f"SCU{i % 2}", f"p/{i}", 1, T0 + i)
                   for i in range(n)]
        rng.shuffle(records)
        halves = [records[::2], records[1::2]]
        gate = threading.Barrier(2)

        recorded: list[series.Recorded] = []

        def listener(part: list[db.InstanceRecord], gate: threading.Barrier,
                     header: InstanceHeader, recorded: list[series.Recorded]) -> None:
            c = rows.connect()
            try:
                gate.wait(10)
                for rec in part:
                    with c:  # one transaction per acknowledged instance, as the SCP
                        recorded.append(series.record_instance(c, rec, header, 30.0))
            finally:
                c.close()

        threads = [threading.Thread(target=listener, args=(h, gate, header, recorded))
                   for h in halves]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(recorded) == n and all(recorded)  # no duplicate
        assert recorded.count(series.Recorded.COMPLETED) == 1, f"trial {trial}"
        assert completions.count(uid) == 1, f"trial {trial}"
        conn = rows.connect()
        try:
            [row] = [r for r in series.list_series(conn) if r.series_uid == uid]
        finally:
            conn.close()
        assert (row.state, row.instance_count) == ("complete", n)
        assert row.content_hash == content_hash([r.sop_instance_uid for r in records])


def test_notify_wakes_workers_when_a_job_is_made_never_per_instance(
        rows: PostgresRows, conn: Any) -> None:
    stop, woken = threading.Event(), threading.Semaphore(0)
    calls: list[float] = []

    def on_job() -> None:
        calls.append(time.monotonic())
        woken.release()

    thread = rows.start_wakeups(stop, on_job)
    try:
        deadline = time.monotonic() + 20
        while not conn.execute("SELECT 1 FROM pg_stat_activity WHERE query = 'LISTEN "
                               "dopanode_jobs' AND state = 'idle'").fetchone():
            conn.commit()
            assert time.monotonic() < deadline, "the listener never started"
        conn.commit()
        rec = db.InstanceRecord("1.2.3.10.1", STUDY, "1.2.3.10", codes.NM_IMAGE_STORAGE,
                                "1.2.840.10008.1.2.1", "STORESCU", "p/x", 1, T0)
        with conn:  # an instance: no notification
            series.record_instance(conn, rec, InstanceHeader(codes.NM_IMAGE_STORAGE, 1, 2), 30.0)
        make_jobs(conn, 1)  # a job: one
        assert woken.acquire(timeout=10)
        make_jobs(conn, 1, first=1)
        assert woken.acquire(timeout=10)
        assert len(calls) == 2  # notifications arrive in commit order: none came for the instance
    finally:
        stop.set()
        thread.join(10)


@pytest.mark.picks_adapter  # its own server, restarted
def test_worker_scheduler_and_wakeups_survive_a_server_restart(
        tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    """The server restarts under the node's loops: each opens a fresh session and goes on."""
    from pgserver import PgServer, server_bindir

    from service.testing.ports import free_port
    from service.worker import Worker

    bindir = server_bindir()
    assert bindir is not None
    server = PgServer(bindir, free_port())
    stop = threading.Event()
    try:
        server.start()
        database = PostgresRows(server.dsn())
        database.migrate()
        spool = Spool(tmp_path / "spool")
        worker = Worker(database, spool, {}, poll_interval_s=0.05)  # no pipeline: jobs fail
        scheduler = Scheduler(database, spool, {}, interval_s=0.05)
        loops = [threading.Thread(target=worker.run, args=(stop,), daemon=True),
                 threading.Thread(target=scheduler.run, args=(stop,), daemon=True),
                 database.start_wakeups(stop, worker.wake.set)]
        for t in loops[:2]:
            t.start()

        def outcome(first: int) -> None:
            conn = database.connect()
            try:
                [job_id] = make_jobs(conn, 1, first=first)
                rec = db.InstanceRecord(f"1.2.3.{first}.1", STUDY, f"1.2.3.{first}",
                                        codes.CT_IMAGE_STORAGE, "1.2.840.10008.1.2.1",
                                        "STORESCU", "p/ct", 1, time.time() - 60)
                with conn:  # a CT series whose quiet time has passed
                    series.record_instance(conn, rec, InstanceHeader(codes.CT_IMAGE_STORAGE,
                                                                     1, 1), 1.0)
                deadline = time.monotonic() + 30
                while True:
                    job = jobs.get(conn, job_id)
                    states = {r.series_uid: r.state for r in series.list_series(conn)}
                    conn.commit()
                    if (job is not None and job.reason_code == "pipeline_disabled"
                            and states[rec.series_uid] == "ignored"):
                        return
                    assert time.monotonic() < deadline, (job, states)
            finally:
                conn.close()

        outcome(first=100)
        server.restart()
        outcome(first=200)  # worker, scheduler (and its singleton lock) are back
        errors = {r.getMessage() for r in caplog.records}
        assert {"worker_loop_error", "scheduler_error"} <= errors  # the old sessions broke
    finally:
        stop.set()
        server.stop()


def test_two_senders_never_claim_one_outbox_item(rows: PostgresRows, conn: Any) -> None:
    from service.store import outbox, outbox_views

    with conn:
        for i in range(60):
            outbox.enqueue(conn, 1, ["pacs"], f"/spool/outputs/1/{i}.dcm",
                           "1.2.840.10008.5.1.4.1.1.88.33", f"1.2.3.{i}", now=T0)
    gate, both_hold = threading.Barrier(2), threading.Barrier(2)
    taken: dict[str, list[int]] = {"a": [], "b": []}

    def sender(name: str) -> None:
        c = rows.connect()
        try:
            gate.wait(10)
            while items := outbox.claim_due(c, "pacs", 60.0, now=T0 + 1, limit=5):
                if not taken[name]:
                    both_hold.wait(10)  # both hold a batch at once: the leases must not overlap
                for item in items:
                    taken[name].append(item.id)
                    with c:
                        assert outbox.mark_sent(c, item.id, T0 + 1, item.lease_token)
        finally:
            c.close()

    threads = [threading.Thread(target=sender, args=(n,)) for n in taken]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    every = taken["a"] + taken["b"]
    assert len(every) == len(set(every)) == 60 and taken["a"] and taken["b"]
    assert outbox_views.backlog_stats(conn, T0 + 1).pending == 0
