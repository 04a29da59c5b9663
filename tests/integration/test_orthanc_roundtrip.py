"""The whole loop with a real PACS: Orthanc -> dopanode -> Orthanc.

Orthanc has dopanode as a modality; dopanode has Orthanc as its destination
and as an allowed caller. The test uploads a DaT study to Orthanc, pushes it
to dopanode through Orthanc's REST API (``/modalities/dopanode/store``), and
waits until the SR and the picture report appear in the same study in
Orthanc. It downloads the SR, reads the four regional levels back with
highdicom and checks them against the phantom's truth and against the result
the node serves on ``/api/studies``.
"""

from __future__ import annotations

import io
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from service.dicom import codes
from service.imaging.atlas import load_atlas
from service.pipelines.dat_spect import codes as dat_codes
from service.pipelines.dat_spect.result import Level, Region
from service.testing.dat_phantom import make_phantom, random_pose
from service.testing.nmdata import write_marker_study
from service.testing.pacs import pacs_and_node, route_and_wait

pytestmark = pytest.mark.slow  # Orthanc, a real node and the DaT pipeline

#: Healthy caudates, a strongly reduced left and a mildly reduced right putamen.
TRUE_SBR = {
    Region.CAUDATE_LEFT: 4.0,
    Region.CAUDATE_RIGHT: 4.0,
    Region.PUTAMEN_LEFT: 0.25,
    Region.PUTAMEN_RIGHT: 1.6,
}
TRACKING_IDS = {r: r.value.replace("_", " ") for r in Region}


def sr_levels(sr_bytes: bytes) -> dict[Region, Level]:
    """Reported level per region, read back from the SR with highdicom."""
    report = hd.sr.srread(io.BytesIO(sr_bytes))
    groups = {
        g.tracking_identifier: g
        for g in report.content.get_image_measurement_groups()  # type: ignore[union-attr]
    }
    levels: dict[Region, Level] = {}
    for region, tracking_id in TRACKING_IDS.items():
        evaluations = {
            e.name.value: e.value for e in groups[tracking_id].get_qualitative_evaluations()
        }
        level_code = evaluations[dat_codes.UPTAKE_LEVEL_CONCEPT.value]
        levels[region] = Level(dat_codes.LEVEL_CODES.index(level_code))
    return levels


def test_study_pushed_from_orthanc_comes_back_as_sr(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    phantom = make_phantom(load_atlas(), TRUE_SBR, random_pose(rng), rng)
    paths = write_marker_study(tmp_path / "study", "multiframe", image=phantom.image,
                               uid_seed="orthanc-roundtrip")
    source = pydicom.dcmread(paths[0], stop_before_pixels=True)

    with pacs_and_node(tmp_path) as (pacs, node):
        instance_id = pacs.upload(paths[0].read_bytes())
        series = route_and_wait(pacs, instance_id)
        modalities = sorted(s["MainDicomTags"]["Modality"] for s in series)
        assert modalities == ["NM", "OT", "SR"]
        sr_series = next(s for s in series if s["MainDicomTags"]["Modality"] == "SR")
        sr_instance = sr_series["Instances"][0]
        sr_bytes = pacs._http().get(f"/instances/{sr_instance}/file").content

        status, served = node.api_get(f"/api/studies/{source.StudyInstanceUID}")
        assert node.stop() == 0
        assert "SIM^" not in node.log_text()  # no patient name in the node's log

    sr = pydicom.dcmread(io.BytesIO(sr_bytes))
    assert sr.StudyInstanceUID == source.StudyInstanceUID
    assert sr.SOPClassUID == codes.COMPREHENSIVE_SR_STORAGE
    levels = sr_levels(sr_bytes)
    # The phantom's truth: the left putamen is the reduced one, the caudates are not.
    # (This phantom is not the simulator the CNN learned from; the CNN's ratings of
    # simulated scans are tested in test_shipped_model.py.)
    assert levels[Region.PUTAMEN_LEFT] > levels[Region.PUTAMEN_RIGHT]
    assert levels[Region.CAUDATE_LEFT] <= Level.BORDERLINE
    assert levels[Region.CAUDATE_RIGHT] <= Level.BORDERLINE
    # The SR and the API tell the same story.
    assert status == 200
    result = served["results"]["dat_spect"]["result"]
    assert {r: Level(result["regions"][r.value]["level"]) for r in Region} == levels
    assert result["global"]["reduced"] is True
