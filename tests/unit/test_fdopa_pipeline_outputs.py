"""The pipeline's output half: SEG, SR, picture, summary and failure report of one job.

The result comes from :mod:`service.testing.fdopa_result` (a small simulated
study, truth labels as lesions), so this needs neither the registration nor
the U-Net: it checks what :class:`FdopaPetPipeline` adds around the output
builders (the order, the predecessors of a superseding job, the timing, the
summary, ``report_failures``).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from service.dicom.codes import COMPREHENSIVE_SR_STORAGE
from service.pipelines.base import JobContext, LoadedInputs, OutputRef
from service.pipelines.fdopa_pet.pipeline import FdopaPetPipeline, Options
from service.pipelines.fdopa_pet.result import FdopaResult
from service.pipelines.fdopa_pet.summary import SCHEMA, summary_dict
from service.testing.fdopa_result import (
    SimulatedStudy,
    result_from_study,
    simulate_small_study,
    without_suv,
)

pytestmark = pytest.mark.no_storage  # never opens the node's rows: not rerun on PostgreSQL

NOW = 1_800_000_000.0
KEY = "a" * 64


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> SimulatedStudy:
    return simulate_small_study(tmp_path_factory.mktemp("fdopa_out"))


def _pipeline(**options: Any) -> FdopaPetPipeline:
    template: Any = SimpleNamespace(sha256="0" * 64)
    return FdopaPetPipeline(template, None, Options(**options))


def test_outputs_in_order_in_the_study_with_the_predecessor(study: SimulatedStudy) -> None:
    result = result_from_study(study)
    earlier = OutputRef(COMPREHENSIVE_SR_STORAGE, "1.2.826.0.1.3680043.8.498.1",
                        "1.2.826.0.1.3680043.8.498.2", str(study.static[0].StudyInstanceUID))
    context = JobContext(KEY, NOW, (earlier,))
    durations: dict[str, float] = {}
    seg, sr, picture = _pipeline().build_outputs(result, study.static, context, durations)
    assert [seg.Modality, sr.Modality] == ["SEG", "SR"]
    assert picture.SOPClassUID != sr.SOPClassUID
    assert {seg.StudyInstanceUID, sr.StudyInstanceUID, picture.StudyInstanceUID} == {
        study.static[0].StudyInstanceUID}
    [predecessor] = sr.PredecessorDocumentsSequence
    assert predecessor.ReferencedSeriesSequence[0].ReferencedSOPSequence[0] \
        .ReferencedSOPInstanceUID == earlier.sop_instance_uid
    assert set(durations) == {"seg", "sr", "picture"}
    again = _pipeline().build_outputs(result, study.static, context, {})
    assert [d.SOPInstanceUID for d in again] == [seg.SOPInstanceUID, sr.SOPInstanceUID,
                                                picture.SOPInstanceUID]  # a retry: same UIDs


def _result_summary(result: FdopaResult) -> dict[str, Any]:
    summary = summary_dict(result)
    return json.loads(json.dumps(summary, allow_nan=False))  # strict JSON


def test_summary_names_its_schema_definitions_and_flags(study: SimulatedStudy) -> None:
    result = result_from_study(study)
    summary = _result_summary(result)
    assert summary["schema"] == SCHEMA
    assert "Research use, not for diagnosis" in summary["notice"]
    assert "simulated data" in summary["notice"]
    assert summary["series_instance_uid"] == str(study.static[0].SeriesInstanceUID)
    assert summary["static_window_s"] is None and summary["static_from_dynamic"] is False
    assert summary["tumour"]["tbr_max"] == pytest.approx(result.measures.tumour.tbr_max)  # type: ignore[union-attr]
    assert len(summary["lesions"]) == len(result.lesions)
    assert {"tbr_max", "ts_ratio", "measurable"} <= set(summary["definitions"])
    assert summary["dynamic"]["slope_ratios"].keys() == result.dynamic.slope_ratios.keys()  # type: ignore[union-attr]
    no_suv = _result_summary(without_suv(result))
    assert no_suv["suv"] == {"available": False, "factor": None, "method": no_suv["suv"]["method"],
                             "reason": "patient weight missing"}
    assert no_suv["tumour"]["suv_max"] is None and no_suv["tumour"]["tbr_max"] is not None
    from_dynamic = _result_summary(result_from_study(study, from_dynamic=True))
    assert from_dynamic["static_from_dynamic"] is True
    assert len(from_dynamic["static_window_s"]) == 2


def test_failure_report_and_its_switch(study: SimulatedStudy, tmp_path: Path) -> None:
    inputs = LoadedInputs({"primary": tuple(study.static)})
    context = JobContext(KEY, NOW)
    [report] = _pipeline().failure_report(inputs, context, "registration to the FDOPA template "
                                                           "failed its quality check")
    assert report.Modality == "SR"
    assert report.StudyInstanceUID == study.static[0].StudyInstanceUID
    texts = [str(item.TextValue) for item in report.ContentSequence if "TextValue" in item]
    assert any("registration to the FDOPA template" in t for t in texts)
    assert _pipeline(report_failures=False).failure_report(inputs, context, "x") == ()
