"""The durable spool: received instances and job outputs as Part-10 files.

Layout under ``root``::

    instances/<study uid>/<series uid>/<sop instance uid>.dcm
    outputs/<job id>/<lease token>/<sop instance uid>.dcm
                               (one folder per attempt; jobs made before per-attempt
                               keys have outputs/<job id>/<sop instance uid>.dcm)
    tmp/                       temporary files, same file system, for rename
                               (also where the SCP streams arriving instances)

The node reaches the files through the blobs port
(:class:`service.store.blobs.LocalBlobs`, which builds the keys); with
``storage.blobs = "s3"`` only ``tmp/`` is used here.

Paths are built only from validated UIDs (:mod:`service.dicom.uids`) and
integer job ids. Writes are atomic and durable: temporary file, fsync,
rename, fsync of the directory (and of any directory created on the way).

Received instances (:meth:`Spool.adopt`, once per C-STORE) take a cheaper
route with the same guarantee where the file system gives it ("one flush"):
the data is written out to the device first (``sync_file_range``, no cache
flush), then the file is renamed into place, then one ``fsync`` of the file
commits the journal transaction that holds its blocks, its size *and* the
rename, with a device cache flush before the commit record. ext4, XFS and
btrfs persist a rename this way (the rename changes the file's inode, and
fsync of the inode forces the journal/log up to that change); elsewhere the
spool keeps the POSIX sequence (fsync, rename, fsync of the directory).
The node uses one flush with ``storage.spool_sync = "auto"`` (the default);
``"posix"`` always takes the POSIX sequence.
Either way an instance file exists under its final name after a crash only
with its data written before that name, and is durable once ``adopt``
returns. One flush instead of two halves the cost of a durable instance on
a virtual disk whose cache flush takes milliseconds (bench/ingest.py).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

from service.dicom.uids import validated_uid
from service.paths import fsync_dir

log = logging.getLogger(__name__)

MIB = 1024 * 1024
#: Free space (MiB) below which the spool counts as full whatever ``storage.min_free_mb``
#: says: the SCP stores nothing and /ready fails (SQLite and the outputs need room too).
FREE_SPACE_FLOOR_MB = 64
#: errno values of a full file system and of an exhausted disk quota.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
#: SQLite's result code SQLITE_FULL ("database or disk is full").
_SQLITE_FULL = 13
#: PostgreSQL's SQLSTATE disk_full (the server's disk).
_PG_DISK_FULL = "53100"
#: File systems whose fsync of a renamed file also makes its new name durable.
ONE_FLUSH_FILESYSTEMS = frozenset({"ext4", "xfs", "btrfs"})
#: sync_file_range flags (<linux/fs.h>): wait for earlier writeback, write, wait for it.
_SYNC_FILE_RANGE_ALL = 1 | 2 | 4


class Spool:
    """Durable files below one root directory.

    Parameters
    ----------
    root : Path
        Spool directory; created (with its sub-folders) if missing.
    one_flush : bool or None
        How :meth:`adopt` makes a received instance durable. None: one flush
        where the file system is in :data:`ONE_FLUSH_FILESYSTEMS`, the POSIX
        sequence elsewhere (``storage.spool_sync = "auto"``); False: always
        the POSIX sequence (``"posix"``); True: one flush, for tests.
    """

    def __init__(self, root: Path, one_flush: bool | None = None) -> None:
        self.root = Path(root).resolve()
        self.tmp_dir = self.root / "tmp"
        self._dirs_known: set[Path] = set()
        self._lock = threading.Lock()
        for sub in (self.root, self.tmp_dir, self.root / "instances", self.root / "outputs"):
            self._ensure_dir(sub)
        fs_type = filesystem_type(self.root)
        if one_flush is None:
            one_flush = fs_type in ONE_FLUSH_FILESYSTEMS and _SYNC_FILE_RANGE is not None
        elif one_flush and _SYNC_FILE_RANGE is None:
            raise ValueError("one-flush adoption needs Linux sync_file_range")
        #: True: :meth:`adopt` uses one flush per instance (see the module notes).
        self.one_flush = one_flush
        log.info("spool_durability", extra={"fields": {
            "filesystem": fs_type, "adopt": "one_flush" if one_flush else "fsync_rename_fsync_dir"}})

    # --- paths ---------------------------------------------------------------
    def instance_path(self, study_uid: str, series_uid: str, sop_instance_uid: str) -> Path:
        """Where an instance lives; raises ValueError for an invalid UID."""
        return (
            self.root / "instances" / validated_uid(study_uid, "StudyInstanceUID")
            / validated_uid(series_uid, "SeriesInstanceUID")
            / (validated_uid(sop_instance_uid, "SOPInstanceUID") + ".dcm")
        )

    def output_dir(self, job_id: int) -> Path:
        """The folder of job ``job_id``'s output objects."""
        return output_dir(self.root, job_id)

    def output_path(self, job_id: int, sop_instance_uid: str) -> Path:
        """Where job ``job_id``'s output object lived before per-attempt keys."""
        return output_path(self.root, job_id, sop_instance_uid)

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
    def write_atomic(self, path: Path, chunks: Iterable[bytes | memoryview],
                     replace: bool = True) -> int:
        """Write ``chunks`` to ``path`` durably and atomically; returns bytes written.

        The file appears under its name only complete and fsynced; a crash
        leaves at most an orphan in ``tmp/`` (removed by :meth:`clean_tmp`).
        With ``replace=False`` an existing file is kept and FileExistsError
        raised (``link`` instead of ``rename``).
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
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
        fsync_dir(path.parent)
        return size

    def adopt(self, source: Path, path: Path) -> int:
        """Move a complete file already in ``tmp/`` to ``path`` durably; returns its size.

        Used for instances pynetdicom has streamed into ``tmp/`` while they
        arrived. With :attr:`one_flush`: write the data out, rename it into
        place, fsync the file (one journal commit covers data, size and
        name); otherwise fsync the file, rename it, fsync the directory.
        Either way the file is complete under its new name before that name
        can survive a crash, and durable when this returns.
        """
        source = Path(source)
        if source.parent.resolve() != self.tmp_dir:
            raise ValueError("only files in the spool's tmp/ can be adopted")
        self._ensure_dir(path.parent)
        fd = os.open(source, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            if self.one_flush:
                _write_out(fd)
                os.replace(source, path)
                os.fsync(fd)
            else:
                os.fsync(fd)
                os.replace(source, path)
                fsync_dir(path.parent)
        finally:
            os.close(fd)
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
                fsync_dir(m.parent)
            self._dirs_known.add(directory)


def output_dir(root: Path, job_id: int) -> Path:
    """The folder of job ``job_id``'s output objects below the spool ``root`` (no I/O)."""
    if not isinstance(job_id, int) or job_id < 0:
        raise ValueError("job id must be a non-negative integer")
    return Path(root).resolve() / "outputs" / str(job_id)


def output_path(root: Path, job_id: int, sop_instance_uid: str) -> Path:
    """Where job ``job_id``'s output object lived below the spool ``root`` (no I/O).

    The layout before per-attempt keys (:func:`service.store.blobs.output_key`);
    the API reads outputs of such older jobs here.
    """
    uid = validated_uid(sop_instance_uid, "SOPInstanceUID")
    return output_dir(root, job_id) / f"{uid}.dcm"


def disk_full_cause(exc: BaseException) -> str | None:
    """What says a disk (or a quota) is full in ``exc`` or its causes, else None.

    ``"ENOSPC"`` or ``"EDQUOT"`` for an ``OSError`` (a write or fsync of ours
    or pynetdicom's), ``"SQLITE_FULL"`` for SQLite, ``"disk_full"`` for
    PostgreSQL's SQLSTATE 53100 (the server's disk); ``exc`` and its
    ``__cause__``/``__context__`` chain are looked at.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in DISK_FULL_ERRNOS:
            return errno.errorcode[current.errno]
        if getattr(current, "sqlite_errorcode", None) == _SQLITE_FULL:
            return "SQLITE_FULL"
        if getattr(current, "sqlstate", None) == _PG_DISK_FULL:
            return "disk_full"
        current = current.__cause__ or current.__context__
    return None


def is_disk_full(exc: BaseException) -> bool:
    """True for an error that says a disk (or a quota) is full: a transient cause."""
    return disk_full_cause(exc) is not None


def filesystem_type(path: Path) -> str:
    """Type of the file system holding ``path`` (``/proc/self/mounts``), or ``""``."""
    try:
        lines = Path("/proc/self/mounts").read_text(encoding="utf-8").splitlines()
    except OSError:
        return ""
    best, fs_type = -1, ""
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        mount = Path(fields[1].replace("\\040", " "))
        if (path == mount or mount in path.parents) and len(mount.parts) > best:
            best, fs_type = len(mount.parts), fields[2]
    return fs_type


def _write_out_fn() -> Callable[..., int] | None:
    """libc's ``sync_file_range``, or None where there is none (not Linux)."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    fn.restype = ctypes.c_int
    return fn


_SYNC_FILE_RANGE = _write_out_fn()


def _write_out(fd: int) -> None:
    """Write the file's dirty pages to the device and wait (no cache flush, no metadata)."""
    if _SYNC_FILE_RANGE is None:
        raise OSError("sync_file_range is not available")
    if _SYNC_FILE_RANGE(fd, 0, 0, _SYNC_FILE_RANGE_ALL) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
