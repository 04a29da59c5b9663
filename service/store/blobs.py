"""The blobs port: received instances and job outputs by key, and its local adapter.

Keys are built here only, from validated UIDs, integer job ids and the
claim's lease token (32 lowercase hex digits), never from other DICOM
strings::

    instances/<study uid>/<series uid>/<sop instance uid>.dcm
    outputs/<job id>/<lease token>/<sop instance uid>.dcm

An instance key is what the rows store as the instance's ``path`` (the same
text as the spool-relative path of the embedded node). Outputs are keyed per
attempt (the lease token of the claim that made them): a stale worker whose
lease was taken over writes below its own token and can never replace the
files of its successor; the fenced finish (:func:`service.store.jobs.finish`)
decides which attempt's keys reach the outbox. Writes with ``if_absent``
never replace an existing blob (:class:`BlobExists`).

Two adapters implement :class:`Blobs`:

* :class:`LocalBlobs`: the spool folder (the embedded default), same layout
  and durability as before (:class:`service.store.spool.Spool`);
* :class:`service.store.s3blobs.S3Blobs`: an S3-compatible object store
  (``[storage] blobs = "s3"``; docs/storage.md).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from service.dicom.uids import is_valid_uid, validated_uid
from service.paths import fsync_dir
from service.store.spool import Spool

INSTANCES = "instances"
OUTPUTS = "outputs"
_TOKEN_RE = re.compile(r"^[0-9a-f]{32}$")
_JOB_RE = re.compile(r"^(0|[1-9][0-9]*)$")


class BlobExists(Exception):
    """A write with ``if_absent`` found the key taken (S3: 412 Precondition Failed)."""


class BlobNotFound(FileNotFoundError):
    """No blob under this key."""


class BlobStoreError(Exception):
    """The object store did not answer or refused (unreachable, denied, 5xx): transient."""


def instance_key(study_uid: str, series_uid: str, sop_instance_uid: str) -> str:
    """The key of a received instance; raises ValueError for an invalid UID."""
    return "/".join((INSTANCES, validated_uid(study_uid, "StudyInstanceUID"),
                     validated_uid(series_uid, "SeriesInstanceUID"),
                     validated_uid(sop_instance_uid, "SOPInstanceUID") + ".dcm"))


def output_prefix(job_id: int) -> str:
    """The prefix (ending in ``/``) of every attempt's outputs of job ``job_id``."""
    if isinstance(job_id, bool) or not isinstance(job_id, int) or job_id < 0:
        raise ValueError("job id must be a non-negative integer")
    return f"{OUTPUTS}/{job_id}/"


def output_key(job_id: int, lease_token: str, sop_instance_uid: str) -> str:
    """The key of an output of the attempt that holds ``lease_token``."""
    if not isinstance(lease_token, str) or not _TOKEN_RE.match(lease_token):
        raise ValueError("lease token must be 32 lowercase hex digits")
    uid = validated_uid(sop_instance_uid, "SOPInstanceUID")
    return f"{output_prefix(job_id)}{lease_token}/{uid}.dcm"


def validated_key(key: str) -> str:
    """``key`` if it is one this module builds (or a prefix of one); else ValueError.

    Accepted: ``instances/<uid>/<uid>/<uid>.dcm`` and
    ``outputs/<int>/<token>/<uid>.dcm``; a prefix (for :meth:`Blobs.list`)
    may stop after any whole part and end in ``/``.
    """
    if not isinstance(key, str) or not key:
        raise ValueError("blob key is empty")
    parts = key.split("/")
    is_prefix = parts[-1] == ""
    if is_prefix:
        parts = parts[:-1]
    checks = _KEY_PARTS.get(parts[0])
    if checks is None or len(parts) > 4 or (not is_prefix and len(parts) != 4):
        raise ValueError("not a blob key of this node")
    for check, part in zip(checks, parts[1:], strict=False):
        if not check(part):
            raise ValueError("not a blob key of this node")
    return key


def _is_uid_file(name: str) -> bool:
    return name.endswith(".dcm") and is_valid_uid(name[:-4])


def _is_job_id(name: str) -> bool:
    return _JOB_RE.match(name) is not None


def _is_token(name: str) -> bool:
    return _TOKEN_RE.match(name) is not None


#: The checks of the parts after the first, per kind of key.
_KEY_PARTS: dict[str, tuple[Callable[[str], bool], ...]] = {
    INSTANCES: (is_valid_uid, is_valid_uid, _is_uid_file),
    OUTPUTS: (_is_job_id, _is_token, _is_uid_file),
}


class Blobs(Protocol):
    """Durable blobs by key (keys from :func:`instance_key` and :func:`output_key`)."""

    #: ``"local"`` or ``"s3"``.
    kind: str

    def put_file(self, key: str, source: Path, if_absent: bool = False) -> int:
        """Store the file ``source`` under ``key`` durably; its size in bytes.

        ``source`` is consumed (moved or removed) when it lies in the spool's
        ``tmp/``. With ``if_absent`` an existing blob is never replaced:
        :class:`BlobExists` is raised instead.
        """

    def put_bytes(self, key: str, data: bytes | memoryview, if_absent: bool = False) -> int:
        """Store ``data`` under ``key`` durably; its size (``if_absent`` as above)."""

    def get_bytes(self, key: str) -> bytes:
        """The blob's content; :class:`BlobNotFound` when there is none."""

    def open(self, key: str) -> BinaryIO:
        """A binary stream of the blob (close it); :class:`BlobNotFound` when none."""

    def get_head(self, key: str, size: int) -> bytes:
        """The blob's first ``size`` bytes (all of it when shorter; S3: a ranged GET)."""

    def local_copy(self, key: str) -> contextlib.AbstractContextManager[Path]:
        """A local file with the blob's content while the context lasts (for pydicom)."""

    def exists(self, key: str) -> bool:
        """Whether a blob is stored under ``key``."""

    def delete(self, key: str) -> None:
        """Remove the blob (no error when there is none)."""

    def list(self, prefix: str) -> list[str]:
        """Every key that starts with ``prefix`` (a :func:`validated_key` prefix), sorted."""

    def delete_prefix(self, prefix: str) -> int:
        """Remove every blob below ``prefix`` (ends in ``/``); how many keys were listed."""

    def delete_many(self, keys: Sequence[str]) -> None:
        """Remove these blobs (no error for missing ones; S3: one request per 1000)."""

    def iter_modified(self, prefix: str) -> Iterator[tuple[str, float]]:
        """``(key, last modified, s since the epoch)`` of every blob below ``prefix``.

        Lazy (one listing page at a time, in no promised order): the orphan
        sweep (:mod:`service.store.orphans`) walks a whole bucket with it.
        """


class LocalBlobs:
    """The spool folder as a blob store: key = path relative to the spool root.

    Parameters
    ----------
    root : Path
        The spool folder.
    spool : Spool or None
        The node's spool (durable writes, ``tmp/``); None: read-only (the API,
        which must not create the spool).
    """

    kind = "local"

    def __init__(self, root: Path, spool: Spool | None = None) -> None:
        self.root = Path(root).resolve()
        self.spool = spool

    def path(self, key: str) -> Path:
        """The file of ``key`` (no I/O)."""
        return self.root / validated_key(key)

    def _writer(self) -> Spool:
        if self.spool is None:
            raise PermissionError("these local blobs are read-only")
        return self.spool

    def put_file(self, key: str, source: Path, if_absent: bool = False) -> int:
        spool, path = self._writer(), self.path(key)
        if Path(source).parent.resolve() != spool.tmp_dir:
            with open(source, "rb") as f:
                return self.put_bytes(key, f.read(), if_absent)
        if not if_absent:
            return spool.adopt(Path(source), path)  # the SCP's one-flush route, unchanged
        return _link_durably(spool, Path(source), path)

    def put_bytes(self, key: str, data: bytes | memoryview, if_absent: bool = False) -> int:
        spool, path = self._writer(), self.path(key)
        try:
            return spool.write_atomic(path, [data], replace=not if_absent)
        except FileExistsError:
            raise BlobExists("a blob is already stored under this key") from None

    def get_bytes(self, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except FileNotFoundError:
            raise BlobNotFound(errno.ENOENT, "no blob under this key") from None

    def open(self, key: str) -> BinaryIO:
        try:
            return open(self.path(key), "rb")
        except FileNotFoundError:
            raise BlobNotFound(errno.ENOENT, "no blob under this key") from None

    def get_head(self, key: str, size: int) -> bytes:
        with self.open(key) as stream:
            return stream.read(size)

    @contextlib.contextmanager
    def local_copy(self, key: str) -> Iterator[Path]:
        path = self.path(key)
        if not path.is_file():
            raise BlobNotFound(errno.ENOENT, "no blob under this key")
        yield path  # the spool file itself: no copy

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def delete(self, key: str) -> None:
        # the folder stays: the spool caches the folders it has made (and fsynced)
        self.path(key).unlink(missing_ok=True)

    def delete_many(self, keys: Sequence[str]) -> None:
        for key in keys:
            self.delete(key)

    def list(self, prefix: str) -> list[str]:
        validated_key(prefix)
        base = self.root / prefix.rstrip("/")
        if not base.is_dir():
            return []
        return sorted(str(p.relative_to(self.root)) for p in base.rglob("*.dcm")
                      if p.is_file())

    def delete_prefix(self, prefix: str) -> int:
        """Remove the folder of ``prefix`` (with files of older layouts in it)."""
        if not validated_key(prefix).endswith("/"):
            raise ValueError("a prefix ends in /")
        base = self.root / prefix.rstrip("/")
        count = sum(1 for p in base.rglob("*") if p.is_file()) if base.is_dir() else 0
        shutil.rmtree(base, ignore_errors=True)
        return count


    def iter_modified(self, prefix: str) -> Iterator[tuple[str, float]]:
        validated_key(prefix)
        base = self.root / prefix.rstrip("/")
        for folder, _, names in os.walk(base):  # nothing when the folder is missing
            for name in names:
                if name.endswith(".dcm"):
                    path = Path(folder) / name
                    with contextlib.suppress(FileNotFoundError):  # removed meanwhile
                        yield str(path.relative_to(self.root)), path.stat().st_mtime


def _link_durably(spool: Spool, tmp: Path, path: Path) -> int:
    """Give the complete file ``tmp`` (in spool tmp/) the name ``path`` unless taken.

    ``link`` fails with EEXIST where ``rename`` would replace: the local
    equivalent of ``If-None-Match: *``. fsync the file, link, fsync the
    directory, remove the temporary name.
    """
    spool._ensure_dir(path.parent)  # noqa: SLF001 - the spool's cached mkdir+fsync
    fd = os.open(tmp, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise BlobExists("a blob is already stored under this key") from None
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return size


def open_blobs(storage: Any, spool: Spool | None = None) -> Blobs:
    """The adapter ``storage`` (``service.config.StorageSettings``) asks for.

    ``spool`` is the node's spool (local writes, and S3's temporary files);
    None gives read access only (the API).
    """
    if storage.blobs == "s3":
        from service.store.s3blobs import S3Blobs

        tmp_dir = spool.tmp_dir if spool is not None else None
        return S3Blobs(storage.s3_bucket, endpoint=storage.s3_endpoint,
                       prefix=storage.s3_prefix, region=storage.s3_region, tmp_dir=tmp_dir)
    return LocalBlobs(Path(storage.spool_dir), spool)


def as_blobs(store: Blobs | Spool) -> Blobs:
    """``store`` itself, or the local blobs of a :class:`Spool` (older callers pass one)."""
    if isinstance(store, Spool):
        return LocalBlobs(store.root, store)
    return store
