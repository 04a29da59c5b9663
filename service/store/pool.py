"""A small pool of database connections for the API (no extra package).

Each API request used to open its own connection: on PostgreSQL a TCP
connection, authentication and a backend process per request. :class:`PooledRows`
wraps the node's :class:`~service.store.rows.Rows` and lends idle connections
instead; a lent connection's ``close()`` hands it back (rolled back, so no
transaction or lock outlives the request). A connection that fails its
roll-back (a session cut by a server restart) is dropped, never lent again.
At most ``size`` idle connections are kept; more requests at once simply open
more, closed when they come back to a full pool.

Connections cross threads (FastAPI runs handlers in a thread pool): SQLite's
are opened with ``check_same_thread=False``; each is used by one request at a
time.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from service.store.dialect import Dialect
from service.store.rows import Connection, Rows

log = logging.getLogger(__name__)


class PooledConnection:
    """A lent connection: the pool's on ``close()``, otherwise the connection itself."""

    def __init__(self, pool: PooledRows, conn: Connection) -> None:
        self._pool = pool
        self._conn: Connection | None = conn
        self.dialect: Dialect = conn.dialect

    def _raw(self) -> Connection:
        if self._conn is None:
            raise RuntimeError("this connection went back to the pool")
        return self._conn

    def execute(self, sql: str, parameters: Any = None, /) -> Any:
        conn = self._raw()
        return conn.execute(sql) if parameters is None else conn.execute(sql, parameters)

    def executemany(self, sql: str, parameters: Any, /) -> Any:
        return self._raw().executemany(sql, parameters)

    def commit(self) -> None:
        self._raw().commit()

    def rollback(self) -> None:
        self._raw().rollback()

    @property
    def in_transaction(self) -> bool:
        return self._raw().in_transaction

    def __enter__(self) -> PooledConnection:
        self._raw().__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> Any:
        return self._raw().__exit__(*exc_info)

    def close(self) -> None:
        """Hand the connection back (once; later calls do nothing)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool._give_back(conn)


class PooledRows:
    """The node's rows with pooled connections (see the module docstring).

    Parameters
    ----------
    rows : Rows
        The adapter whose connections are lent.
    size : int
        Idle connections kept at most.
    """

    def __init__(self, rows: Rows, size: int = 4) -> None:
        self.rows = rows
        self.size = size
        self.dialect: Dialect = rows.dialect
        self._idle: list[Connection] = []
        self._lock = threading.Lock()
        self.opened = 0  # connections made (tests and the pool's own bound)

    def connect(self, check_same_thread: bool = True) -> PooledConnection:
        """An idle connection, or a new one (``check_same_thread`` is ignored: they travel)."""
        del check_same_thread
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                conn = self.rows.connect(check_same_thread=False)
                with self._lock:
                    self.opened += 1
                return PooledConnection(self, conn)
            if self._alive(conn):
                return PooledConnection(self, conn)

    def _alive(self, conn: Connection) -> bool:
        """PostgreSQL: one round trip (a session cut while idle fails here, not in a
        request); SQLite: a file, always there."""
        if self.dialect.name != "postgres":
            return True
        try:
            conn.execute("SELECT 1")
            conn.rollback()
        except Exception:  # noqa: BLE001 - a broken session: dropped
            log.debug("pooled_connection_dropped", exc_info=True)
            _close_quietly(conn)
            return False
        return True

    def _give_back(self, conn: Connection) -> None:
        try:
            conn.rollback()  # nothing outlives the request (PostgreSQL: no idle transaction)
        except Exception:  # noqa: BLE001 - a broken session: dropped, never lent again
            log.debug("pooled_connection_dropped", exc_info=True)
            _close_quietly(conn)
            return
        with self._lock:
            if len(self._idle) < self.size:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        """Close the idle connections (lent ones close when they come back)."""
        with self._lock:
            idle, self._idle = self._idle, []
            self.size = 0
        for conn in idle:
            _close_quietly(conn)

    def migrate(self) -> int:
        return self.rows.migrate()

    def start_wakeups(self, stop: threading.Event, on_job: Callable[[], None],
                      channel: str = "") -> threading.Thread | None:
        if channel:
            return self.rows.start_wakeups(stop, on_job, channel)
        return self.rows.start_wakeups(stop, on_job)


def _close_quietly(conn: Connection) -> None:
    try:
        conn.close()
    except Exception:  # noqa: BLE001 - closing a broken session may fail too
        log.debug("pooled_connection_close_failed")
