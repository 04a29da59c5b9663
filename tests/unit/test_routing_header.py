"""The routing header from an instance's first bytes (S3: a ranged GET), the whole file when needed.

pydicom reads a truncated stream without complaint, so a prefix is trusted
only when reading stopped at the pixel data tag; a header longer than the
prefix, or an object without pixel data, is read from the whole file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
import pytest

from service import scheduler as scheduler_mod
from service.dicom.header import InstanceHeader, read_header_prefix
from service.scheduler import Scheduler
from service.store import db, jobs, series
from service.store.blobs import instance_key
from service.store.spool import Spool
from service.testing.nmdata import marker_image, write_marker_study
from service.testing.pipelines import FakeNmPipeline
from service.testing.samples import write_sr

NOW = 1_800_000_000.0


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two multi-frame NM series whose pixel data (320 KiB) outgrows the prefix."""
    root = tmp_path_factory.mktemp("nm")
    image = marker_image((64, 64, 40), (4.0, 4.0, 4.0))
    return [write_marker_study(root / seed, "multiframe", image=image, uid_seed=seed)[0]
            for seed in ("u-route-a", "u-route-b")]


@pytest.mark.no_storage  # bytes in, a header out
def test_a_prefix_gives_the_header_only_when_it_reaches_the_pixel_data(
        studies: list[Path], tmp_path: Path) -> None:
    data = studies[0].read_bytes()
    assert len(data) > scheduler_mod.HEADER_PREFIX_BYTES
    whole = pydicom.dcmread(studies[0], stop_before_pixels=True)
    header = read_header_prefix(data[:scheduler_mod.HEADER_PREFIX_BYTES])
    assert header is not None and header == whole and "PixelData" not in header
    assert read_header_prefix(data[:600]) is None  # cut inside the header: not trusted
    write_sr(tmp_path / "sr.dcm")
    assert read_header_prefix((tmp_path / "sr.dcm").read_bytes()) is None  # no pixel data


class Counting:
    """The real S3 adapter, counting whole-file downloads."""

    def __init__(self, blobs: Any) -> None:
        self.blobs, self.downloads = blobs, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.blobs, name)

    def local_copy(self, key: str) -> Any:
        self.downloads += 1
        return self.blobs.local_copy(key)


def _receive(conn: Any, blobs: Any, path: Path) -> None:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    key = instance_key(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    size = blobs.put_bytes(key, path.read_bytes(), if_absent=True)
    rec = db.InstanceRecord(str(ds.SOPInstanceUID), str(ds.StudyInstanceUID),
                            str(ds.SeriesInstanceUID), str(ds.SOPClassUID),
                            "1.2.840.10008.1.2.1", "STORESCU", key, size, NOW)
    with conn:
        series.record_instance(conn, rec, InstanceHeader(
            str(ds.SOPClassUID), ds.get("NumberOfFrames"), ds.get("NumberOfSlices"),
            ds.get("ImagesInAcquisition")), 10.0)


def test_routing_reads_a_ranged_prefix_from_s3(studies: list[Path], tmp_path: Path,
                                              s3_server: Any, s3_bucket: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from service.store.s3blobs import S3Blobs

    spool = Spool(tmp_path / "spool")
    blobs = Counting(S3Blobs(s3_bucket, endpoint=s3_server.endpoint, tmp_dir=spool.tmp_dir))
    database = db.Database(tmp_path / "node.sqlite3")
    database.migrate()
    scheduler = Scheduler(database, spool, {"fake_nm": FakeNmPipeline()}, blobs=blobs)
    conn = database.connect()
    try:
        _receive(conn, blobs, studies[0])
        assert scheduler.run_once(conn, NOW) == 1
        assert blobs.downloads == 0  # the header came from the first 256 KiB
        monkeypatch.setattr(scheduler_mod, "HEADER_PREFIX_BYTES", 600)
        _receive(conn, blobs, studies[1])
        assert scheduler.run_once(conn, NOW) == 1
        assert blobs.downloads == 1  # cut inside the header: the whole file, once
        assert len(jobs.list_jobs(conn)) == 2
    finally:
        conn.close()
