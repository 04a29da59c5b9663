"""Run a real HAProxy (Debian package ``haproxy``) as a TCP balancer for tests and benches.

Usage::

    with Balancer(tmp_path, [("127.0.0.1", a.scp_port), ("127.0.0.1", b.scp_port)]) as lb:
        ... storescu to 127.0.0.1:lb.port ...

Mode ``tcp``, ``balance roundrobin`` over whole connections (one DICOM
association each); health checks on request (``checks``). With ``proxy_v2`` every backend
connection starts with a PROXY protocol v2 header naming the client
(``send-proxy-v2``), which the node reads when ``node.proxy_protocol_from``
lists the balancer's address.
"""

from __future__ import annotations

import csv
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from service.testing.peers import require_tool
from service.testing.polling import wait_until
from service.testing.ports import free_port, tcp_open


def haproxy_config(port: int, backends: Sequence[tuple[str, int]], proxy_v2: bool,
                   timeout_s: int = 120, checks: bool = False) -> str:
    """HAProxy's configuration text: one TCP frontend on ``port``, round robin.

    ``checks``: TCP health checks every 0.5 s, with a PROXY v2 ``LOCAL`` header
    when ``proxy_v2`` (``check-send-proxy``), as deploy/README.md recommends.
    """
    proxy = " send-proxy-v2" if proxy_v2 else ""
    if checks:
        proxy += " check inter 500" + (" check-send-proxy" if proxy_v2 else "")
    servers = "\n".join(f"    server s{i} {host}:{p}{proxy}"
                        for i, (host, p) in enumerate(backends))
    return f"""global
    maxconn 512
    stats socket {{stats_socket}} mode 600 level operator
defaults
    mode tcp
    timeout connect 5s
    timeout client {timeout_s}s
    timeout server {timeout_s}s
frontend dicom
    bind 127.0.0.1:{port}
    default_backend listeners
backend listeners
    balance roundrobin
{servers}
"""


class Balancer:
    """An HAProxy process in the foreground (``-db``) in front of ``backends``."""

    def __init__(self, work_dir: Path, backends: Sequence[tuple[str, int]],
                 proxy_v2: bool = True, checks: bool = False) -> None:
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.config_path = self.work_dir / "haproxy.cfg"
        self.log_path = self.work_dir / "haproxy.log"
        self.stats_socket = self.work_dir / "haproxy.sock"
        text = haproxy_config(self.port, backends, proxy_v2, checks=checks)
        self.config_path.write_text(text.replace("{stats_socket}", str(self.stats_socket)),
                                    encoding="ascii")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 15.0) -> Balancer:
        """Check the configuration (``haproxy -c``), start, wait for the port."""
        binary = require_tool("haproxy")
        subprocess.run([binary, "-c", "-q", "-f", str(self.config_path)], check=True,
                       capture_output=True, timeout=30)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen([binary, "-db", "-f", str(self.config_path)],
                                         stdout=log, stderr=subprocess.STDOUT)

        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"haproxy exited with {self.proc.returncode}:\n"
                                   + self.log_path.read_text(errors="replace")[-2000:])
            # the stats socket may appear after the listener port (seen under load)
            return tcp_open(self.port) and self.stats_socket.exists()

        wait_until(up, timeout_s, "haproxy's port and stats socket")
        return self

    def servers(self) -> dict[str, dict[str, str]]:
        """``show stat`` of the backend's servers (status, check_status, chkfail, ...)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(self.stats_socket))
            sock.sendall(b"show stat\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        lines = data.decode("ascii", errors="replace").lstrip("# ").splitlines()
        rows = list(csv.DictReader(lines))
        return {r["svname"]: r for r in rows
                if r["pxname"] == "listeners" and r["svname"] not in ("FRONTEND", "BACKEND")}

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def __enter__(self) -> Balancer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


__all__ = ["Balancer", "haproxy_config"]
