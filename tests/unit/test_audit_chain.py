"""The audit trail's hash chain: written by every writer, checked by ``dopanode audit verify``.

Real files, real processes for the concurrent writers; each tampering a
person with write access might do is made on a copy of a good trail.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
from pathlib import Path
from typing import Any

import pytest

from service import audit_verify
from service.audit_file import AuditTrail
from service.audit_verify import trail_files, verify
from service.cli import main
from service.testing.audit_tamper import rechained

T0 = 1_790_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def write_trail(path: Path, pid: int, n: int, rotate_every: int = 0,
                clock: Clock | None = None) -> AuditTrail:
    trail = AuditTrail(path, fsync_interval_s=0, source={"pid": pid},
                       clock=clock or Clock()).open()
    for k in range(n):
        trail.write({"event": "instances_received", "objects": [{"patient_id": f"PID-{k}"}]})
        if rotate_every and (k + 1) % rotate_every == 0:
            trail.rotate()
    trail.close()
    return trail


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text("ascii").splitlines()]


def problems(path: Path) -> list[str]:
    return [str(p) for p in verify(path).problems]


@pytest.fixture(autouse=True)
def no_second_look_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tampering stays: the second look at a broken trail need not wait here."""
    monkeypatch.setattr(audit_verify, "CONFIRM_DELAY_S", 0.0)


@pytest.fixture
def good(tmp_path: Path) -> Path:
    """Two writers one after the other, the first rotating once: 6 + 4 records."""
    path = tmp_path / "audit" / "audit.jsonl"
    clock = Clock()
    write_trail(path, 101, 6, rotate_every=4, clock=clock)
    write_trail(path, 202, 4, clock=clock)
    return path


def test_every_record_carries_its_hash_and_the_one_it_follows(good: Path) -> None:
    (rotated,) = sorted(good.parent.glob("audit-*.jsonl"))
    first, second = records(rotated), records(good)
    assert [r["source"]["seq"] for r in first + second] == [1, 2, 3, 4, 5, 6, 1, 2, 3, 4]
    assert first[0]["prev"] == ""  # an empty trail: the chain starts here
    chain = first + second
    for before, after in zip(chain[:6], chain[1:7], strict=True):
        assert after["prev"] == before["hash"]  # the writer's own chain crosses the rotation
    assert second[2]["prev"] == second[1]["hash"]
    for line in (rotated.read_text() + good.read_text()).splitlines():
        body, _, digest = line.rpartition(',"hash":"')
        assert hashlib.sha256((body + "}").encode()).hexdigest() == digest[:-2]
    report = verify(good)
    assert report.intact and (report.records, report.writers, len(report.files)) == (10, 2, 2)


def test_the_second_writer_links_to_the_trails_newest_record(good: Path) -> None:
    second = records(good)
    writer_202 = [r for r in second if r["source"]["pid"] == 202]
    assert writer_202[0]["source"]["seq"] == 1
    assert writer_202[0]["prev"] == second[1]["hash"]  # 101's last record, seq 6


def test_an_edited_record_is_found(good: Path) -> None:
    lines = good.read_text("ascii").splitlines(keepends=True)
    lines[1] = lines[1].replace("PID-5", "PID-X")  # writer 101's seq 6
    good.write_text("".join(lines), "ascii")
    assert problems(good) == ["audit.jsonl line 2: altered: its text does not give its hash"]


def test_a_removed_record_is_found(good: Path) -> None:
    lines = good.read_text("ascii").splitlines(keepends=True)
    del lines[3]  # writer 202's seq 2 (the current file: 101's seq 5-6, then 202's 1-4)
    good.write_text("".join(lines), "ascii")
    (problem,) = problems(good)
    assert problem.startswith("audit.jsonl line 4: seq 3 (instances_received) after its "
                              "writer's seq 1: records missing")


def test_a_removed_record_renumbered_by_hand_is_still_found(good: Path) -> None:
    lines = good.read_text("ascii").splitlines(keepends=True)
    del lines[3]
    lines[3] = lines[3].replace('"seq":3', '"seq":2')  # hides the gap, breaks the hash
    good.write_text("".join(lines), "ascii")
    found = problems(good)
    assert found[0].startswith("audit.jsonl line 4: altered")
    assert "does not follow its writer's seq 1" in found[0]


def test_swapped_records_are_found(good: Path) -> None:
    lines = good.read_text("ascii").splitlines(keepends=True)
    lines[2], lines[3] = lines[3], lines[2]
    good.write_text("".join(lines), "ascii")
    assert len(problems(good)) >= 1


def test_a_duplicated_record_and_a_line_without_hash_are_found(good: Path) -> None:
    lines = good.read_text("ascii").splitlines(keepends=True)
    good.write_text("".join([*lines, lines[-1], '{"event":"x"}\n']), "ascii")
    found = problems(good)
    assert any("the same record again" in p for p in found)
    assert found[-1] == "audit.jsonl line 8: record without a hash after the chain began"


def test_records_written_before_the_chain_are_counted_not_judged(tmp_path: Path) -> None:
    path = tmp_path / "audit" / "audit.jsonl"
    path.parent.mkdir(mode=0o700)
    path.write_text('{"event":"old","source":{"seq":1}}\n' * 3, "ascii")
    write_trail(path, 101, 2)
    assert records(path)[3]["prev"] == ""  # the trail held no chained record
    report = verify(path)
    assert report.intact and (report.unchained, report.records) == (3, 2)


def test_files_deleted_by_retention_leave_chains_starting_in_the_oldest_kept(
        tmp_path: Path) -> None:
    path = tmp_path / "audit" / "audit.jsonl"
    write_trail(path, 101, 9, rotate_every=3)
    rotated = sorted(path.parent.glob("audit-*.jsonl"))
    rotated[0].unlink()  # what retention does to the oldest file
    report = verify(path)
    assert report.intact and report.start_before_kept == 1


def test_a_file_removed_from_the_middle_is_found(tmp_path: Path) -> None:
    path = tmp_path / "audit" / "audit.jsonl"
    write_trail(path, 101, 9, rotate_every=3)
    sorted(path.parent.glob("audit-*.jsonl"))[1].unlink()
    (problem,) = problems(path)
    assert "seq 7 (instances_received) after its writer's seq 3" in problem


def _writer(path: str, pid: int) -> None:
    trail = AuditTrail(Path(path), rotate_mb=0.004, fsync_interval_s=0,
                       source={"pid": pid}).open()
    for k in range(150):
        trail.write({"event": "api_access", "details": {"k": k}})
    trail.close()


def start_writers(tmp_path: Path, first_pid: int, n: int
                  ) -> tuple[Path, list[multiprocessing.process.BaseProcess]]:
    """``n`` forked processes writing (:func:`_writer`) one new trail; its path and them."""
    path = tmp_path / "audit" / "audit.jsonl"
    path.parent.mkdir(mode=0o700)
    context = multiprocessing.get_context("fork")
    procs = [context.Process(target=_writer, args=(str(path), first_pid + k)) for k in range(n)]
    for proc in procs:
        proc.start()
    return path, procs


def test_concurrent_processes_with_rotation_keep_one_verifiable_trail(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, procs = start_writers(tmp_path, 1000, 3)
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    report = verify(path)
    assert len(report.files) > 3  # rotated many times while all three wrote
    assert report.intact, report.problems[:5]
    assert (report.records, report.writers) == (450, 3)
    firsts = [r for f in [*sorted(path.parent.glob("audit-*.jsonl")), path]
              for r in records(f) if r["source"]["seq"] == 1]
    assert sum(r["prev"] == "" for r in firsts) == 1  # one chain: later writers link to it
    # a writer's first record links to one of the newest few: a short memory of hashes
    # suffices, so a check's memory does not grow with the trail
    monkeypatch.setattr(audit_verify, "RECENT_HASHES", 10)
    assert verify(path).intact


def test_the_memory_of_recent_hashes_is_bounded() -> None:
    recent = audit_verify.Recent(3)
    for digest in "abcde":
        recent.add(digest)
    assert [d in recent for d in "abcde"] == [False, False, True, True, True]


def test_the_command_exits_0_on_a_good_trail_and_1_on_a_broken_one(
        good: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "verify", "--path", str(good)]) == 0
    out = capsys.readouterr().out
    assert "10 chained record(s), 2 writer(s)" in out and "chain intact" in out
    good.write_text(good.read_text().replace("PID-2", "PID-9"), "ascii")
    assert main(["audit", "verify", "--path", str(good)]) == 1
    out = capsys.readouterr().out
    assert "CHAIN BROKEN: 1 problem(s)" in out and "line 5: altered" in out
    assert "PID-" not in out  # the report names lines, never identifiers
    assert main(["audit", "verify", "--path", str(good.parent / "nowhere" / "a.jsonl")]) == 1


def arr_copy(tmp_path: Path, trail_path: Path) -> Path:
    """The ARR's copy of every record so far: syslog lines, the first one twice."""
    lines = [line for f in trail_files(trail_path) for line in f.read_text().splitlines()]
    copy = tmp_path / "arr.log"
    copy.write_text("".join(f"<110>1 2026-09-21T00:00:00Z node dopanode-audit - - - {line}\n"
                            for line in [lines[0], *lines]), "utf-8")
    return copy


def test_against_the_arr_copy_a_rewritten_trail_is_found(good: Path, tmp_path: Path) -> None:
    copy = arr_copy(tmp_path, good)
    assert verify(good, copy).intact
    lines = good.read_text("ascii").splitlines(keepends=True)
    good.write_text("".join(rechained(lines, ("PID-2", "PID-9"))), "ascii")
    assert verify(good).intact  # the chain alone cannot show a rewrite ...
    found = [str(p) for p in verify(good, copy).problems]
    assert len(found) == 2  # ... the ARR's copy can: the changed record and the one after it
    assert found[0].startswith("arr.log line 10: at the ARR, not in the trail: seq 3 "
                               "(instances_received)")
    assert all("PID" not in p for p in found)


def test_against_the_arr_copy_a_cut_trail_is_found_and_new_records_are_counted(
        good: Path, tmp_path: Path) -> None:
    copy = arr_copy(tmp_path, good)
    lines = good.read_text("ascii").splitlines(keepends=True)
    good.write_text("".join(lines[:-2]), "ascii")  # the two newest records removed
    assert verify(good).intact
    assert len(verify(good, copy).problems) == 2
    good.write_text("".join(lines), "ascii")
    write_trail(good, 303, 3)  # newer records, not forwarded yet
    report = verify(good, copy)
    assert report.intact and (report.arr_records, report.newest_not_at_arr) == (10, 3)


def test_an_arr_copy_line_altered_at_the_arr_and_older_records_are_told_apart(
        good: Path, tmp_path: Path) -> None:
    copy = arr_copy(tmp_path, good)
    lines = copy.read_text().splitlines(keepends=True)
    lines[3] = lines[3].replace("PID-2", "PID-7")
    copy.write_text("".join(lines), "utf-8")
    assert [str(p) for p in verify(good, copy).problems] == [
        "arr.log line 4: altered at the ARR: its text does not give its hash"]
    (rotated,) = sorted(good.parent.glob("audit-*.jsonl"))
    copy = arr_copy(tmp_path, good)
    rotated.unlink()  # retention deleted the oldest file; the ARR keeps its records
    report = verify(good, copy)
    assert report.intact and report.start_before_kept == 1


def test_a_record_the_node_could_not_write_shows_as_missing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from service import audit_file

    path = tmp_path / "audit" / "audit.jsonl"
    trail = AuditTrail(path, fsync_interval_s=0, clock=Clock()).open()
    trail.write({"event": "a"})
    real = audit_file._write_all

    def disk_full(fd: int, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(audit_file, "_write_all", disk_full)
    with pytest.raises(OSError):
        trail.write({"event": "b"})
    monkeypatch.setattr(audit_file, "_write_all", real)
    trail.write({"event": "c"})
    trail.close()
    (problem,) = problems(path)
    assert problem.startswith("audit.jsonl line 2: seq 3 (c) after its writer's seq 1")


def test_the_newest_line_being_written_is_not_judged_an_older_cut_line_is(
        good: Path) -> None:
    with good.open("ab") as f:
        f.write(b'{"time":"2026-09-21T14:14:00.000000Z","event":"half')  # no newline yet
    report = verify(good)
    assert report.intact and report.incomplete_tail
    (rotated,) = sorted(good.parent.glob("audit-*.jsonl"))
    with rotated.open("ab") as f:
        f.write(b'{"time":"2026-09-21T14:14:00.000000Z","event":"cut')
    found = problems(good)
    assert found[0] == f"{rotated.name} line 5: incomplete line (cut off while being written?)"


def test_the_watch_sets_the_metrics_and_logs_a_broken_chain(
        good: Path, caplog: pytest.LogCaptureFixture) -> None:
    from service import metrics
    from service.audit_watch import ChainWatch

    watch = ChainWatch(good, 3600.0, clock=lambda: 1234.0)
    assert watch.check() is not None
    assert metrics.AUDIT_CHAIN_PROBLEMS._value.get() == 0
    assert metrics.AUDIT_CHAIN_RECORDS._value.get() == 10
    assert metrics.AUDIT_CHAIN_CHECKED._value.get() == 1234.0
    good.write_text(good.read_text().replace("PID-2", "PID-9"), "ascii")
    with caplog.at_level("INFO", logger="service.audit_watch"):
        watch.check()
    assert metrics.AUDIT_CHAIN_PROBLEMS._value.get() == 1
    broken = [r for r in caplog.records if r.getMessage() == "audit_chain_broken"]
    assert broken and broken[0].fields["first"] == [  # type: ignore[attr-defined]
        "audit.jsonl line 5: altered: its text does not give its hash"]
    assert "PID" not in caplog.text


def test_a_check_while_processes_write_and_rotate_finds_nothing_wrong(tmp_path: Path) -> None:
    path, procs = start_writers(tmp_path, 2000, 2)
    reports = []
    while any(proc.is_alive() for proc in procs):
        reports.append(verify(path))
    for proc in procs:
        proc.join(60)
    assert len(reports) >= 3
    assert all(r.intact for r in reports), [r.problems[:3] for r in reports if not r.intact]
    assert verify(path).records == 300


def test_two_writers_with_one_host_name_and_pid_stay_apart(tmp_path: Path) -> None:
    path = tmp_path / "audit" / "audit.jsonl"  # pid 1 in two containers, one volume
    first, second = (AuditTrail(path, fsync_interval_s=0, source={"pid": 1}).open()
                     for _ in range(2))
    for k in range(5):
        first.write({"event": "association", "details": {"k": k}})
        second.write({"event": "api_access", "details": {"k": k}})
    first.close()
    second.close()
    runs = {r["source"]["run"] for r in records(path)}
    assert len(runs) == 2
    report = verify(path)
    assert report.intact and (report.records, report.writers) == (10, 2)
