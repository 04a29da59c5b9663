"""Run a real HAProxy (Debian package ``haproxy``) as a TCP balancer for tests and benches.

Usage::

    with Balancer(tmp_path, [("127.0.0.1", a.scp_port), ("127.0.0.1", b.scp_port)]) as lb:
        ... storescu to 127.0.0.1:lb.port ...

Mode ``tcp``, ``balance roundrobin`` over whole connections (one DICOM
association each), no health checks (a check would be one more connection
in the listeners' logs and audit trails). With ``proxy_v2`` every backend
connection starts with a PROXY protocol v2 header naming the client
(``send-proxy-v2``), which the node reads when ``node.proxy_protocol_from``
lists the balancer's address.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from service.testing.peers import require_tool
from service.testing.polling import wait_until
from service.testing.ports import free_port, tcp_open


def haproxy_config(port: int, backends: Sequence[tuple[str, int]], proxy_v2: bool,
                   timeout_s: int = 120) -> str:
    """HAProxy's configuration text: one TCP frontend on ``port``, round robin."""
    proxy = " send-proxy-v2" if proxy_v2 else ""
    servers = "\n".join(f"    server s{i} {host}:{p}{proxy}"
                        for i, (host, p) in enumerate(backends))
    return f"""global
    maxconn 512
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
                 proxy_v2: bool = True) -> None:
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.config_path = self.work_dir / "haproxy.cfg"
        self.log_path = self.work_dir / "haproxy.log"
        self.config_path.write_text(haproxy_config(self.port, backends, proxy_v2),
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
            return tcp_open(self.port)

        wait_until(up, timeout_s, "haproxy's port")
        return self

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
