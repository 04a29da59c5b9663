"""True Enhanced PET correction flags and Siemens T_ave, on hand-made headers.

* Enhanced PET (PS3.3 C.8.22.6 Enhanced PET Corrections Module): Attenuation
  / Decay Corrected YES/NO and Decay Correction DateTime stand for Corrected
  Image, Decay Correction and the decay reference; Units come from the Real
  World Value Mapping (CID 84, UCUM); a non-AC series is ignored by the gate
  and has no SUV.
* Siemens post-processed START series: the scan start is back-computed as
  acquisition + T_ave - Frame Reference Time (MIRP ``suv.py``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import EnhancedPETImageStorage

from service.imaging.pet_header import enhanced_pet_equivalents, series_attributes
from service.imaging.suv import count_average_time_s, suv_scale
from service.pipelines.fdopa_pet.gate import classify_series

HALF_LIFE_S = 6586.2
DOSE_BQ = 180e6
WEIGHT_KG = 72.5


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _radiopharmaceutical(start: str) -> Sequence:
    item = Dataset()
    item.RadiopharmaceuticalStartDateTime = start
    item.RadionuclideTotalDose = DOSE_BQ
    item.RadionuclideHalfLife = HALF_LIFE_S
    item.RadiopharmaceuticalCodeSequence = [_code("5811000122108", "SCT", "Fluoro-L-dopa F^18^")]
    item.RadionuclideCodeSequence = [_code("77004003", "SCT", "^18^Fluorine")]
    return Sequence([item])


def enhanced_pet(ac: str = "YES", decay: str = "YES", units: str = "Bq/ml",
                 times: tuple[str, ...] = ("20260101091000",) * 3) -> Dataset:
    """An Enhanced PET Image header (no pixels): one frame per entry of ``times``."""
    ds = Dataset()
    ds.SOPClassUID = EnhancedPETImageStorage
    ds.Modality, ds.Manufacturer = "PT", "SIEMENS"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.SeriesDate, ds.SeriesTime = "20260101", "094500"  # written after the scan: not used
    ds.PatientWeight = WEIGHT_KG
    ds.AttenuationCorrected, ds.DecayCorrected, ds.ScatterCorrected = ac, decay, "YES"
    ds.RandomsCorrected, ds.CountsSource = "NO", "EMISSION"
    if decay == "YES":
        ds.DecayCorrectionDateTime = "20260101090500"  # 5 min after the injection
    ds.RadiopharmaceuticalInformationSequence = _radiopharmaceutical("20260101090000")
    mapping = Dataset()
    mapping.MeasurementUnitsCodeSequence = [_code(units, "UCUM", units)]
    shared = Dataset()
    shared.RealWorldValueMappingSequence = [mapping]
    ds.SharedFunctionalGroupsSequence = [shared]
    frames = []
    for index, when in enumerate(times):
        content = Dataset()
        content.FrameAcquisitionDateTime = when
        content.TemporalPositionIndex = sorted(set(times)).index(when) + 1
        content.InStackPositionNumber = index + 1
        frame = Dataset()
        frame.FrameContentSequence = [content]
        frames.append(frame)
    ds.PerFrameFunctionalGroupsSequence = frames
    return ds


def test_enhanced_flags_become_the_classic_attributes() -> None:
    found = enhanced_pet_equivalents(enhanced_pet())
    assert found == {"CorrectedImage": ["DECY", "ATTN", "SCAT"], "DecayCorrection": "START",
                     "Units": "BQML", "SeriesType": ["STATIC", "IMAGE"]}
    dynamic = enhanced_pet(times=("20260101090000", "20260101090100", "20260101090100"))
    assert enhanced_pet_equivalents(dynamic)["SeriesType"] == ["DYNAMIC", "IMAGE"]
    assert enhanced_pet_equivalents(enhanced_pet(decay="NO"))["DecayCorrection"] == "NONE"
    assert enhanced_pet_equivalents(Dataset()) == {}  # per-slice, Legacy Converted: nothing
    flat = series_attributes(enhanced_pet())
    assert list(flat.CorrectedImage) == ["DECY", "ATTN", "SCAT"]
    assert "PerFrameFunctionalGroupsSequence" not in flat


def test_enhanced_suv_is_decay_corrected_to_the_decay_correction_datetime() -> None:
    scale = suv_scale(enhanced_pet())
    # values decay-corrected to 09:05:00, injection 09:00:00 (not the 09:45 series time)
    expected = WEIGHT_KG * 1000.0 / (DOSE_BQ * 2.0 ** (-300.0 / HALF_LIFE_S))
    assert scale.factor == pytest.approx(expected, rel=1e-9)
    assert scale.method == "BQML, START, Decay Correction DateTime (Enhanced PET)"
    gml = suv_scale(enhanced_pet(units="{SUVbw}g/ml"))
    assert (gml.factor, gml.method) == (1.0, "GML (values are SUVbw)")


def test_non_attenuation_corrected_enhanced_pet_is_ignored_without_suv() -> None:
    nac = enhanced_pet(ac="NO")
    decision = classify_series(nac)
    assert (decision.role, decision.reason) == (
        "ignored", "not attenuation-corrected (Corrected Image lacks ATTN)")
    assert suv_scale(nac).reason == "no SUV: image not corrected for ATTN"
    assert suv_scale(enhanced_pet(decay="NO")).reason == "no SUV: image not corrected for DECY"
    assert classify_series(enhanced_pet()).role == "static"
    dynamic = enhanced_pet(times=("20260101090000", "20260101090100"))
    assert classify_series(dynamic).role == "dynamic"


def test_count_average_time_against_numeric_integration() -> None:
    lam = math.log(2.0) / HALF_LIFE_S
    for duration_s in (60.0, 600.0, 1200.0, 3600.0):
        t = np.linspace(0.0, duration_s, 200001)
        mean_rate = np.trapezoid(np.exp(-lam * t), t) / duration_s
        assert count_average_time_s(duration_s, HALF_LIFE_S) == pytest.approx(
            -math.log(mean_rate) / lam, abs=1e-3)
    assert count_average_time_s(1e-3, HALF_LIFE_S) == pytest.approx(5e-4, rel=1e-6)


def _siemens_window(manufacturer: str) -> Dataset:
    """Static 10-30 min p.i. reconstructed from a list-mode scan started at 09:01 (injection 09:00)."""
    ds = Dataset()
    ds.Modality, ds.Manufacturer, ds.Units = "PT", manufacturer, "BQML"
    ds.CorrectedImage, ds.DecayCorrection = ["ATTN", "DECY"], "START"
    ds.SeriesDate, ds.SeriesTime = "20260101", "101500"  # reconstructed at 10:15
    ds.AcquisitionDate, ds.AcquisitionTime = "20260101", "091000"
    ds.ActualFrameDuration = 1_200_000
    ds.FrameReferenceTime = round((540.0 + count_average_time_s(1200.0, HALF_LIFE_S)) * 1000, 1)
    ds.PatientWeight = WEIGHT_KG
    ds.RadiopharmaceuticalInformationSequence = _radiopharmaceutical("20260101090000")
    return ds


def test_siemens_post_processed_window_is_decayed_to_the_scan_start() -> None:
    scale = suv_scale(_siemens_window("SIEMENS"))
    expected = WEIGHT_KG * 1000.0 / (DOSE_BQ * 2.0 ** (-60.0 / HALF_LIFE_S))
    assert scale.factor == pytest.approx(expected, rel=1e-6)
    assert scale.method == "BQML, START, Siemens T_ave back-computation (post-processed series)"
    # another vendor's Frame Reference Time convention is unknown: the earliest acquisition,
    # here 9 min after the scan start, which inflates SUV by 2^(540 s / T1/2) = 5.8 %
    other = suv_scale(_siemens_window("Philips Medical Systems"))
    assert other.method == "BQML, START, acquisition time (post-processed series)"
    assert other.factor == pytest.approx(scale.factor * 2.0 ** (540.0 / HALF_LIFE_S), rel=1e-6)
    broken = _siemens_window("SIEMENS")
    broken.FrameReferenceTime = -3_600_000.0  # would put the scan start after the frame
    assert suv_scale(broken).method.endswith("acquisition time (post-processed series)")
