"""The MR-guided FDOPA route through the whole loop: Orthanc -> dopanode -> Orthanc.

A small simulated [18F]FDOPA study with a 2D axial FLAIR
(:func:`service.testing.fdopa_study.small_study`, ``coarse`` preset, static
series only: the curves of the route are tested in
``tests/unit/test_fdopa_mr_route.py``) is stored into Orthanc by
``storescu``, then pushed to dopanode series by series through Orthanc's
REST API, the FLAIR first (the PET job waits for an announced FLAIR). The
test waits until the two SEGs, the SR and the picture report are in the same
study in Orthanc, then checks:

* one FDOPA job, done, with the static PET as ``primary`` and the FLAIR as
  ``flair``;
* the FLAIR SEG (highdicom) references the FLAIR series on its frame of
  reference, the PET SEG ends with the FLAIR-guided VOI segment;
* the SR says "MR-guided route", carries the FLAIR-guided T/S of the
  node's summary and references both SEGs;
* the FLAIR-guided T/S against the simulator's truth measured on the same
  image, the FLAIR lesion against the FLAIR truth (tumour + oedema);
* no patient name in the node's log.
"""

from __future__ import annotations

import io
import subprocess
from pathlib import Path
from typing import Any

import highdicom as hd
import pydicom
import pytest
from pydicom.dataset import Dataset

from service.pipelines.fdopa_pet import report_codes as rc
from service.testing.fdopa_study import small_study
from service.testing.pacs import pacs_and_node
from service.testing.peers import require_tool
from service.testing.polling import wait_until

pytestmark = pytest.mark.slow  # simulator, Orthanc, a real node, a FLAIR registration

#: FDOPA only, the threshold-only PET segmentation (the route is under test, not the U-Net).
SETTINGS: dict[str, Any] = {"pipelines": {"dat_spect": {"enabled": False},
                                          "fdopa_pet": {"enabled": True,
                                                        "segmentation": "threshold"}}}
NAMES = ("MR_FLAIR", "PT_STATIC")  # the FLAIR first: the PET job waits for it


def _items(items: Any) -> list[Dataset]:
    out: list[Dataset] = []
    for item in items or []:
        out.append(item)
        out.extend(_items(item.get("ContentSequence")))
    return out


def _series_file(pacs: Any, series: list[dict[str, Any]], description: str) -> Dataset:
    [chosen] = [s for s in series if s["MainDicomTags"].get("SeriesDescription") == description]
    data = pacs._http().get(f"/instances/{chosen['Instances'][0]}/file").content
    return pydicom.dcmread(io.BytesIO(data))


def _orthanc_series_id(pacs: Any, series_uid: str) -> str:
    found = pacs.post("/tools/lookup", content=series_uid).json()
    [match] = [f for f in found if f["Type"] == "Series"]
    return str(match["ID"])


def test_pet_and_flair_study_comes_back_with_both_segs_sr_and_picture(tmp_path: Path) -> None:
    folder, truth = small_study(tmp_path / "sim", "coarse", dynamic=False, flair="ax2d_3t")
    first = {n: pydicom.dcmread(next((folder / n).iterdir()), stop_before_pixels=True)
             for n in NAMES}
    uids = {n: str(ds.SeriesInstanceUID) for n, ds in first.items()}
    study_uid = str(first["PT_STATIC"].StudyInstanceUID)

    with pacs_and_node(tmp_path, SETTINGS) as (pacs, node):
        files = [str(p) for n in NAMES for p in sorted((folder / n).iterdir())]
        cmd = [require_tool("storescu"), "-aet", "STORESCU", "-aec", pacs.ae_title,
               "127.0.0.1", str(pacs.dicom_port), *files]
        assert subprocess.run(cmd, capture_output=True, timeout=120).returncode == 0
        study_id = pacs.post("/tools/lookup", content=study_uid).json()[0]["ID"]
        for name in NAMES:
            pacs.post("/modalities/dopanode/store", json={
                "Resources": [_orthanc_series_id(pacs, uids[name])], "Synchronous": True})

        def outputs() -> list[dict[str, Any]] | None:
            series: list[dict[str, Any]] = pacs.get(f"/studies/{study_id}/series")
            return series if len(series) == len(NAMES) + 4 else None

        series = wait_until(outputs, 240.0, "both SEGs, the SR and the picture in the study")
        node.wait_for("SELECT pipeline, state FROM jobs", [("fdopa_pet", "done")], 30.0)
        [(job_id,)] = node.query("SELECT id FROM jobs")
        _, job = node.api_get(f"/api/jobs/{job_id}")
        _, served = node.api_get(f"/api/studies/{study_uid}")
        pet_seg = hd.seg.Segmentation.from_dataset(_series_file(
            pacs, series, "dopanode FDOPA SEG - research use, not for diagnosis"))
        flair_seg = hd.seg.Segmentation.from_dataset(_series_file(
            pacs, series, "dopanode FDOPA FLAIR SEG - research use, not for diagnosis"))
        sr = _series_file(pacs, series, "dopanode FDOPA SR - research use, not for diagnosis")
        assert node.stop() == 0
        assert "SIM^" not in node.log_text()

    assert sorted(s["MainDicomTags"]["Modality"] for s in series) == [
        "MR", "OT", "PT", "SEG", "SEG", "SR"]
    assert [(i["role"], i["series_uid"]) for i in job["inputs"]] == [
        ("primary", uids["PT_STATIC"]), ("flair", uids["MR_FLAIR"])]
    result = served["results"]["fdopa_pet"]["result"]
    assert result["route"]["route"] == "mr_guided"
    guided = result["flair_guided"]

    # the SEGs: the FLAIR lesion on the FLAIR, the VOI last in the PET SEG
    [flair_ref] = flair_seg.ReferencedSeriesSequence
    assert flair_ref.SeriesInstanceUID == uids["MR_FLAIR"]
    assert flair_seg.FrameOfReferenceUID == first["MR_FLAIR"].FrameOfReferenceUID
    assert flair_seg.StudyInstanceUID == study_uid
    assert pet_seg.ReferencedSeriesSequence[0].SeriesInstanceUID == uids["PT_STATIC"]
    voi_number = len(result["lesions"]) + 4
    assert pet_seg.SegmentSequence[-1].SegmentLabel == "Paediatric FLAIR-guided PET VOI"
    assert int(pet_seg.SegmentSequence[-1].SegmentNumber) == voi_number

    # the SR: the route, the FLAIR-guided T/S, both SEGs referenced
    items = _items(sr.ContentSequence)
    [route] = [i for i in items if i.ConceptNameCodeSequence[0].CodeValue
               == rc.ANALYSIS_ROUTE.value]
    assert route.ConceptCodeSequence[0].CodeMeaning == "MR-guided route (FLAIR lesion)"
    [ts] = [float(i.MeasuredValueSequence[0].NumericValue) for i in items
            if i.get("ValueType") == "NUM"
            and i.ConceptNameCodeSequence[0].CodeValue == rc.FLAIR_GUIDED_TS.value]
    assert ts == pytest.approx(guided["ts_ratio"], rel=1e-6)
    segments = {(str(i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID),
                 int(i.ReferencedSOPSequence[0].ReferencedSegmentNumber))
                for i in items if i.get("ValueType") == "IMAGE"
                and "ReferencedSegmentNumber" in i.ReferencedSOPSequence[0]}
    assert (str(pet_seg.SOPInstanceUID), voi_number) in segments
    assert (str(flair_seg.SOPInstanceUID), 1) in segments

    # against the simulator's truth: on this coarse (3.6 mm) study T/S was 1.112 against
    # 1.198 (-7 %), the FLAIR lesion 35.7 mL against 38.9 mL (classical threshold)
    assert ts == pytest.approx(truth["measured_t_s"], rel=0.15)
    assert guided["flair_lesion_ml"] == pytest.approx(
        truth["flair_lesion_ml"] + truth["flair_oedema_ml"], rel=0.3)
