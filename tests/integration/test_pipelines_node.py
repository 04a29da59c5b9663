"""More than one analysis in the real node: routing at series completion, a test-only plug-in.

One study holds a DaT SPECT series, a CT series and an MR series. The node
runs the DaT pipeline and ``echo_ct``, a pipeline that exists only in the
tests (service/testing/pipelines.py, registered through an entry point and
enabled by one settings section). Expected: one DaT result, one echo result,
and the MR recorded as ignored with each pipeline's reason; no failed job.
"""

from __future__ import annotations

import subprocess
import urllib.request
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from service import cli
from service.dicom import codes
from service.imaging.atlas import load_atlas
from service.pipelines.dat_spect.result import REGIONS, Region
from service.testing.dat_phantom import make_phantom, random_pose
from service.testing.node import NodeProcess
from service.testing.peers import require_tool

pytestmark = pytest.mark.slow  # a real node running two pipelines

TRUE_SBR = {Region.CAUDATE_LEFT: 3.0, Region.CAUDATE_RIGHT: 3.0,
            Region.PUTAMEN_LEFT: 1.0, Region.PUTAMEN_RIGHT: 2.4}


def plain_image(path: Path, study_uid: str, sop_class: str, modality: str, n: int,
                seed: str) -> list[Path]:
    """A tiny single-frame series of ``n`` instances (enough to be routed, not analysed)."""
    series_uid = generate_uid(entropy_srcs=[seed, "series"])
    files = []
    for i in range(n):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[seed, str(i)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.Modality, ds.PatientName, ds.PatientID = modality, "TEST^PIPELINES", "PIPE-1"
        ds.InstanceNumber, ds.ImageType = i + 1, ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.Rows = ds.Columns = 8
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = np.full((8, 8), i, np.uint16).tobytes()
        files.append(path / f"{modality}{i}.dcm")
        path.mkdir(parents=True, exist_ok=True)
        ds.save_as(files[-1], enforce_file_format=True)
    return files


def test_two_pipelines_and_an_ignored_series_in_one_study(tmp_path: Path) -> None:
    from service.testing.nmdata import write_marker_study

    rng = np.random.default_rng(11)
    phantom = make_phantom(load_atlas(), TRUE_SBR, random_pose(rng), rng)
    dat = write_marker_study(tmp_path / "dat", "multiframe", image=phantom.image,
                             uid_seed="two-pipelines")
    study = str(pydicom.dcmread(dat[0], stop_before_pixels=True).StudyInstanceUID)
    ct = plain_image(tmp_path / "ct", study, codes.CT_IMAGE_STORAGE, "CT", 3, "two-ct")
    mr = plain_image(tmp_path / "mr", study, codes.MR_IMAGE_STORAGE, "MR", 2, "two-mr")
    settings = {"pipelines": {"echo_ct": {"enabled": True}}}
    with NodeProcess(tmp_path / "node", settings=settings, components="scp,worker,api") as node:
        node.start()
        sent = pydicom.dcmread(mr[0]).SeriesInstanceUID
        for files in (dat, ct, mr):
            cmd = [require_tool("storescu"), "-aet", "STORESCU", "-aec", node.ae_title,
                   "127.0.0.1", str(node.scp_port), *map(str, files)]
            assert subprocess.run(cmd, capture_output=True, timeout=120).returncode == 0
        node.wait_for("SELECT pipeline, state FROM jobs ORDER BY pipeline",
                      [("dat_spect", "done"), ("echo_ct", "done")], timeout_s=120)
        node.wait_for("SELECT series_uid, state FROM series WHERE state = 'ignored'",
                      [(str(sent), "ignored")], timeout_s=30)

        status, body = node.api_get(f"/api/studies/{study}")
        assert status == 200 and set(body["results"]) == {"dat_spect", "echo_ct"}
        dat_result = body["results"]["dat_spect"]["result"]
        assert set(dat_result["regions"]) == {r.value for r in REGIONS}
        assert body["results"]["echo_ct"]["result"] == {"schema": 1, "instances": 3}
        status, ignored = node.api_get("/api/series?state=ignored")
        [mr_row] = ignored["series"]
        assert mr_row["routing"] == {
            "dat_spect": "declined: not a DaT SPECT series: modality is MR, not NM",
            "fdopa_pet": "declined: not an FDOPA PET series: modality is MR, not PT",
            "echo_ct": "declined: not a CT Image Storage series"}
        [(dat_job,)] = node.query("SELECT id FROM jobs WHERE pipeline = 'dat_spect'")
        node_outputs = node.api_get(f"/api/jobs/{dat_job}")[1]["outputs"]
        status, listed = node.api_get("/api/jobs?pipeline=echo_ct")
        assert [j["pipeline"] for j in listed["jobs"]] == ["echo_ct"]
        assert node.query("SELECT COUNT(*) FROM jobs WHERE state = 'failed'") == [(0,)]
        with urllib.request.urlopen(f"http://127.0.0.1:{node.api_port}/metrics") as r:
            text = r.read().decode()
        assert node.stop() == 0
    assert 'dopanode_series{state="ignored"} 1.0' in text
    assert 'dopanode_jobs{pipeline="echo_ct",state="done"} 1.0' in text

    # `dopanode analyze` derives the same output UIDs for the same series as the node
    assert cli.main(["analyze", str(tmp_path / "dat"), "--out", str(tmp_path / "offline")]) == 0
    [folder] = (tmp_path / "offline").iterdir()
    offline = {str(pydicom.dcmread(folder / name, stop_before_pixels=True).SOPInstanceUID)
               for name in ("sr.dcm", "picture.dcm")}
    assert offline == {o["sop_instance_uid"] for o in node_outputs}
