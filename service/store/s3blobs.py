"""The blobs port on an S3-compatible object store (botocore via boto3; the ``s3`` extra).

A blob is durable once the server has answered the PUT (what S3 promises
for a 200). ``if_absent`` sends ``If-None-Match: *``: the server refuses
with 412 Precondition Failed when the key exists, and :class:`BlobExists`
is raised. AWS S3 supports this since 2024; SeaweedFS (4.48, the tests'
server) answers 412 as well (tests/unit/test_blobs.py). A server that
ignores the header would overwrite: per-attempt output keys keep a stale
worker away from its successor's keys even then.

Credentials come only from the environment (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_PROFILE``, instance
roles: botocore's default chain); they are never in the settings file and
never logged.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO, cast

from service.store.blobs import BlobExists, BlobNotFound, BlobStoreError, validated_key

log = logging.getLogger(__name__)

#: HTTP statuses of a refused conditional write (409: a concurrent conditional write).
_PRECONDITION_FAILED = frozenset({412, 409})


#: The environment variables botocore's default chain reads credentials from.
CREDENTIAL_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                        "AWS_PROFILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE")
#: Clients kept per process (one per endpoint, region and credentials in practice).
_MAX_CLIENTS = 8
_clients: OrderedDict[tuple[str | None, str, str], Any] = OrderedDict()
_clients_lock = threading.Lock()


def _client(endpoint: str | None, region: str | None) -> Any:
    """The process's S3 client for this endpoint, region and credentials (made once).

    A botocore client is thread-safe and large: its parsed service model and
    event hooks are about 35,000 Python objects (0.2 s of CPU to build). One
    per :class:`S3Blobs` (the API made one per app, /ready one per bucket)
    grew a process by that much each time, and every full garbage collection
    had to walk them: a test process that had made a few hundred paused for
    4-11 s per full collection (docs/storage.md, "Tests"). The credentials in
    the environment are part of the key (hashed): a change gives a new client.
    """
    try:
        import boto3
        from botocore.config import Config
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise RuntimeError('blobs = "s3" needs boto3: pip install "dopanode[s3]"') from exc
    secrets = "\0".join(os.environ.get(name, "") for name in CREDENTIAL_VARIABLES)
    key = (endpoint, region or "us-east-1", hashlib.sha256(secrets.encode()).hexdigest())
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            config = Config(s3={"addressing_style": "path"}, connect_timeout=5, read_timeout=60,
                            retries={"max_attempts": 3, "mode": "standard"})
            client = boto3.session.Session().client("s3", endpoint_url=endpoint,
                                                    region_name=key[1], config=config)
            _clients[key] = client
            while len(_clients) > _MAX_CLIENTS:
                _clients.popitem(last=False)
        _clients.move_to_end(key)
        return client


class S3Blobs:
    """Blobs in one bucket of an S3-compatible store, below an optional prefix.

    Parameters
    ----------
    bucket : str
        The bucket (must exist).
    endpoint : str or None
        The server's URL (None: AWS S3 of ``region``).
    prefix : str
        Put before every key (e.g. ``"site-a/"``); may be empty.
    region : str or None
        The signing region (default ``us-east-1``).
    tmp_dir : Path or None
        Where :meth:`local_copy` downloads (default: the system's temp folder).
    client : object or None
        A botocore S3 client to use instead of a new one.
    """

    kind = "s3"

    def __init__(self, bucket: str, endpoint: str | None = None, prefix: str = "",
                 region: str | None = None, tmp_dir: Path | None = None,
                 client: Any = None) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.tmp_dir = tmp_dir
        self._s3 = client if client is not None else _client(endpoint, region)

    def _name(self, key: str) -> str:
        return self.prefix + validated_key(key)

    def put_file(self, key: str, source: Path, if_absent: bool = False) -> int:
        source = Path(source)
        with open(source, "rb") as body:
            size = self._put(key, body, os.fstat(body.fileno()).st_size, if_absent)
        if self.tmp_dir is not None and source.parent.resolve() == Path(self.tmp_dir).resolve():
            source.unlink(missing_ok=True)  # uploaded: the local copy is not kept
        return size

    def put_bytes(self, key: str, data: bytes | memoryview, if_absent: bool = False) -> int:
        return self._put(key, bytes(data), len(data), if_absent)

    def _put(self, key: str, body: Any, size: int, if_absent: bool) -> int:
        from botocore.exceptions import BotoCoreError, ClientError

        extra = {"IfNoneMatch": "*"} if if_absent else {}
        try:
            self._s3.put_object(Bucket=self.bucket, Key=self._name(key), Body=body,
                                ContentLength=size, **extra)
        except ClientError as exc:
            if if_absent and _status(exc) in _PRECONDITION_FAILED:
                raise BlobExists("a blob is already stored under this key") from None
            raise BlobStoreError(f"object store refused the write (HTTP {_status(exc)})"
                                 ) from exc
        except BotoCoreError as exc:  # unreachable, timed out, no credentials
            raise BlobStoreError(f"object store unavailable ({type(exc).__name__})") from exc
        return size

    def get_bytes(self, key: str) -> bytes:
        with self.open(key) as stream:
            return stream.read()

    def open(self, key: str) -> BinaryIO:
        with _translated():
            reply = self._s3.get_object(Bucket=self.bucket, Key=self._name(key))
        return cast(BinaryIO, reply["Body"])

    def get_head(self, key: str, size: int) -> bytes:
        """A ranged GET (``bytes=0-<size-1>``); an empty blob gives b""."""
        from botocore.exceptions import ClientError

        try:
            with _translated():
                reply = self._s3.get_object(Bucket=self.bucket, Key=self._name(key),
                                            Range=f"bytes=0-{max(size, 1) - 1}")
        except BlobStoreError as exc:
            if isinstance(exc.__cause__, ClientError) and _status(exc.__cause__) == 416:
                return b""  # the range starts past the end: an empty object
            raise
        with reply["Body"] as body:
            return bytes(body.read())[:size]

    @contextlib.contextmanager
    def local_copy(self, key: str) -> Iterator[Path]:
        fd, name = tempfile.mkstemp(prefix="blob-", suffix=".part", dir=self.tmp_dir)
        path = Path(name)
        try:
            with os.fdopen(fd, "wb") as out, self.open(key) as stream, _translated():
                for chunk in iter(lambda: stream.read(1 << 20), b""):
                    out.write(chunk)
            yield path
        finally:
            path.unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        try:
            with _translated():
                self._s3.head_object(Bucket=self.bucket, Key=self._name(key))
        except BlobNotFound:
            return False
        return True

    def delete(self, key: str) -> None:
        with _translated():
            self._s3.delete_object(Bucket=self.bucket, Key=self._name(key))

    def list(self, prefix: str) -> list[str]:
        validated_key(prefix)
        keys: list[str] = []
        with _translated():
            pages = self._s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix + prefix)
            for page in pages:
                keys.extend(str(o["Key"])[len(self.prefix):] for o in page.get("Contents", ()))
        return sorted(keys)

    def iter_modified(self, prefix: str) -> Iterator[tuple[str, float]]:
        """Keys and ``LastModified`` (the server's clock), one ListObjectsV2 page at a time."""
        validated_key(prefix)
        with _translated():
            pages = self._s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix + prefix)
            for page in pages:
                for item in page.get("Contents", ()):
                    yield str(item["Key"])[len(self.prefix):], item["LastModified"].timestamp()

    def delete_prefix(self, prefix: str) -> int:
        if not validated_key(prefix).endswith("/"):
            raise ValueError("a prefix ends in /")
        keys = self.list(prefix)
        self.delete_many(keys)
        return len(keys)

    def delete_many(self, keys: Sequence[str]) -> None:
        """Remove these blobs (DeleteObjects, 1000 keys a request); no error for missing ones."""
        names = [self._name(k) for k in keys]
        for start in range(0, len(names), 1000):  # DeleteObjects takes up to 1000 keys
            with _translated():
                self._s3.delete_objects(Bucket=self.bucket, Delete={
                    "Objects": [{"Key": n} for n in names[start:start + 1000]],
                    "Quiet": True})

    def check(self) -> None:
        """Raise when the bucket cannot be reached (readiness, start-up)."""
        self._s3.head_bucket(Bucket=self.bucket)


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    """botocore's errors as the port's: 404 BlobNotFound, the rest BlobStoreError."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except ClientError as exc:
        if _status(exc) == 404:
            raise BlobNotFound(errno.ENOENT, "no blob under this key") from None
        raise BlobStoreError(f"object store refused (HTTP {_status(exc)})") from exc
    except BotoCoreError as exc:  # unreachable, timed out, no credentials
        raise BlobStoreError(f"object store unavailable ({type(exc).__name__})") from exc


def _status(exc: Any) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
