"""The durable outbox on a real database, SQLite and PostgreSQL (migrated by the rows port)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from service import metrics
from service.store import outbox, outbox_views
from service.store.outbox import RetryPolicy

T0 = 1_800_000_000.0
SR = "1.2.840.10008.5.1.4.1.1.88.33"


@pytest.fixture
def conn(rows: Any) -> Any:
    c = rows.connect()
    yield c
    c.close()


def _enqueue(conn: sqlite3.Connection, uid: str, dests=("pacs",), job_id=1, now=T0) -> list[int]:
    with conn:
        return outbox.enqueue(conn, job_id, list(dests), f"/spool/outputs/{job_id}/{uid}.dcm",
                              SR, uid, now=now)


def test_enqueue_one_row_per_destination_due_at_once(conn):
    ids = _enqueue(conn, "1.2.3.1", dests=("pacs", "archive", "pacs"))
    assert len(ids) == 2
    items = outbox.due(conn, now=T0)
    assert [(i.destination, i.state, i.attempts) for i in items] == [
        ("pacs", "pending", 0), ("archive", "pending", 0)]
    assert items[0].path == Path("/spool/outputs/1/1.2.3.1.dcm")
    assert outbox.due(conn, now=T0, destination="archive")[0].id == ids[1]
    assert outbox.due(conn, now=T0 - 1) == []


def test_enqueue_again_replaces_instead_of_duplicating(conn):
    (first,) = _enqueue(conn, "1.2.3.1", job_id=1)
    with conn:
        outbox.mark_sent(conn, first, now=T0 + 1)
    (second,) = _enqueue(conn, "1.2.3.1", job_id=2, now=T0 + 5)
    assert second == first
    rows = conn.execute("SELECT job_id, state, attempts, sent_at FROM outbox").fetchall()
    assert rows == [(2, "pending", 0, None)]


def test_enqueue_rejects_empty_input(conn):
    with pytest.raises(ValueError, match="destination"):
        outbox.enqueue(conn, 1, [], "/x.dcm", SR, "1.2.3")
    with pytest.raises(ValueError, match="sop_instance_uid"):
        outbox.enqueue(conn, 1, ["pacs"], "/x.dcm", SR, "")


def test_mark_sent_removes_from_due_and_is_final(conn):
    (item_id,) = _enqueue(conn, "1.2.3.1")
    with conn:
        outbox.mark_sent(conn, item_id, now=T0 + 2)
        # A late retry after a Success must not resurrect the item.
        assert outbox.mark_retry(conn, item_id, "late", RetryPolicy(), now=T0 + 3) == "gone"
    item = outbox.get(conn, item_id)
    assert (item.state, item.sent_at, item.attempts) == ("sent", T0 + 2, 1)
    assert outbox.due(conn, now=T0 + 10_000) == []


def test_retry_backs_off_exponentially_up_to_the_cap(conn):
    policy = RetryPolicy(base_s=10, cap_s=600, give_up_after_s=72 * 3600)
    (item_id,) = _enqueue(conn, "1.2.3.1")
    now, delays = T0, []
    for _ in range(9):
        with conn:
            assert outbox.mark_retry(conn, item_id, "destination unreachable", policy, now) == \
                "pending"
        nxt = outbox.get(conn, item_id).next_attempt_at
        delays.append(nxt - now)
        assert outbox.due(conn, now=nxt - 0.001) == []
        assert [i.id for i in outbox.due(conn, now=nxt)] == [item_id]
        now = nxt
    assert delays == [10, 20, 40, 80, 160, 320, 600, 600, 600]
    item = outbox.get(conn, item_id)
    assert item.attempts == 9 and item.last_error == "destination unreachable"


def test_retry_gives_up_after_hours_not_seconds(conn):
    policy = RetryPolicy(base_s=10, cap_s=600, give_up_after_s=2 * 3600)
    (item_id,) = _enqueue(conn, "1.2.3.1")
    with conn:
        assert outbox.mark_retry(conn, item_id, "down", policy, T0 + 2 * 3600 - 1) == "pending"
        assert outbox.mark_retry(conn, item_id, "down", policy, T0 + 2 * 3600) == "failed"
    item = outbox.get(conn, item_id)
    assert item.state == "failed" and item.last_error == "gave up: down"
    assert outbox.due(conn, now=T0 + 10**6) == []


def test_backlog_stats_and_metrics_gauges(conn):
    _enqueue(conn, "1.2.3.1", dests=("pacs", "archive"), now=T0)
    (later,) = _enqueue(conn, "1.2.3.2", now=T0 + 100)
    (gone,) = _enqueue(conn, "1.2.3.3", now=T0 + 200)
    with conn:
        outbox.mark_sent(conn, later, now=T0 + 150)
        outbox.mark_failed(conn, gone, "output file unreadable")
    stats = outbox_views.backlog_stats(conn, now=T0 + 300)
    assert stats.pending == 2 and stats.failed == 1
    assert stats.oldest_age_s == pytest.approx(300)
    assert stats.pending_by_destination == {"pacs": 1, "archive": 1}
    assert outbox.next_due_at(conn) == T0
    metrics.refresh_from_db(conn, now=T0 + 300)
    assert metrics.OUTBOX_OLDEST_AGE._value.get() == pytest.approx(300)
    assert metrics.OUTBOX_BACKLOG.labels(destination="pacs")._value.get() == 1
    assert metrics.OUTBOX_FAILED._value.get() == 1
    assert metrics.JOBS.labels(pipeline="dat_spect", state="pending")._value.get() == 0


def test_empty_outbox_stats(conn):
    stats = outbox_views.backlog_stats(conn, now=T0)
    assert (stats.pending, stats.failed, stats.oldest_age_s) == (0, 0, 0.0)
    assert outbox.next_due_at(conn) is None


def test_unique_constraint_is_in_the_schema(conn):
    with conn:
        conn.execute(
            "INSERT INTO outbox (job_id, destination, sop_instance_uid, sop_class_uid, path,"
            " next_attempt_at, created_at) VALUES (1, 'pacs', '1.2', ?, '/x', 0, 0)", (SR,))
    errors: tuple[type[Exception], ...] = (sqlite3.IntegrityError,)
    if conn.dialect.name == "postgres":
        import psycopg

        errors = (psycopg.IntegrityError,)
    with pytest.raises(errors):
        conn.execute(
            "INSERT INTO outbox (job_id, destination, sop_instance_uid, sop_class_uid, path,"
            " next_attempt_at, created_at) VALUES (2, 'pacs', '1.2', ?, '/y', 0, 0)", (SR,))


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"base_s": 0}, "base_s"),
    ({"base_s": 10, "cap_s": 5}, "cap_s"),
    ({"give_up_after_s": 0}, "give_up_after_s"),
])
def test_retry_policy_validates(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RetryPolicy(**kwargs)


def test_a_claim_leases_due_items_and_fences_their_outcome(conn):
    first, second = _enqueue(conn, "1.2.3.1")[0], _enqueue(conn, "1.2.3.2")[0]
    claimed = outbox.claim_due(conn, "pacs", lease_s=60.0, now=T0)
    assert [i.id for i in claimed] == [first, second] and claimed[0].lease_token
    assert outbox.claim_due(conn, "pacs", lease_s=60.0, now=T0) == []  # leased: not again
    assert outbox.due(conn, now=T0) != []  # still pending, only leased
    with conn:  # a writer without the lease's token changes nothing
        assert not outbox.mark_sent(conn, first, T0 + 1, token="someone-else")
        assert outbox.mark_retry(conn, first, "x", RetryPolicy(), T0 + 1, "other") == "gone"
        assert outbox.mark_sent(conn, first, T0 + 1, claimed[0].lease_token)
        assert outbox.mark_retry(conn, second, "down", RetryPolicy(base_s=10), T0 + 1,
                                 claimed[1].lease_token) == "pending"
    # the retried item is claimable again once due (its lease was given back)
    again = outbox.claim_due(conn, "pacs", lease_s=60.0, now=T0 + 11)
    assert [i.id for i in again] == [second] and again[0].lease_token != claimed[1].lease_token
    assert outbox.get(conn, first).state == "sent"


def test_a_dead_process_claims_come_back_at_once_with_their_in_flight_mark(conn):
    """Reliability audit D12: the item on the wire at a crash is known and sent again at once."""
    on_wire, queued = _enqueue(conn, "1.2.3.1")[0], _enqueue(conn, "1.2.3.2")[0]
    other = _enqueue(conn, "1.2.3.3", dests=("archive",))[0]
    claimed = outbox.claim_due(conn, "pacs", 3600.0, now=T0, owner="node:deadrun:sender-pacs")
    assert outbox.claim_due(conn, "archive", 3600.0, now=T0, owner="node:liverun:sender-x")
    with conn:
        assert outbox.mark_in_flight(conn, on_wire, claimed[0].lease_token, T0 + 1)
        assert not outbox.mark_in_flight(conn, queued, "not-the-token", T0 + 1)
    assert outbox.claim_due(conn, "pacs", 3600.0, now=T0 + 2) == []  # leased for an hour
    assert outbox.expire_leases(conn, "node:deadrun:") == 2  # the live run's claim stays
    again = {i.id: i for i in outbox.claim_due(conn, "pacs", 60.0, now=T0 + 2, owner="n:new:")}
    assert set(again) == {on_wire, queued}
    assert again[on_wire].in_flight_at == T0 + 1 and again[queued].in_flight_at is None
    assert outbox.claim_due(conn, "archive", 60.0, now=T0 + 2) == []
    with conn:
        assert outbox.mark_sent(conn, on_wire, T0 + 3, again[on_wire].lease_token)
    assert outbox.get(conn, on_wire).in_flight_at is None
    assert outbox.get(conn, other).state == "pending"
