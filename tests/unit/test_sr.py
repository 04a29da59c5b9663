"""The DaT SPECT SR: built, written, read back with pydicom and highdicom, value by value."""

from __future__ import annotations

import io
import logging
from dataclasses import replace

import highdicom as hd
import pydicom
import pytest
from highdicom.sr.utils import find_content_items
from pydicom.sr.codedict import codes as dcm_codes

from service import __version__
from service.dicom import codes as dicom_codes
from service.errors import AnalysisError
from service.pipelines.dat_spect import codes
from service.pipelines.dat_spect.example import example_evidence, example_result
from service.pipelines.dat_spect.result import Region, RegionResult, StudyResult
from service.pipelines.dat_spect.sr import RESEARCH_USE_TEXT, VALUE_DECIMALS, build_sr
from service.report.uids import DEVICE_OBSERVER_UID, derive_uid

pytestmark = pytest.mark.no_storage  # never opens the node's rows: not rerun on PostgreSQL

JOB = "job-7f3a"
STRUCTURES = {"caudate": codes.CAUDATE, "putamen": codes.PUTAMEN}
SIDES = {"left": codes.LEFT, "right": codes.RIGHT}


@pytest.fixture(scope="module")
def reduced() -> StudyResult:
    return example_result(reduced=True, with_cnn=True)


@pytest.fixture(scope="module")
def normal_no_cnn() -> StudyResult:
    base = example_result(reduced=False, with_cnn=False)
    # One region without a normal database entry, an inconclusive flag, a warning.
    regions = tuple(
        replace(r, z_score=None, normal_mean=None, normal_sd=None)
        if r.region is Region.CAUDATE_RIGHT
        else r
        for r in base.regions
    )
    score = replace(base.global_score, inconclusive=True)
    return replace(
        base, regions=regions, global_score=score, warnings=("low counts in the reference",)
    )


def roundtrip(
    result: StudyResult, job_key: str = JOB
) -> tuple[pydicom.Dataset, hd.sr.ComprehensiveSR]:
    sr = build_sr(result, example_evidence(result), job_key)
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, sr, enforce_file_format=True)
    raw = buffer.getvalue()
    return pydicom.dcmread(io.BytesIO(raw)), hd.sr.srread(io.BytesIO(raw))


def qualitative_items(report: hd.sr.MeasurementReport) -> dict[str, list[pydicom.Dataset]]:
    """Children of the report-level Qualitative Evaluations container by code value."""
    containers = find_content_items(report[0], name=codes.QUALITATIVE_EVALUATIONS)
    assert len(containers) == 1
    items: dict[str, list[pydicom.Dataset]] = {}
    for item in containers[0].ContentSequence:
        items.setdefault(item.ConceptNameCodeSequence[0].CodeValue, []).append(item)
    return items


def region_groups(
    report: hd.sr.MeasurementReport,
) -> dict[str, hd.sr.MeasurementsAndQualitativeEvaluations]:
    return {g.tracking_identifier: g for g in report.get_image_measurement_groups()}


def test_header_study_series_and_evidence(reduced: StudyResult) -> None:
    ds, _ = roundtrip(reduced)
    assert ds.SOPClassUID == dicom_codes.COMPREHENSIVE_SR_STORAGE
    assert ds.Modality == "SR"
    assert ds.StudyInstanceUID == reduced.source.study_instance_uid
    assert ds.SeriesInstanceUID != reduced.source.series_instance_uid
    assert ds.PatientName == "Example^Synthetic" and ds.PatientID == "DN-EXAMPLE-1"
    assert ds.AccessionNumber == "ACC-EXAMPLE"
    assert "research use, not for diagnosis" in ds.SeriesDescription
    assert (ds.CompletionFlag, ds.VerificationFlag) == ("COMPLETE", "UNVERIFIED")
    assert ds.SoftwareVersions == __version__
    assert ds.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == "99DOPANODE"
    (study,) = ds.CurrentRequestedProcedureEvidenceSequence
    assert study.StudyInstanceUID == reduced.source.study_instance_uid
    (series,) = study.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == reduced.source.series_instance_uid
    refs = {
        (i.ReferencedSOPClassUID, i.ReferencedSOPInstanceUID) for i in series.ReferencedSOPSequence
    }
    assert refs == {(dicom_codes.NM_IMAGE_STORAGE, uid) for uid in reduced.source.sop_instance_uids}
    assert "PertinentOtherEvidenceSequence" not in ds


def test_uids_are_deterministic(reduced: StudyResult) -> None:
    first, _ = roundtrip(reduced)
    again, _ = roundtrip(reduced)
    other_job, _ = roundtrip(reduced, job_key="job-other")
    other_model = replace(reduced, algorithm=replace(reduced.algorithm, model_sha256="ab" * 32))
    other_model_ds, _ = roundtrip(other_model)
    assert first.SOPInstanceUID == again.SOPInstanceUID
    assert first.SeriesInstanceUID == again.SeriesInstanceUID
    assert first.SOPInstanceUID == derive_uid(JOB, reduced.algorithm, "sr-instance")
    assert other_job.SOPInstanceUID != first.SOPInstanceUID
    assert other_model_ds.SOPInstanceUID != first.SOPInstanceUID


def test_observer_and_procedure(reduced: StudyResult) -> None:
    _, sr = roundtrip(reduced)
    report = sr.content
    assert isinstance(report, hd.sr.MeasurementReport)
    (observer,) = report.get_observer_contexts()
    assert observer.observer_type == dcm_codes.cid270.Device
    device = observer.observer_identifying_attributes
    assert device.uid == DEVICE_OBSERVER_UID
    assert device.name == "dopanode"
    assert device.model_name == f"dopanode {__version__}"
    procedures = find_content_items(report[0], name=dcm_codes.DCM.ProcedureReported)
    assert [p.value for p in procedures] == [codes.SPECT_BRAIN]


def check_region_group(
    group: hd.sr.MeasurementsAndQualitativeEvaluations, r: RegionResult, algorithm_params: list[str]
) -> None:
    (site,) = group.finding_sites
    assert site.value == STRUCTURES[r.region.structure]
    assert site.laterality == SIDES[r.region.side]
    # The level is not the group's finding type (the DCM 121071 pitfall).
    assert group.finding_type is None
    (sbr,) = group.get_measurements(name=codes.SPECIFIC_BINDING_RATIO)
    assert sbr.value == pytest.approx(r.sbr, abs=10**-VALUE_DECIMALS)
    assert sbr.unit == codes.UCUM_RATIO
    z_items = group.get_measurements(name=codes.Z_SCORE)
    if r.z_score is None:
        assert z_items == []
    else:
        assert z_items[0].value == pytest.approx(r.z_score, abs=10**-VALUE_DECIMALS)
        assert z_items[0].unit == codes.UCUM_NO_UNITS
    evaluations = {e.name.value: e.value for e in group.get_qualitative_evaluations()}
    assert evaluations[codes.UPTAKE_LEVEL_CONCEPT.value] == codes.LEVEL_CODES[r.level]
    assert evaluations[codes.UPTAKE_LEVEL_SBR_CONCEPT.value] == codes.LEVEL_CODES[r.level_sbr]
    if r.level_cnn is None:
        assert codes.UPTAKE_LEVEL_CNN_CONCEPT.value not in evaluations
    else:
        assert evaluations[codes.UPTAKE_LEVEL_CNN_CONCEPT.value] == codes.LEVEL_CODES[r.level_cnn]
    params = [
        i.TextValue for i in find_content_items(group[0], name=dcm_codes.DCM.AlgorithmParameters)
    ]
    assert params == algorithm_params


def expected_params(result: StudyResult) -> list[str]:
    params = [f"reference region: {result.reference_region}"]
    if result.algorithm.model_name:
        params.append(f"model: {result.algorithm.model_name}")
    if result.algorithm.model_sha256:
        params.append(f"model sha256: {result.algorithm.model_sha256}")
    return params


@pytest.mark.parametrize("name", ["reduced", "normal_no_cnn"])
def test_region_groups_every_value(name: str, request: pytest.FixtureRequest) -> None:
    result: StudyResult = request.getfixturevalue(name)
    _, sr = roundtrip(result)
    groups = region_groups(sr.content)
    assert set(groups) == {r.value.replace("_", " ") for r in Region} | {"striatum"}
    for region in Region:
        group = groups[region.value.replace("_", " ")]
        assert group.tracking_uid == derive_uid(JOB, result.algorithm, f"tracking-{region.value}")
        check_region_group(group, result.region(region), expected_params(result))
        names = [
            i.TextValue for i in find_content_items(group[0], name=dcm_codes.DCM.AlgorithmName)
        ]
        versions = [
            i.TextValue for i in find_content_items(group[0], name=dcm_codes.DCM.AlgorithmVersion)
        ]
        assert names == [result.algorithm.name] and versions == [result.algorithm.version]


def test_striatum_group_ratios_and_registration(reduced: StudyResult) -> None:
    _, sr = roundtrip(reduced)
    group = region_groups(sr.content)["striatum"]
    assert [s.value for s in group.finding_sites] == [codes.CORPUS_STRIATUM]
    pc = {
        m.finding_sites[0].laterality.value: m
        for m in group.get_measurements(name=codes.PUTAMEN_CAUDATE_RATIO)
    }
    tol = 10**-VALUE_DECIMALS
    assert pc[codes.LEFT.value].value == pytest.approx(reduced.ratios.putamen_caudate_left, abs=tol)
    assert pc[codes.RIGHT.value].value == pytest.approx(
        reduced.ratios.putamen_caudate_right, abs=tol
    )
    assert all(m.unit == codes.UCUM_RATIO for m in pc.values())
    ai = {
        m.finding_sites[0].value.value: m
        for m in group.get_measurements(name=codes.ASYMMETRY_INDEX)
    }
    assert ai[codes.CAUDATE.value].value == pytest.approx(
        reduced.ratios.asymmetry_caudate_pct, abs=tol
    )
    assert ai[codes.PUTAMEN.value].value == pytest.approx(
        reduced.ratios.asymmetry_putamen_pct, abs=tol
    )
    assert all(m.unit == codes.UCUM_PERCENT for m in ai.values())
    (quality,) = group.get_measurements(name=codes.REGISTRATION_QUALITY)
    assert quality.value == pytest.approx(reduced.registration_quality, abs=tol)


@pytest.mark.parametrize("name", ["reduced", "normal_no_cnn"])
def test_global_finding_flag_and_texts(name: str, request: pytest.FixtureRequest) -> None:
    result: StudyResult = request.getfixturevalue(name)
    _, sr = roundtrip(result)
    items = qualitative_items(sr.content)
    (finding,) = items[codes.FINDING.value]
    expected = codes.ABNORMAL if result.global_score.reduced else codes.NORMAL
    assert finding.ConceptCodeSequence[0].CodeValue == expected.value
    assert finding.ConceptCodeSequence[0].CodingSchemeDesignator == "SCT"
    (flag,) = items[codes.RESULT_INCONCLUSIVE.value]
    assert flag.ConceptCodeSequence[0].CodeValue == (
        codes.YES.value if result.global_score.inconclusive else codes.NO.value
    )
    assert items[codes.GLOBAL_SCORE_METHOD.value][0].TextValue == result.global_score.method
    assert items[codes.GLOBAL_SCORE_RULE.value][0].TextValue == result.global_score.rule
    assert items[codes.REFERENCE_REGION.value][0].TextValue == result.reference_region
    comments = [i.TextValue for i in items[codes.COMMENT.value]]
    assert comments == [RESEARCH_USE_TEXT] + [f"Warning: {w}" for w in result.warnings]


def test_bad_inputs_are_refused(reduced: StudyResult) -> None:
    evidence = example_evidence(reduced)
    with pytest.raises(ValueError, match="at least one"):
        build_sr(reduced, [], JOB)
    foreign = example_evidence(reduced)
    foreign[0].SeriesInstanceUID = "1.2.3.4"
    with pytest.raises(ValueError, match="analysed source series"):
        build_sr(reduced, foreign, JOB)
    three_regions = replace(reduced, regions=reduced.regions[:3])
    with pytest.raises(ValueError, match="lacks regions"):
        build_sr(three_regions, evidence, JOB)
    with pytest.raises(ValueError, match="job_key"):
        build_sr(reduced, evidence, "")


def test_missing_type2_patient_attributes_stay_empty(reduced: StudyResult) -> None:
    evidence = example_evidence(reduced)
    for ds in evidence:
        del ds.AccessionNumber, ds.PatientBirthDate
    sr = build_sr(reduced, evidence, JOB)
    for keyword in ("AccessionNumber", "PatientBirthDate"):
        assert keyword in sr and not sr[keyword].value


@pytest.mark.parametrize("birth_date", ["1959-01-01", "17.08.1923"])
def test_malformed_dates_and_ages_are_copied_empty(reduced: StudyResult, birth_date: str,
                                                   recwarn: pytest.WarningsRecorder) -> None:
    """A non-conforming DA/TM/AS must not cost the reader the SR (highdicom refuses it)."""
    from pydicom import config

    evidence = example_evidence(reduced)
    config.settings.reading_validation_mode = config.WARN  # whatever an earlier CLI run set
    with pytest.warns(UserWarning):  # pydicom, when the test sets the bad values
        for ds in evidence:
            ds.PatientBirthDate, ds.PatientAge = birth_date, "64"
            ds.StudyDate, ds.StudyTime = "2026-01-02", "12:00"
    recwarn.clear()
    sr = build_sr(reduced, evidence, JOB)
    for keyword in ("PatientBirthDate", "StudyDate", "StudyTime"):
        assert keyword in sr and not sr[keyword].value
    assert sr.PatientName == evidence[0].PatientName and sr.PatientID == evidence[0].PatientID
    assert not [w for w in recwarn if birth_date in str(w.message)]


def test_logs_carry_no_patient_identifiers(
    reduced: StudyResult, caplog: pytest.LogCaptureFixture
) -> None:
    evidence = example_evidence(reduced)
    for ds in evidence:
        ds.PatientName = "SENTINEL^NAME"
    with caplog.at_level(logging.DEBUG):
        build_sr(reduced, evidence, JOB)
    assert caplog.records
    for record in caplog.records:
        text = record.getMessage() + repr(getattr(record, "fields", {}))
        assert "SENTINEL" not in text and "DN-EXAMPLE-1" not in text


def test_non_finite_numbers_are_refused(reduced: StudyResult) -> None:
    regions = (replace(reduced.regions[0], sbr=float("nan")),) + reduced.regions[1:]
    with pytest.raises(AnalysisError, match="SBR is not a finite number") as caught:
        build_sr(replace(reduced, regions=regions), example_evidence(reduced), JOB)
    assert caught.value.code == "non_finite_result"


def test_evidence_with_pixels_is_reduced_to_headers(reduced: StudyResult) -> None:
    evidence = example_evidence(reduced)
    for ds in evidence:
        ds.Rows, ds.Columns = 2, 2
        ds.PixelData = b"\x00" * 8
        ds.InstitutionName = "NOT COPIED"
    sr = build_sr(reduced, evidence, JOB)
    assert "PixelData" not in sr and "InstitutionName" not in sr
    del evidence[0].SOPInstanceUID
    with pytest.raises(ValueError, match="SOP Instance UID"):
        build_sr(reduced, evidence, JOB)


def _bytes(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


@pytest.mark.slow
def test_a_retried_job_writes_byte_identical_objects(reduced: StudyResult) -> None:
    """Dates and times derive from the job, not the clock: a retry replaces, never twins."""
    import time

    from service.pipelines.dat_spect.picture import build_picture_report

    created_at = 1_800_000_000.0
    evidence = example_evidence(reduced)
    first_sr = _bytes(build_sr(reduced, evidence, "job-retry", created_at))
    first_pic = _bytes(build_picture_report(reduced, evidence, "job-retry", created_at))
    time.sleep(1.1)  # the clock moves on (a retry comes later), the objects must not
    assert _bytes(build_sr(reduced, evidence, "job-retry", created_at)) == first_sr
    assert _bytes(build_picture_report(reduced, evidence, "job-retry", created_at)) == first_pic
    sr = pydicom.dcmread(io.BytesIO(first_sr))
    assert (sr.ContentDate, sr.InstanceCreationDate) == ("20270115", "20270115")


def test_a_replacing_sr_names_its_predecessor(reduced: StudyResult) -> None:
    from service.pipelines.base import OutputRef

    evidence = example_evidence(reduced)
    old = build_sr(reduced, evidence, "job-old", 1_800_000_000.0)
    ref = OutputRef(str(old.SOPClassUID), str(old.SOPInstanceUID), str(old.SeriesInstanceUID),
                    str(old.StudyInstanceUID))
    new = build_sr(reduced, evidence, "job-new", 1_800_000_100.0, previous=[ref])
    [study] = new.PredecessorDocumentsSequence
    assert study.StudyInstanceUID == old.StudyInstanceUID
    [series] = study.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == old.SeriesInstanceUID
    [item] = series.ReferencedSOPSequence
    assert (item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID) == (
        old.SOPClassUID, old.SOPInstanceUID)
    assert "PredecessorDocumentsSequence" not in old
    hd.sr.srread(io.BytesIO(_bytes(new)))  # reads back as a valid SR
