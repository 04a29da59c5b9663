"""Model checksums are read once per file version, for every model the node checks."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from service.inference import manifest


def test_each_model_is_hashed_once_until_it_changes(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[str] = []
    hash_file = manifest._hash_file

    def counted(path: Path) -> str:
        reads.append(Path(path).name)
        return hash_file(path)

    monkeypatch.setattr(manifest, "_hash_file", counted)
    files = []
    for i in range(5):  # the DaT CNN and estimator, the FDOPA U-Nets: all checked per /ready
        path = tmp_path / f"model{i}.onnx"
        path.write_bytes(bytes([i]) * 1000)
        files.append(path)
    for _ in range(3):
        for path in files:
            assert manifest.sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert sorted(reads) == sorted(p.name for p in files)  # before: 15 reads, one file kept
    files[2].write_bytes(b"replaced")
    os.utime(files[2], ns=(1, 1))  # a new version whatever the clock's resolution
    assert manifest.sha256_file(files[2]) == hashlib.sha256(b"replaced").hexdigest()
    assert reads.count("model2.onnx") == 2
    bad = manifest.check_model(files[2], hashlib.sha256(b"other").hexdigest())
    assert not bad.ok and bad.status == "checksum_mismatch"


def test_the_cache_stays_bounded(tmp_path: Path) -> None:
    for i in range(manifest._CACHE_FILES + 10):
        path = tmp_path / f"m{i}"
        path.write_bytes(str(i).encode())
        manifest.sha256_file(path)
    assert len(manifest._cache) <= manifest._CACHE_FILES
