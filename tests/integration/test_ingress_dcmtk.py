"""The SCP with DCMTK as the real peer, against a real ``dopanode serve`` process.

echoscu/storescu on loopback: C-ECHO, multi-frame and per-slice NM studies,
compressed transfer syntaxes, unknown callers, resends, a full disk, bad
payloads (each ends as a failure status or a job with a reason), and a
sentinel patient name that must never reach the log (node at DEBUG).

The receive path runs both ways (:data:`RECEIVE`): the event acceptor with
``spool_sync = "auto"`` and pynetdicom's stock acceptor with ``"posix"``.
"""

from __future__ import annotations

import io
import os
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, _config

from service.dicom import codes
from service.store.spool import ONE_FLUSH_FILESYSTEMS, filesystem_type
from service.testing.nmdata import marker_image, write_marker_study
from service.testing.node import NodeProcess, fake_settings
from service.testing.peers import require_tool

pytestmark = pytest.mark.slow  # real nodes and DCMTK senders

SENTINEL_NAME = "SENTINEL^PATIENT"
SENTINEL_ID = "SENTINEL-ID-4711"
FAKE = fake_settings()
#: (node.acceptor, storage.spool_sync): both acceptors, both spool adoptions.
RECEIVE = [("event", "auto"), ("pynetdicom", "posix")]
RECEIVE_IDS = ["-".join(r) for r in RECEIVE]


def receive_settings(receive: tuple[str, str], **storage: object) -> dict[str, dict[str, object]]:
    acceptor, spool_sync = receive
    return {"node": {"acceptor": acceptor}, "storage": {"spool_sync": spool_sync, **storage}}


def storescu(node: NodeProcess, paths: list[Path], *flags: str,
             aet: str = "STORESCU") -> subprocess.CompletedProcess[str]:
    cmd = [require_tool("storescu"), "-v", *flags, "-aet", aet, "-aec", node.ae_title,
           "127.0.0.1", str(node.scp_port), *map(str, paths)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "TCP_NODELAY": "1"})


def echoscu(node: NodeProcess, aet: str = "ECHOSCU") -> subprocess.CompletedProcess[str]:
    cmd = [require_tool("echoscu"), "-aet", aet, "-aec", node.ae_title, "127.0.0.1",
           str(node.scp_port)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def with_sentinel(paths: list[Path], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    result = []
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.PatientName = SENTINEL_NAME
        ds.PatientID = SENTINEL_ID
        result.append(out_dir / path.name)
        ds.save_as(result[-1])
    return result


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    root = tmp_path_factory.mktemp("ingress-data")
    img = marker_image((32, 32, 8))
    made = {v: write_marker_study(root / v, v, image=img, uid_seed=f"ingress-{v}")
            for v in ("multiframe", "per_slice", "jpeg2000", "rle", "jpegls", "deflate")}
    made = {k: with_sentinel(v, root / f"{k}-s") for k, v in made.items()}
    ct = pydicom.dcmread(made["per_slice"][0])
    ct.SOPClassUID = ct.file_meta.MediaStorageSOPClassUID = codes.CT_IMAGE_STORAGE
    ct.Modality = "CT"
    ct.SOPInstanceUID = ct.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ct.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.2"
    made["ct"] = [root / "ct.dcm"]
    ct.save_as(made["ct"][0])
    return made


@pytest.fixture(scope="module", params=RECEIVE, ids=RECEIVE_IDS)
def node(tmp_path_factory: pytest.TempPathFactory,
         request: pytest.FixtureRequest) -> Iterator[NodeProcess]:
    with NodeProcess(tmp_path_factory.mktemp("ingress-node"), log_level="DEBUG",
                     settings={**FAKE, **receive_settings(request.param)}) as proc:
        proc.start()
        yield proc
        assert proc.stop() == 0


def test_receive_path_is_the_configured_one(node: NodeProcess) -> None:
    config = tomllib.loads(node.config_path.read_text(encoding="utf-8"))
    acceptor, spool_sync = config["node"]["acceptor"], config["storage"]["spool_sync"]
    text = node.log_text()
    assert f'port={node.scp_port} acceptor="{acceptor}"' in text
    one_flush = spool_sync == "auto" and filesystem_type(
        node.spool_dir.resolve()) in ONE_FLUSH_FILESYSTEMS
    assert f'adopt="{"one_flush" if one_flush else "fsync_rename_fsync_dir"}"' in text


def stored_dataset(node: NodeProcess, key: str) -> pydicom.Dataset:
    """The instance stored under ``key`` (the ``path`` column), read through the node's store."""
    return pydicom.dcmread(io.BytesIO(node.stored_bytes(key)))


def job_of_series(node: NodeProcess, series_uid: str, state: str = "done") -> tuple:
    rows = node.wait_for("SELECT id, state, reason, reason_code FROM jobs WHERE series_uid = ?"
                         " AND state != 'superseded'",
                         lambda r: len(r) == 1 and r[0][1] == state, params=(series_uid,))
    return rows[0]


def test_echo_and_unknown_callers(node: NodeProcess, data: dict[str, list[Path]]) -> None:
    assert echoscu(node).returncode == 0
    bad = echoscu(node, aet="INTRUDER")
    assert bad.returncode != 0 and "Calling AE Title Not Recognized" in bad.stderr
    sent = storescu(node, data["multiframe"], aet="INTRUDER")
    assert sent.returncode != 0
    assert node.query("SELECT COUNT(*) FROM instances") == [(0,)]


def test_multiframe_study_becomes_one_job(node: NodeProcess,
                                          data: dict[str, list[Path]]) -> None:
    sent = storescu(node, data["multiframe"])
    assert sent.returncode == 0, sent.stderr
    series = str(pydicom.dcmread(data["multiframe"][0]).SeriesInstanceUID)
    job_id, _, reason, _ = job_of_series(node, series)
    assert reason is None
    stored = node.query("SELECT path FROM instances WHERE series_uid = ?", (series,))
    assert len(stored) == 1
    assert node.stored_bytes(stored[0][0])[132:] != b""  # durable copy exists
    # resend: answered Success, deduplicated, no second job
    assert storescu(node, data["multiframe"]).returncode == 0
    assert node.query("SELECT COUNT(*) FROM jobs WHERE series_uid = ?", (series,)) == [(1,)]
    status, body = node.api_get(f"/api/jobs/{job_id}")
    assert status == 200 and body["state"] == "done"


def test_per_slice_series_completes_after_quiet_time(node: NodeProcess,
                                                      data: dict[str, list[Path]]) -> None:
    sent = storescu(node, data["per_slice"])
    assert sent.returncode == 0, sent.stderr
    assert sent.stderr.count("Received Store Response (Success)") == len(data["per_slice"])
    series = str(pydicom.dcmread(data["per_slice"][0]).SeriesInstanceUID)
    job_of_series(node, series)
    stored = dict(node.query("SELECT sop_instance_uid, path FROM instances"
                             " WHERE series_uid = ?", (series,)))
    assert len(stored) == len(data["per_slice"])
    for source_path in data["per_slice"]:  # the dataset is stored exactly as sent
        source = pydicom.dcmread(source_path)
        copy = stored_dataset(node, stored[str(source.SOPInstanceUID)])
        assert copy == source


@pytest.mark.parametrize(("variant", "flag", "syntax"), [
    ("jpeg2000", "-xv", "1.2.840.10008.1.2.4.90"), ("rle", "-xr", "1.2.840.10008.1.2.5"),
    ("jpegls", "-xt", "1.2.840.10008.1.2.4.80"), ("deflate", "-xd", "1.2.840.10008.1.2.1.99"),
])
def test_compressed_transfer_syntaxes(node: NodeProcess, data: dict[str, list[Path]],
                                      variant: str, flag: str, syntax: str) -> None:
    sent = storescu(node, data[variant], flag)
    assert sent.returncode == 0, sent.stderr
    uid = str(pydicom.dcmread(data[variant][0]).SOPInstanceUID)
    rows = node.query("SELECT transfer_syntax, path FROM instances WHERE sop_instance_uid = ?",
                      (uid,))
    assert rows and rows[0][0] == syntax
    stored = stored_dataset(node, rows[0][1])
    assert stored.pixel_array.shape == (8, 32, 32)
    job_of_series(node, str(stored.SeriesInstanceUID))  # the fake pipeline decoded it too


def test_ct_is_ignored_with_the_reason(node: NodeProcess, data: dict[str, list[Path]]) -> None:
    """No pipeline takes a CT: the series is recorded as ignored, no job, nothing sent."""
    assert storescu(node, data["ct"]).returncode == 0
    series = "1.2.826.0.1.3680043.8.498.2"
    node.wait_for("SELECT state, routing_json FROM series WHERE series_uid = ?",
                  [("ignored", '{"fake_nm": "declined: modality is CT, not NM"}')],
                  params=(series,))
    assert node.query("SELECT COUNT(*) FROM jobs WHERE series_uid = ?", (series,)) == [(0,)]
    status, body = node.api_get("/api/series?state=ignored")
    assert status == 200 and [s["series_uid"] for s in body["series"]] == [series]
    assert node.api_get("/api/series?state=ignored", token=None)[0] == 401


def _raw_store(node: NodeProcess, sop_uid: str, payload: bytes, tmp_path: Path,
               monkeypatch: pytest.MonkeyPatch) -> pydicom.Dataset:
    """C-STORE an arbitrary encoded payload (what a broken sender could put on the wire).

    pynetdicom's chunked send puts the bytes after a file's meta header on
    the wire unparsed, so the payload reaches the node exactly as given.
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = codes.NM_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = DicomBytesIO()
    buffer.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(buffer, meta)
    path = tmp_path / f"{sop_uid}.dcm"
    path.write_bytes(buffer.getvalue() + payload)
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(codes.NM_IMAGE_STORAGE, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", node.scp_port, ae_title=node.ae_title)
    assert assoc.is_established
    try:
        return assoc.send_c_store(path)
    finally:
        assoc.release()


def test_bad_payloads(node: NodeProcess, data: dict[str, list[Path]], tmp_path: Path,
                      monkeypatch: pytest.MonkeyPatch) -> None:
    garbage = _raw_store(node, "1.2.3.4.5", b"this is not DICOM at all " * 40, tmp_path,
                         monkeypatch)
    assert garbage.Status == 0xC000 and garbage.ErrorComment
    # truncated inside the pixel data: stored as sent, the job says why it failed
    ds = pydicom.dcmread(data["per_slice"][0])
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.10"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.11"
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, ds)
    body = buffer.getvalue()[:-200]
    truncated = _raw_store(node, ds.SOPInstanceUID, body, tmp_path, monkeypatch)
    assert truncated.Status == 0x0000
    _, _, reason, code = job_of_series(node, ds.SeriesInstanceUID, state="failed")
    assert code == "bad_pixel_data" and reason
    assert echoscu(node).returncode == 0  # still serving


def test_sentinel_never_logged(node: NodeProcess) -> None:
    """Runs last in this module: everything above sent SENTINEL^PATIENT."""
    assert node.query("SELECT COUNT(*) FROM instances")[0][0] > 0
    text = node.log_text()
    assert "store_refused" in text and "series_complete" in text  # the log is real
    assert "SENTINEL" not in text.upper()


@pytest.mark.parametrize("receive", RECEIVE, ids=RECEIVE_IDS)
def test_out_of_space_refuses_storage_associations(tmp_path: Path,
                                                   data: dict[str, list[Path]],
                                                   receive: tuple[str, str]) -> None:
    """Short of space: storage is refused at association time (transient), C-ECHO works.

    The 0xA700 answers for space running out while an instance arrives are
    in tests/unit/test_scp_edge.py.
    """
    with NodeProcess(tmp_path, components="scp",
                     settings=receive_settings(receive, min_free_mb=10**9)) as full:
        full.start()
        sent = storescu(full, data["multiframe"])
        assert sent.returncode != 0 and "Rejected Transient" in sent.stderr
        assert "Local Limit Exceeded" in sent.stderr
        assert full.query("SELECT COUNT(*) FROM instances") == [(0,)]
        assert 'reason="disk_space"' in full.log_text()
        assert echoscu(full).returncode == 0
        assert full.stop() == 0


def _without_geometry(source: Path, out: Path) -> pydicom.Dataset:
    """The multi-frame NM file with every orientation/position attribute removed."""
    ds = pydicom.dcmread(source)
    for keyword in ("DetectorInformationSequence", "ImagePositionPatient",
                    "ImageOrientationPatient"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.20"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.21"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(out, enforce_file_format=True)
    return ds


def test_real_pipeline_refuses_bad_nm_with_reasons(tmp_path: Path,
                                                   data: dict[str, list[Path]]) -> None:
    """DaT-coded NM that is not a brain, and NM without geometry: failed jobs, no results."""
    no_geometry = _without_geometry(data["multiframe"][0], tmp_path / "no-geometry.dcm")
    with NodeProcess(tmp_path / "node", components="scp,worker,api") as node:
        node.start()
        assert storescu(node, data["multiframe"]).returncode == 0
        assert storescu(node, [tmp_path / "no-geometry.dcm"]).returncode == 0
        series = str(pydicom.dcmread(data["multiframe"][0]).SeriesInstanceUID)
        _, _, reason, code = job_of_series(node, series, state="failed")
        assert code == "normalisation_failed"
        assert reason.startswith("normalisation failed")
        _, _, reason, code = job_of_series(node, no_geometry.SeriesInstanceUID, state="failed")
        assert code == "missing_geometry" and reason
        status, body = node.api_get("/api/jobs?state=failed")
        assert status == 200
        assert {j["reason_code"] for j in body["jobs"]} == {"normalisation_failed",
                                                            "missing_geometry"}
        assert node.query("SELECT COUNT(*) FROM outbox") == [(0,)]  # no result made up
        assert echoscu(node).returncode == 0  # still serving
        assert node.stop() == 0


@pytest.mark.parametrize("receive", RECEIVE, ids=RECEIVE_IDS)
def test_concurrent_senders(tmp_path: Path, receive: tuple[str, str]) -> None:
    """Three associations at once, three series: every instance stored, one job each."""
    img = marker_image((16, 16, 12))
    series = [write_marker_study(tmp_path / f"s{i}", "per_slice", image=img,
                                 uid_seed=f"concurrent-{i}") for i in range(3)]
    with NodeProcess(tmp_path / "node", components="scp,worker",
                     settings=receive_settings(receive)) as proc:
        proc.start()
        senders = [subprocess.Popen([require_tool("storescu"), "-aet", "STORESCU", "-aec",
                                     proc.ae_title, "127.0.0.1", str(proc.scp_port),
                                     *map(str, paths)]) for paths in series]
        assert [s.wait(120) for s in senders] == [0, 0, 0]
        assert proc.query("SELECT COUNT(*) FROM instances") == [(36,)]
        proc.wait_for("SELECT COUNT(*), SUM(CASE WHEN state = 'failed' THEN 1 ELSE 0 END) FROM jobs", [(3, 3)])
        assert proc.stop() == 0
