"""Series bookkeeping: recording instances, completion, and what routing decided.

A series moves ``receiving -> complete -> routed | ignored``:

* every stored instance is recorded by :func:`record_instance` (the SCP and
  start-up recovery call the same function), in the transaction that
  inserts its row, so an acknowledged instance and its series' completion
  appear together or not at all;
* it is *complete* when as many instances are there as its header announces
  (:func:`service.dicom.header.expected_count`: NM per slice or multi-frame,
  PET static, dynamic and gated, Enhanced objects), else after its caller's
  quiet time (no new instance for ``quiet_s`` seconds: CT, MR, a series whose
  header announces nothing);
* routing (:mod:`service.scheduler`) then offers it to the pipelines: it is
  *routed* when at least one took it (jobs exist), *ignored* otherwise, with
  each pipeline's reason kept in ``routing_json``.

An instance arriving later puts the series back to ``receiving``; its next
completion has a new content hash (SHA-256 over the sorted SOP Instance
UIDs) and routing makes new jobs that supersede the older ones.

Functions take a connection and do not commit unless their docstring says so.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum

from service.dicom.header import READ_ERRORS, InstanceHeader, expected_count, read_header
from service.dicom.uids import content_hash
from service.store import db
from service.store.rows import Connection
from service.store.spool import Spool

log = logging.getLogger(__name__)


class Recorded(IntEnum):
    """What :func:`record_instance` did (false only for a duplicate)."""

    DUPLICATE = 0
    STORED = 1
    COMPLETED = 2  # stored, and it completed its series by count


def record_instance(
    conn: Connection, rec: db.InstanceRecord, info: InstanceHeader, quiet_s: float
) -> Recorded:
    """Insert a stored instance and count it into its series.

    Completes the series when the count is reached. Call inside the
    transaction that acknowledges the instance.
    """
    if not db.insert_instance(conn, rec):
        return Recorded.DUPLICATE
    note_instance(conn, rec, expected_count(info), quiet_s)
    if complete_if_ready(conn, rec.series_uid, rec.received_at):
        return Recorded.COMPLETED
    return Recorded.STORED


def note_instance(
    conn: Connection,
    rec: db.InstanceRecord,
    expected: int | None,
    quiet_s: float,
) -> None:
    """Count a newly inserted instance into its series (creating the row)."""
    conn.execute(
        "INSERT INTO series (series_uid, study_uid, calling_ae, first_received_at,"
        " last_received_at, instance_count, expected_count, quiet_s, state)"
        " VALUES (?, ?, ?, ?, ?, 1, ?, ?, 'receiving')"
        " ON CONFLICT (series_uid) DO UPDATE SET"
        " last_received_at = CASE WHEN excluded.last_received_at > series.last_received_at"
        " THEN excluded.last_received_at ELSE series.last_received_at END,"
        " instance_count = series.instance_count + 1,"
        " expected_count = COALESCE(excluded.expected_count, series.expected_count),"
        " quiet_s = excluded.quiet_s, state = 'receiving'",
        (rec.series_uid, rec.study_uid, rec.calling_ae, rec.received_at, rec.received_at,
         expected, quiet_s),
    )


def complete_if_ready(conn: Connection, series_uid: str, now: float) -> bool:
    """Complete the series if its announced count is reached; True if it did."""
    row = conn.execute(
        "SELECT instance_count, expected_count, state FROM series WHERE series_uid = ?",
        (series_uid,),
    ).fetchone()
    if row is None or row[2] != "receiving" or row[1] is None or row[0] < row[1]:
        return False
    return complete_series(conn, series_uid, now, trigger="count")


def sweep_quiet(conn: Connection, now: float) -> list[str]:
    """Complete every receiving series whose quiet time has passed; their UIDs."""
    due = [
        str(r[0])
        for r in conn.execute(
            "SELECT series_uid FROM series WHERE state = 'receiving'"
            " AND last_received_at + quiet_s <= ?",
            (now,),
        )
    ]
    return [uid for uid in due if complete_series(conn, uid, now, trigger="quiet")]


def complete_series(conn: Connection, series_uid: str, now: float, trigger: str) -> bool:
    """Mark the series complete with its current content hash (routing comes next).

    The state changes first: that statement takes the series row's lock (the
    one every recording of an instance of this series updates), so the
    instances read afterwards are all those counted, whichever connection or
    node recorded them. A quiet completion re-checks the quiet time under
    that lock: an instance recorded meanwhile keeps the series receiving.
    """
    quiet = " AND last_received_at + quiet_s <= ?" if trigger == "quiet" else ""
    cur = conn.execute(
        "UPDATE series SET state = 'complete', completed_at = ?, routing_json = NULL"
        f" WHERE series_uid = ? AND state = 'receiving'{quiet}",
        (now, series_uid, now) if quiet else (now, series_uid),
    )
    if cur.rowcount != 1:
        return False
    uids = [u for u, _ in db.series_instances(conn, series_uid)]
    conn.execute("UPDATE series SET content_hash = ? WHERE series_uid = ?",
                 (content_hash(uids), series_uid))
    log.info("series_complete", extra={"fields": {"instances": len(uids), "trigger": trigger}})
    return True


@dataclass(frozen=True)
class SeriesRow:
    """A series as routing and the API see it (no header values)."""

    series_uid: str
    study_uid: str
    state: str
    instance_count: int
    completed_at: float | None
    content_hash: str | None
    routing: Mapping[str, str]
    first_path: str | None


_SERIES_SELECT = (
    "SELECT s.series_uid, s.study_uid, s.state, s.instance_count, s.completed_at,"
    " s.content_hash, s.routing_json, (SELECT i.path FROM instances i WHERE"
    " i.series_uid = s.series_uid ORDER BY i.sop_instance_uid LIMIT 1) FROM series s"
)


def _series_row(row: tuple[object, ...]) -> SeriesRow:
    routing = json.loads(str(row[6])) if row[6] else {}
    return SeriesRow(str(row[0]), str(row[1]), str(row[2]), int(row[3]),  # type: ignore[call-overload]
                     None if row[4] is None else float(row[4]),  # type: ignore[arg-type]
                     None if row[5] is None else str(row[5]), routing,
                     None if row[7] is None else str(row[7]))


def awaiting_routing(conn: Connection) -> list[SeriesRow]:
    """Complete series that routing has not decided yet, oldest first."""
    return [_series_row(r) for r in conn.execute(
        _SERIES_SELECT + " WHERE s.state = 'complete' ORDER BY s.completed_at")]


def study_series(conn: Connection, study_uid: str) -> list[SeriesRow]:
    """Every series of a study received so far."""
    return [_series_row(r) for r in conn.execute(
        _SERIES_SELECT + " WHERE s.study_uid = ? ORDER BY s.first_received_at", (study_uid,))]


def list_series(conn: Connection, state: str | None = None,
                limit: int = 100) -> list[SeriesRow]:
    """Series, newest first, optionally of one state (e.g. ``ignored``)."""
    sql, params = _SERIES_SELECT, []
    if state is not None:
        sql += " WHERE s.state = ?"
        params.append(state)
    sql += " ORDER BY s.last_received_at DESC LIMIT ?"
    return [_series_row(r) for r in conn.execute(sql, [*params, int(limit)])]


def mark_routed(conn: Connection, series_uid: str, content: str,
                decisions: Mapping[str, str], taken: bool) -> bool:
    """Record routing's decisions for this content; False if the series changed meanwhile."""
    cur = conn.execute(
        "UPDATE series SET state = ?, routing_json = ? WHERE series_uid = ?"
        " AND state = 'complete' AND content_hash = ?",
        ("routed" if taken else "ignored", json.dumps(dict(decisions)), series_uid, content),
    )
    return cur.rowcount == 1


def state_counts(conn: Connection) -> dict[str, int]:
    """Number of series per state (every state present)."""
    totals = dict.fromkeys(db.SERIES_STATES, 0)
    for state, n in conn.execute("SELECT state, COUNT(*) FROM series GROUP BY state"):
        totals[str(state)] = int(n)
    return totals


def recover_spool(conn: Connection, spool: Spool, quiet_s: float) -> int:
    """Record spooled instances that the database does not know; returns how many.

    The SCP's connections commit with ``synchronous=NORMAL`` (a commit
    survives a process crash, not necessarily a power loss), while each
    instance file is fsynced and renamed into place before its row is
    written. After a power loss the files are therefore the truth: this
    re-records the ones whose rows were lost through :func:`record_instance`,
    exactly as the SCP would have. Run it before the SCP starts.
    """
    known = {str(r[0]) for r in conn.execute("SELECT path FROM instances")}
    recovered = 0
    for path in sorted((spool.root / "instances").glob("*/*/*.dcm")):
        relative = spool.relative(path)
        if relative in known:
            continue
        try:
            header = read_header(path)
            if spool.instance_path(header.study_uid, header.series_uid,
                                   header.sop_instance_uid) != path:
                raise ValueError("file is not where its UIDs put it")
        except READ_ERRORS as exc:
            log.warning("spool_file_skipped", extra={"fields": {"error": type(exc).__name__}})
            continue
        rec = db.InstanceRecord(
            header.sop_instance_uid, header.study_uid, header.series_uid,
            header.info.sop_class_uid, header.transfer_syntax, "RECOVERED", relative,
            path.stat().st_size, path.stat().st_mtime,
        )
        with conn:
            if record_instance(conn, rec, header.info, quiet_s):
                recovered += 1
    if recovered:
        log.warning("spool_recovered", extra={"fields": {"instances": recovered}})
    return recovered
