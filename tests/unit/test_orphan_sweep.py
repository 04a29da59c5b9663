"""The sweep of blobs no row refers to, on both rows adapters and a real S3 server.

An old orphan instance (a PUT whose row never committed) and the outputs of a
stale attempt are deleted; an instance with its row, the winning attempt's
outputs, the running attempt's outputs, a young orphan and an object that is
not of the node's grammar stay. On the local spool only outputs are swept
(instance files are recorded by ``recover_spool`` at start). The race with a
listener: a C-STORE whose conditional PUT found an orphan while the sweep
deletes it puts its copy back (PostgreSQL + S3, the sweep's lock held by
the test).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pydicom
import pytest

from service import metrics
from service.dicom import codes
from service.dicom.header import InstanceHeader
from service.scheduler import Scheduler
from service.store import db, jobs, series
from service.store.blobs import LocalBlobs, instance_key, output_key
from service.store.dialect import lock_blob_keys
from service.store.orphans import OrphanSweep
from service.store.spool import Spool
from service.testing.polling import wait_until
from service.testing.scu import store_nm_file

STUDY = "1.2.826.0.1.3680043.8.498.90"
GRACE_S = 3600.0
T0 = 1_800_000_000.0


def _deleted(kind: str) -> float:
    return float(metrics.ORPHAN_BLOBS_DELETED.labels(kind=kind)._value.get())


def _instance(conn: Any, blobs: Any, n: int, with_row: bool) -> str:
    """An instance object under its key; its row too when ``with_row``."""
    series_uid, sop = f"{STUDY}.{n}", f"{STUDY}.{n}.1"
    key = instance_key(STUDY, series_uid, sop)
    blobs.put_bytes(key, b"instance %d" % n, if_absent=True)
    if with_row:
        rec = db.InstanceRecord(sop, STUDY, series_uid, codes.NM_IMAGE_STORAGE,
                                "1.2.840.10008.1.2.1", "STORESCU", key, 10, T0)
        with conn:
            series.record_instance(conn, rec, InstanceHeader(codes.NM_IMAGE_STORAGE, 1, 2), 30.0)
    return key


def _job(conn: Any, blobs: Any, n: int) -> int:
    """A pending job of a series ``n`` (its instance stored and recorded)."""
    _instance(conn, blobs, n, with_row=True)
    uid = f"{STUDY}.{n}"
    job_id = jobs.create(conn, "fake_nm", STUDY, [jobs.JobInput("primary", uid, (f"{uid}.1",))],
                         f"hash{n}", 3, T0)
    conn.commit()
    assert job_id is not None
    return job_id


def _outputs(conn: Any, blobs: Any) -> dict[str, str]:
    """A job done by its second attempt (the first's output stale), one job running."""
    done = _job(conn, blobs, 11)
    first = jobs.claim(conn, "node-a:1:w0", 60.0)
    assert first is not None and first.id == done and first.lease_token
    stale = output_key(done, first.lease_token, f"{STUDY}.11.9")
    blobs.put_bytes(stale, b"stale attempt", if_absent=True)
    jobs.expire_leases(conn, "node-a:1:")
    second = jobs.claim(conn, "node-b:1:w0", 60.0)
    assert second is not None and second.id == done and second.lease_token
    winner = output_key(done, second.lease_token, f"{STUDY}.11.9")
    blobs.put_bytes(winner, b"winning attempt", if_absent=True)
    with conn:
        assert jobs.finish(conn, done, second.lease_token, {}, {}, [{
            "sop_class_uid": codes.BASIC_TEXT_SR_STORAGE, "sop_instance_uid": f"{STUDY}.11.9",
            "series_uid": f"{STUDY}.11.8", "study_uid": STUDY, "key": winner}], T0)
    busy = _job(conn, blobs, 13)
    running = jobs.claim(conn, "node-b:1:w1", 3600.0)
    assert running is not None and running.id == busy and running.lease_token
    current = output_key(busy, running.lease_token, f"{STUDY}.13.9")
    blobs.put_bytes(current, b"running attempt", if_absent=True)
    return {"stale": stale, "winner": winner, "running": current}


def _modified(blobs: Any, key: str) -> float:
    return dict(blobs.iter_modified(key.rsplit("/", 1)[0] + "/"))[key]


def test_old_orphans_go_referenced_and_young_ones_stay_on_s3(
        rows: Any, s3_server: Any, s3_bucket: str, tmp_path: Path) -> None:
    from service.store.s3blobs import S3Blobs

    blobs = S3Blobs(s3_bucket, endpoint=s3_server.endpoint, prefix="node-a/",
                    tmp_dir=tmp_path)
    conn = rows.connect()
    try:
        kept = _instance(conn, blobs, 1, with_row=True)
        orphan = _instance(conn, blobs, 2, with_row=False)
        outputs = _outputs(conn, blobs)
        blobs._s3.put_object(Bucket=s3_bucket, Key="node-a/instances/notes.txt", Body=b"x")

        young = instance_key(STUDY, f"{STUDY}.4", f"{STUDY}.4.1")
        newest_old = max(_modified(blobs, k) for k in (orphan, kept, *outputs.values()))

        def ticked() -> bool:  # (re)written until the server's clock has moved on
            blobs.put_bytes(young, b"young orphan")
            return _modified(blobs, young) > newest_old

        wait_until(ticked, 10, "the S3 server's clock to tick", 0.2)
        before = _deleted("instance"), _deleted("output")
        now = _modified(blobs, young) + GRACE_S - 0.5  # the young orphan just under the age
        counts = OrphanSweep(blobs, GRACE_S, batch=3).run(conn, now)
        assert (counts.instances_deleted, counts.outputs_deleted) == (1, 1)
        assert counts.listed == 9 and counts.old == 8  # the young orphan is not old yet
        assert (_deleted("instance"), _deleted("output")) == (before[0] + 1, before[1] + 1)
        left = set(blobs.list("instances/")) | set(blobs.list("outputs/"))
        jobs_inputs = {instance_key(STUDY, f"{STUDY}.{n}", f"{STUDY}.{n}.1") for n in (11, 13)}
        assert left == {kept, young, outputs["winner"], outputs["running"], *jobs_inputs,
                        "instances/notes.txt"}  # not of the node's grammar: never deleted
        assert OrphanSweep(blobs, GRACE_S).run(conn, now + 1.0).instances_deleted == 1  # now old
    finally:
        conn.close()


def test_the_local_spool_sweeps_outputs_never_instance_files(rows: Any, tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    blobs = LocalBlobs(spool.root, spool)
    conn = rows.connect()
    try:
        without_row = _instance(conn, blobs, 2, with_row=False)  # recover_spool's, at start
        outputs = _outputs(conn, blobs)
        scheduler = Scheduler(rows, spool, {}, blobs=blobs, orphan_grace_s=GRACE_S)
        scheduler.run_once(conn, time.time() + 2 * GRACE_S)  # the singleton's round sweeps
        assert not blobs.exists(outputs["stale"])
        counts = OrphanSweep(blobs, GRACE_S).run(conn, time.time() + 2 * GRACE_S)
        assert (counts.instances_deleted, counts.outputs_deleted) == (0, 0)
        assert blobs.exists(without_row) and not blobs.exists(outputs["stale"])
        assert blobs.exists(outputs["winner"]) and blobs.exists(outputs["running"])
        assert OrphanSweep(blobs, GRACE_S).run(conn, time.time()).outputs_deleted == 0
    finally:
        conn.close()


def test_a_listener_puts_back_an_orphan_the_sweep_deleted_under_it(
        postgres_dsn: str, s3_server: Any, s3_bucket: str, tmp_path: Path) -> None:
    """412 on an orphan, the sweep deletes it meanwhile: the listener's copy goes back."""
    from service.store.postgres import PostgresRows
    from service.store.s3blobs import S3Blobs
    from service.testing.nmdata import marker_image, write_marker_study

    rows = PostgresRows(postgres_dsn)
    rows.migrate()
    study = write_marker_study(tmp_path / "nm", "multiframe", uid_seed="u-orphan",
                               image=marker_image((16, 16, 6), (4.0, 4.0, 4.0)))[0]
    ds = pydicom.dcmread(study, stop_before_pixels=True)
    key = instance_key(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    spool = Spool(tmp_path / "spool")
    blobs = S3Blobs(s3_bucket, endpoint=s3_server.endpoint, tmp_dir=spool.tmp_dir)
    blobs.put_bytes(key, b"an earlier attempt", if_absent=True)  # a PUT whose row never came
    scp = _scp(tmp_path, rows, spool, blobs)
    sweep, answer = rows.connect(), dict[str, Any]()
    try:
        with sweep:
            lock_blob_keys(sweep, exclusive=True)  # the sweep is checking this batch
            store = threading.Thread(target=lambda: answer.update(rsp=store_nm_file(scp.port, study)))
            store.start()  # its PUT gets 412; its row waits for the lock
            wait_until(lambda: _waiting_for_advisory_lock(rows), 20, "the listener to wait")
            blobs.delete(key)  # the sweep found no row and deletes
        store.join(60)
        assert answer["rsp"].Status == 0x0000
        with blobs.local_copy(key) as copy:  # put back: the row has its object
            assert pydicom.dcmread(copy).SOPInstanceUID == ds.SOPInstanceUID
        assert sweep.execute("SELECT path FROM instances").fetchall() == [(key,)]
        sweep.commit()
        counts = OrphanSweep(blobs, GRACE_S).run(sweep, time.time() + 2 * GRACE_S)
        assert counts.instances_deleted == 0 and blobs.exists(key)  # the row keeps it
    finally:
        sweep.close()
        scp.stop()


def _waiting_for_advisory_lock(rows: Any) -> bool:
    conn = rows.connect()
    try:
        return bool(conn.execute("SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory'"
                                 " AND NOT granted").fetchone()[0])
    finally:
        conn.close()


def _scp(tmp_path: Path, rows: Any, spool: Spool, blobs: Any) -> Any:
    from service.config import NodeSettings, Settings, StorageSettings
    from service.net.scp import StorageSCP
    from service.testing.ports import free_port

    settings = Settings().model_copy(update={
        "node": NodeSettings(port=free_port(), bind="127.0.0.1"),
        "storage": StorageSettings(spool_dir=spool.root, min_free_mb=0)})
    scp = StorageSCP(settings, rows, spool, blobs=blobs)
    scp.start()
    return scp


@pytest.mark.parametrize("hours", [0.5, -1.0])
def test_the_grace_age_is_0_or_at_least_an_hour(hours: float) -> None:
    from pydantic import ValidationError

    from service.config import StorageSettings

    with pytest.raises(ValidationError, match="orphan_grace_h"):
        StorageSettings(orphan_grace_h=hours)
    assert StorageSettings(orphan_grace_h=0).orphan_grace_h == 0
    assert StorageSettings().orphan_grace_h == 24.0
