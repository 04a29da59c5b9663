"""Pieces both API routers use: a per-request connection and the integer bound."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from service.store.rows import Connection, Rows

#: The largest integer SQLite (and PostgreSQL bigint) stores: larger ids and offsets are
#: refused as invalid input (422), never passed to the database (audit D14).
SQL_INT_MAX = 2**63 - 1


@contextmanager
def connection(rows: Rows) -> Iterator[Connection]:
    """A connection for one request, closed afterwards."""
    conn = rows.connect()
    try:
        yield conn
    finally:
        conn.close()
