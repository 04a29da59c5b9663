"""Run ``dopanode serve`` as a real subprocess for integration tests.

Usage::

    from service.testing.node import NodeProcess

    with NodeProcess(tmp_path, settings={"destinations": [...]}) as node:
        node.start()                      # free loopback ports, waits for readiness
        ... storescu to node.scp_port, HTTP to node.api_port ...
        node.kill()                       # kill -9
        node.start()                      # same config, spool and database
        assert "SENTINEL" not in node.log_text()

Readiness is polled (no sleeps): the process logs ``node_ready`` once every
part is up; the helper waits for that line (from this start on), then for
the SCP and API ports to accept TCP connections. The log file is appended
to across restarts. ``settings`` are TOML sections merged over a test base
config (fast worker polling, short quiet time, tiny ``min_free_mb``).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from types import TracebackType
from typing import Any

import service
from service.testing.polling import wait_until
from service.testing.ports import free_port, tcp_open
from service.testing.storage import env_s3_environ, node_database, postgres_environ

#: The checkout (or installed tree) whose ``service`` package this is: the node's cwd.
REPO_ROOT = Path(service.__file__).resolve().parents[1]
#: Holds ``dopanode_test_pipelines-0.dist-info`` (entry points of :mod:`.pipelines`).
PLUGINS_DIR = Path(__file__).resolve().parent / "plugins"


def to_toml(data: dict[str, Any]) -> str:
    """Minimal TOML writer: scalars, tables, arrays of tables (enough for settings)."""
    def scalar(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, list | tuple):  # an array of scalars, e.g. node.proxy_protocol_from
            return "[" + ", ".join(scalar(x) for x in v) + "]"
        if isinstance(v, dict):  # a table inside a table, e.g. node.tls
            return "{" + ", ".join(f"{k} = {scalar(x)}" for k, x in v.items()
                                   if x is not None) + "}"
        text = str(v).replace("\\", "\\\\").replace('"', '\\"')
        return f'"{text}"'

    lines = [f"{k} = {scalar(v)}" for k, v in data.items() if not isinstance(v, dict | list)]
    for key, value in data.items():
        if isinstance(value, dict) and all(isinstance(v, dict) for v in value.values()) and value:
            for sub, table in value.items():  # [pipelines.<name>] sections
                lines.append(f"\n[{key}.{sub}]")
                lines += [f"{k} = {scalar(v)}" for k, v in table.items() if v is not None]
        elif isinstance(value, dict):
            lines.append(f"\n[{key}]")
            lines += [f"{k} = {scalar(v)}" for k, v in value.items() if v is not None]
        elif isinstance(value, list):
            for item in value:
                lines.append(f"\n[[{key}]]")
                lines += [f"{k} = {scalar(v)}" for k, v in item.items() if v is not None]
    return "\n".join(lines) + "\n"


class NodeProcess:
    """One node's config, spool and database in ``work_dir``; start/stop/kill it.

    Parameters
    ----------
    work_dir : Path
        Holds ``dopanode.toml``, ``spool/``, ``dopanode.sqlite3``, ``node.log``.
    settings : dict, optional
        TOML sections merged (section by section) over the test base config.
    env : dict, optional
        Extra environment.
    components : str, optional
        ``--only`` value, e.g. ``"scp,worker"``; default all parts.
    log_level : str
        The node's ``--log-level`` (DEBUG to prove nothing leaks even there).
    postgres_dsn : str, optional
        Run on this PostgreSQL database instead of the SQLite file (the one
        setting, given as ``DOPANODE_STORAGE__*`` environment); ``query`` reads it.
    spool_dir : Path, optional
        A spool shared with other nodes (default ``work_dir/spool``).
    cwd : Path, optional
        Working folder of the process; ``python -m service.cli`` imports the
        ``service`` package found there first (bench/ingest.py's ``--baseline``
        runs another checkout this way). Default: :data:`REPO_ROOT`.
    test_pipelines : bool
        Put :data:`PLUGINS_DIR` on the node's PYTHONPATH, so that the node's
        registry finds ``fake_nm`` and ``echo_ct`` (disabled unless settings
        enable them). Off for a node that needs none, e.g. another checkout's,
        whose ``service`` may have no ``service.testing`` (the registry loads
        every entry point).
    """

    def __init__(self, work_dir: Path, settings: dict[str, Any] | None = None,
                 env: dict[str, str] | None = None, components: str | None = None,
                 log_level: str = "INFO", postgres_dsn: str | None = None,
                 spool_dir: Path | None = None, cwd: Path | None = None,
                 test_pipelines: bool = True) -> None:
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.scp_port = free_port()
        self.api_port = free_port()
        self.cwd = Path(cwd) if cwd is not None else REPO_ROOT
        self.test_pipelines = test_pipelines
        self.ae_title = "DOPANODE"
        self.api_token = "test-token-0123456789"
        self.config_path = self.work_dir / "dopanode.toml"
        self.log_path = self.work_dir / "node.log"
        self.spool_dir = Path(spool_dir) if spool_dir else self.work_dir / "spool"
        self.db_path = self.work_dir / "dopanode.sqlite3"
        self.audit_path = self.work_dir / "audit" / "audit.jsonl"
        self.components = components
        self.log_level = log_level
        # its own bucket: the S3 settings of the environment it was built in, kept (a
        # module-scoped node outlives the test whose bucket it got; a restart keeps it)
        self.env = {**env_s3_environ(), **(env or {})}
        # under the storage switch (service.testing.storage) each node folder has its own
        # database, as it has its own SQLite file; kept for this node's life
        self.postgres_dsn = (postgres_dsn if postgres_dsn is not None
                             else node_database(self.work_dir))
        if self.postgres_dsn is not None:
            self.env.update(postgres_environ(self.postgres_dsn))
        self.proc: subprocess.Popen[bytes] | None = None
        self._write_config(settings or {})

    def _write_config(self, overrides: dict[str, Any]) -> None:
        base: dict[str, Any] = {
            "node": {"ae_title": self.ae_title, "port": self.scp_port, "bind": "127.0.0.1"},
            "allowed_callers": [
                {"ae_title": ae, "host": "127.0.0.1", "series_quiet_s": 1.0}
                for ae in ("STORESCU", "ECHOSCU", "ORTHANC")
            ],
            "storage": {"spool_dir": str(self.spool_dir), "db_path": str(self.db_path),
                        "min_free_mb": 1},
            "api": {"bind": "127.0.0.1", "port": self.api_port, "token": self.api_token},
            "worker": {"count": 1, "lease_s": 5.0, "max_attempts": 3,
                       "poll_interval_s": 0.05, "shutdown_grace_s": 5.0},
            "sender": {"retry_base_s": 0.2, "retry_cap_s": 1.0, "give_up_after_h": 1.0},
            "audit": {"path": str(self.audit_path)},
        }
        for key, value in overrides.items():
            if key == "pipelines" and isinstance(base.get(key), dict):
                base[key] = {name: {**base[key].get(name, {}), **table}
                             for name, table in {**base[key], **value}.items()}
            elif isinstance(value, dict) and isinstance(base.get(key), dict):
                base[key] = {**base[key], **value}
            else:
                base[key] = value
        self.config_path.write_text(to_toml(base), encoding="utf-8")

    # --- lifecycle -------------------------------------------------------------
    def start(self, timeout_s: float = 30.0) -> NodeProcess:
        """Start ``dopanode serve`` and wait until it is ready."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("node already running")
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        cmd = [sys.executable, "-m", "service.cli", "--log-level", self.log_level, "serve",
               "--config", str(self.config_path)]
        if self.components:
            cmd += ["--only", self.components]
        # the test pipelines' entry points (plugins/*.dist-info -> service.testing.pipelines)
        plugins = str(PLUGINS_DIR) if self.test_pipelines else None
        path = os.pathsep.join(p for p in (plugins, os.environ.get("PYTHONPATH")) if p)
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=self.cwd, env=env, stdout=log,
                                         stderr=subprocess.STDOUT)
        wait_until(lambda: self._ready_since(offset), timeout_s, "node_ready in the log")
        parts = (self.components or "scp,worker,sender,api").split(",")
        if "scp" in parts:
            wait_until(lambda: tcp_open(self.scp_port), timeout_s, "the SCP port")
        if "api" in parts:
            wait_until(lambda: tcp_open(self.api_port), timeout_s, "the API port")
        return self

    def _ready_since(self, offset: int) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(
                f"node exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}"
            )
        with self.log_path.open("rb") as f:
            f.seek(offset)
            return b" node_ready" in f.read()

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout_s)
        self.proc = None
        return code

    def api_get(self, path: str, token: str | None = "default") -> tuple[int, Any]:
        """GET ``path`` from the node's API; returns (status, parsed JSON body)."""
        import json
        import urllib.error
        import urllib.request

        request = urllib.request.Request(f"http://127.0.0.1:{self.api_port}{path}")
        bearer = self.api_token if token == "default" else token
        if bearer is not None:
            request.add_header("Authorization", f"Bearer {bearer}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"null")

    def kill(self) -> None:
        """kill -9, no chance to clean up."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def __enter__(self) -> NodeProcess:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.stop(10)
            except subprocess.TimeoutExpired:
                self.kill()

    # --- inspection --------------------------------------------------------------
    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def audit_records(self) -> list[dict[str, Any]]:
        """Every record of the node's audit trail (current file), oldest first."""
        import json

        if not self.audit_path.exists():
            return []
        return [json.loads(line) for line in self.audit_path.read_text("ascii").splitlines()]

    def blobs(self) -> Any:
        """Read access to the blobs this node stores: its spool folder, or the S3 bucket the
        environment (the storage switch, :mod:`service.testing.storage`) gave it."""
        from service.store.blobs import open_blobs
        from service.testing.storage import storage_settings

        return open_blobs(storage_settings({**os.environ, **self.env}, spool_dir=self.spool_dir))

    def stored_bytes(self, key: str) -> bytes:
        """A stored blob (``instances/...`` or an outbox/output key), whatever the store."""
        return bytes(self.blobs().get_bytes(key))

    def stored_keys(self, prefix: str = "instances/") -> list[str]:
        """The keys of the stored blobs under ``prefix``, whatever the store."""
        return sorted(self.blobs().list(prefix))

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Rows from the node's database (read-only connection)."""
        if self.postgres_dsn is not None:
            import psycopg

            from service.store.postgres import to_pyformat

            with psycopg.connect(self.postgres_dsn) as pg:
                pg.read_only = True
                return [tuple(r) for r in pg.execute(to_pyformat(sql), params)]
        conn = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=10)
        try:
            return list(conn.execute(sql, params))
        finally:
            conn.close()

    def wait_for(self, sql: str, expected: Any, timeout_s: float = 30.0,
                 params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Poll ``sql`` until its rows equal ``expected`` (or a callable says so)."""
        def check() -> tuple[list[tuple[Any, ...]]] | None:
            rows = self.query(sql, params)
            ok = expected(rows) if callable(expected) else rows == expected
            return (rows,) if ok else None
        try:
            return wait_until(check, timeout_s, f"{sql!r} to give {expected!r}")[0]
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; last rows {self.query(sql, params)!r}") from None


def fake_settings(delay_s: float = 0.0, runs_log: Path | None = None) -> dict[str, Any]:
    """Settings that swap the analyses for the test-only ``fake_nm`` (:mod:`service.testing.pipelines`).

    The DaT and FDOPA pipelines are off: such a test is about the node.
    """
    fake: dict[str, Any] = {"enabled": True, "delay_s": delay_s}
    if runs_log is not None:
        fake["runs_log"] = str(runs_log)
    return {"pipelines": {"dat_spect": {"enabled": False}, "fdopa_pet": {"enabled": False},
                          "fake_nm": fake}}
