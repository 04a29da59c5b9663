"""The durable spool: received instances and job outputs as Part-10 files.

Layout under ``root``::

    instances/<study uid>/<series uid>/<sop instance uid>.dcm
    outputs/<job id>/<sop instance uid>.dcm
    tmp/                       temporary files, same file system, for rename
                               (also where the SCP streams arriving instances)

Paths are built only from validated UIDs (:mod:`service.dicom.uids`) and
integer job ids. Writes are atomic and durable: temporary file, fsync,
rename, fsync of the directory (and of any directory created on the way).
"""

from __future__ import annotations

import os
import shutil
import threading
import uuid
from collections.abc import Iterable
from pathlib import Path

from service.dicom.uids import validated_uid

MIB = 1024 * 1024


class Spool:
    """Durable files below one root directory.

    Parameters
    ----------
    root : Path
        Spool directory; created (with its sub-folders) if missing.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.tmp_dir = self.root / "tmp"
        self._dirs_known: set[Path] = set()
        self._lock = threading.Lock()
        for sub in (self.root, self.tmp_dir, self.root / "instances", self.root / "outputs"):
            self._ensure_dir(sub)

    # --- paths ---------------------------------------------------------------
    def instance_path(self, study_uid: str, series_uid: str, sop_instance_uid: str) -> Path:
        """Where an instance lives; raises ValueError for an invalid UID."""
        return (
            self.root / "instances" / validated_uid(study_uid, "StudyInstanceUID")
            / validated_uid(series_uid, "SeriesInstanceUID")
            / (validated_uid(sop_instance_uid, "SOPInstanceUID") + ".dcm")
        )

    def output_path(self, job_id: int, sop_instance_uid: str) -> Path:
        """Where job ``job_id``'s output object lives."""
        if not isinstance(job_id, int) or job_id < 0:
            raise ValueError("job id must be a non-negative integer")
        uid = validated_uid(sop_instance_uid, "SOPInstanceUID")
        return self.root / "outputs" / str(job_id) / f"{uid}.dcm"

    def relative(self, path: Path) -> str:
        """``path`` relative to the spool root (what the database stores)."""
        return str(Path(path).relative_to(self.root))

    def absolute(self, relative: str) -> Path:
        """Inverse of :meth:`relative`; refuses paths that leave the spool."""
        path = (self.root / relative).resolve()
        if self.root not in path.parents:
            raise ValueError("path outside the spool")
        return path

    # --- space ---------------------------------------------------------------
    def free_mb(self) -> float:
        """Free space on the spool's file system, MiB (for the caller, not root)."""
        return shutil.disk_usage(self.root).free / MIB

    # --- writes ----------------------------------------------------------------
    def write_atomic(self, path: Path, chunks: Iterable[bytes | memoryview]) -> int:
        """Write ``chunks`` to ``path`` durably and atomically; returns bytes written.

        The file appears under its name only complete and fsynced; a crash
        leaves at most an orphan in ``tmp/`` (removed by :meth:`clean_tmp`).
        """
        self._ensure_dir(path.parent)
        tmp = self.tmp_dir / f"{uuid.uuid4().hex}.part"
        size = 0
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                    size += n
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        return size

    def adopt(self, source: Path, path: Path) -> int:
        """Move a complete file already in ``tmp/`` to ``path`` durably; returns its size.

        Used for instances pynetdicom has streamed into ``tmp/`` while they
        arrived: fsync the file, rename it into place, fsync the directory.
        """
        source = Path(source)
        if source.parent.resolve() != self.tmp_dir:
            raise ValueError("only files in the spool's tmp/ can be adopted")
        self._ensure_dir(path.parent)
        fd = os.open(source, os.O_RDONLY)
        try:
            os.fsync(fd)
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        os.replace(source, path)
        _fsync_dir(path.parent)
        return size

    def clean_tmp(self) -> int:
        """Remove leftovers of interrupted writes and receives; returns how many."""
        count = 0
        for pattern in ("*.part", "tmp*.dcm"):
            for item in self.tmp_dir.glob(pattern):
                item.unlink(missing_ok=True)
                count += 1
        return count

    def _ensure_dir(self, directory: Path) -> None:
        if directory in self._dirs_known:
            return
        with self._lock:
            missing: list[Path] = []
            d = directory
            while not d.exists():
                missing.append(d)
                d = d.parent
            for m in reversed(missing):
                try:
                    m.mkdir()
                except FileExistsError:
                    continue
                _fsync_dir(m.parent)
            self._dirs_known.add(directory)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
