"""The API's connection pool (service/store/pool.py) on both rows adapters."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from service.store.pool import PooledRows


def _probes(conn: Any) -> int:
    return int(conn.execute("SELECT COUNT(*) FROM node_probe").fetchone()[0])


def test_connections_are_reused_and_rolled_back(rows: Any) -> None:
    pool = PooledRows(rows, size=2)
    conn = pool.connect()
    conn.execute("INSERT INTO node_probe (id, checked_at) VALUES (1, 0)")  # never committed
    conn.close()
    conn.close()  # twice: nothing more
    again = pool.connect()
    assert _probes(again) == 0  # the request's open transaction did not outlive it
    with again:
        again.execute("INSERT INTO node_probe (id, checked_at) VALUES (2, 0)")
    again.close()
    with pytest.raises(RuntimeError):
        again.execute("SELECT 1")  # a returned connection is not usable through the old lease
    check = pool.connect()
    assert _probes(check) == 1
    check.close()
    assert pool.opened == 1
    pool.close()


def test_requests_at_once_open_more_and_the_pool_keeps_size(rows: Any) -> None:
    pool = PooledRows(rows, size=2)
    lent = [pool.connect() for _ in range(4)]
    assert pool.opened == 4
    for conn in lent:
        conn.close()
    again = [pool.connect() for _ in range(4)]
    assert pool.opened == 6  # two kept, two opened anew
    for conn in again:
        conn.close()
    pool.close()


def test_a_broken_session_is_dropped_never_lent_again(postgres_dsn: str) -> None:
    from service.store.postgres import PostgresRows

    rows = PostgresRows(postgres_dsn)
    rows.migrate()
    pool = PooledRows(rows, size=2)
    conn = pool.connect()
    pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    conn.close()
    killer = rows.connect()
    with killer:
        killer.execute("SELECT pg_terminate_backend(?)", (pid,))
    killer.close()
    fresh = pool.connect()  # the idle one is found dead when lent and replaced
    assert fresh.execute("SELECT pg_backend_pid()").fetchone()[0] != pid
    fresh.close()
    assert pool.opened == 2
    pool.close()


def test_threads_share_the_pool(rows: Any) -> None:
    pool = PooledRows(rows, size=2)
    errors: list[BaseException] = []

    def requests() -> None:
        try:
            for _ in range(20):
                conn = pool.connect()
                try:
                    conn.execute("SELECT COUNT(*) FROM jobs").fetchone()
                finally:
                    conn.close()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=requests) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and pool.opened <= 3  # 60 requests, at most one per thread
    pool.close()


def test_the_api_borrows_one_connection_for_its_requests(rows: Any, tmp_path: Any) -> None:
    from fastapi.testclient import TestClient

    from service.api.app import create_app
    from service.api.readiness import Probes
    from service.config import ApiSettings, Settings, StorageSettings

    settings = Settings().model_copy(update={
        "storage": StorageSettings(spool_dir=tmp_path / "spool", min_free_mb=0),
        "api": ApiSettings(token="pool-test-token")})
    pool = PooledRows(rows, size=2)
    client = TestClient(create_app(settings, pool, Probes(scp_listening=lambda: True)))
    headers = {"Authorization": "Bearer pool-test-token"}
    for path in ["/api/jobs", "/api/series", "/metrics", "/api/jobs", "/api/queue"] * 4:
        assert client.get(path, headers=headers).status_code == 200, path
    assert client.get("/ready").status_code in (200, 503)  # the checks ran on lent connections
    assert pool.opened == 1  # twenty-one requests, one after the other: one connection
    pool.close()
