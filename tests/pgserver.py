"""A throwaway PostgreSQL server on loopback for the tests (Debian's server binaries).

``initdb`` into a fresh temporary folder, ``pg_ctl start`` on a free port with
its unix socket in that folder, one database per test, ``pg_ctl stop`` and the
folder removed at the end. PostgreSQL refuses to run as root: as root the
binaries run as the ``postgres`` OS user (``runuser``), otherwise as the
current user. Durability settings are relaxed (``fsync=off``): the tests are
about semantics (locks, leases, visibility), not power loss.
"""

from __future__ import annotations

import atexit
import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg


def server_bindir() -> Path | None:
    """The newest installed PostgreSQL server's bin folder (None when none is)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PgServer:
    """One running PostgreSQL cluster; :meth:`stop` it (the session fixture does).

    Parameters
    ----------
    bindir : Path
        Folder with ``initdb`` and ``pg_ctl``.
    port : int
        Free TCP port on 127.0.0.1.
    """

    def __init__(self, bindir: Path, port: int) -> None:
        self.bindir = bindir
        self.port = port
        self.root = Path(tempfile.mkdtemp(prefix="dopanode-pg-"))
        self.data = self.root / "data"
        self._as: list[str] = []
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError as exc:
                raise RuntimeError("running as root needs the 'postgres' OS user "
                                   "(scripts/install-peers.sh installs it)") from exc
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        self._names = itertools.count(1)
        self._running = False

    def _run(self, *args: str) -> None:
        subprocess.run([*self._as, *args], check=True, capture_output=True, timeout=120)

    def start(self) -> PgServer:
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-A", "trust",
                  "-U", "postgres", "-E", "UTF8", "--no-sync")
        self._running = True
        atexit.register(self.stop)
        self.resume()
        return self

    def resume(self) -> None:
        """Start the (initialised, stopped) server; returns once it accepts connections."""
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
                   " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
                   " -c max_connections=60 -c shared_buffers=32MB")
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l",
                  str(self.root / "server.log"), "-w", "-t", "60", "-o", options, "start")

    def pause(self) -> None:
        """Stop the server (fast: sessions are cut), keeping its data; :meth:`resume` it."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w",
                  "-t", "60", "stop")

    def restart(self) -> None:
        """Stop the server (fast: sessions are cut) and start it again, same options."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l",
                  str(self.root / "server.log"), "-m", "fast", "-w", "-t", "60", "restart")

    def stop(self) -> None:
        """Stop the server (immediately) and remove its folder; safe to call twice."""
        if self._running:
            self._running = False
            subprocess.run([*self._as, str(self.bindir / "pg_ctl"), "-D", str(self.data),
                            "-m", "immediate", "-w", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname}"

    def create_database(self) -> str:
        """A new, empty database; its name."""
        name = f"t{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return name

    def drop_database(self, name: str) -> None:
        """Drop ``name`` and the databases named ``<name>_...`` (the nodes' of a test)."""
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            family = [row[0] for row in conn.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE %s", (f"{name}\\_%",))]
            for each in [*family, name]:
                conn.execute(f"DROP DATABASE IF EXISTS {each} WITH (FORCE)")


@contextmanager
def running_server() -> Iterator[PgServer]:
    """A started server on a free loopback port, stopped afterwards; fails (never skips)
    when the PostgreSQL server binaries are missing."""
    import pytest

    from service.testing.ports import free_port

    bindir = server_bindir()
    if bindir is None:
        pytest.fail("PostgreSQL server binaries are not installed: run scripts/install-peers.sh")
    server = PgServer(bindir, free_port())
    try:
        server.start()
        yield server
    finally:
        server.stop()
