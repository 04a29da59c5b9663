"""A reader is never left with nothing: the incomplete-series rule and the failure report."""

from __future__ import annotations

import copy
import io
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
import SimpleITK as sitk
from highdicom.sr.utils import find_content_items
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as dcm_codes

from service.dicom import codes as dicom_codes
from service.errors import AnalysisError
from service.imaging.atlas import load_atlas
from service.pipelines.base import JobContext, LoadedInputs, SeriesView
from service.pipelines.dat_spect import codes
from service.pipelines.dat_spect.completeness import (
    INCOMPLETE,
    announced_slices,
    as_incomplete,
    check_count,
    check_coverage,
    inside_fraction,
)
from service.pipelines.dat_spect.example import example_evidence, example_result
from service.pipelines.dat_spect.failure import build_failure_sr, failure_text
from service.pipelines.dat_spect.pipeline import DatSpectPipeline, measure
from service.report.identity import RESEARCH_USE_TEXT, AlgorithmInfo
from service.report.uids import derive_uid
from service.sim.nm_writer import EncodingVariant

pytestmark = pytest.mark.no_storage  # never opens the node's rows: not rerun on PostgreSQL

ALGORITHM = AlgorithmInfo("dopanode DaT SBR", "0.1.0")


def per_slice_header(number_of_slices: int | None, frames: int | None = None) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = dicom_codes.NM_IMAGE_STORAGE
    if number_of_slices is not None:
        ds.NumberOfSlices = number_of_slices
    if frames is not None:
        ds.NumberOfFrames = frames
    return ds


def test_announced_slices() -> None:
    assert announced_slices(per_slice_header(80)) == 80
    assert announced_slices(per_slice_header(1)) is None  # describes itself, not the series
    assert announced_slices(per_slice_header(None)) is None
    assert announced_slices(per_slice_header(80, frames=80)) is None  # multi-frame: whole volume
    ct = per_slice_header(80)
    ct.SOPClassUID = dicom_codes.CT_IMAGE_STORAGE
    assert announced_slices(ct) is None


def test_check_count_refuses_fewer_slices_than_announced() -> None:
    with pytest.raises(AnalysisError) as err:
        check_count([per_slice_header(80)] * 72)
    assert err.value.code == INCOMPLETE
    assert err.value.reason == "incomplete series: 72 of 80 announced slices"
    check_count([per_slice_header(8)] * 8)
    check_count([per_slice_header(1)] * 5)


def test_gaps_become_incomplete() -> None:
    exc = as_incomplete(AnalysisError("missing slices: 1 gap(s) in the stack", "missing_slices"))
    assert (exc.code, exc.reason) == (INCOMPLETE, "incomplete series: missing slices: 1 gap(s) "
                                      "in the stack")
    other = AnalysisError("inconsistent slices: irregular slice spacing", "inconsistent_slices")
    assert as_incomplete(other) is other


def test_coverage_against_a_cropped_grid() -> None:
    atlas = load_atlas()
    full = atlas.reference_image()
    identity = sitk.AffineTransform(3)
    assert inside_fraction(full, identity, atlas, atlas.brain_zyx) == 1.0
    assert check_coverage(full, identity, atlas) == 1.0
    # The top 30 of 91 slices (60 mm) missing: the vertex is not in the stack.
    top_cut = full[:, :, :61]
    fraction = inside_fraction(top_cut, identity, atlas, atlas.brain_zyx)
    assert 0.5 < fraction < 0.98
    with pytest.raises(AnalysisError, match="do not cover the head") as err:
        check_coverage(top_cut, identity, atlas)
    assert err.value.code == INCOMPLETE


@pytest.fixture(scope="module")
def pipeline() -> DatSpectPipeline:
    return DatSpectPipeline(incomplete_wait_s=600.0)


def view(count: int, announced: int | None, completed_at: float = 1000.0) -> SeriesView:
    return SeriesView("1.2.3", "1.2.3.4", dicom_codes.NM_IMAGE_STORAGE, count,
                      per_slice_header(announced), True, completed_at)


def test_inputs_wait_for_announced_slices_then_take_the_series(pipeline: DatSpectPipeline) -> None:
    waiting = pipeline.inputs(view(72, 80), [], now=1001.0)
    assert waiting.wait_until == 1600.0
    assert waiting.note == "incomplete: 72 of 80 announced slices after 600 s"
    after = pipeline.inputs(view(72, 80), [], now=1600.0)
    assert after.wait_until is None and after.series[0].series_uid == "1.2.3.4"
    assert "72 of 80" in after.note
    for complete in (view(80, 80), view(72, 1), view(72, None)):
        plan = pipeline.inputs(complete, [], now=1001.0)
        assert plan.wait_until is None and plan.note == ""


def per_slice_study(tmp_path: Path, number_of_slices: int, drop: list[int]) -> list[Dataset]:
    """A small per-slice DaT series (marker volume) with some slices left out."""
    from service.testing.nmdata import marker_image, write_marker_study

    paths = write_marker_study(tmp_path, EncodingVariant.PER_SLICE,
                               image=marker_image(shape_xyz=(24, 24, 20)), uid_seed="incomplete")
    out = []
    for k, path in enumerate(paths):
        if k in drop:
            continue
        ds = pydicom.dcmread(path)
        ds.NumberOfSlices = number_of_slices
        out.append(ds)
    return out


def test_measure_refuses_incomplete_stacks_before_registration(
        tmp_path: Path, pipeline: DatSpectPipeline) -> None:
    announced = per_slice_study(tmp_path / "a", 20, drop=[18, 19])
    with pytest.raises(AnalysisError, match="18 of 20 announced") as err:
        measure(announced, pipeline.models, (), {})
    assert err.value.code == INCOMPLETE
    gap = per_slice_study(tmp_path / "b", 1, drop=[9])
    with pytest.raises(AnalysisError, match="incomplete series: missing slices: 1 gap") as err:
        measure(gap, pipeline.models, (), {})
    assert err.value.code == INCOMPLETE


def roundtrip(ds: Dataset) -> tuple[pydicom.Dataset, hd.sr.ComprehensiveSR]:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    raw = buffer.getvalue()
    return pydicom.dcmread(io.BytesIO(raw)), hd.sr.srread(io.BytesIO(raw))


def test_failure_sr_round_trip() -> None:
    evidence = example_evidence(example_result())
    reason = "normalisation failed: head outline overlap 0.59 < 0.80"  # a gate reason
    sr = build_failure_sr(evidence, reason, "job-fail", ALGORITHM, created_at=1.7e9)
    ds, parsed = roundtrip(sr)
    assert ds.SOPClassUID == dicom_codes.COMPREHENSIVE_SR_STORAGE
    assert ds.StudyInstanceUID == evidence[0].StudyInstanceUID
    assert ds.PatientID == evidence[0].PatientID
    assert ds.SOPInstanceUID == derive_uid("job-fail", ALGORITHM, "failure-sr-instance")
    assert ds.SeriesInstanceUID == derive_uid("job-fail", ALGORITHM, "failure-sr-series")
    assert ds.CompletionFlag == "COMPLETE" and ds.VerificationFlag == "UNVERIFIED"
    refs = ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert refs.SeriesInstanceUID == evidence[0].SeriesInstanceUID
    root = ds  # the root content item is the dataset itself
    assert root.ConceptNameCodeSequence[0].CodeValue == dcm_codes.LN.DiagnosticImagingReport.value
    (item,) = find_content_items(root, name=codes.ANALYSIS_NOT_POSSIBLE)
    assert item.TextValue == reason
    comments = [i.TextValue for i in find_content_items(root, name=codes.COMMENT)]
    assert comments == [failure_text(reason), RESEARCH_USE_TEXT]
    assert comments[0].startswith(f"Analysis not possible: {reason}.")
    # No levels, no verdict.
    for concept in (codes.UPTAKE_LEVEL_CONCEPT, codes.FINDING, codes.RESULT_INCONCLUSIVE,
                    codes.SPECIFIC_BINDING_RATIO):
        assert find_content_items(root, name=concept, recursive=True) == []
    again = build_failure_sr(evidence, reason, "job-fail", ALGORITHM, created_at=1.7e9)
    b1, b2 = io.BytesIO(), io.BytesIO()
    pydicom.dcmwrite(b1, sr, enforce_file_format=True)
    pydicom.dcmwrite(b2, again, enforce_file_format=True)
    assert b1.getvalue() == b2.getvalue()


def test_failure_report_of_the_pipeline_follows_the_setting(pipeline: DatSpectPipeline) -> None:
    evidence = tuple(example_evidence(example_result()))
    inputs = LoadedInputs({"primary": evidence})
    context = JobContext("job-x", 1.7e9)
    (sr,) = pipeline.failure_report(inputs, context, "incomplete series: 72 of 80 announced slices")
    assert sr.SOPInstanceUID == derive_uid("job-x", pipeline.algorithm, "failure-sr-instance")
    silent = copy.copy(pipeline)
    silent.report_failures = False
    assert silent.failure_report(inputs, context, "x") == ()


def test_failure_sr_keeps_to_the_first_series_and_refuses_nothing_to_reference() -> None:
    evidence = list(example_evidence(example_result()))
    stray = copy.deepcopy(evidence[0])
    stray.SeriesInstanceUID = "1.2.3.999"
    stray.SOPInstanceUID = "1.2.3.999.1"
    ds, _ = roundtrip(build_failure_sr([*evidence, stray], "mixed", "job-m", ALGORITHM))
    refs = ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
    assert [r.SeriesInstanceUID for r in refs] == [evidence[0].SeriesInstanceUID]
    with pytest.raises(ValueError, match="at least one"):
        build_failure_sr([], "x", "job", ALGORITHM)


def test_reason_is_kept_short() -> None:
    assert len(failure_text("x" * 1000)) < 300
