"""FDOPA through the whole loop: Orthanc -> dopanode (DaT and FDOPA enabled) -> Orthanc.

A small simulated [18F]FDOPA study (:mod:`service.testing.fdopa_study`:
per-slice static 10-30 min, per-slice 6-frame dynamic, per-slice non-AC
static) is stored into Orthanc by ``storescu``, then pushed to dopanode
series by series through Orthanc's REST API, the dynamic series first (it
waits for the static, so exactly one job is made). The test waits until the
SEG, the SR and the picture report are in the same study in Orthanc, then
checks:

* one FDOPA job, done, reading the static series as ``primary`` and the
  dynamic series as ``dynamic``; the non-AC series ignored with its reason;
* the SEG (read back with highdicom) references the static series;
* the SR carries the node's TBRmax (to its 7 significant digits);
* the node's numbers against the simulator's truth, with the tolerances of
  ``tests/unit/test_fdopa_pipeline_run.py`` (which explains them) widened
  for the 3 mm grid of this study (:mod:`service.testing.fdopa_study`);
* no patient name in the node's log.
"""

from __future__ import annotations

import io
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import highdicom as hd
import pydicom
import pytest
from pydicom.dataset import Dataset

from service.testing.fdopa_study import small_study
from service.testing.pacs import pacs_and_node
from service.testing.peers import require_tool
from service.testing.polling import wait_until

pytestmark = pytest.mark.slow  # simulator, Orthanc, a real node with both pipelines

#: Both pipelines with their defaults (the shipped U-Net for FDOPA).
SETTINGS: dict[str, Any] = {"pipelines": {"dat_spect": {"enabled": True},
                                          "fdopa_pet": {"enabled": True}}}
TBR_CODE = "126039"  # DCM "Lesion to Background SUV Ratio" (the SR's TBR concept)


def _numbers(items: Any, code: str) -> Iterator[float]:
    """Every numeric value under concept ``code`` anywhere in an SR content tree."""
    for item in items or []:
        name = item.get("ConceptNameCodeSequence")
        if item.get("ValueType") == "NUM" and name and name[0].CodeValue == code:
            yield float(item.MeasuredValueSequence[0].NumericValue)
        yield from _numbers(item.get("ContentSequence"), code)


def _orthanc_series_id(pacs: Any, series_uid: str) -> str:
    found = pacs.post("/tools/lookup", content=series_uid).json()
    [match] = [f for f in found if f["Type"] == "Series"]
    return str(match["ID"])


def _instance(pacs: Any, series: list[dict[str, Any]], modality: str) -> Dataset:
    [chosen] = [s for s in series if s["MainDicomTags"]["Modality"] == modality]
    data = pacs._http().get(f"/instances/{chosen['Instances'][0]}/file").content
    return pydicom.dcmread(io.BytesIO(data))


def test_fdopa_study_through_orthanc_comes_back_as_seg_sr_and_picture(tmp_path: Path) -> None:
    folder, truth = small_study(tmp_path / "sim", "coarse")
    names = ("PT_DYNAMIC", "PT_STATIC", "PT_NAC")
    first = {n: pydicom.dcmread(next((folder / n).iterdir()), stop_before_pixels=True)
             for n in names}
    uids = {n: str(ds.SeriesInstanceUID) for n, ds in first.items()}
    study_uid = str(first["PT_STATIC"].StudyInstanceUID)

    with pacs_and_node(tmp_path, SETTINGS) as (pacs, node):
        files = [str(p) for n in names for p in sorted((folder / n).iterdir())]
        cmd = [require_tool("storescu"), "-aet", "STORESCU", "-aec", pacs.ae_title,
               "127.0.0.1", str(pacs.dicom_port), *files]
        assert subprocess.run(cmd, capture_output=True, timeout=120).returncode == 0
        study_id = pacs.post("/tools/lookup", content=study_uid).json()[0]["ID"]
        for name in names:  # the dynamic first: it waits for the static
            pacs.post("/modalities/dopanode/store", json={
                "Resources": [_orthanc_series_id(pacs, uids[name])], "Synchronous": True})

        def outputs() -> list[dict[str, Any]] | None:
            series: list[dict[str, Any]] = pacs.get(f"/studies/{study_id}/series")
            return series if len(series) == len(names) + 3 else None

        series = wait_until(outputs, 150.0, "SEG, SR and picture report in the study")
        node.wait_for("SELECT pipeline, state FROM jobs", [("fdopa_pet", "done")], 30.0)
        [(job_id,)] = node.query("SELECT id FROM jobs")
        _, job = node.api_get(f"/api/jobs/{job_id}")
        _, ignored = node.api_get("/api/series?state=ignored")
        _, served = node.api_get(f"/api/studies/{study_uid}")
        seg = hd.seg.Segmentation.from_dataset(_instance(pacs, series, "SEG"))
        sr = _instance(pacs, series, "SR")
        assert node.stop() == 0
        assert "SIM^" not in node.log_text()

    assert sorted(s["MainDicomTags"]["Modality"] for s in series) == [
        "OT", "PT", "PT", "PT", "SEG", "SR"]
    assert [(i["role"], i["series_uid"]) for i in job["inputs"]] == [
        ("primary", uids["PT_STATIC"]), ("dynamic", uids["PT_DYNAMIC"])]
    [nac] = ignored["series"]
    assert nac["series_uid"] == uids["PT_NAC"]
    assert nac["routing"]["fdopa_pet"] == (
        "declined: not attenuation-corrected (Corrected Image lacks ATTN)")
    assert nac["routing"]["dat_spect"].startswith("declined: not a DaT SPECT series")

    result = served["results"]["fdopa_pet"]["result"]
    tumour = result["tumour"]
    [referenced] = seg.ReferencedSeriesSequence
    assert referenced.SeriesInstanceUID == uids["PT_STATIC"]
    assert sr.StudyInstanceUID == study_uid
    assert any(abs(v - tumour["tbr_max"]) <= 1e-6 * tumour["tbr_max"]
               for v in _numbers(sr.ContentSequence, TBR_CODE))
    assert tumour["tbr_max"] == pytest.approx(truth["measured_tbrmax"], rel=0.2)
    assert tumour["ts_ratio"] == pytest.approx(truth["measured_t_s"], rel=0.2)
    assert tumour["volume_ml"] == pytest.approx(truth["mtv_ml"], rel=0.5)
    assert result["dynamic"] is not None
    [ttp] = [p["ttp_s"] for p in result["dynamic"]["parameters"]
             if p["region"] == "tumour" and p["convention"] == "start"]
    assert ttp / 60.0 == pytest.approx(truth["dyn_tumour_ttp_min_start"])
