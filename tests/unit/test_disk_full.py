"""A transient full disk (reliability audit D11): later, never a lost job, nothing half-written.

* the queue (both adapters): a deferred job is not claimable before its
  ``not_before``, its attempt is not counted, its deferrals are, a retry
  clears both;
* the worker on a real 2 MiB tmpfs spool: outputs that meet ENOSPC put the job
  back with a growing wait, the reason and a metric; no ``.part`` file stays;
  once space is free the job finishes; after ``max_deferrals`` it fails with
  ``disk_full``;
* the SCP on a real tmpfs spool (both acceptors): a C-STORE whose data set
  meets ENOSPC while it streams to ``tmp/`` is answered 0xA700 and leaves no
  file and no row; the association goes on; the resend after space is freed
  is stored. A database that is full when the instance is recorded (SQLite's
  SQLITE_FULL, injected) is 0xA700 too and the moved file is removed.

The tmpfs tests need root (``mount -t tmpfs``); where the machine cannot
mount they skip, saying why (``DOPANODE_REQUIRE_MOUNT=1`` makes that a
failure, as on CI), and the injected-ENOSPC tests (the spool's one write
function for the worker, pynetdicom's temporary file for the SCP) cover the
same paths everywhere.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from test_acceptor import RecordingSCP, nm_instance, wait_for_no_acceptor_threads
from test_store import NOW, receive

from service import metrics
from service.config import NodeSettings, Settings
from service.store import db, jobs, outbox
from service.store import series as series_module
from service.store.rows import open_rows
from service.store.spool import Spool, disk_full_cause, is_disk_full
from service.testing.nmdata import marker_image, write_marker_study
from service.testing.pipelines import FakeNmPipeline
from service.testing.polling import wait_until
from service.testing.ports import free_port
from service.testing.scu import send_echo
from service.testing.smallfs import SmallFsUnavailable, fill, small_filesystem
from service.testing.storage import env_postgres_dsn, node_rows, storage_settings
from service.worker import DeferPolicy, Worker

POLICY = DeferPolicy(base_s=60.0, cap_s=600.0, max_deferrals=2)


def counter(metric: Any, **labels: str) -> float:
    return float(metric.labels(**labels)._value.get())


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MiB tmpfs (root only)."""
    try:
        with small_filesystem(tmp_path / "small", 2048) as mount:
            yield mount
    except SmallFsUnavailable as exc:
        if os.environ.get("DOPANODE_REQUIRE_MOUNT") == "1":
            pytest.fail(f"a disk-full test needs a tmpfs: {exc}")
        pytest.skip(f"no small file system ({exc}); the injected-ENOSPC tests cover the paths")


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("nm")
    img = marker_image((16, 16, 6), (4.0, 4.0, 4.0))
    return write_marker_study(root / "mf", "multiframe", image=img, uid_seed="u-full")[0]


# --- classification -------------------------------------------------------------------
def test_disk_full_errors_are_recognised_also_when_chained() -> None:
    full_db = sqlite3.OperationalError("database or disk is full")
    full_db.sqlite_errorcode = 13
    pg_full = RuntimeError("could not extend file")
    pg_full.sqlstate = "53100"  # type: ignore[attr-defined]
    try:
        try:
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
        except OSError as inner:
            raise RuntimeError("while saving") from inner
    except RuntimeError as chained:
        wrapped = chained
    cases = {"ENOSPC": OSError(errno.ENOSPC, "No space left on device"),
             "SQLITE_FULL": full_db, "disk_full": pg_full, "EDQUOT": wrapped}
    for name, exc in cases.items():
        assert is_disk_full(exc) and disk_full_cause(exc) == name
    for other in (OSError(errno.EACCES, "denied"), sqlite3.OperationalError("database is locked"),
                ValueError("x")):
        assert not is_disk_full(other)


def test_policy_grows_to_its_cap() -> None:
    assert [POLICY.delay_s(n) for n in (1, 2, 3, 4, 5)] == [60.0, 120.0, 240.0, 480.0, 600.0]
    with pytest.raises(ValueError, match="base_s"):
        DeferPolicy(base_s=10.0, cap_s=5.0)


# --- the queue, both adapters ---------------------------------------------------------------
@pytest.fixture
def store(rows: Any, tmp_path: Path) -> Iterator[tuple[Any, Spool, Any]]:
    spool = Spool(tmp_path / "spool")
    conn = rows.connect()
    yield rows, spool, conn
    conn.close()


def test_deferred_job_waits_for_not_before_and_keeps_its_attempts(
        store: tuple[Any, Spool, Any], study: Path) -> None:
    _, spool, conn = store
    job_id = receive(conn, spool, study)
    assert job_id is not None
    job = jobs.claim(conn, "w", 60.0, now=NOW)
    assert job is not None and job.attempts == 1 and job.lease_token
    with conn:
        assert jobs.defer(conn, job_id, job.lease_token, "disk full (ENOSPC)", "disk_full",
                          120.0, now=NOW)
    deferred = jobs.get(conn, job_id)
    assert deferred is not None and (deferred.state, deferred.attempts, deferred.deferrals) == (
        "pending", 0, 1)
    assert deferred.not_before == pytest.approx(NOW + 120.0)
    assert deferred.reason_code == "disk_full" and deferred.to_dict()["deferrals"] == 1
    assert jobs.claim(conn, "w", 60.0, now=NOW + 119.0) is None  # not yet
    again = jobs.claim(conn, "w", 60.0, now=NOW + 121.0)
    assert again is not None and again.id == job_id and again.attempts == 1
    with conn:  # a stale token cannot defer the new claim
        assert not jobs.defer(conn, job_id, job.lease_token, "x", "disk_full", 1.0, now=NOW)
    with conn:
        assert jobs.fail(conn, job_id, again.lease_token or "", "x", "disk_full", NOW + 122)
    assert jobs.retry(conn, job_id)
    fresh = jobs.get(conn, job_id)
    assert fresh is not None and (fresh.deferrals, fresh.not_before) == (0, None)
    assert jobs.claim(conn, "w", 60.0, now=NOW) is not None  # claimable at once again


# --- the worker on a real full disk ---------------------------------------------------------
def _tmp_leftovers(spool: Spool) -> list[str]:
    return sorted(p.name for p in spool.tmp_dir.iterdir())


def test_worker_defers_on_a_full_spool_then_finishes(small_fs: Path, tmp_path: Path,
                                                      study: Path) -> None:
    database = node_rows(tmp_path / "node.sqlite3")  # the database has room; the spool not
    database.migrate()
    spool = Spool(small_fs / "spool")
    conn = database.connect()
    job_id = receive(conn, spool, study, pipelines={"fake_nm": FakeNmPipeline()})
    assert job_id is not None
    worker = Worker(database, spool, {"fake_nm": FakeNmPipeline()}, ("pacs",), lease_s=60,
                    defer_policy=POLICY)
    before = counter(metrics.JOBS_DEFERRED, pipeline="fake_nm", reason="disk_full")
    filler = fill(small_fs)
    assert worker.run_once()
    job = jobs.get(conn, job_id)
    assert job is not None and (job.state, job.deferrals, job.attempts) == ("pending", 1, 0)
    assert job.reason_code == "disk_full" and "ENOSPC" in (job.reason or "")
    assert "retried in 60 s" in (job.reason or "")
    assert job.not_before is not None and job.not_before > time.time() + 50
    assert counter(metrics.JOBS_DEFERRED, pipeline="fake_nm", reason="disk_full") == before + 1
    assert _tmp_leftovers(spool) == [] and outbox.items_for_job(conn, job_id) == []
    assert not worker.run_once()  # not before its time
    filler.unlink()  # an operator frees space
    assert worker.run_once(now=time.time() + 61)
    done = jobs.get(conn, job_id)
    assert done is not None and done.state == "done" and done.not_before is None
    [item] = outbox.items_for_job(conn, job_id)  # its path: the blob key, below the spool
    assert pydicom.dcmread(spool.root / item.path).SOPInstanceUID == item.sop_instance_uid
    conn.close()


def test_worker_gives_up_after_max_deferrals(small_fs: Path, tmp_path: Path,
                                             study: Path) -> None:
    database = node_rows(tmp_path / "node.sqlite3")
    database.migrate()
    spool = Spool(small_fs / "spool")
    conn = database.connect()
    job_id = receive(conn, spool, study, pipelines={"fake_nm": FakeNmPipeline()})
    worker = Worker(database, spool, {"fake_nm": FakeNmPipeline()}, ("pacs",), lease_s=60,
                    defer_policy=POLICY)
    fill(small_fs)
    later = time.time()
    for expected_wait in (60.0, 120.0):
        assert worker.run_once(now=later)
        job = jobs.get(conn, job_id)  # type: ignore[arg-type]
        assert job is not None and job.state == "pending"
        assert job.not_before == pytest.approx(time.time() + expected_wait, abs=5)
        later = time.time() + expected_wait + 1
    assert worker.run_once(now=later)
    job = jobs.get(conn, job_id)  # type: ignore[arg-type]
    assert job is not None and (job.state, job.reason_code, job.deferrals) == (
        "failed", "disk_full", 2)
    assert "3 tries" in (job.reason or "") and _tmp_leftovers(spool) == []
    conn.close()


def test_injected_enospc_at_the_single_write_defers(
        tmp_path: Path, study: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where no tmpfs can be mounted: ENOSPC raised by the spool's one write function."""
    database = node_rows(tmp_path / "node.sqlite3")
    database.migrate()
    spool = Spool(tmp_path / "spool")
    conn = database.connect()
    job_id = receive(conn, spool, study, pipelines={"fake_nm": FakeNmPipeline()})

    def full(*_: Any, **__: Any) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(spool, "write_atomic", full)
    worker = Worker(database, spool, {"fake_nm": FakeNmPipeline()}, ("pacs",), lease_s=60,
                    defer_policy=POLICY)
    assert worker.run_once()
    job = jobs.get(conn, job_id)  # type: ignore[arg-type]
    assert job is not None and (job.state, job.reason_code, job.deferrals) == (
        "pending", "disk_full", 1)
    conn.close()


# --- the SCP on a real full disk ------------------------------------------------------------
def start_scp(spool_dir: Path, tmp_path: Path, acceptor_kind: Any) -> RecordingSCP:
    settings = Settings().model_copy(update={
        "node": NodeSettings(port=free_port(), bind="127.0.0.1", acceptor=acceptor_kind),
        "storage": storage_settings(spool_dir=spool_dir, db_path=tmp_path / "node.sqlite3",
                                   min_free_mb=0)})
    database = open_rows(settings.storage)
    database.migrate()
    scp = RecordingSCP(settings, database, Spool(spool_dir, False))
    scp.served_in, scp.database, scp.completions = [], database, []
    scp.start()
    return scp


def associate(scp: RecordingSCP) -> Any:
    from pydicom.uid import ExplicitVRLittleEndian
    from pynetdicom import AE

    from service.dicom import codes

    ae = AE(ae_title="STORESCU")
    ae.dimse_timeout = 20
    ae.add_requested_context(codes.VERIFICATION)
    ae.add_requested_context(codes.NM_IMAGE_STORAGE, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="DOPANODE")
    assert assoc.is_established
    return assoc


def big_instance(seed: str) -> Any:
    """An NM instance of 512 KiB of pixels (16 frames of 128 x 128 uint16)."""
    import numpy as np

    ds = nm_instance(seed, 0, slices=1)
    ds.NumberOfFrames, ds.Rows, ds.Columns = 16, 128, 128
    ds.PixelData = np.arange(16 * 128 * 128, dtype=np.uint16).tobytes()
    return ds


def instance_rows(database: db.Database) -> int:
    conn = database.connect()
    try:
        return int(conn.execute("SELECT COUNT(*) FROM instances").fetchone()[0])
    finally:
        conn.close()


@pytest.mark.parametrize("acceptor_kind", ["event", "pynetdicom"])
def test_store_meeting_a_full_disk_is_0xa700_and_leaves_nothing(
        small_fs: Path, tmp_path: Path, acceptor_kind: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    scp = start_scp(small_fs / "spool", tmp_path, acceptor_kind)
    # The free-space checks (association, first fragment, every 16 MiB) are a forecast;
    # here they are told there is room, as when another process fills the disk after
    # them: the write itself meets the real ENOSPC
    monkeypatch.setattr(scp.spool, "free_mb", lambda: 1000.0)
    try:
        assoc = associate(scp)
        before = counter(metrics.INSTANCES_REJECTED, reason="out_of_space")
        filler = fill(small_fs, leave_bytes=128 * 1024)
        rsp = assoc.send_c_store(big_instance("full-disk"))
        assert rsp.Status == 0xA700 and "disk space" in str(rsp.ErrorComment)
        assert counter(metrics.INSTANCES_REJECTED, reason="out_of_space") == before + 1
        assert scp.served_in == [] and instance_rows(scp.database) == 0
        wait_until(lambda: not list(scp.spool.tmp_dir.iterdir()), 5.0, "tmp/ empty", 0.01)
        assert send_echo(assoc).Status == 0x0000  # the association goes on
        filler.unlink()
        assert assoc.send_c_store(big_instance("full-disk")).Status == 0x0000  # the resend
        assert instance_rows(scp.database) == 1
        assoc.release()
    finally:
        scp.stop()
        wait_for_no_acceptor_threads(15.0)


class _FullAfter:
    """pynetdicom's temporary data set file, full after ``budget`` bytes (ENOSPC)."""

    def __init__(self, real: Any, budget: int) -> None:
        self._real, self._left = real, budget

    def write(self, data: bytes) -> int:
        if len(data) > self._left:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._left -= len(data)
        return int(self._real.write(data))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


@pytest.mark.parametrize("acceptor_kind", ["event", "pynetdicom"])
def test_injected_enospc_while_receiving_is_0xa700(
        tmp_path: Path, acceptor_kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where no tmpfs can be mounted: the data set's temporary file fills after 64 KiB."""
    from tempfile import NamedTemporaryFile

    from pynetdicom import dimse_messages

    scp = start_scp(tmp_path / "spool", tmp_path, acceptor_kind)
    try:
        assoc = associate(scp)
        monkeypatch.setattr(dimse_messages, "NamedTemporaryFile",
                            lambda *a, **k: _FullAfter(NamedTemporaryFile(*a, **k), 65536))
        rsp = assoc.send_c_store(big_instance("injected-full"))
        assert rsp.Status == 0xA700 and "disk space" in str(rsp.ErrorComment)
        wait_until(lambda: not list(scp.spool.tmp_dir.iterdir()), 5.0, "tmp/ empty", 0.01)
        assert instance_rows(scp.database) == 0
        monkeypatch.undo()
        assert assoc.send_c_store(big_instance("injected-full")).Status == 0x0000
        assoc.release()
    finally:
        scp.stop()


def test_database_full_when_recording_is_0xa700_and_the_file_removed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scp = start_scp(tmp_path / "spool", tmp_path, "event")

    def full(*_: Any, **__: Any) -> Any:  # what the node's own adapter raises
        if env_postgres_dsn() is not None:
            import psycopg.errors

            raise psycopg.errors.DiskFull("could not extend file: No space left on device")
        exc = sqlite3.OperationalError("database or disk is full")
        exc.sqlite_errorcode = 13
        raise exc

    try:
        assoc = associate(scp)
        monkeypatch.setattr(series_module, "record_instance", full)
        rsp = assoc.send_c_store(nm_instance("db-full", 0, slices=1))
        assert rsp.Status == 0xA700 and "disk space" in str(rsp.ErrorComment)
        assert list((scp.spool.root / "instances").rglob("*.dcm")) == []
        assert list(scp.spool.tmp_dir.iterdir()) == []
        monkeypatch.undo()
        assert assoc.send_c_store(nm_instance("db-full", 0, slices=1)).Status == 0x0000
        assert len(list((scp.spool.root / "instances").rglob("*.dcm"))) == 1
        assoc.release()
    finally:
        scp.stop()
