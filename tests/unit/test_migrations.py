"""Schema migrations: a release-0.1 database (schema 1) moves to the current schema intact."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from service.store import db, jobs, outbox
from service.store import series as series_store

STUDY, SERIES = "1.2.826.0.1.3680043.8.498.70", "1.2.826.0.1.3680043.8.498.71"
UIDS = [f"{SERIES}.{i}" for i in range(1, 4)]


def make_release_01_database(path: Path) -> None:
    """A database exactly as release 0.1 wrote it: its schema, user_version 1, its rows."""
    conn = sqlite3.connect(path)
    with conn:
        conn.executescript(db._SCHEMA_V1)  # the frozen 0.1 schema, kept verbatim in db.py
        conn.executescript(outbox.SCHEMA)
        conn.execute("PRAGMA user_version = 1")
        for i, uid in enumerate(UIDS):
            conn.execute("INSERT INTO instances VALUES (?, ?, ?, ?, ?, 'STORESCU', ?, 10, ?)",
                         (uid, STUDY, SERIES, "1.2.840.10008.5.1.4.1.1.20",
                          "1.2.840.10008.1.2.1", f"instances/{STUDY}/{SERIES}/{uid}.dcm", i))
        conn.execute("INSERT INTO series VALUES (?, ?, 'STORESCU', 0, 2, 3, 3, 30, 'complete')",
                     (SERIES, STUDY))
        for job_id, state, result in [(1, "superseded", None), (2, "done", {"global": 1}),
                                      (3, "pending", None)]:
            conn.execute(
                "INSERT INTO jobs (id, series_uid, study_uid, content_hash, instance_uids_json,"
                " state, attempts, max_attempts, created_at, finished_at, result_json)"
                " VALUES (?, ?, ?, ?, ?, ?, 1, 3, ?, ?, ?)",
                (job_id, SERIES, STUDY, f"hash-{job_id}", json.dumps(UIDS[:job_id]), state,
                 float(job_id), float(job_id) + 0.5, None if result is None else json.dumps(result)))
        conn.execute("INSERT INTO outbox (job_id, destination, sop_instance_uid, sop_class_uid,"
                     " path, next_attempt_at, created_at) VALUES (2, 'pacs', '1.2.3', '1.2.4',"
                     " 'outputs/2/1.2.3.dcm', 0, 0)")
    conn.close()


@pytest.mark.sqlite_only("release 0.1 shipped a SQLite file; PostgreSQL starts at schema 2")
def test_release_01_database_migrates_without_losing_a_row(tmp_path: Path) -> None:
    path = tmp_path / "dopanode.sqlite3"
    make_release_01_database(path)
    database = db.Database(path)
    assert database.migrate() == 1
    conn = database.connect()
    assert conn.execute("PRAGMA user_version").fetchone()[0] == db.SCHEMA_VERSION
    assert conn.execute("SELECT COUNT(*) FROM instances").fetchone()[0] == 3
    assert conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 1
    [row] = series_store.list_series(conn)
    assert (row.series_uid, row.state) == (SERIES, "routed")  # 0.1 made a job at completion
    by_id = {j.id: j for j in jobs.list_jobs(conn)}
    assert {i: j.state for i, j in by_id.items()} == {1: "superseded", 2: "done", 3: "pending"}
    assert all(j.pipeline == "dat_spect" for j in by_id.values())
    assert by_id[3].inputs == (jobs.JobInput("primary", SERIES, tuple(UIDS)),)
    assert by_id[2].to_dict()["result"] == {"global": 1}
    claimed = jobs.claim(conn, "w", 60.0, 10.0)  # the pending job is served after the upgrade
    assert claimed is not None and claimed.id == 3 and claimed.instance_uids == tuple(UIDS)
    conn.close()


@pytest.mark.sqlite_only("PRAGMA user_version; the PostgreSQL twin is below")
def test_migrate_is_idempotent_and_refuses_a_newer_schema(tmp_path: Path) -> None:
    database = db.Database(tmp_path / "x.sqlite3")
    assert database.migrate() == 0
    assert database.migrate() == db.SCHEMA_VERSION
    conn = database.connect()
    conn.execute(f"PRAGMA user_version = {db.SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(RuntimeError, match="newer than this release"):
        database.migrate()


@pytest.mark.sqlite_only("BEGIN EXCLUSIVE on the file; the PostgreSQL twin is below")
def test_a_failed_migration_leaves_the_previous_version(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "dopanode.sqlite3"
    make_release_01_database(path)

    def broken(conn: sqlite3.Connection) -> None:
        db._execute_script(conn, "CREATE TABLE half_done (x); SELECT no_such_function()")

    monkeypatch.setattr(db, "MIGRATIONS", (db.MIGRATIONS[0], (2, broken)))
    with pytest.raises(sqlite3.OperationalError):
        db.Database(path).migrate()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "half_done" not in tables and "jobs" in tables
    conn.close()


# --- PostgreSQL: versions in schema_migrations, under an advisory lock ----------------
def _pg_versions(dsn: str) -> list[int]:
    import psycopg

    with psycopg.connect(dsn) as conn:
        return [int(r[0]) for r in conn.execute(
            "SELECT version FROM schema_migrations ORDER BY version")]


def test_postgres_migrate_is_idempotent_and_refuses_a_newer_schema(postgres_dsn: str) -> None:
    from service.store import postgres

    rows = postgres.PostgresRows(postgres_dsn)
    assert rows.migrate() == 0
    assert rows.migrate() == postgres.SCHEMA_VERSION == db.SCHEMA_VERSION
    assert _pg_versions(postgres_dsn) == [v for v, _ in postgres.MIGRATIONS]
    conn = rows.connect()
    with conn:
        conn.execute("INSERT INTO schema_migrations VALUES (?, 0)", (db.SCHEMA_VERSION + 1,))
    conn.close()
    with pytest.raises(RuntimeError, match="newer than this release"):
        rows.migrate()


def test_postgres_starters_racing_migrate_once(postgres_dsn: str) -> None:
    """Four nodes starting together: one migrates, the others wait and find it done."""
    import threading

    from service.store import postgres

    found: list[int] = []
    gate = threading.Barrier(4)

    def start() -> None:
        gate.wait(10)
        found.append(postgres.PostgresRows(postgres_dsn).migrate())

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(found) == [0] + [postgres.SCHEMA_VERSION] * 3
    assert _pg_versions(postgres_dsn) == [v for v, _ in postgres.MIGRATIONS]


def test_postgres_failed_migration_leaves_the_previous_version(
        postgres_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import psycopg

    from service.store import postgres

    monkeypatch.setattr(postgres, "MIGRATIONS", postgres.MIGRATIONS[:1])
    postgres.PostgresRows(postgres_dsn).migrate()
    monkeypatch.setattr(postgres, "MIGRATIONS", (
        postgres.MIGRATIONS[0], (3, "CREATE TABLE half_done (x INTEGER); SELECT no_such_function()")))
    with pytest.raises(psycopg.errors.UndefinedFunction):
        postgres.PostgresRows(postgres_dsn).migrate()
    assert _pg_versions(postgres_dsn) == [2]
    with psycopg.connect(postgres_dsn) as conn:
        assert conn.execute("SELECT to_regclass('half_done')").fetchone()[0] is None
