"""Check the audit trail's hash chain (``dopanode audit verify``).

Every record the node writes ends with ``"hash"``, the SHA-256 of its own
text up to that field, and carries ``"prev"``, the hash of the record it
follows (:func:`service.audit_file.chained_line`). Each writer (one process's
trail: ``source.node_id``, ``source.pid`` and ``source.run``) numbers its records (``source.seq``)
and links each to its previous one; a writer's first record links to the
trail's newest record when it started (``""`` when there was no chained
record). The trail is read oldest file first (the rotated files by their
rotation time, then the current file). Found and reported, by file and line:

* a record whose text no longer gives its hash (**altered**);
* a record whose ``prev`` is not the hash of its writer's previous record, or
  whose ``seq`` does not follow it (**records missing, reordered or changed**);
* a writer's first record that links to a hash not in the trail;
* a line that is not a record, a record without a hash after the chain
  began, the same record twice.

Not found (documented in docs/operations.md, "File handling"): records
removed from the end of the trail, and a trail rewritten as a whole with a
new chain (the chain has no secret). The copy at the audit record repository
is the check for both. Records written before the chain existed (no hash, at
the start of the trail) are counted, not judged. Chains that start in the
oldest file kept, from records of files retention has deleted, are counted
too.

With ``against`` (:func:`crosscheck`, ``dopanode audit verify --against
FILE``), the copy an audit record repository (ARR) keeps is the check for
what the chain cannot show: every record at the ARR (one per line, the
record's JSON from the line's first ``{``; repeats allowed, as syslog
delivers at least once) must be in the trail with the same hash, unless it
is older than the trail's oldest chained record (retention). A trail
rewritten with a new chain, or cut at its end, then misses the ARR's
records. The trail's records not at the ARR are counted: the newest ones
(not forwarded yet) apart from those followed by records that did arrive
(lost in forwarding, or removed at the ARR).

Reports name files, line numbers, ``seq``, event names and (against an ARR)
record times only: never a record's patient or study identifiers.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from service.audit_file import HASH_SUFFIX, AuditTrail

#: How many of the newest records' hashes a check keeps for links and repeats. A
#: writer's first record links to the trail's newest record when it started (read
#: under the rotation lock, so only the few records other processes appended
#: meanwhile lie between them); memory stays bounded for a trail of any length.
RECENT_HASHES = 100_000


class Recent:
    """The hashes of the newest :data:`RECENT_HASHES` records (a bounded set)."""

    def __init__(self, size: int) -> None:
        self._order: deque[str] = deque()
        self._set: set[str] = set()
        self._size = size

    def __contains__(self, digest: object) -> bool:
        return digest in self._set

    def __bool__(self) -> bool:
        return bool(self._set)

    def add(self, digest: str) -> None:
        self._order.append(digest)
        self._set.add(digest)
        if len(self._order) > self._size:
            self._set.discard(self._order.popleft())


@dataclass(frozen=True)
class Problem:
    """One place where the chain does not hold."""

    file: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.file} line {self.line}: {self.what}"


@dataclass
class Report:
    """What :func:`verify` found."""

    files: list[str] = field(default_factory=list)
    records: int = 0
    writers: int = 0
    unchained: int = 0
    start_before_kept: int = 0
    problems: list[Problem] = field(default_factory=list)
    #: The chained records' hashes in trail order (kept for :func:`crosscheck` only:
    #: about 150 bytes of memory per record).
    hashes: list[str] = field(default_factory=list)
    #: ``time`` of the oldest chained record ("" when none).
    first_time: str = ""
    #: The newest file ends in a line without its newline (not judged).
    incomplete_tail: bool = False
    #: Set by :func:`crosscheck`: records at the ARR, and the trail's records not there.
    arr_records: int | None = None
    newest_not_at_arr: int = 0
    not_at_arr_before_newest: int = 0

    @property
    def intact(self) -> bool:
        return not self.problems


def trail_files(path: Path) -> list[Path]:
    """The trail's files, oldest first: the rotated ones by rotation time, then ``path``."""
    rotated = [p for _, p in AuditTrail(Path(path)).rotated_files()]
    return rotated + ([Path(path)] if Path(path).exists() else [])


#: Tries to open a trail's files as one snapshot while rotations and purges go on.
OPEN_ATTEMPTS = 10
#: A check that finds problems looks again after this long and reports the second
#: look: a record in flight across a rotation (a writer that had not yet seen the
#: rename appends its line to the renamed file) is complete by then, an edit is not undone.
CONFIRM_DELAY_S = 0.5


def verify(path: Path, against: Path | None = None) -> Report:
    """Check the chain of the trail whose current file is ``path`` (module docstring),
    and with ``against`` the trail against that ARR copy (:func:`crosscheck`).

    The files are opened as one snapshot (:func:`open_snapshot`), so a trail
    that rotates meanwhile is read whole; problems are confirmed by a second
    look after :data:`CONFIRM_DELAY_S`.
    """
    report = _verify_once(path, against is not None)
    if report.problems:
        time.sleep(CONFIRM_DELAY_S)
        report = _verify_once(path, against is not None)
    if against is not None:
        crosscheck(report, against)
    return report


def _verify_once(path: Path, keep_hashes: bool) -> Report:
    handles = open_snapshot(path)
    try:
        return verify_open(handles, keep_hashes)
    finally:
        _close(handles)


def open_snapshot(path: Path) -> list[tuple[str, BinaryIO]]:
    """The trail's files (:func:`trail_files`) opened, oldest first, as one snapshot.

    A rotation between listing the files and opening the current one would
    leave the renamed file out; the files are listed again after opening, and
    opened again unless nothing was rotated meanwhile or the only new rotated
    file is the one opened as current. A file purged meanwhile is opened again too.

    Raises
    ------
    OSError
        The files cannot be opened (or no snapshot held in :data:`OPEN_ATTEMPTS`).
    """
    for _ in range(OPEN_ATTEMPTS):
        listed = trail_files(path)
        handles: list[tuple[str, BinaryIO]] = []
        try:
            for name in listed:
                handles.append((name.name, name.open("rb")))
        except FileNotFoundError:
            _close(handles)
            continue
        new = [p for _, p in AuditTrail(Path(path)).rotated_files() if p not in listed]
        current = (os.fstat(handles[-1][1].fileno()).st_ino
                   if listed and listed[-1] == Path(path) else None)
        if not new or (len(new) == 1 and current is not None
                       and _inode(new[0]) == current):
            return handles
        _close(handles)
    raise OSError(errno.EAGAIN, "the audit trail kept rotating while it was opened")


def _close(handles: Iterable[tuple[str, BinaryIO]]) -> None:
    for _, handle in handles:
        handle.close()


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


def verify_open(files: Sequence[tuple[str, BinaryIO]], keep_hashes: bool = False) -> Report:
    """Check the chain over open ``(name, file)`` pairs, oldest first.

    The newest file's last line may lack its newline: a record being written
    while the check reads (a writer appends a line with one ``write()``, which a
    reader may see in part), or cut by a power loss. It is not judged; the
    report says so (:attr:`Report.incomplete_tail`).
    """
    report = Report()
    seen = Recent(RECENT_HASHES)
    last: dict[tuple[str, int, str], tuple[int, str]] = {}  # writer -> (seq, hash)
    for index, (name, handle) in enumerate(files):
        report.files.append(name)
        for number, raw in enumerate(handle, 1):
            if not raw.endswith(b"\n") and index == len(files) - 1:
                report.incomplete_tail = True
                break
            problem = _check_line(raw, index == 0, seen, last, report, keep_hashes)
            if problem:
                report.problems.append(Problem(name, number, problem))
    report.writers = len(last)
    return report


def _check_line(raw: bytes, oldest_file: bool, seen: Recent,
                last: dict[tuple[str, int, str], tuple[int, str]], report: Report,
                keep_hashes: bool) -> str:
    """Judge one line; returns the problem ("" when it holds) and updates the state."""
    if not raw.endswith(b"\n"):
        return "incomplete line (cut off while being written?)"
    try:
        text = raw.decode("ascii").rstrip("\n")
        record = json.loads(text)
    except (UnicodeDecodeError, ValueError):
        return "not a JSON record"
    if not isinstance(record, dict):
        return "not a JSON record"
    found = HASH_SUFFIX.search(text)
    if found is None:
        if seen or last:
            return "record without a hash after the chain began"
        report.unchained += 1
        return ""
    report.records += 1
    stated = found.group(1)
    report.first_time = report.first_time or str(record.get("time", ""))
    if keep_hashes:
        report.hashes.append(stated)
    body = text[:found.start()] + "}"
    problems = []
    if hashlib.sha256(body.encode("ascii")).hexdigest() != stated:
        problems.append("altered: its text does not give its hash")
    if stated in seen:
        problems.append("the same record again")
    source = record.get("source") or {}
    try:
        writer = (str(source["node_id"]), int(source["pid"]), str(source.get("run", "")))
        seq = int(source["seq"])
    except (KeyError, TypeError, ValueError):
        return "; ".join([*problems, "no source (node_id, pid, seq)"])
    prev = record.get("prev")
    event = str(record.get("event", "?"))[:40]
    before = last.get(writer)
    if before is not None and seq == before[0] + 1:
        if prev != before[1]:
            problems.append(f"seq {seq} ({event}) does not follow its writer's seq {before[0]}: "
                            "a record between them is missing or was changed")
    elif seq == 1:
        if prev == "":
            if seen:
                problems.append(f"seq 1 ({event}) starts a new chain although the trail "
                                "already held chained records")
        elif prev not in seen:
            if oldest_file:
                report.start_before_kept += 1
            else:
                problems.append(f"seq 1 ({event}) follows a record that is not in the trail")
    elif before is None:
        if oldest_file:
            report.start_before_kept += 1
        else:
            problems.append(f"seq {seq} ({event}): this writer's earlier records are missing")
    else:
        problems.append(f"seq {seq} ({event}) after its writer's seq {before[0]}: "
                        "records missing or out of order")
    seen.add(stated)
    last[writer] = (seq, stated)
    return "; ".join(problems)


def crosscheck(report: Report, arr_copy: Path) -> None:
    """Compare the trail (``report`` made with ``keep_hashes``) with an ARR's copy.

    Adds a problem for each record at the ARR that the trail lacks (not older
    than the trail's oldest chained record) and for each ARR line whose text
    does not give its hash; counts the trail's records not at the ARR.
    """
    arr: set[str] = set()
    in_trail = set(report.hashes)
    with arr_copy.open("rb") as f:
        for number, raw in enumerate(f, 1):
            text = raw.decode("utf-8", "replace").strip()
            if "{" not in text:
                continue
            text = text[text.index("{"):]
            found = HASH_SUFFIX.search(text)
            if found is None:
                continue  # not a chained record (written before the chain)
            stated = found.group(1)
            if hashlib.sha256((text[:found.start()] + "}").encode("utf-8")).hexdigest() != stated:
                report.problems.append(Problem(arr_copy.name, number,
                                               "altered at the ARR: its text does not give "
                                               "its hash"))
                continue
            if stated in arr:
                continue  # delivered twice: at least once
            arr.add(stated)
            if stated not in in_trail:
                record = json.loads(text)
                if str(record.get("time", "")) < report.first_time:
                    continue  # older than the trail kept (retention)
                source = record.get("source") or {}
                report.problems.append(Problem(
                    arr_copy.name, number,
                    f"at the ARR, not in the trail: seq {source.get('seq', '?')} "
                    f"({str(record.get('event', '?'))[:40]}) of {record.get('time', '?')}: "
                    "removed from the trail, or the trail was rewritten"))
    report.arr_records = len(arr)
    present = [h in arr for h in report.hashes]
    newest = len(present) - (present[::-1].index(True) if True in present else len(present))
    report.newest_not_at_arr = len(present) - newest
    report.not_at_arr_before_newest = present[:newest].count(False)


def summary(report: Report, path: Path, limit: int = 20) -> str:
    """The text ``dopanode audit verify`` prints."""
    head = (f"audit trail {path}: {len(report.files)} file(s), {report.records} chained "
            f"record(s), {report.writers} writer(s)")
    notes = []
    if report.unchained:
        notes.append(f"{report.unchained} record(s) before the chain began (no hash)")
    if report.start_before_kept:
        notes.append(f"{report.start_before_kept} chain(s) start in the oldest file kept "
                     "(their earlier records were in files retention deleted)")
    if report.incomplete_tail:
        notes.append("the newest line is incomplete (being written, or cut by a power loss): "
                     "not judged")
    if report.arr_records is not None:
        notes.append(f"ARR copy: {report.arr_records} chained record(s); of the trail's, "
                     f"{report.newest_not_at_arr} newest not there yet, "
                     f"{report.not_at_arr_before_newest} missing there although later ones "
                     "arrived (lost in forwarding, or removed at the ARR)")
    lines = [head, *notes]
    if report.intact and report.arr_records is not None:
        lines.append("chain intact; every record at the ARR (since the trail's oldest) is in "
                     "the trail")
    elif report.intact:
        lines.append("chain intact (records removed from the end of the trail, or a trail "
                     "rewritten with a new chain, are not visible here: add --against with "
                     "the audit record repository's copy)")
    else:
        lines.append(f"CHAIN BROKEN: {len(report.problems)} problem(s)")
        lines.extend(f"  {p}" for p in report.problems[:limit])
        if len(report.problems) > limit:
            lines.append(f"  ... and {len(report.problems) - limit} more")
    return "\n".join(lines)
