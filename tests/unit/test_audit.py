"""The audit trail file: records, permissions, append-only, rotation, retention, writers.

Every test reads the file back as JSON lines.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from service import audit, audit_file, metrics
from service.api.access_audit import fingerprint, token_label
from service.audit import Outcome
from service.audit_file import AuditError, AuditTrail
from service.config import load_settings
from service.net.audit_events import ReceivedLedger, association_refused
from service.worker import audit_analysis

DAY_S = 86400.0
T0 = 1_790_000_000.0  # 2026-09-21, a fixed "now"


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text("ascii").splitlines()]


@pytest.fixture
def trail(tmp_path: Path) -> Any:
    opened = AuditTrail(tmp_path / "audit" / "audit.jsonl", fsync_interval_s=0).open()
    previous = audit.install(opened)
    yield opened
    audit.install(previous)
    opened.close()


def test_record_fields_as_written(trail: AuditTrail) -> None:
    audit.emit("association", audit.USER_AUTHENTICATION, audit.LOGIN,
               outcome=Outcome.MINOR_FAILURE, outcome_text="unknown_caller",
               participants=[audit.participant(audit.SOURCE_ROLE, requestor=True,
                                               ae_title="EVIL", host="10.1.2.3", port=4000)],
               objects=[{"kind": "study", "study_uid": "1.2.3", "patient_id": "PID-1"}])
    (record,) = lines(trail.path)
    assert record["event"] == "association"
    assert record["event_id"] == {"code": "110114", "scheme": "DCM",
                                  "meaning": "User Authentication"}
    assert record["event_type"]["code"] == "110122"
    assert record["outcome"] == 4 and record["outcome_text"] == "unknown_caller"
    assert record["time"].endswith("Z") and record["time"][10] == "T"
    (peer,) = record["participants"]
    assert peer["role"]["code"] == "110153" and peer["requestor"] is True
    assert (peer["ae_title"], peer["host"], peer["port"], peer["tls_subject"]) == (
        "EVIL", "10.1.2.3", 4000, None)
    assert record["objects"][0]["patient_id"] == "PID-1"
    assert record["source"]["pid"] == os.getpid() and record["source"]["seq"] == 1


def test_emit_without_a_trail_does_nothing_and_a_failed_write_never_raises(
        tmp_path: Path) -> None:
    previous = audit.install(None)
    try:
        audit.emit("application_start", audit.APPLICATION_ACTIVITY)  # no trail: no-op
        closed = AuditTrail(tmp_path / "a" / "audit.jsonl", fsync_interval_s=0).open()
        closed.close()
        audit.install(closed)
        before = metrics.AUDIT_WRITE_ERRORS._value.get()
        audit.emit("application_start", audit.APPLICATION_ACTIVITY)  # closed: counted
        assert metrics.AUDIT_WRITE_ERRORS._value.get() == before + 1
    finally:
        audit.install(previous)


def test_file_0600_in_folder_0700_and_a_loose_folder_is_refused(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        trail = AuditTrail(tmp_path / "deep" / "audit" / "audit.jsonl").open()
        trail.write({"event": "x"})
        trail.close()
    finally:
        os.umask(old)
    assert stat.S_IMODE(trail.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(trail.path.parent.stat().st_mode) == 0o700
    loose = tmp_path / "shared"
    loose.mkdir()
    loose.chmod(0o777)
    with pytest.raises(AuditError, match="writable by group or others"):
        AuditTrail(loose / "audit.jsonl").open()
    assert not (loose / "audit.jsonl").exists()


def test_appends_across_a_restart_never_rewrites(tmp_path: Path) -> None:
    settings = SimpleNamespace(enabled=True, path=tmp_path / "audit" / "audit.jsonl",
                               retention_days=365, rotate_mb=64, rotate_hours=24,
                               fsync_interval_s=0.05)
    previous = audit.install(None)
    try:
        audit.open_trail(settings)
        audit.emit("one", audit.QUERY)
        audit.close_trail()
        first_run = settings.path.read_bytes()
        settings.path.chmod(0o644)  # e.g. restored from a backup: tightened again
        audit.open_trail(settings)
        audit.emit("two", audit.QUERY)
        audit.close_trail()
    finally:
        audit.install(previous)
    assert settings.path.read_bytes().startswith(first_run)
    assert [r["event"] for r in lines(settings.path)] == [
        "audit_started", "one", "audit_stopped", "audit_started", "two", "audit_stopped"]
    assert stat.S_IMODE(settings.path.stat().st_mode) == 0o600
    assert lines(settings.path)[0]["event_type"]["code"] == "110134"  # recording started


def test_a_slow_fsync_never_holds_up_a_record(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The periodic fsync runs outside the write lock: an association thread
    appending its record does not wait for a busy disk (CI fuzz finding)."""
    trail = AuditTrail(tmp_path / "audit.jsonl", fsync_interval_s=3600).open()
    written, syncing = threading.Event(), threading.Event()
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:  # returns only once the second record is written
        syncing.set()
        written.wait(30)
        real_fsync(fd)

    try:
        trail.write({"event": "one"})
        monkeypatch.setattr(audit_file.os, "fsync", slow_fsync)
        syncer = threading.Thread(target=trail.sync_pending)
        syncer.start()
        assert syncing.wait(30)
        writer = threading.Thread(target=lambda: (trail.write({"event": "two"}), written.set()))
        writer.start()
        writer.join(30)
        assert written.is_set(), "the record waited for the fsync"  # the old lock: deadlock
        syncer.join(30)
        monkeypatch.setattr(audit_file.os, "fsync", real_fsync)
    finally:
        written.set()
        trail.close()
    assert [r["event"] for r in lines(tmp_path / "audit.jsonl")] == ["one", "two"]


def test_rotation_by_size_and_by_age(tmp_path: Path) -> None:
    clock = Clock()
    trail = AuditTrail(tmp_path / "audit.jsonl", rotate_mb=2000 / audit_file.MIB, rotate_hours=1,
                       fsync_interval_s=0, clock=clock).open()
    for i in range(60):  # ~ 100 bytes each: rotates by size about every 20 records
        trail.write({"event": "x", "i": i})
    by_size = trail.rotated_files()
    assert len(by_size) >= 2
    clock.now += 3600
    trail.write({"event": "after an hour"})  # the current file is an hour old: rotated
    trail.close()
    assert len(trail.rotated_files()) == len(by_size) + 1
    assert [r["event"] for r in lines(trail.path)] == ["after an hour"]
    every = [r for _, p in trail.rotated_files() for r in lines(p)] + lines(trail.path)
    assert [r.get("i") for r in every[:60]] == list(range(60))  # nothing lost, in order
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for _, p in trail.rotated_files())


def test_retention_deletes_only_expired_rotated_files(tmp_path: Path) -> None:
    clock = Clock()
    trail = AuditTrail(tmp_path / "audit.jsonl", retention_days=30, fsync_interval_s=0,
                       clock=clock).open()
    trail.write({"event": "old"})
    old = trail.rotate()
    clock.now += 20 * DAY_S
    trail.write({"event": "recent"})
    recent = trail.rotate()
    foreign = tmp_path / "audit-notes.jsonl"
    foreign.write_text("kept\n")
    clock.now += 10 * DAY_S + 60  # 'old' was rotated 30 days + 60 s ago
    trail.write({"event": "now"})
    assert trail.purge() == [old]
    assert recent is not None and recent.exists() and foreign.exists()
    clock.now += 1000 * DAY_S
    assert trail.purge() == [recent]
    assert [r["event"] for r in lines(trail.path)] == ["now"]  # the current file stays
    trail.close()


#: Another process writing the same trail (run with ``python -c``; fork with threads is unsafe).
WRITER = """
import sys
from pathlib import Path
from service.audit_file import AuditTrail, MIB
trail = AuditTrail(Path(sys.argv[1]), rotate_mb=20_000 / MIB, fsync_interval_s=0.01).open()
for i in range(int(sys.argv[3])):
    trail.write({"event": sys.argv[2], "i": i, "pad": "x" * 50})
trail.close()
"""


def test_concurrent_threads_and_processes_never_interleave_or_lose(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    shared = AuditTrail(path, rotate_mb=20_000 / audit_file.MIB, fsync_interval_s=0.01).open()

    def thread_writer(tag: str) -> None:
        for i in range(150):
            shared.write({"event": tag, "i": i, "pad": "x" * 50})

    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), f"p{k}", "150"])
             for k in range(2)]
    threads = [threading.Thread(target=thread_writer, args=(f"t{k}",)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [proc.wait(60) for proc in procs] == [0, 0]
    shared.close()
    files = [p for _, p in shared.rotated_files()] + [path]
    assert len(files) > 3  # both processes and the threads rotated the shared file
    seen: dict[str, list[int]] = {}
    for f in files:
        for record in lines(f):  # every line is one whole JSON object
            seen.setdefault(record["event"], []).append(record["i"])
    assert {tag: sorted(v) for tag, v in seen.items()} == {
        tag: list(range(150)) for tag in ("t0", "t1", "t2", "t3", "p0", "p1")}


def _header(study: str, series: str, patient: str, sop_class: str = "1.2.840.10008.5.1.4.1.1.20"
            ) -> Any:
    return SimpleNamespace(study_uid=study, series_uid=series, patient_id=patient,
                           accession="ACC", info=SimpleNamespace(sop_class_uid=sop_class))


def test_ledger_writes_one_record_per_association_with_counts(trail: AuditTrail) -> None:
    ledger = ReceivedLedger()
    peers = [audit.participant(audit.SOURCE_ROLE, requestor=True, ae_title="STORESCU")]
    ledger.open(1, peers)
    for _ in range(3):
        ledger.stored(1, _header("1.2.1", "1.2.1.1", "PID-A"))
    ledger.stored(1, _header("1.2.2", "1.2.2.1", "PID-B"))
    ledger.refused(1, "sop_class")
    ledger.open(2, peers)  # an echo only: no record
    ledger.close(2)
    ledger.close(1)
    ledger.close(1)  # closed twice (pynetdicom may): one record
    (record,) = lines(trail.path)
    assert record["event_id"]["code"] == "110104" and record["action"] == "C"
    assert record["outcome"] == 4 and record["details"] == {"instances": 4,
                                                            "refused": {"sop_class": 1}}
    studies = {o["study_uid"]: o for o in record["objects"]}
    assert studies["1.2.1"]["patient_id"] == "PID-A" and studies["1.2.1"]["instances"] == 3
    assert studies["1.2.1"]["series"] == [{"series_uid": "1.2.1.1", "instances": 3,
                                           "sop_classes": {"1.2.840.10008.5.1.4.1.1.20": 3}}]
    assert studies["1.2.2"]["patient_id"] == "PID-B"


def test_token_labels_never_hold_the_token() -> None:
    token = "s3cret-token-0123456789"
    assert token_label(f"Bearer {token}", token) == f"api.token sha256:{fingerprint(token)}"
    assert token_label("Bearer wrong-token", token) == (
        f"unknown sha256:{fingerprint('wrong-token')}")
    assert token_label(None, token) == "none" and token_label(None, None) == "loopback"
    assert token_label("Basic abc", token) == "malformed"
    assert token not in token_label(f"Bearer {token}", token)


def test_settings_section(tmp_path: Path) -> None:
    settings = load_settings(None, {})
    assert settings.audit.enabled and settings.audit.retention_days == 365
    assert str(settings.audit.path) == "var/audit/audit.jsonl"
    changed = load_settings(None, {"DOPANODE_AUDIT__RETENTION_DAYS": "3650",
                                   "DOPANODE_AUDIT__PATH": str(tmp_path / "a.jsonl")})
    assert changed.audit.retention_days == 3650 and changed.audit.path == tmp_path / "a.jsonl"


def test_a_refused_association_names_the_reason(trail: AuditTrail) -> None:
    primitive = SimpleNamespace(calling_ae_title="PACS  ", called_ae_title="DOPANODE")
    assoc = SimpleNamespace(requestor=SimpleNamespace(primitive=primitive, address="10.0.0.9",
                                                      port=1234),
                            acceptor=SimpleNamespace(ae_title="DOPANODE", address="0.0.0.0",
                                                     port=104),
                            dul=SimpleNamespace(socket=None))
    association_refused(assoc, "association_limit")
    [record] = lines(trail.path)
    assert (record["outcome"], record["outcome_text"]) == (4, "association_limit")
    assert record["participants"][0]["host"] == "10.0.0.9"


def test_a_failed_analysis_names_the_model_and_the_patient(trail: AuditTrail) -> None:
    job = SimpleNamespace(id=7, attempts=1, pipeline="dat_spect", study_uid="1.2.3",
                          series_uid="1.2.3.4", instance_uids=("1.2.3.4.5",))
    pipeline = SimpleNamespace(version="1.0", algorithm=SimpleNamespace(
        name="dopanode DaT", version="1.0", model_name="cnn", model_sha256="ab" * 32))
    inputs = SimpleNamespace(series={"primary": ({"PatientID": "PID-9",
                                                  "AccessionNumber": "A9"},)})
    inputs.primary = inputs.series["primary"]
    audit_analysis(job, pipeline, inputs, None, "bad_geometry", "slices not parallel")
    (record,) = lines(trail.path)
    assert (record["outcome"], record["outcome_text"]) == (4, "bad_geometry")
    assert record["details"]["algorithm"]["model_sha256"] == "ab" * 32
    assert record["objects"][0] == {"kind": "study", "study_uid": "1.2.3", "patient_id": "PID-9",
                                    "accession": "A9", "series_uid": "1.2.3.4", "instances": 1}
