"""Which stores the node tests run on: the ``DOPANODE_TEST_STORAGE`` switch.

The whole node test suite runs on the embedded default (SQLite and the local
spool) and, with ``DOPANODE_TEST_STORAGE=postgres+s3``, again on PostgreSQL and
an S3 object store (``postgres`` alone: PostgreSQL and the local spool). The
switch never patches the node: ``tests/conftest.py`` sets the node's own
settings variables (``DOPANODE_STORAGE__BACKEND``, ``DOPANODE_STORAGE__POSTGRES_DSN``)
for each test, which ``dopanode serve`` subprocesses inherit and which
in-process tests read through :func:`storage_settings` (the same environment
source :func:`service.config.load_settings` uses).

The switch is a ``+``-separated list of stores: ``postgres`` (rows), ``s3``
(blobs; a fresh bucket of the session's SeaweedFS server per test).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from service.config import Settings, StorageSettings
from service.config_sources import read_environ
from service.store.rows import Rows, open_rows

#: The environment variable that selects the stores of a test run.
SWITCH = "DOPANODE_TEST_STORAGE"
#: Words the switch may hold; "sqlite" (or nothing) is the embedded default.
KNOWN_STORES = frozenset({"sqlite", "postgres", "s3"})
#: The access key the test S3 server accepts (it runs without authentication).
TEST_S3_KEY = "dopanode-test"


def selected_stores(environ: Mapping[str, str] | None = None) -> frozenset[str]:
    """The stores the switch names, e.g. ``{"postgres"}``; empty for the default.

    Raises
    ------
    ValueError
        A word the switch does not know (a typo must not run the default silently).
    """
    value = (os.environ if environ is None else environ).get(SWITCH, "").strip().lower()
    words = frozenset(w for w in value.split("+") if w)
    unknown = words - KNOWN_STORES
    if unknown:
        raise ValueError(f"{SWITCH}: unknown store(s) {sorted(unknown)}; "
                         f"known: {sorted(KNOWN_STORES)}")
    return words - {"sqlite"}


def postgres_environ(dsn: str) -> dict[str, str]:
    """The node's settings variables that move it onto the PostgreSQL database ``dsn``."""
    return {"DOPANODE_STORAGE__BACKEND": "postgres", "DOPANODE_STORAGE__POSTGRES_DSN": dsn}


def s3_environ(endpoint: str, bucket: str) -> dict[str, str]:
    """The node's settings variables that move its blobs into ``bucket`` at ``endpoint``."""
    return {"DOPANODE_STORAGE__BLOBS": "s3", "DOPANODE_STORAGE__S3_ENDPOINT": endpoint,
            "DOPANODE_STORAGE__S3_BUCKET": bucket, "AWS_ACCESS_KEY_ID": TEST_S3_KEY,
            "AWS_SECRET_ACCESS_KEY": TEST_S3_KEY}


#: The variables :func:`s3_environ` sets: a node keeps the bucket it was built with.
S3_VARIABLES = ("DOPANODE_STORAGE__BLOBS", "DOPANODE_STORAGE__S3_ENDPOINT",
                "DOPANODE_STORAGE__S3_BUCKET", "DOPANODE_STORAGE__S3_PREFIX",
                "DOPANODE_STORAGE__S3_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


def env_s3_environ(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The blob store variables the environment sets now (empty when blobs stay local).

    A node built under the switch keeps these for its life, as it keeps its
    database: a module-scoped node restarted in a later test must find the
    bucket it wrote, not that test's fresh one.
    """
    source = os.environ if environ is None else environ
    if source.get("DOPANODE_STORAGE__BLOBS", "").strip().lower() != "s3":
        return {}
    return {key: source[key] for key in S3_VARIABLES if key in source}


def env_postgres_dsn(environ: Mapping[str, str] | None = None) -> str | None:
    """The DSN the environment moves nodes to, or None when it leaves them on SQLite."""
    storage = read_environ(os.environ if environ is None else environ, Settings).get("storage")
    if not isinstance(storage, dict) or storage.get("backend") != "postgres":
        return None
    dsn = storage.get("postgres_dsn")
    return str(dsn) if dsn else None


def node_database(work_dir: Path, environ: Mapping[str, str] | None = None) -> str | None:
    """The DSN of the database of the node in ``work_dir`` under the switch (None without).

    With SQLite every node folder has its own file; so under the switch every
    node folder gets its own database on the environment's server, named after
    the environment's database (``<name>_n<hash of the folder>``, which the
    fixture that made ``<name>`` drops with it) and created on first use.
    """
    dsn = env_postgres_dsn(environ)
    if dsn is None:
        return None
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    folder = hashlib.sha256(str(Path(work_dir).resolve()).encode()).hexdigest()[:12]
    name = f"{conninfo_to_dict(dsn)['dbname']}_n{folder}"
    with psycopg.connect(make_conninfo(dsn, dbname="postgres"), autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return make_conninfo(dsn, dbname=name)


def storage_settings(environ: Mapping[str, str] | None = None, **values: Any) -> StorageSettings:
    """A test's ``[storage]`` section: ``values``, then the environment's ``DOPANODE_STORAGE__*``.

    Outside the switch this is ``StorageSettings(**values)``; under it the
    backend and DSN come from the environment, as they would for the node.
    """
    storage = read_environ(os.environ if environ is None else environ, Settings).get("storage")
    return StorageSettings(**{**values, **(storage if isinstance(storage, dict) else {})})


def node_rows(db_path: Path, environ: Mapping[str, str] | None = None) -> Rows:
    """The rows a test's node uses (the SQLite file ``db_path`` unless the switch moved it)."""
    return open_rows(storage_settings(environ, db_path=db_path))
