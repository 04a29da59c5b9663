"""The blobs port's contract on both adapters (spool folder; SeaweedFS S3 on loopback)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from service.config import Settings, describe
from service.store.blobs import (
    BlobExists,
    BlobNotFound,
    LocalBlobs,
    instance_key,
    open_blobs,
    output_key,
    output_prefix,
    validated_key,
)
from service.store.s3blobs import S3Blobs
from service.store.spool import Spool

STUDY, SERIES = "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2"
TOKEN_A, TOKEN_B = "a" * 32, uuid.uuid4().hex


def _tmp_file(blobs: Any, tmp_path: Path, data: bytes) -> Path:
    """A file where the SCP would have streamed it (the spool's tmp/)."""
    folder = blobs.root / "tmp" if isinstance(blobs, LocalBlobs) else blobs.tmp_dir
    path = Path(folder) / f"tmp{uuid.uuid4().hex}.dcm"
    path.write_bytes(data)
    return path


def test_keys_are_built_from_validated_parts_only() -> None:
    assert instance_key(STUDY, SERIES, "1.2.3") == f"instances/{STUDY}/{SERIES}/1.2.3.dcm"
    assert output_key(7, TOKEN_A, "1.2.3") == f"outputs/7/{TOKEN_A}/1.2.3.dcm"
    assert output_prefix(7) == "outputs/7/"
    for bad in (lambda: instance_key("../etc", SERIES, "1.2"),
                lambda: instance_key(STUDY, SERIES, "1.2/../../x"),
                lambda: output_key(-1, TOKEN_A, "1.2"),
                lambda: output_key(True, TOKEN_A, "1.2"),
                lambda: output_key(1, "../" + "a" * 29, "1.2"),
                lambda: output_key(1, TOKEN_A.upper(), "1.2")):
        with pytest.raises(ValueError):
            bad()
    for bad_key in ("", "/etc/passwd", "instances/../x", "outputs/1/1.2.dcm",
                    f"instances/{STUDY}/{SERIES}/x.dcm", "other/1", "outputs//"):
        with pytest.raises(ValueError):
            validated_key(bad_key)
    assert validated_key("outputs/") == "outputs/"
    assert validated_key(f"instances/{STUDY}/") == f"instances/{STUDY}/"


def test_put_get_open_exists_delete(blobs: Any, tmp_path: Path) -> None:
    key = instance_key(STUDY, SERIES, "1.2.3")
    assert not blobs.exists(key)
    with pytest.raises(BlobNotFound):
        blobs.get_bytes(key)
    assert blobs.put_bytes(key, b"first") == 5
    assert blobs.exists(key) and blobs.get_bytes(key) == b"first"
    assert blobs.put_bytes(key, memoryview(b"second!")) == 7  # without if_absent: replaced
    with blobs.open(key) as stream:
        assert stream.read() == b"second!"
    with blobs.local_copy(key) as path:
        assert Path(path).read_bytes() == b"second!"
    blobs.delete(key)
    blobs.delete(key)  # twice: no error
    assert not blobs.exists(key)
    with pytest.raises(BlobNotFound), blobs.local_copy(key):
        pass


def test_get_head_reads_the_first_bytes_only(blobs: Any) -> None:
    key, empty = instance_key(STUDY, SERIES, "1.2.6"), instance_key(STUDY, SERIES, "1.2.7")
    data = bytes(range(256)) * 300
    blobs.put_bytes(key, data)
    blobs.put_bytes(empty, b"")
    assert blobs.get_head(key, 1000) == data[:1000]  # S3: a ranged GET
    assert blobs.get_head(key, 10**6) == data  # longer than the blob: all of it
    assert blobs.get_head(empty, 1000) == b""
    with pytest.raises(BlobNotFound):
        blobs.get_head(instance_key(STUDY, SERIES, "1.2.8"), 10)


def test_put_file_from_tmp_consumes_it(blobs: Any, tmp_path: Path) -> None:
    key = instance_key(STUDY, SERIES, "1.2.4")
    source = _tmp_file(blobs, tmp_path, b"D" * 70_000)
    assert blobs.put_file(key, source) == 70_000
    assert not source.exists()  # adopted (local) or uploaded and removed (S3)
    assert blobs.get_bytes(key) == b"D" * 70_000


def test_if_absent_never_replaces(blobs: Any, tmp_path: Path) -> None:
    """A conditional write refused: S3 If-None-Match: * (SeaweedFS: 412), local link()."""
    key = output_key(3, TOKEN_A, "1.2.5")
    blobs.put_bytes(key, b"successor", if_absent=True)
    with pytest.raises(BlobExists):
        blobs.put_bytes(key, b"stale", if_absent=True)
    source = _tmp_file(blobs, tmp_path, b"stale file")
    with pytest.raises(BlobExists):
        blobs.put_file(key, source, if_absent=True)
    assert blobs.get_bytes(key) == b"successor"
    assert not list(Path(source).parent.glob("*.part"))  # no temporary left behind


def test_list_and_delete_prefix(blobs: Any) -> None:
    keys = [output_key(5, TOKEN_A, "1.2.1"), output_key(5, TOKEN_B, "1.2.1"),
            output_key(5, TOKEN_B, "1.2.2"), output_key(50, TOKEN_A, "1.2.1")]
    for key in keys:
        blobs.put_bytes(key, key.encode())
    assert blobs.list("outputs/5/") == sorted(keys[:3])
    assert blobs.list(f"outputs/5/{TOKEN_B}/") == sorted(keys[1:3])
    assert blobs.list("outputs/6/") == []
    assert blobs.delete_prefix("outputs/5/") == 3
    assert blobs.list("outputs/") == [keys[3]]
    with pytest.raises(ValueError):
        blobs.list("../")


def test_local_layout_is_the_spool_layout(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    blobs = LocalBlobs(spool.root, spool)
    key = instance_key(STUDY, SERIES, "1.2.6")
    blobs.put_bytes(key, b"x")
    assert spool.instance_path(STUDY, SERIES, "1.2.6").read_bytes() == b"x"
    assert spool.relative(spool.instance_path(STUDY, SERIES, "1.2.6")) == key
    reader = LocalBlobs(spool.root)  # the API's: reads, never writes
    assert reader.get_bytes(key) == b"x"
    with pytest.raises(PermissionError):
        reader.put_bytes(key, b"y")


def test_s3_prefix_keeps_nodes_apart(s3_server: Any, s3_bucket: str, tmp_path: Path) -> None:
    a = S3Blobs(s3_bucket, endpoint=s3_server.endpoint, prefix="site-a/")
    b = S3Blobs(s3_bucket, endpoint=s3_server.endpoint, prefix="site-b/")
    key = instance_key(STUDY, SERIES, "1.2.7")
    a.put_bytes(key, b"a")
    assert a.exists(key) and not b.exists(key)
    assert a.list("instances/") == [key] and b.list("instances/") == []
    a.check()


def test_settings_switch_and_describe(s3_server: Any, s3_bucket: str, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "sentinel-secret-value")
    settings = Settings.model_validate({"storage": {
        "spool_dir": str(tmp_path / "spool"), "blobs": "s3", "s3_endpoint": s3_server.endpoint,
        "s3_bucket": s3_bucket, "s3_prefix": "n1/"}})
    store = open_blobs(settings.storage, Spool(tmp_path / "spool"))
    assert isinstance(store, S3Blobs) and store.prefix == "n1/"
    store.put_bytes(instance_key(STUDY, SERIES, "1.2.8"), b"z")
    text = describe(settings)
    assert f"blobs S3 bucket {s3_bucket} at {s3_server.endpoint}" in text
    assert "sentinel-secret-value" not in text and "dopanode-test" not in text
    with pytest.raises(ValueError, match="required when blobs"):
        Settings.model_validate({"storage": {"blobs": "s3"}})
    with pytest.raises(ValueError):  # credentials never in the URL
        Settings.model_validate({"storage": {"blobs": "s3", "s3_bucket": "b1",
                                             "s3_endpoint": "http://key:secret@host:1"}})
    local = Settings.model_validate({"storage": {"spool_dir": str(tmp_path / "s2")}})
    assert isinstance(open_blobs(local.storage), LocalBlobs)
    assert "blobs local (spool folder)" in describe(local)


def test_readiness_checks_the_bucket(s3_server: Any, s3_bucket: str) -> None:
    from service.api.readiness import check_blob_store
    from service.config import StorageSettings

    there = StorageSettings(blobs="s3", s3_endpoint=s3_server.endpoint, s3_bucket=s3_bucket)
    assert check_blob_store(there).ok
    missing = StorageSettings(blobs="s3", s3_endpoint=s3_server.endpoint, s3_bucket="no-such-b")
    with pytest.raises(Exception, match="404|Not ?Found|NoSuchBucket"):
        check_blob_store(missing)  # run_checks turns a raise into a failed check


def test_one_client_per_endpoint_and_credentials(s3_server: Any, s3_bucket: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A botocore client is ~35,000 objects: buckets and apps share the process's one."""
    import gc

    first = S3Blobs(s3_bucket, endpoint=s3_server.endpoint)
    others = [S3Blobs(f"bucket-{i}", endpoint=s3_server.endpoint, prefix=f"n{i}/")
              for i in range(20)]
    assert all(b._s3 is first._s3 for b in others)
    gc.collect()
    before = len(gc.get_objects())
    more = [S3Blobs(f"more-{i}", endpoint=s3_server.endpoint) for i in range(20)]
    gc.collect()
    assert len(gc.get_objects()) - before < 2000  # wrappers only, no new service models
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "another-key")
    moved = S3Blobs(s3_bucket, endpoint=s3_server.endpoint)
    assert moved._s3 is not first._s3  # other credentials: another client
    assert more[0]._s3 is first._s3
