"""FDOPA outputs: SEG, TID 1500 SR, picture report and failure SR, read back and validated.

The result comes from a small simulated study through
:mod:`service.testing.fdopa_result` (truth labels as lesions and reference
regions, measures by their definitions, the dynamic curves by
``kinetics.analyse_dynamic``), so these tests need none of the analysis stages.
Every object is written to bytes, read back (highdicom) and checked by
dciodvfy.
"""

from __future__ import annotations

import io
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from service.errors import AnalysisError
from service.pipelines.base import OutputRef
from service.pipelines.fdopa_pet import report_codes as rc
from service.pipelines.fdopa_pet.failure import build_failure_sr, failure_text
from service.pipelines.fdopa_pet.picture import build_picture_report
from service.pipelines.fdopa_pet.render import HEIGHT_PX, WIDTH_PX, table_rows
from service.pipelines.fdopa_pet.result import FdopaResult, Lesion
from service.pipelines.fdopa_pet.seg import build_seg, segment_masks
from service.pipelines.fdopa_pet.sr import build_sr
from service.testing.fdopa_result import (
    SimulatedStudy,
    measures_of,
    result_from_study,
    simulate_small_study,
    without_lesions,
    without_suv,
)
from service.testing.peers import require_tool

pytestmark = pytest.mark.no_storage  # never opens the node's rows: not rerun on PostgreSQL

JOB = "job-fdopa-outputs"
CREATED = 1.7e9


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> SimulatedStudy:
    """Per-slice static + dynamic study, one PET-active lesion (seed 77)."""
    return simulate_small_study(tmp_path_factory.mktemp("fdopa"), seed=77)


@pytest.fixture(scope="module")
def enhanced(tmp_path_factory: pytest.TempPathFactory) -> SimulatedStudy:
    """Static study as one Legacy Converted Enhanced PET instance, no dynamic series."""
    return simulate_small_study(tmp_path_factory.mktemp("fdopa_e"), seed=78, enhanced=True,
                                dynamic=False)


@pytest.fixture(scope="module")
def results(study: SimulatedStudy, enhanced: SimulatedStudy
            ) -> dict[str, tuple[FdopaResult, list[Dataset]]]:
    full = result_from_study(study)
    return {
        "per_slice": (full, list(study.static)),
        "enhanced": (result_from_study(enhanced, method="threshold"), list(enhanced.static)),
        "from_dynamic": (result_from_study(study, from_dynamic=True), list(study.dynamic)),
        "no_lesion": (without_lesions(full), list(study.static)),
        "no_suv": (without_suv(full), list(study.static)),
        "multifocal": (multifocal(full), list(study.static)),
    }


def multifocal(result: FdopaResult) -> FdopaResult:
    """A second lesion: the first one moved 8 voxels along x (away from the reference side)."""
    first = result.lesions[0].mask_zyx
    shift = 8 if result.reference.side == "right" else -8
    second = np.roll(first, shift, axis=2) & ~first
    lesions = (result.lesions[0], Lesion(2, second))
    measures = measures_of(result.static, result.suv, lesions, result.reference)
    return replace(result, lesions=lesions, measures=measures)


def roundtrip(ds: Dataset) -> Dataset:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


def dciodvfy_errors(ds: Dataset, tmp_path: Path, name: str) -> list[str]:
    path = tmp_path / f"{name}.dcm"
    ds.save_as(path, enforce_file_format=True)
    out = subprocess.run([require_tool("dciodvfy"), str(path)], capture_output=True, text=True,
                         check=False)
    return [line for line in (out.stdout + out.stderr).splitlines() if "Error" in line]


# --- SEG ----------------------------------------------------------------------------


def _z_of(affine: np.ndarray, position: np.ndarray) -> int:
    index = np.linalg.solve(affine[:3, :3], position - affine[:3, 3])
    assert np.allclose(index[1:], 0.0, atol=1e-3)
    return int(round(index[0]))


def _read_masks(seg: hd.seg.Segmentation, result: FdopaResult, sources: list[Dataset]
                ) -> np.ndarray:
    """(z, y, x, n) masks from highdicom's reader, one source slice or frame per z."""
    affine = result.static.affine
    if "PerFrameFunctionalGroupsSequence" in sources[0]:
        items = sources[0].PerFrameFunctionalGroupsSequence
        frame_of = {_z_of(affine, np.array(item.PlanePositionSequence[0].ImagePositionPatient,
                                           float)): f + 1 for f, item in enumerate(items)}
        frames = [frame_of[z] for z in range(result.static.shape_zyx[0])]
        return seg.get_pixels_by_source_frame(str(sources[0].SOPInstanceUID), frames,
                                              assert_missing_frames_are_empty=True)
    first = sorted(sources, key=lambda ds: int(ds.get("ImageIndex") or 0))
    by_z: dict[int, str] = {}
    for ds in first:
        by_z.setdefault(_z_of(affine, np.array(ds.ImagePositionPatient, float)),
                        str(ds.SOPInstanceUID))
    uids = [by_z[z] for z in range(result.static.shape_zyx[0])]
    return seg.get_pixels_by_source_instance(uids, assert_missing_frames_are_empty=True)


@pytest.mark.parametrize("case", ["per_slice", "enhanced", "from_dynamic", "no_lesion",
                                  "multifocal"])
def test_seg_reads_back_segment_by_segment(case: str, results: dict) -> None:
    result, sources = results[case]
    seg = hd.seg.Segmentation.from_dataset(roundtrip(build_seg(result, sources, JOB, CREATED)))
    expected = segment_masks(result)
    n_lesions = len(result.lesions)
    assert seg.number_of_segments == n_lesions + 3
    labels = [seg.get_segment_description(k).segment_label
              for k in range(1, seg.number_of_segments + 1)]
    assert labels[:n_lesions] == [f"Tumour lesion {les.index}" for les in result.lesions]
    assert labels[n_lesions:] == [f"{name} {result.reference.side}" for name in (
        "Background crescent", "Contralateral striatum", "Contralateral white matter")]
    got = _read_masks(seg, result, sources)
    assert got.shape == expected.shape
    for k in range(expected.shape[-1]):
        np.testing.assert_array_equal(got[..., k], expected[..., k], err_msg=labels[k])
    assert seg.SegmentationType == "BINARY"
    assert "research use, not for diagnosis" in seg.SeriesDescription.lower()


@pytest.mark.parametrize("case", ["per_slice", "enhanced", "from_dynamic"])
def test_seg_geometry_is_the_pets(case: str, results: dict) -> None:
    result, sources = results[case]
    seg = roundtrip(build_seg(result, sources, JOB, CREATED))
    affine, spacing = result.static.affine, result.static.spacing_zyx_mm
    shared = seg.SharedFunctionalGroupsSequence[0]
    first = sources[0]
    if "SharedFunctionalGroupsSequence" in first:
        src = first.SharedFunctionalGroupsSequence[0]
        iop = src.PlaneOrientationSequence[0].ImageOrientationPatient
        pixel_spacing = src.PixelMeasuresSequence[0].PixelSpacing
    else:
        iop, pixel_spacing = first.ImageOrientationPatient, first.PixelSpacing
    np.testing.assert_allclose(shared.PlaneOrientationSequence[0].ImageOrientationPatient,
                               [float(v) for v in iop], atol=1e-6)
    np.testing.assert_allclose(shared.PixelMeasuresSequence[0].PixelSpacing,
                               [float(v) for v in pixel_spacing], rtol=1e-6)
    np.testing.assert_allclose(pixel_spacing, spacing[1:], rtol=1e-5)  # row, column spacing
    assert (seg.Rows, seg.Columns) == (first.Rows, first.Columns)
    assert seg.FrameOfReferenceUID == first.FrameOfReferenceUID
    source_uids = {str(ds.SOPInstanceUID) for ds in sources}
    for item in seg.PerFrameFunctionalGroupsSequence:
        position = np.array(item.PlanePositionSequence[0].ImagePositionPatient, float)
        z = _z_of(affine, position)
        np.testing.assert_allclose(position, affine[:3, :3] @ (z, 0, 0) + affine[:3, 3],
                                   atol=1e-3)
        derivation = item.DerivationImageSequence[0].SourceImageSequence
        assert {str(s.ReferencedSOPInstanceUID) for s in derivation} <= source_uids


def test_seg_of_a_dynamic_source_references_the_first_time_frame(results: dict) -> None:
    result, sources = results["from_dynamic"]
    seg = build_seg(result, sources, JOB, CREATED)
    referenced = {str(item.ReferencedSOPInstanceUID) for series in seg.ReferencedSeriesSequence
                  for item in series.ReferencedInstanceSequence}
    first_frame = {str(ds.SOPInstanceUID) for ds in sources
                   if (int(ds.ImageIndex) - 1) // int(ds.NumberOfSlices) == 0}
    assert referenced == first_frame and len(referenced) == result.static.shape_zyx[0]


def test_seg_refuses_a_grid_off_the_source(results: dict) -> None:
    result, sources = results["per_slice"]
    affine = result.static.affine.copy()
    affine[:3, 3] += affine[:3, 0] * 0.5  # half a slice
    shifted = replace(result, static=replace(result.static, affine=affine))
    with pytest.raises(ValueError, match="positions"):
        build_seg(shifted, sources, JOB, CREATED)
    with pytest.raises(ValueError, match="source series"):
        build_seg(result, [ds for ds in results["enhanced"][1]], JOB, CREATED)


# --- SR -------------------------------------------------------------------------------


def _key(m: hd.sr.Measurement) -> tuple[str, str | None, str | None, str]:
    derivation, method = m.derivation, m.method
    return (m.name.value, derivation.value if derivation else None,
            method.value if method else None, m.unit.value)


def _inferred_segment(m: hd.sr.Measurement) -> int | None:
    for item in m[0].get("ContentSequence", []):
        if item.RelationshipType == "INFERRED FROM":
            return int(item.ReferencedSOPSequence[0].ReferencedSegmentNumber)
    return None


def _expected_lesion(m, n_lesions: int) -> dict[tuple, tuple[float, int | None]]:
    bg, st, wm = n_lesions + 1, n_lesions + 2, n_lesions + 3
    out = {
        ("126039", "56851009", None, "{ratio}"): (m.tbr_max, bg),
        ("126039", "373098007", None, "{ratio}"): (m.tbr_mean, bg),
        ("126032", None, "126030", "cm3"): (m.volume_ml, None),
        ("DN-0101", "56851009", None, "{ratio}"): (m.ts_ratio, st),
        ("DN-0102", "56851009", None, "{ratio}"): (m.tn_ratio, wm),
    }
    for number, derivation in ((m.suv_max, "56851009"), (m.suv_mean, "373098007"),
                               (m.suv_peak, "126031")):
        if number is not None:
            out[("126401", derivation, "126410", "{SUVbw}g/ml")] = (number, None)
    return out


def _expected_dynamic(result: FdopaResult, region: str) -> dict[tuple, tuple[float | None, None]]:
    out: dict[tuple, tuple[float | None, None]] = {}
    if result.dynamic is None or region not in result.dynamic.tacs:
        return out
    for p in (p for p in result.dynamic.parameters if p.region == region):
        conv = rc.CONVENTION_CODES[p.convention].value
        out[("113069", None, conv, "min")] = (p.ttp_min, None)
        out[("DN-0114", None, conv, "s")] = (p.fit_from_s, None)
        out[("DN-0112", None, conv, "Bq/ml/s")] = (p.slope_bqml_per_s, None)
        out[("DN-0112", None, conv, "%/min")] = (p.slope_percent_per_min, None)
        if p.slope_suv_per_min is not None:
            out[("DN-0112", None, conv, "{SUVbw}g/ml/min")] = (p.slope_suv_per_min, None)
    if region == "tumour":
        for conv_name, ratio in result.dynamic.slope_ratios.items():
            out[("DN-0113", None, rc.CONVENTION_CODES[conv_name].value, "{ratio}")] = (
                ratio, None)
    return out


def _check_group(group: Any, expected: dict[tuple, Any]) -> None:
    got = {_key(m): (float(m.value), _inferred_segment(m)) for m in group.get_measurements()}
    assert len(got) == len(group.get_measurements()), "a measurement is repeated"
    assert set(got) == set(expected)
    for key, (number, segment) in expected.items():
        assert got[key][0] == pytest.approx(number, rel=1e-6), key
        assert got[key][1] == segment, key


def _read_sr(result: FdopaResult, sources: list[Dataset], **kwargs) -> hd.sr.Comprehensive3DSR:
    seg = build_seg(result, sources, JOB, CREATED)
    return hd.sr.Comprehensive3DSR.from_dataset(
        roundtrip(build_sr(result, sources, seg, JOB, CREATED, **kwargs)))


@pytest.mark.parametrize("case", ["per_slice", "enhanced", "no_suv", "no_lesion", "multifocal"])
def test_sr_reads_back_value_by_value(case: str, results: dict) -> None:
    result, sources = results[case]
    report: Any = _read_sr(result, sources).content
    n = len(result.lesions)
    volumetric = report.get_volumetric_roi_measurement_groups()
    assert len(volumetric) == n + 3
    for number, (group, m) in enumerate(zip(volumetric[:n], result.measures.lesions,
                                            strict=True), start=1):
        assert group.referenced_segment.referenced_segment_numbers == [number]
        _check_group(group, _expected_lesion(m, n))
    ref = result.measures.reference
    suv = {"background": ref.background_suv_mean, "striatum": ref.striatum_suv_max,
           "white-matter": ref.white_matter_suv_max}
    volume = {"background": ref.background_ml, "striatum": ref.striatum_ml,
              "white-matter": ref.white_matter_ml}
    for k, (kind, group) in enumerate(zip(suv, volumetric[n:], strict=True)):
        assert group.referenced_segment.referenced_segment_numbers == [n + 1 + k]
        expected: dict[tuple, tuple[float, int | None]] = {
            ("118565006", None, None, "ml"): (volume[kind], None)}
        if suv[kind] is not None:
            derivation = "373098007" if kind == "background" else "56851009"
            expected[("126401", derivation, "126410", "{SUVbw}g/ml")] = (suv[kind], None)
        if kind == "background" and result.suv.factor is not None:
            expected[("DN-0120", None, None, "{SUVbw}g/ml")] = (
                result.measures.threshold_units * result.suv.factor, None)
        _check_group(group, expected | _expected_dynamic(result, kind))
    tumour_groups = report.get_image_measurement_groups()
    if result.measures.tumour is None:
        assert tumour_groups == []
    else:
        (tumour,) = tumour_groups
        _check_group(tumour, _expected_lesion(result.measures.tumour, n)
                     | _expected_dynamic(result, "tumour"))


def _texts(ds: Dataset) -> dict[str, list[str]]:
    """Concept meaning to the TEXT and CODE values anywhere in the tree."""
    out: dict[str, list[str]] = {}
    for item in ds.get("ContentSequence", []):
        name = item.ConceptNameCodeSequence[0].CodeMeaning
        if item.ValueType == "TEXT":
            out.setdefault(name, []).append(str(item.TextValue))
        elif item.ValueType == "CODE":
            out.setdefault(name, []).append(str(item.ConceptCodeSequence[0].CodeMeaning))
        for key, values in _texts(item).items():
            out.setdefault(key, []).extend(values)
    return out


def test_sr_states_method_suv_flags_and_research_use(results: dict) -> None:
    result, sources = results["no_suv"]
    texts = _texts(_read_sr(result, sources))
    assert texts["SUV available"] == ["No"]
    assert texts["Why SUV is unavailable"] == ["patient weight missing"]
    assert texts["Tumour segmentation method"] == ["PET-only 3D U-Net"]
    assert "SUV unavailable: patient weight missing" in texts["Quality flag"]
    assert any("Research use, not for diagnosis" in t and "simulated" in t
               for t in texts["Comment"])
    assert any("frame start times (Genoa)" in t and "from 120 s" in t for t in texts["Comment"])
    assert texts["Measurable lesion (PET RANO, > 0.5 mL)"] == ["Yes", "Yes"]
    threshold = _texts(_read_sr(*results["enhanced"]))
    assert threshold["Tumour segmentation method"] == ["Threshold-only baseline"]
    assert threshold["Dynamic analysis note"] == ["no dynamic series"]


def test_sr_evidence_predecessors_and_determinism(results: dict) -> None:
    result, sources = results["per_slice"]
    seg = build_seg(result, sources, JOB, CREATED)
    previous = OutputRef("1.2.840.10008.5.1.4.1.1.88.34", "1.2.3.4", "1.2.3", sources[0]
                         .StudyInstanceUID)
    sr = roundtrip(build_sr(result, sources, seg, JOB, CREATED, previous_srs=[previous]))
    evidence = {str(i.ReferencedSOPInstanceUID) for s in
                sr.CurrentRequestedProcedureEvidenceSequence for series in
                s.ReferencedSeriesSequence for i in series.ReferencedSOPSequence}
    assert evidence == {str(ds.SOPInstanceUID) for ds in sources} | {str(seg.SOPInstanceUID)}
    predecessor = sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert predecessor.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == "1.2.3.4"
    assert sr.StudyInstanceUID == sources[0].StudyInstanceUID
    seg_again = build_seg(result, sources, JOB, CREATED)
    assert _bytes(seg_again) == _bytes(seg)  # a retried job sends the same objects
    assert _bytes(build_sr(result, sources, seg_again, JOB, CREATED)) == _bytes(
        build_sr(result, sources, seg, JOB, CREATED))
    assert _bytes(build_picture_report(result, sources, JOB, CREATED)) == _bytes(
        build_picture_report(result, sources, JOB, CREATED))


def _bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_sr_refuses_the_seg_of_another_result(results: dict) -> None:
    result, sources = results["per_slice"]
    other, other_sources = results["no_lesion"]
    with pytest.raises(ValueError, match="SEG"):
        build_sr(result, sources, build_seg(other, other_sources, JOB, CREATED), JOB, CREATED)


def test_sr_refuses_a_non_finite_number(results: dict) -> None:
    result, sources = results["per_slice"]
    broken = replace(result.measures.lesions[0], tbr_max=float("nan"))
    bad = replace(result, measures=replace(result.measures, lesions=(broken,)))
    with pytest.raises(AnalysisError) as info:
        build_sr(bad, sources, build_seg(bad, sources, JOB, CREATED), JOB, CREATED)
    assert info.value.code == "non_finite_result"


# --- picture, failure, validation -----------------------------------------------------


@pytest.mark.parametrize("case", ["per_slice", "no_suv", "no_lesion", "multifocal"])
def test_picture_report_is_an_rgb_secondary_capture(case: str, results: dict) -> None:
    result, sources = results[case]
    sc = roundtrip(build_picture_report(result, sources, JOB, CREATED))
    assert sc.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
    assert (sc.Rows, sc.Columns, sc.SamplesPerPixel) == (HEIGHT_PX, WIDTH_PX, 3)
    assert sc.StudyInstanceUID == sources[0].StudyInstanceUID
    assert sc.BurnedInAnnotation == "NO" and "simulated" in sc.ImageComments
    pixels = sc.pixel_array
    assert pixels.shape == (HEIGHT_PX, WIDTH_PX, 3) and pixels.std() > 10  # drawn, not blank
    banner = pixels[5:35, WIDTH_PX // 2 - 50: WIDTH_PX // 2 + 50].reshape(-1, 3).mean(axis=0)
    assert banner[0] > 120 and banner[1] < 110  # the red research-use banner


def test_table_rows_show_ratios_without_suv(results: dict) -> None:
    assert [r[0] for r in table_rows(results["multifocal"][0])] == [
        "Lesion 1", "Lesion 2", "All lesions"]
    rows = table_rows(results["no_suv"][0])
    assert rows[0][0] == "Lesion 1" and rows[0][1] == "n/a" and rows[0][2] != "n/a"
    assert rows[-1][0] == "All lesions"
    assert table_rows(results["no_lesion"][0]) == [["no lesion"] + ["-"] * 7]


def test_failure_sr_says_why(results: dict) -> None:
    result, sources = results["per_slice"]
    sr = roundtrip(build_failure_sr(sources, "registration failed", JOB, result.algorithm,
                                    CREATED))
    texts = _texts(sr)
    assert texts["Analysis not possible"] == ["registration failed"]
    assert failure_text("registration failed") in texts["Comment"]
    assert sr.StudyInstanceUID == sources[0].StudyInstanceUID
    with pytest.raises(ValueError):
        build_failure_sr([], "x", JOB, result.algorithm, CREATED)


def _objects(results: dict) -> Iterator[tuple[str, Dataset]]:
    for case in ("per_slice", "enhanced", "from_dynamic", "no_lesion", "no_suv", "multifocal"):
        result, sources = results[case]
        seg = build_seg(result, sources, JOB, CREATED)
        yield f"seg_{case}", seg
        yield f"sr_{case}", build_sr(result, sources, seg, JOB, CREATED)
    result, sources = results["per_slice"]
    yield "picture", build_picture_report(result, sources, JOB, CREATED)
    yield "failure", build_failure_sr(sources, "no static window", JOB, result.algorithm,
                                      CREATED)


def test_dciodvfy_reports_no_errors(results: dict, tmp_path: Path) -> None:
    failures = {name: errors for name, ds in _objects(results)
                if (errors := dciodvfy_errors(ds, tmp_path, name))}
    assert not failures, failures


def _rotation(degrees_z: float, degrees_x: float) -> np.ndarray:
    a, b = np.radians(degrees_z), np.radians(degrees_x)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


def oblique_study() -> SimulatedStudy:
    """A non-square, anisotropic, oblique per-slice series with box-shaped truth labels."""
    import SimpleITK as sitk

    from service.sim.fdopa.pet_writer import PetEncoding, PetSeriesInfo, build_pet_series

    shape = (7, 12, 18)
    rng = np.random.default_rng(5)
    values = rng.uniform(1000.0, 3000.0, shape).astype(np.float32)
    labels = np.zeros(shape, np.int16)
    labels[1:6, 1:11, 10:17] = 3
    labels[2:5, 3:6, 12:15] = 4
    labels[4:6, 7:10, 11:16] = 5
    labels[2:4, 4:8, 2:6] = 2
    values[labels == 2] *= 3.0
    image = sitk.GetImageFromArray(values)
    image.SetSpacing((2.0, 2.5, 3.2))
    image.SetOrigin((-20.0, -15.0, 30.0))
    info = PetSeriesInfo("oblique", 70.0, 180.0, 40, "M", "SIEMENS", "Biograph", "OSEM", 2,
                         "Brain FDOPA")
    datasets = build_pet_series([image], [600.0], [1200.0], info, PetEncoding(), False)
    rotation = _rotation(20.0, 15.0)
    for ds in datasets:  # rigidly rotate the whole stack about the LPS origin
        iop = np.array([float(v) for v in ds.ImageOrientationPatient])
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*rotation @ iop[:3],
                                                          *rotation @ iop[3:])]
        ipp = rotation @ np.array([float(v) for v in ds.ImagePositionPatient])
        ds.ImagePositionPatient = [f"{v:.6f}" for v in ipp]
    return SimulatedStudy(Path("."), datasets, [], labels)


def test_seg_on_an_oblique_non_square_grid() -> None:
    study = oblique_study()
    result = result_from_study(study)
    assert np.count_nonzero(np.abs(result.static.affine[:3, :3]) > 1e-3) > 3  # oblique
    sources = list(study.static)
    seg = hd.seg.Segmentation.from_dataset(roundtrip(build_seg(result, sources, JOB, CREATED)))
    got = _read_masks(seg, result, sources)
    np.testing.assert_array_equal(got, segment_masks(result))
    iop = [float(v) for v in sources[0].ImageOrientationPatient]
    np.testing.assert_allclose(
        seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0]
        .ImageOrientationPatient, iop, atol=1e-6)
    np.testing.assert_allclose(
        seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing,
        [float(v) for v in sources[0].PixelSpacing], rtol=1e-6)
    assert (seg.Rows, seg.Columns) == (12, 18)


def test_an_empty_reference_segment_is_referenced_by_its_source_series(tmp_path: Path) -> None:
    study = oblique_study()
    result = result_from_study(study)
    empty = np.zeros_like(result.reference.white_matter_zyx)
    result = replace(result, reference=replace(result.reference, white_matter_zyx=empty))
    sources = list(study.static)
    seg = build_seg(result, sources, JOB, CREATED)
    sr = build_sr(result, sources, seg, JOB, CREATED)
    report: Any = hd.sr.Comprehensive3DSR.from_dataset(roundtrip(sr)).content
    white_matter = report.get_volumetric_roi_measurement_groups()[-1]
    assert white_matter.referenced_segment.referenced_segment_numbers == [4]
    assert dciodvfy_errors(sr, tmp_path, "sr_empty") == []
    assert dciodvfy_errors(seg, tmp_path, "seg_empty") == []


def test_a_long_headline_is_shrunk_to_fit_the_picture() -> None:
    """Seen in a real analysis: 'T/S 1.20' was cut at the right edge at 20 pt."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from service.pipelines.fdopa_pet.render import HEADLINE_PT, fit_width

    fig = Figure(figsize=(WIDTH_PX / 100, HEIGHT_PX / 100), dpi=100)
    canvas = FigureCanvasAgg(fig)
    text = fig.text(0.02, 0.93, "[18F]FDOPA PET: 12 lesions (not measurable): MTV 123.45 cm3, "
                    "TBRmax 12.34, T/S 12.34", fontsize=HEADLINE_PT[0], fontweight="bold")
    renderer = canvas.get_renderer()
    assert text.get_window_extent(renderer).width > 0.96 * fig.bbox.width  # too wide at 20 pt
    fit_width(fig, text, 0.96)
    assert text.get_window_extent(renderer).width <= 0.96 * fig.bbox.width
    assert HEADLINE_PT[1] <= float(text.get_fontsize()) < HEADLINE_PT[0]
    short = fig.text(0.02, 0.5, "No PET-active lesion found", fontsize=HEADLINE_PT[0])
    fit_width(fig, short, 0.96)
    assert short.get_fontsize() == HEADLINE_PT[0]
