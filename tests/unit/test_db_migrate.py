"""``dopanode db migrate`` on both adapters: migrates, is idempotent, refuses a downgrade."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from service.cli import main
from service.store.db import SCHEMA_VERSION

pytestmark = pytest.mark.picks_adapter  # each test chooses SQLite or PostgreSQL itself


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "dopanode.toml"
    path.write_text(f'[storage]\nspool_dir = "{tmp_path / "spool"}"\n'
                    f'db_path = "{tmp_path / "db.sqlite3"}"\n', encoding="utf-8")
    return path


def test_migrates_sqlite_once_then_refuses_a_newer_schema(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path)
    assert main(["db", "migrate", "--config", str(config)]) == 0
    assert "sqlite schema migrated (found version 0)" in capsys.readouterr().out
    with sqlite3.connect(tmp_path / "db.sqlite3") as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    assert main(["db", "migrate", "--config", str(config)]) == 0  # nothing left to do
    assert f"found version {SCHEMA_VERSION}" in capsys.readouterr().out
    with sqlite3.connect(tmp_path / "db.sqlite3") as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    assert main(["db", "migrate", "--config", str(config)]) == 1
    assert "refusing to downgrade" in capsys.readouterr().err


def test_migrates_postgres(tmp_path: Path, postgres_dsn: str, monkeypatch: pytest.MonkeyPatch,
                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DOPANODE_STORAGE__BACKEND", "postgres")
    monkeypatch.setenv("DOPANODE_STORAGE__POSTGRES_DSN", postgres_dsn)
    config = _config(tmp_path)
    assert main(["db", "migrate", "--config", str(config)]) == 0
    assert "postgres schema migrated" in capsys.readouterr().out
    import psycopg

    with psycopg.connect(postgres_dsn) as conn:
        tables = {r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")}
    assert {"instances", "series", "jobs", "outbox"} <= tables
    assert main(["db", "migrate", "--config", str(config)]) == 0


def test_bad_settings_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[storage]\nbackend = "oracle"\n', encoding="utf-8")
    assert main(["db", "migrate", "--config", str(bad)]) == 2
    assert "config error" in capsys.readouterr().err
