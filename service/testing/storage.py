"""Which stores the node tests run on: the ``DOPANODE_TEST_STORAGE`` switch.

The whole node test suite runs on the embedded default (SQLite and the local
spool) and, with ``DOPANODE_TEST_STORAGE=postgres``, again on PostgreSQL. The
switch never patches the node: ``tests/conftest.py`` sets the node's own
settings variables (``DOPANODE_STORAGE__BACKEND``, ``DOPANODE_STORAGE__POSTGRES_DSN``)
for each test, which ``dopanode serve`` subprocesses inherit and which
in-process tests read through :func:`storage_settings` (the same environment
source :func:`service.config.load_settings` uses).

The switch is a ``+``-separated list of stores, so that another store (an S3
blob store: ``postgres+s3``) is one more word and one more set of variables in
the same fixture.
"""

from __future__ import annotations

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
KNOWN_STORES = frozenset({"sqlite", "postgres"})


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


def env_postgres_dsn(environ: Mapping[str, str] | None = None) -> str | None:
    """The DSN the environment moves nodes to, or None when it leaves them on SQLite."""
    storage = read_environ(os.environ if environ is None else environ, Settings).get("storage")
    if not isinstance(storage, dict) or storage.get("backend") != "postgres":
        return None
    dsn = storage.get("postgres_dsn")
    return str(dsn) if dsn else None


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
