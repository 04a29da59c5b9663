"""Spool, UIDs, the rows (SQLite and PostgreSQL), series completion, routing, the worker."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import pydicom
import pytest

from service.dicom import codes
from service.dicom import header as header_mod
from service.dicom.uids import content_hash, is_valid_uid, validated_uid
from service.errors import AnalysisError
from service.pipelines.base import JobContext, LoadedInputs
from service.scheduler import NO_PIPELINE_REASON, Scheduler
from service.store import db, jobs, outbox
from service.store import series as completion
from service.store.retention import purge_expired
from service.store.spool import Spool
from service.testing.nmdata import marker_image, write_marker_study
from service.testing.pipelines import FakeNmPipeline as FakePipeline
from service.worker import Worker

NOW = 1_800_000_000.0


@pytest.fixture
def store(rows: Any, tmp_path: Path) -> tuple[Any, Spool, Any]:
    """(rows port, spool, a connection), on SQLite and on PostgreSQL."""
    spool = Spool(tmp_path / "spool")
    conn = rows.connect()
    yield rows, spool, conn
    conn.close()


def route(conn: Any, spool: Spool, at: float, max_attempts: int = 3,
          pipelines: dict[str, Any] | None = None, sweep: bool = False) -> list[int]:
    """One scheduler round (routing only, or also the quiet sweep); the new job ids."""
    before = {r[0] for r in conn.execute("SELECT id FROM jobs")}
    chosen = {"fake_nm": FakePipeline()} if pipelines is None else pipelines
    scheduler = Scheduler(None, spool, chosen, max_attempts=max_attempts)  # type: ignore[arg-type]
    if sweep:
        with conn:
            completion.sweep_quiet(conn, at)
    for row in completion.awaiting_routing(conn):
        with conn:
            scheduler.route(conn, row, at)
    return sorted({r[0] for r in conn.execute("SELECT id FROM jobs")} - before)


def receive(conn: Any, spool: Spool, path: Path, calling_ae: str = "STORESCU",
            at: float = NOW, quiet_s: float = 10.0, max_attempts: int = 3,
            pipelines: dict[str, Any] | None = None) -> int | None:
    """What the SCP does after writing (record, maybe complete), then a routing round."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    target = spool.instance_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    size = spool.write_atomic(target, [path.read_bytes()])
    rec = db.InstanceRecord(str(ds.SOPInstanceUID), str(ds.StudyInstanceUID),
                            str(ds.SeriesInstanceUID), str(ds.SOPClassUID), "1.2.840.10008.1.2.1",
                            calling_ae, spool.relative(target), size, at)
    header = header_mod.InstanceHeader(str(ds.SOPClassUID), ds.get("NumberOfFrames"),
                                       ds.get("NumberOfSlices"), ds.get("ImagesInAcquisition"))
    with conn:
        if not completion.record_instance(conn, rec, header, quiet_s):
            return None
    made = route(conn, spool, at, max_attempts, pipelines)
    return made[0] if made else None


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    root = tmp_path_factory.mktemp("nm")
    img = marker_image((16, 16, 6), (4.0, 4.0, 4.0))
    return {
        "mf": write_marker_study(root / "mf", "multiframe", image=img, uid_seed="u-mf"),
        "ps": write_marker_study(root / "ps", "per_slice", image=img, uid_seed="u-ps"),
    }


# --- UIDs and spool ---------------------------------------------------------------
@pytest.mark.parametrize("uid", ["1.2.840.10008.1.1", "0", "1.0.3", "2.25." + "9" * 38])
def test_valid_uids(uid: str) -> None:
    assert is_valid_uid(uid)


@pytest.mark.parametrize("uid", ["", "../etc/passwd", "1.2.03", "1..2", "1.2.", "1/2", "a.1",
                                 "1." + "1" * 70, None, "1.2 3"])
def test_invalid_uids(uid: Any) -> None:
    assert not is_valid_uid(uid)
    with pytest.raises(ValueError, match="not a valid UID"):
        validated_uid(uid, "X")


def test_spool_paths_only_from_valid_uids(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s")
    path = spool.instance_path("1.2.3", "1.2.4\x00", "1.2.5")
    assert path == spool.root / "instances" / "1.2.3" / "1.2.4" / "1.2.5.dcm"
    with pytest.raises(ValueError):
        spool.instance_path("1.2.3", "../../x", "1.2.5")
    with pytest.raises(ValueError):
        spool.output_path(-1, "1.2")
    with pytest.raises(ValueError):
        spool.absolute("../outside.dcm")


def test_spool_write_is_atomic_and_complete(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s")
    target = spool.instance_path("1.2", "1.3", "1.4")
    assert spool.write_atomic(target, [b"abc", memoryview(b"def")]) == 6
    assert target.read_bytes() == b"abcdef"
    assert list(spool.tmp_dir.iterdir()) == []

    def broken() -> Any:
        yield b"partial"
        raise OSError("disk went away")

    other = spool.instance_path("1.2", "1.3", "1.5")
    with pytest.raises(OSError):
        spool.write_atomic(other, broken())
    assert not other.exists() and list(spool.tmp_dir.iterdir()) == []
    (spool.tmp_dir / "x.part").write_bytes(b"orphan")
    assert spool.clean_tmp() == 1
    assert spool.free_mb() > 0


# --- database ---------------------------------------------------------------------
def test_migrate_is_idempotent_and_pragmas(store: Any) -> None:
    database, _, conn = store
    database.migrate()
    if conn.dialect.name == "sqlite":
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        sql = "SELECT name FROM sqlite_master WHERE type='table'"
    else:
        sql = "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
    tables = {r[0] for r in conn.execute(sql)}
    assert {"instances", "series", "jobs", "outbox"} <= tables


# --- completion -------------------------------------------------------------------
def test_expected_count_rules() -> None:
    nm = codes.NM_IMAGE_STORAGE
    pet, h, count = codes.PET_IMAGE_STORAGE, header_mod.InstanceHeader, header_mod.expected_count
    assert count(h(nm, 120, 120)) == 1
    assert count(h(nm, 1, 60)) == 60
    assert count(h(nm, None, 1, 64)) == 64
    assert count(h(nm, 1, 1)) is None
    assert count(h(codes.CT_IMAGE_STORAGE, 1, 60)) is None
    assert count(h(codes.MR_IMAGE_STORAGE, None, None)) is None  # MR: quiet time
    assert count(h(pet, None, 71, series_type="STATIC")) == 71
    assert count(h(pet, None, 71, number_of_time_slices=26, series_type="DYNAMIC")) == 71 * 26
    assert count(h(pet, None, 47, series_type="GATED", number_of_time_slots=8)) == 47 * 8
    assert count(h(pet, None, 71, series_type="DYNAMIC")) is None  # frames not announced
    for enhanced in codes.ENHANCED_IMAGE_SOP_CLASSES:
        assert count(h(enhanced, 200, None)) == 1
    assert content_hash(["1.2", "1.10"]) == content_hash(["1.10", "1.2"])


def test_multiframe_completes_at_once(store: Any, studies: dict[str, list[Path]]) -> None:
    _, spool, conn = store
    job_id = receive(conn, spool, studies["mf"][0])
    assert job_id is not None
    job = jobs.get(conn, job_id)
    assert job is not None and job.state == "pending" and len(job.instance_uids) == 1
    assert receive(conn, spool, studies["mf"][0]) is None  # resend: deduplicated
    assert conn.execute("SELECT COUNT(*) FROM instances").fetchone()[0] == 1
    assert conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 1


def test_per_slice_by_count(store: Any, studies: dict[str, list[Path]], tmp_path: Path) -> None:
    _, spool, conn = store
    files = []
    for i, path in enumerate(studies["ps"]):  # a vendor that states the series' slice count
        ds = pydicom.dcmread(path)
        ds.NumberOfSlices = len(studies["ps"])
        files.append(tmp_path / f"{i}.dcm")
        ds.save_as(files[-1])
    made = [receive(conn, spool, f) for f in files]
    assert made[:-1] == [None] * (len(files) - 1) and made[-1] is not None


def test_per_slice_by_quiet_time_and_supersede(store: Any,
                                               studies: dict[str, list[Path]]) -> None:
    _, spool, conn = store
    first, rest = studies["ps"][:-1], studies["ps"][-1]
    assert all(receive(conn, spool, p, quiet_s=10) is None for p in first)
    assert route(conn, spool, NOW + 9.9, sweep=True) == []
    made = route(conn, spool, NOW + 10.0, sweep=True)
    assert route(conn, spool, NOW + 20.0, sweep=True) == []  # once per content
    assert len(made) == 1
    # a late slice: the series receives again; its next completion supersedes
    assert receive(conn, spool, rest, at=NOW + 30, quiet_s=10) is None
    later = route(conn, spool, NOW + 40.0, sweep=True)
    assert len(later) == 1
    states = dict(conn.execute("SELECT id, state FROM jobs"))
    assert states == {made[0]: "superseded", later[0]: "pending"}
    newest = jobs.get(conn, later[0])
    assert newest is not None and len(newest.instance_uids) == len(studies["ps"])


# --- worker ------------------------------------------------------------------------
class Scripted:
    """Pipeline double whose run() follows a script of outcomes."""

    name = "scripted"

    def __init__(self, *outcomes: Any) -> None:
        self.outcomes = list(outcomes)
        self.calls = 0

    def run(self, inputs: LoadedInputs, context: JobContext) -> Any:
        self.calls += 1
        assert all(ds.Modality == "NM" for ds in inputs.primary)
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return FakePipeline().run(inputs, context)

    def failure_report(self, inputs: LoadedInputs, context: JobContext, reason: str) -> Any:
        return ()


def make_worker(store: Any, pipeline: Any, destinations: tuple[str, ...] = ("pacs",),
                **kw: Any) -> Worker:
    database, spool, _ = store
    return Worker(database, spool, {"fake_nm": pipeline} if pipeline is not None else {},
                  destinations, lease_s=60, **kw)


def test_no_pipeline_ignores_the_series_saying_so(store: Any,
                                                  studies: dict[str, list[Path]]) -> None:
    _, spool, conn = store
    assert receive(conn, spool, studies["mf"][0], pipelines={}) is None
    [row] = completion.list_series(conn)
    assert row.state == "ignored" and row.routing == {"node": NO_PIPELINE_REASON}
    assert conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 0


def test_series_no_pipeline_takes_is_ignored_with_reasons(
        store: Any, studies: dict[str, list[Path]], tmp_path: Path) -> None:
    """A CT beside an NM series: one job for the NM, the CT ignored with the reason."""
    _, spool, conn = store
    ds = pydicom.dcmread(studies["mf"][0])
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = codes.CT_IMAGE_STORAGE
    ds.Modality = "CT"
    ds.SeriesInstanceUID = ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    ds.save_as(tmp_path / "ct.dcm")
    assert receive(conn, spool, studies["mf"][0]) is not None
    assert receive(conn, spool, tmp_path / "ct.dcm", quiet_s=1.0) is None
    assert route(conn, spool, NOW + 2, sweep=True) == []
    states = {r.series_uid: (r.state, dict(r.routing)) for r in completion.list_series(conn)}
    assert states["1.2.3.4"] == ("ignored", {"fake_nm": "declined: modality is CT, not NM"})
    assert [j.pipeline for j in jobs.list_jobs(conn)] == ["fake_nm"]


def test_analysis_error_fails_with_reason(store: Any, studies: dict[str, list[Path]]) -> None:
    _, spool, conn = store
    job_id = receive(conn, spool, studies["mf"][0])
    pipe = Scripted(AnalysisError("not a DaT SPECT series", "not_dat"))
    make_worker(store, pipe).run_once()
    job = jobs.get(conn, job_id)  # type: ignore[arg-type]
    assert job is not None and (job.state, job.reason, job.reason_code) == (
        "failed", "not a DaT SPECT series", "not_dat")
    assert pipe.calls == 1


def test_crash_is_retried_then_done(store: Any, studies: dict[str, list[Path]]) -> None:
    _, spool, conn = store
    job_id = receive(conn, spool, studies["mf"][0])
    pipe = Scripted(RuntimeError("boom"), "ok")
    worker = make_worker(store, pipe)
    assert worker.run_once() and worker.run_once()
    job = jobs.get(conn, job_id)  # type: ignore[arg-type]
    assert job is not None and job.state == "done" and job.attempts == 2
    result = json.loads(job.result_json or "")
    assert result == {"schema": 1, "instances": 1}
    items = outbox.items_for_job(conn, job_id)  # type: ignore[arg-type]
    assert [i.destination for i in items] == ["pacs"]
    saved = pydicom.dcmread(spool.root / items[0].path)  # the outbox holds the blob key
    assert saved.SOPInstanceUID == items[0].sop_instance_uid
    # outputs/<job>/<lease token of the attempt that finished>/<sop>.dcm
    assert items[0].path.parts[:2] == ("outputs", str(job_id)) and len(items[0].path.parts) == 4
    assert job.outputs[0]["key"] == str(items[0].path)
    assert "total" in json.loads(job.stage_durations_json or "")


def test_keeps_crashing_stops_after_max_attempts(store: Any,
                                                 studies: dict[str, list[Path]]) -> None:
    _, spool, conn = store
    job_id = receive(conn, spool, studies["mf"][0], max_attempts=2)
    pipe = Scripted(RuntimeError("a"), ValueError("b"))
    worker = make_worker(store, pipe)
    worker.run_once()
    worker.run_once()
    assert not worker.run_once()  # nothing left
    job = jobs.get(conn, job_id)  # type: ignore[arg-type]
    assert job is not None and job.state == "failed" and job.attempts == 2
    assert job.reason_code == "internal_error" and "ValueError" in (job.reason or "")
    assert jobs.retry(conn, job_id) and jobs.get(conn, job_id).state == "pending"  # type: ignore
    assert not jobs.retry(conn, job_id)  # already pending
    assert [j.id for j in jobs.list_jobs(conn, state="pending")] == [job_id]


def test_expired_lease_is_taken_again_then_given_up(store: Any,
                                                    studies: dict[str, list[Path]]) -> None:
    _, spool, conn = store
    job_id = receive(conn, spool, studies["mf"][0], max_attempts=2)
    first = jobs.claim(conn, "dead-worker-1", 10.0, NOW)  # this worker "crashes"
    assert first is not None and first.id == job_id
    assert jobs.claim(conn, "other", 10.0, NOW + 5) is None  # lease still valid
    second = jobs.claim(conn, "dead-worker-2", 10.0, NOW + 11)
    assert second is not None and second.attempts == 2
    assert jobs.claim(conn, "other", 10.0, NOW + 22) is None
    job = jobs.get(conn, job_id)
    assert job is not None and job.state == "failed" and job.reason_code == "lease_expired"


def test_release_leases_gives_jobs_back(store: Any, studies: dict[str, list[Path]]) -> None:
    _, spool, conn = store
    job_id = receive(conn, spool, studies["mf"][0])
    jobs.claim(conn, "host:123:w0:abc", 60.0, NOW)
    assert jobs.release_leases(conn, "host:123:") == 1
    job = jobs.get(conn, job_id)
    assert job is not None and job.state == "pending" and job.attempts == 0


def test_superseded_while_running_drops_outputs(store: Any,
                                                studies: dict[str, list[Path]]) -> None:
    database, spool, conn = store
    job_id = receive(conn, spool, studies["mf"][0])
    entered, release = threading.Event(), threading.Event()

    class Blocking:
        name = "blocking"

        def run(self, inputs: LoadedInputs, context: JobContext) -> Any:
            entered.set()
            release.wait(10)
            return FakePipeline().run(inputs, context)

    worker = make_worker(store, Blocking())
    thread = threading.Thread(target=worker.run_once)
    thread.start()
    assert entered.wait(10)
    with conn:  # a new instance of the series arrives and completes it again
        conn.execute("UPDATE series SET state = 'receiving'")
        conn.execute("INSERT INTO instances VALUES ('1.2.9', (SELECT study_uid FROM series),"
                      " (SELECT series_uid FROM series), ?, '1.2.840.10008.1.2.1', 'X', 'p', 1, ?)",
                      (codes.NM_IMAGE_STORAGE, NOW))
        completion.complete_series(conn, jobs.get(conn, job_id).series_uid, NOW, "test")  # type: ignore[union-attr]
    assert len(route(conn, spool, NOW)) == 1  # the new content's job supersedes the running one
    release.set()
    thread.join(10)
    assert jobs.get(conn, job_id).state == "superseded"  # type: ignore[union-attr]
    assert outbox.items_for_job(conn, job_id) == []
    assert os.path.isdir(spool.root / "outputs")


def test_adopt_moves_only_tmp_files(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s")
    received = spool.tmp_dir / "tmpabc.dcm"
    received.write_bytes(b"x" * 10)
    target = spool.instance_path("1.2", "1.3", "1.4")
    assert spool.adopt(received, target) == 10 and target.read_bytes() == b"x" * 10
    assert not received.exists()
    elsewhere = tmp_path / "other.dcm"
    elsewhere.write_bytes(b"y")
    with pytest.raises(ValueError):
        spool.adopt(elsewhere, target)


def test_recover_spool_rerecords_lost_rows(store: Any, studies: dict[str, list[Path]]) -> None:
    """After a power loss took back committed rows, the fsynced files are the truth."""
    database, spool, conn = store
    for path in studies["ps"]:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        target = spool.instance_path(ds.StudyInstanceUID, ds.SeriesInstanceUID,
                                     ds.SOPInstanceUID)
        spool.write_atomic(target, [path.read_bytes()])
    receive(conn, spool, studies["mf"][0])  # one instance the database does know
    junk = spool.root / "instances" / "1.2" / "1.3" / "1.4.dcm"
    junk.parent.mkdir(parents=True)
    junk.write_bytes(b"not dicom")
    assert completion.recover_spool(conn, spool, quiet_s=5.0) == len(
        studies["ps"])
    assert completion.recover_spool(conn, spool, quiet_s=5.0) == 0
    count = conn.execute("SELECT COUNT(*) FROM instances").fetchone()[0]
    assert count == len(studies["ps"]) + 1
    made = route(conn, spool, 4_000_000_000.0, sweep=True)
    assert len(made) == 1 and len(jobs.get(conn, made[0]).instance_uids) == len(  # type: ignore[union-attr]
        studies["ps"])


@pytest.mark.slow
def test_jobs_command_line(store: Any, studies: dict[str, list[Path]], tmp_path: Path) -> None:
    import subprocess
    import sys

    database, spool, conn = store
    job_id = receive(conn, spool, studies["mf"][0])
    make_worker(store, Scripted(AnalysisError("not analysable here", "nope"))).run_once()
    if conn.dialect.name == "sqlite":
        env = {**os.environ, "DOPANODE_STORAGE__DB_PATH": str(database.path)}
    else:  # one setting moves the command to the PostgreSQL server
        env = {**os.environ, "DOPANODE_STORAGE__BACKEND": "postgres",
               "DOPANODE_STORAGE__POSTGRES_DSN": database._dsn}
    repo = Path(__file__).resolve().parents[2]

    def dopanode(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "service.cli", "jobs", *args], cwd=repo,
                              env=env, capture_output=True, text=True, timeout=60)

    listed = dopanode("list", "--state", "failed", "--pipeline", "fake_nm")
    assert listed.returncode == 0 and "not analysable here" in listed.stdout
    assert dopanode("list", "--pipeline", "dat_spect").stdout == ""
    shown = dopanode("show", str(job_id))
    assert shown.returncode == 0 and json.loads(shown.stdout)["reason_code"] == "nope"
    assert dopanode("retry", str(job_id)).returncode == 0
    again = dopanode("retry", str(job_id))
    assert again.returncode == 1 and "pending" in again.stderr
    assert dopanode("show", "999").returncode == 1
    assert jobs.get(conn, job_id).state == "pending"  # type: ignore[arg-type,union-attr]


def test_retention_purges_old_series_only(store: Any, studies: dict[str, list[Path]]) -> None:
    _, spool, conn = store
    old = receive(conn, spool, studies["mf"][0], at=NOW)
    assert make_worker(store, Scripted("ok")).run_once(now=NOW)
    assert jobs.get(conn, old).state == "done"  # type: ignore[arg-type,union-attr]
    for p in studies["ps"]:
        receive(conn, spool, p, at=NOW + 100 * 86400)
    files_before = sorted((spool.root / "instances").rglob("*.dcm"))
    assert purge_expired(conn, spool, cutoff=NOW - 1) == 0
    # the done job's output is still pending in the outbox: kept
    assert purge_expired(conn, spool, cutoff=NOW + 86400 * 50) == 0
    with conn:
        conn.execute("UPDATE outbox SET state = 'sent'")
        conn.execute("UPDATE jobs SET finished_at = ?", (NOW,))
    assert purge_expired(conn, spool, cutoff=NOW + 86400 * 50) == 1
    assert jobs.get(conn, old) is None  # type: ignore[arg-type]
    remaining = sorted((spool.root / "instances").rglob("*.dcm"))
    assert len(remaining) == len(files_before) - 1 == len(studies["ps"])
    assert not (spool.root / "outputs" / str(old)).exists()
    assert conn.execute("SELECT COUNT(*) FROM instances").fetchone()[0] == len(studies["ps"])


def test_unsavable_output_counts_as_failed_attempt(store: Any,
                                                   studies: dict[str, list[Path]]) -> None:
    from pydicom.dataset import Dataset

    from service.pipelines.base import PipelineOutput

    _, spool, conn = store
    job_id = receive(conn, spool, studies["mf"][0], max_attempts=1)

    class NoUid:
        name = "no-uid"

        def run(self, inputs: LoadedInputs, context: JobContext) -> Any:
            good = FakePipeline().run(inputs, context)
            return PipelineOutput(good.summary, (Dataset(),), {})

    make_worker(store, NoUid()).run_once()
    job = jobs.get(conn, job_id)  # type: ignore[arg-type]
    assert job is not None and job.state == "failed" and job.reason_code == "internal_error"
    assert outbox.items_for_job(conn, job_id) == []  # type: ignore[arg-type]


def test_a_new_content_names_the_outputs_already_sent(store: Any,
                                                      studies: dict[str, list[Path]]) -> None:
    """The job that supersedes a delivered result is told what it replaces (Predecessors)."""
    _, spool, conn = store
    contexts: list[JobContext] = []

    class Recording(Scripted):
        def run(self, inputs: LoadedInputs, context: JobContext) -> Any:
            contexts.append(context)
            return super().run(inputs, context)

    first = receive(conn, spool, studies["ps"][0], quiet_s=1.0)
    assert first is None and route(conn, spool, NOW + 2, sweep=True)
    worker = make_worker(store, Recording("ok", "ok"))
    assert worker.run_once(now=NOW + 2)
    [done] = jobs.list_jobs(conn, state="done")
    assert contexts[0].previous_outputs == ()
    with conn:
        conn.execute("UPDATE outbox SET state = 'sent'")
    receive(conn, spool, studies["ps"][1], at=NOW + 3, quiet_s=1.0)  # a late instance
    assert len(route(conn, spool, NOW + 5, sweep=True)) == 1
    assert worker.run_once(now=NOW + 5)
    [previous] = contexts[1].previous_outputs
    assert previous.sop_instance_uid == done.outputs[0]["sop_instance_uid"]
    assert previous.series_uid == done.outputs[0]["series_uid"]
    assert contexts[1].created_at == NOW + 5 and contexts[0].job_key != contexts[1].job_key


def test_deterministic_errors_fail_at_once_not_after_every_attempt(
        store: Any, studies: dict[str, list[Path]]) -> None:
    """Audit D18: malformed data reaching code that did not expect it ran max_attempts times."""
    _, spool, conn = store
    job_id = receive(conn, spool, studies["mf"][0], max_attempts=3)
    pipe = Scripted(TypeError("unexpected multiplicity"))
    worker = make_worker(store, pipe)
    assert worker.run_once() and not worker.run_once()
    job = jobs.get(conn, job_id)  # type: ignore[arg-type]
    assert job is not None and (job.state, job.attempts, job.reason_code) == (
        "failed", 1, "internal_error")
    assert "TypeError" in (job.reason or "") and "not retried" in (job.reason or "")
    assert pipe.calls == 1


def test_a_damaged_element_is_refused_when_read(tmp_path: Path) -> None:
    """A Rows (US) element of 3 bytes parses only when touched: read_series parses it now."""
    import struct

    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Rows = codes.NM_IMAGE_STORAGE, "1.2.3", 64
    ds.save_as(tmp_path / "ok.dcm", enforce_file_format=True)
    raw = (tmp_path / "ok.dcm").read_bytes()
    at = raw.index(b"\x28\x00\x10\x00US")
    (tmp_path / "bad.dcm").write_bytes(raw[:at + 6] + struct.pack("<H", 3) + raw[at + 8:] + b"\0")
    assert header_mod.read_series([tmp_path / "ok.dcm"])[0].Rows == 64
    with pytest.raises(AnalysisError, match=r"not readable DICOM \(BytesLengthException\)") as info:
        header_mod.read_series([tmp_path / "bad.dcm"])
    assert info.value.code == "not_dicom"


def test_a_worker_whose_lease_was_taken_over_queues_nothing(store: Any,
                                                            studies: dict[str, list[Path]]) -> None:
    """A worker stalled past its lease: the successor's claim fences its finish and outputs."""
    import time

    _, spool, conn = store
    job_id = receive(conn, spool, studies["mf"][0])
    entered, release = threading.Event(), threading.Event()

    class Stalled:
        name = "stalled"

        def run(self, inputs: LoadedInputs, context: JobContext) -> Any:
            entered.set()
            release.wait(10)
            return FakePipeline().run(inputs, context)

    thread = threading.Thread(target=make_worker(store, Stalled()).run_once)
    thread.start()
    assert entered.wait(10)
    # an hour later by the lease's clock: the stalled worker's lease has expired
    successor = jobs.claim(conn, "successor", 60.0, time.time() + 3600)
    assert successor is not None and successor.id == job_id and successor.attempts == 2
    release.set()
    thread.join(10)
    assert outbox.items_for_job(conn, job_id) == []  # type: ignore[arg-type]
    job = jobs.get(conn, job_id)  # type: ignore[arg-type]
    assert job is not None and (job.state, job.lease_token) == ("running", successor.lease_token)
