"""The rows port: what the node needs of its database, and the factory of adapters.

Two adapters implement :class:`Rows`:

* :class:`service.store.db.Database`: one SQLite file (the embedded default);
* :class:`service.store.postgres.PostgresRows`: a PostgreSQL server shared by
  every node (``[storage] backend = "postgres"``; needs the ``postgres`` extra).

A :class:`Connection` behaves like ``sqlite3.Connection`` as the store uses
it: ``execute`` with ``?`` placeholders returns a cursor, ``with conn:``
commits (or rolls back) and leaves the connection open. It carries its
:class:`~service.store.dialect.Dialect`, the short list of what differs.
The store's modules (:mod:`~service.store.jobs`, :mod:`~service.store.series`,
:mod:`~service.store.outbox`, :mod:`~service.store.retention`) take one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from service.store.dialect import JOBS_CHANNEL, Dialect


class Cursor(Protocol):
    """The part of a DB-API cursor the store uses."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """One connection, used by one thread at a time."""

    dialect: Dialect

    def execute(self, sql: str, parameters: Any = ..., /) -> Any: ...

    def executemany(self, sql: str, parameters: Any, /) -> Any: ...

    def commit(self) -> None: ...

    def rollback(self) -> None: ...

    def close(self) -> None: ...

    @property
    def in_transaction(self) -> bool: ...

    def __enter__(self) -> Any: ...

    def __exit__(self, *exc_info: Any) -> Any: ...


class Rows(Protocol):
    """A database of the node's rows: instances, series, jobs, outbox."""

    dialect: Dialect

    def connect(self, check_same_thread: bool = True) -> Connection:
        """A new :class:`Connection`, for one thread at a time."""

    def migrate(self) -> int:
        """Bring the schema to the current version; the version found."""

    def start_wakeups(self, stop: threading.Event, on_job: Callable[[], None],
                      channel: str = JOBS_CHANNEL) -> threading.Thread | None:
        """Call ``on_job`` on each notification of ``channel`` from any node, until ``stop``.

        ``channel``: :data:`~service.store.dialect.JOBS_CHANNEL` (a job was made)
        or :data:`~service.store.dialect.OUTBOX_CHANNEL` (a job's outputs were
        queued). None: not needed (one node wakes its threads in process).
        """


def open_rows(storage: Any) -> Rows:
    """The adapter ``storage`` (``service.config.StorageSettings``) asks for."""
    if storage.backend == "postgres":
        from service.store.postgres import PostgresRows

        return PostgresRows(storage.postgres_dsn.get_secret_value())
    from service.store.db import Database

    return Database(storage.db_path)
