"""FDOPA PET DICOM: geometry, SUV from every header variant, frame timing, dciodvfy."""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from service.sim.fdopa.kinetics import F18_HALF_LIFE_S, SCHEDULES
from service.sim.fdopa.pet_writer import (
    GE_CREATOR,
    INJECTION,
    PHILIPS_CREATOR,
    PetEncoding,
    PetSeriesInfo,
    build_pet_series,
    write_series,
)
from service.testing.peers import require_tool

pytestmark = pytest.mark.no_storage  # never opens the node's rows: not rerun on PostgreSQL

INFO = PetSeriesInfo("test-seed", 72.5, 180.0, 54, "F", "SIEMENS", "Biograph", "OSEM", 2,
                     "Brain FDOPA")
SHAPE_ZYX = (5, 12, 16)  # non-square in-plane
SPACING_XYZ = (2.0, 2.5, 3.0)  # anisotropic
ORIGIN = (-20.0, -13.0, 40.0)


def _volume(seed: int) -> sitk.Image:
    arr = np.random.default_rng(seed).uniform(500.0, 9000.0, SHAPE_ZYX).astype(np.float32)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(SPACING_XYZ)
    img.SetOrigin(ORIGIN)
    return img


def _parse_dt(date: str, time: str) -> dt.datetime:
    return dt.datetime.strptime(date + time.split(".")[0], "%Y%m%d%H%M%S")


def reference_suv(ds: pydicom.Dataset) -> np.ndarray:
    """SUVbw of one slice following the QIBA pseudo-code of the research note §3.5."""
    assert {"ATTN", "DECY"} <= set(ds.CorrectedImage)
    value = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    weight_g = float(ds.PatientWeight) * 1000.0
    if ds.Units == "GML":
        return value
    item = ds.RadiopharmaceuticalInformationSequence[0]
    dose = float(item.RadionuclideTotalDose)
    start = _parse_dt(ds.SeriesDate, item.RadiopharmaceuticalStartTime)
    if ds.DecayCorrection == "START":
        scan = _parse_dt(ds.SeriesDate, ds.SeriesTime)
        acquired = _parse_dt(ds.AcquisitionDate, ds.AcquisitionTime)
        if scan > acquired:  # post-processed series: GE private scan time, else acquisition
            ge = ds.private_block(0x0009, GE_CREATOR) if (0x0009, 0x0010) in ds else None
            scan = _parse_dt(ge[0x0D].value[:8], ge[0x0D].value[8:]) if ge else acquired
        elapsed = (scan - start).total_seconds()
        dose = dose * 2.0 ** (-elapsed / float(item.RadionuclideHalfLife))
    if ds.Units == "CNTS":
        return ds.pixel_array * float(ds.RescaleSlope) * float(
            ds.private_block(0x7053, PHILIPS_CREATOR)[0x00].value)
    assert ds.Units == "BQML"
    return value * weight_g / dose


VARIANTS = {
    "bqml_start": PetEncoding(),
    "bqml_admin_assay": PetEncoding("BQML", "ADMIN", assay_minutes_before_injection=9.5),
    "bqml_start_assay": PetEncoding("BQML", "START", assay_minutes_before_injection=12.0),
    "cnts_philips": PetEncoding("CNTS", "START", "start", True),
    "gml": PetEncoding("GML"),
    "ge_signed_postprocessed": PetEncoding(signed_pixels=True, series_time_after_scan_min=45.0),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_static_suv_and_geometry_read_back(name: str, tmp_path: Path) -> None:
    img = _volume(1)
    datasets = build_pet_series([img], [600.0], [1200.0], INFO, VARIANTS[name], dynamic=False)
    paths = write_series(datasets, tmp_path)
    suv_true = sitk.GetArrayFromImage(img) * (INFO.weight_kg * 1000.0) / (INFO.injected_mbq * 1e6)
    slices = sorted((pydicom.dcmread(p) for p in paths),
                    key=lambda d: float(d.ImagePositionPatient[2]))
    assert [float(d.ImagePositionPatient[2]) for d in slices] == pytest.approx(
        [ORIGIN[2] + SPACING_XYZ[2] * k for k in range(SHAPE_ZYX[0])])
    for k, ds in enumerate(slices):
        assert ds.Rows == SHAPE_ZYX[1] and ds.Columns == SHAPE_ZYX[2]
        assert [float(v) for v in ds.PixelSpacing] == [SPACING_XYZ[1], SPACING_XYZ[0]]
        np.testing.assert_allclose(reference_suv(ds), suv_true[k], rtol=2e-3,
                                   atol=2e-4 * suv_true.max())
    code = slices[0].RadiopharmaceuticalInformationSequence[0].RadiopharmaceuticalCodeSequence[0]
    assert (code.CodeValue, code.CodingSchemeDesignator) == ("5811000122108", "SCT")


def test_simpleitk_reads_the_static_series_in_patient_coordinates(tmp_path: Path) -> None:
    img = _volume(2)
    write_series(build_pet_series([img], [600.0], [1200.0], INFO, PetEncoding(), False), tmp_path)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path)))
    back = reader.Execute()
    assert back.GetSize() == img.GetSize()
    np.testing.assert_allclose(back.GetOrigin(), ORIGIN, atol=1e-4)
    np.testing.assert_allclose(back.GetSpacing(), SPACING_XYZ, atol=1e-4)
    decay = 2.0 ** (-600.0 / F18_HALF_LIFE_S)  # START: decay-corrected to the series start
    np.testing.assert_allclose(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(img) * decay,
                               rtol=2e-3, atol=1.0)


@pytest.mark.parametrize("variant", ["mid", "start", "reversed"])
def test_dynamic_frame_timing_reads_back_to_the_schedule(variant: str, tmp_path: Path) -> None:
    sched = SCHEDULES["rennes20"]
    frames = [_volume(i) for i in range(len(sched.durations_s))]
    enc = PetEncoding(frame_reference="start" if variant == "start" else "mid",
                      reversed_order=variant == "reversed")
    paths = write_series(build_pet_series(frames, list(sched.starts_s),
                                          list(sched.durations_s), INFO, enc, True), tmp_path)
    datasets = [pydicom.dcmread(p) for p in paths]
    n_slices = int(datasets[0].NumberOfSlices)
    assert int(datasets[0].NumberOfTimeSlices) == len(sched.durations_s)
    assert list(datasets[0].SeriesType) == ["DYNAMIC", "IMAGE"]
    by_frame: dict[int, pydicom.Dataset] = {}
    for ds in datasets:
        by_frame.setdefault((int(ds.ImageIndex) - 1) // n_slices, ds)
    series_start = _parse_dt(datasets[0].SeriesDate, datasets[0].SeriesTime)
    for f, ds in sorted(by_frame.items()):
        acq = (_parse_dt(ds.AcquisitionDate, ds.AcquisitionTime) - INJECTION).total_seconds()
        assert acq == pytest.approx(sched.starts_s[f])
        assert int(ds.ActualFrameDuration) == round(1000 * sched.durations_s[f])
        ref_s = float(ds.FrameReferenceTime) / 1000.0 + (series_start - INJECTION).total_seconds()
        expected = sched.starts_s[f] if variant == "start" else sched.mids_s[f]
        assert ref_s == pytest.approx(expected)
        k = (int(ds.ImageIndex) - 1) % n_slices  # SUV of this frame from its own header
        suv_true = sitk.GetArrayFromImage(frames[f])[k] * (INFO.weight_kg * 1000.0) / (
            INFO.injected_mbq * 1e6)
        np.testing.assert_allclose(reference_suv(ds), suv_true, rtol=2e-3,
                                   atol=2e-4 * suv_true.max())
    order = sorted(datasets, key=lambda d: int(d.InstanceNumber))
    first_index, last_index = int(order[0].ImageIndex), int(order[-1].ImageIndex)
    assert (first_index > last_index) == (variant == "reversed")


@pytest.mark.parametrize(
    "name", ["bqml_start", "cnts_philips", "gml", "ge_signed_postprocessed", "dynamic", "nac"]
)
def test_dciodvfy_reports_no_errors(name: str, tmp_path: Path) -> None:
    img = _volume(3)
    if name == "dynamic":
        datasets = build_pet_series([img, img], [0.0, 15.0], [15.0, 15.0], INFO, PetEncoding(),
                                    True)
    elif name == "nac":
        info = PetSeriesInfo(**{**INFO.__dict__, "attenuation_corrected": False})
        datasets = build_pet_series([img], [600.0], [1200.0], info, PetEncoding(), False)
    else:
        datasets = build_pet_series([img], [600.0], [1200.0], INFO, VARIANTS[name], False)
    path = write_series(datasets[:1], tmp_path)[0]
    out = subprocess.run([require_tool("dciodvfy"), str(path)], capture_output=True, text=True, check=False)
    errors = [line for line in (out.stdout + out.stderr).splitlines() if "Error" in line]
    assert not errors, errors


@pytest.mark.parametrize("reversed_order", [False, True])
def test_highdicom_volume_reader_gives_the_same_volume(reversed_order: bool) -> None:
    import highdicom as hd

    img = _volume(4)
    enc = PetEncoding(reversed_order=reversed_order)
    datasets = build_pet_series([img], [600.0], [1200.0], INFO, enc, dynamic=False)
    vol = hd.get_volume_from_series(datasets[::-1]).to_patient_orientation("LPH")
    assert vol.position == pytest.approx(ORIGIN, abs=1e-4)
    assert vol.spacing == pytest.approx(SPACING_XYZ, abs=1e-4)  # (x, y, z) after LPH
    decay = 2.0 ** (-600.0 / F18_HALF_LIFE_S)
    expected_xyz = np.transpose(sitk.GetArrayFromImage(img), (2, 1, 0)) * decay
    np.testing.assert_allclose(vol.array, expected_xyz, rtol=2e-3, atol=1.0)


def test_legacy_converted_enhanced_pet_reads_back_and_validates(tmp_path: Path) -> None:
    import highdicom as hd

    from service.sim.fdopa.pet_writer import build_legacy_enhanced

    img = _volume(5)
    singles = build_pet_series([img], [600.0], [1200.0], INFO, PetEncoding(), dynamic=False)
    path = write_series([build_legacy_enhanced(singles, INFO)], tmp_path)[0]
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == pydicom.uid.LegacyConvertedEnhancedPETImageStorage
    assert int(ds.NumberOfFrames) == SHAPE_ZYX[0]
    vol = hd.imread(str(path)).get_volume().to_patient_orientation("LPH")
    assert vol.position == pytest.approx(ORIGIN, abs=1e-4)
    decay = 2.0 ** (-600.0 / F18_HALF_LIFE_S)
    np.testing.assert_allclose(vol.array, np.transpose(sitk.GetArrayFromImage(img), (2, 1, 0))
                               * decay, rtol=2e-3, atol=1.0)
    out = subprocess.run([require_tool("dciodvfy"), str(path)], capture_output=True, text=True, check=False)
    errors = [line for line in (out.stdout + out.stderr).splitlines() if "Error" in line]
    assert not errors, errors


def test_header_objects_name_the_bad_argument() -> None:
    with pytest.raises(ValueError, match="units"):
        PetEncoding(units="SUV")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="assay_minutes_before_injection"):
        PetEncoding(assay_minutes_before_injection=-1.0)
    with pytest.raises(ValueError, match="weight_kg"):
        PetSeriesInfo(**{**INFO.__dict__, "weight_kg": 0.0})
