"""A real, small file system for disk-full tests: a size-limited tmpfs.

Mounting needs root (CAP_SYS_ADMIN); :func:`small_filesystem` raises
:class:`SmallFsUnavailable` where it cannot mount, and the tests that need it
say so. :func:`fill` leaves a chosen number of free bytes by writing one
filler file (really written, so the kernel counts it).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path


class SmallFsUnavailable(RuntimeError):
    """This machine cannot mount a tmpfs here (not root, or no mount permission)."""


@contextlib.contextmanager
def small_filesystem(path: Path, size_kib: int) -> Iterator[Path]:
    """Mount a tmpfs of ``size_kib`` KiB on ``path`` (created) for the block; unmounted after.

    Raises
    ------
    SmallFsUnavailable
        Not root, or ``mount`` failed (a container without CAP_SYS_ADMIN).
    """
    if os.geteuid() != 0 or shutil.which("mount") is None:
        raise SmallFsUnavailable("mounting a tmpfs needs root and mount(8)")
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={int(size_kib)}k,mode=0700",
                           "tmpfs", str(path)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SmallFsUnavailable(f"mount failed: {done.stderr.strip()[:200]}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def fill(directory: Path, leave_bytes: int = 0, name: str = "filler.bin") -> Path:
    """Write a filler file in ``directory`` until at most ``leave_bytes`` are free.

    Returns the filler's path (delete it to free the space again).
    """
    filler = directory / name
    chunk = b"\0" * 65536
    with open(filler, "ab", buffering=0) as f:
        while True:
            free = shutil.disk_usage(directory).free
            if free <= leave_bytes:
                break
            try:
                f.write(chunk[: max(1, min(len(chunk), free - leave_bytes))])
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
    return filler
