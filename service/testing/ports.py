"""Loopback TCP ports: a free one, and whether something listens on one.

Test processes running side by side (pytest-xdist workers, the two passes of
``make test``) each take ports from their own slot, so a port one of them
picked but has not bound yet (a node still starting) is never handed to
another: one slot per (pass, worker), the worker from ``PYTEST_XDIST_WORKER``
(``gw<k>``) and ``PYTEST_XDIST_WORKER_COUNT``, the pass from
``DOPANODE_TEST_PORT_PASS`` (default 0) of ``DOPANODE_TEST_PORT_PASSES``
(default 1). Outside the tests all of them are unset: one slot,
any free port.
"""

from __future__ import annotations

import os
import socket
import threading
from collections import deque

#: bind(0) attempts before giving up on a port of this process's slot.
_TRIES = 2000
#: Ports this process handed out lately: never handed out twice in a row. Two calls
#: before anything binds (an Orthanc's HTTP and DICOM ports) could otherwise get the
#: same port from the kernel, which then refuses the second listener.
_RECENT: deque[int] = deque(maxlen=512)
_RECENT_LOCK = threading.Lock()


def port_slot(environ: dict[str, str] | None = None) -> tuple[int, int]:
    """(slot, slots) of this process: its share of the loopback ports.

    Worker ``k`` of ``n`` in pass ``p`` of ``m`` gets slot ``p * n + k`` of ``m * n``.
    """
    env = os.environ if environ is None else environ
    worker = env.get("PYTEST_XDIST_WORKER", "")
    index = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0
    workers = max(1, int(env.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1))
    passes = max(1, int(env.get("DOPANODE_TEST_PORT_PASSES", "1") or 1))
    this_pass = int(env.get("DOPANODE_TEST_PORT_PASS", "0") or 0) % passes
    return this_pass * workers + index % workers, passes * workers


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (and of this process's slot).

    The kernel hands out odd ports to ``bind(0)`` first (even ones go to
    ``connect``), so the slot is taken from ``port >> 1``. A port this process
    handed out among its last 512 is not handed out again.
    """
    slot, slots = port_slot()
    for _ in range(_TRIES):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if (port >> 1) % slots != slot:
            continue
        with _RECENT_LOCK:
            if port not in _RECENT:
                _RECENT.append(port)
                return port
    raise RuntimeError(f"no free loopback port of slot {slot} of {slots} in {_TRIES} tries")


def tcp_open(port: int, host: str = "127.0.0.1") -> bool:
    """True when something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False
