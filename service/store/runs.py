"""Which process holds a lease: a stable node identity and one lock file per running process.

Lease owners read ``<node_id>:<run_id>:<worker>:<nonce>``. ``node_id`` is
made once and kept in the spool (``node-id``), so it survives restarts and
does not depend on the PID; ``run_id`` is new for every ``dopanode serve``
process, which holds an exclusive ``flock`` on ``runs/<run_id>.lock`` for
its whole life. The kernel drops the lock when the process dies, however it
dies, so at start-up a node can tell the runs of its own that are gone
(their lock can be taken) from those still working beside it (another
``serve --only worker`` process on the same spool), and take back the jobs
the dead ones held at once instead of waiting out their leases.
"""

from __future__ import annotations

import fcntl
import os
import uuid
from pathlib import Path


class NodeRun:
    """This process's identity and its liveness lock.

    Parameters
    ----------
    spool_root : Path
        The node's spool folder (holds ``node-id`` and ``runs/``).
    """

    def __init__(self, spool_root: Path) -> None:
        self.root = Path(spool_root)
        self.runs_dir = self.root / "runs"
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.node_id = self._node_id()
        self.run_id = uuid.uuid4().hex[:12]
        self._lock_fd = os.open(self.runs_dir / f"{self.run_id}.lock",
                                os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def _node_id(self) -> str:
        path = self.root / "node-id"
        try:
            return path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            value = uuid.uuid4().hex[:12]
            tmp = path.with_suffix(".tmp")
            tmp.write_text(value + "\n", encoding="ascii")
            os.replace(tmp, path)  # two starters race: both write a valid id; one stays
            return path.read_text(encoding="ascii").strip()

    @property
    def owner_prefix(self) -> str:
        """The lease-owner prefix of this process: ``<node_id>:<run_id>:``."""
        return f"{self.node_id}:{self.run_id}:"

    def dead_runs(self) -> list[str]:
        """Runs of this node whose process is gone (their lock files are removed)."""
        dead = []
        for lock in sorted(self.runs_dir.glob("*.lock")):
            run_id = lock.stem
            if run_id == self.run_id:
                continue
            fd = os.open(lock, os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live process holds it
            finally:
                os.close(fd)
            lock.unlink(missing_ok=True)
            dead.append(run_id)
        return dead

    def close(self) -> None:
        """Release the lock and remove its file (an orderly stop)."""
        if self._lock_fd >= 0:
            (self.runs_dir / f"{self.run_id}.lock").unlink(missing_ok=True)
            os.close(self._lock_fd)
            self._lock_fd = -1
