"""Check the audit trail's hash chain (``dopanode audit verify``).

Every record the node writes ends with ``"hash"``, the SHA-256 of its own
text up to that field, and carries ``"prev"``, the hash of the record it
follows (:func:`service.audit_file.chained_line`). Each writer (one process:
``source.node_id`` and ``source.pid``) numbers its records (``source.seq``)
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

Reports name files, line numbers, ``seq`` and event names only: never a
record's patient or study identifiers.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from service.audit_file import HASH_SUFFIX, AuditTrail


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

    @property
    def intact(self) -> bool:
        return not self.problems


def trail_files(path: Path) -> list[Path]:
    """The trail's files, oldest first: the rotated ones by rotation time, then ``path``."""
    rotated = [p for _, p in AuditTrail(Path(path)).rotated_files()]
    return rotated + ([Path(path)] if Path(path).exists() else [])


def verify(path: Path) -> Report:
    """Check the chain of the trail whose current file is ``path`` (module docstring)."""
    return verify_files(trail_files(path))


def verify_files(files: Iterable[Path]) -> Report:
    """Check the chain over ``files`` read in the order given (oldest first)."""
    report = Report()
    seen: set[str] = set()
    last: dict[tuple[str, int], tuple[int, str]] = {}  # writer -> (seq, hash)
    for index, path in enumerate(files):
        report.files.append(path.name)
        with path.open("rb") as f:
            for number, raw in enumerate(f, 1):
                problem = _check_line(raw, index == 0, seen, last, report)
                if problem:
                    report.problems.append(Problem(path.name, number, problem))
    report.writers = len(last)
    return report


def _check_line(raw: bytes, oldest_file: bool, seen: set[str],
                last: dict[tuple[str, int], tuple[int, str]], report: Report) -> str:
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
    body = text[:found.start()] + "}"
    problems = []
    if hashlib.sha256(body.encode("ascii")).hexdigest() != stated:
        problems.append("altered: its text does not give its hash")
    if stated in seen:
        problems.append("the same record again")
    source = record.get("source") or {}
    try:
        writer, seq = (str(source["node_id"]), int(source["pid"])), int(source["seq"])
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
    lines = [head, *notes]
    if report.intact:
        lines.append("chain intact (records removed from the end of the trail, or a trail "
                     "rewritten with a new chain, are not visible here: compare with the "
                     "audit record repository)")
    else:
        lines.append(f"CHAIN BROKEN: {len(report.problems)} problem(s)")
        lines.extend(f"  {p}" for p in report.problems[:limit])
        if len(report.problems) > limit:
            lines.append(f"  ... and {len(report.problems) - limit} more")
    return "\n".join(lines)
