"""FDOPA dynamic glue: VOIs onto the dynamic grid, the time origin, the curves."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from pydicom.dataset import Dataset

from service.errors import AnalysisError
from service.imaging.pet_volume import PetFrame, PetVolume
from service.imaging.suv import SuvScale
from service.pipelines.fdopa_pet.curves import (
    analyse_study_dynamic,
    injection_datetime,
    resample_mask,
)
from service.pipelines.fdopa_pet.result import Lesion, ReferenceRegions

pytestmark = pytest.mark.no_storage  # never opens the node's rows: not rerun on PostgreSQL

T0 = dt.datetime(2026, 3, 2, 9, 0, 0)
SUV = SuvScale(0.001, 1.0, 0.001, "BQML, START, series time")
STARTS = (0.0, 15.0, 60.0, 120.0, 300.0)
DURATIONS = (15.0, 45.0, 60.0, 180.0, 300.0)
# hand-made curves: tumour peaks in frame 3 then falls, striatum rises, background flat
TACS = {"tumour": (100.0, 5000.0, 9000.0, 8000.0, 7000.0),
        "striatum": (50.0, 3000.0, 5000.0, 6000.0, 7000.0),
        "background": (40.0, 2000.0, 3000.0, 3000.0, 3000.0)}


def _affine(spacing_mm: float) -> np.ndarray:
    a = np.eye(4)
    a[:3, :3] = np.diag([spacing_mm] * 3)[:, ::-1]  # index (z, y, x) -> LPS (x, y, z)
    return a


def _box(shape: tuple[int, int, int], spacing: float, lo_mm: float, hi_mm: float,
         axis_shift_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    """Voxels whose centres lie in [lo, hi] mm along every axis (shifted per axis)."""
    out = np.ones(shape, bool)
    for axis, n in enumerate(shape):
        c = np.arange(n) * spacing - axis_shift_mm[axis]
        inside = (c >= lo_mm) & (c <= hi_mm)
        out &= inside.reshape([-1 if a == axis else 1 for a in range(3)])
    return out


def _regions(shape: tuple[int, int, int], spacing: float) -> dict[str, np.ndarray]:
    return {"tumour": _box(shape, spacing, 10.0, 28.0),
            "striatum": _box(shape, spacing, 10.0, 28.0, (0.0, 0.0, 24.0)),
            "background": _box(shape, spacing, 10.0, 28.0, (0.0, 24.0, 0.0))}


def _volume(shape: tuple[int, int, int], spacing: float, dynamic: bool,
            first: dt.datetime = T0, frame_of_reference: str = "1.2.3") -> PetVolume:
    regions = _regions(shape, spacing)
    frames = []
    for f, (start, dur) in enumerate(zip(STARTS if dynamic else (600.0,),
                                         DURATIONS if dynamic else (1200.0,), strict=True)):
        vol = np.full(shape, 10.0, np.float32)
        for name, mask in regions.items():
            vol[mask] = TACS[name][f] if dynamic else 1.0
        frames.append(PetFrame(start, dur, start + dur / 2, vol))
    return PetVolume(tuple(frames), _affine(spacing), "1.2.4" if dynamic else "1.2.5",
                     frame_of_reference, dynamic, first)


def _study(shape: tuple[int, int, int] = (30, 30, 30), spacing: float = 2.0
           ) -> tuple[PetVolume, list[Lesion], ReferenceRegions]:
    static = _volume(shape, spacing, False)
    r = _regions(shape, spacing)
    return static, [Lesion(1, r["tumour"])], ReferenceRegions(
        "left", "test", r["striatum"], r["background"], r["background"])


def test_on_one_grid_the_curves_are_the_region_means() -> None:
    static, lesions, reference = _study()
    dynamic = _volume((30, 30, 30), 2.0, True)
    result = analyse_study_dynamic(dynamic, static, lesions, reference, SUV, injection=T0)
    assert result.warnings == ()
    for name, tac in TACS.items():
        np.testing.assert_allclose(result.tacs[name], tac)
    assert result.get("tumour").ttp_s == 60.0 and result.get("striatum").ttp_s == 300.0
    assert result.get("tumour", "mid").ttp_s == 90.0
    np.testing.assert_allclose(result.starts_s, STARTS)
    tumour = result.get("tumour")  # fit from 120 s: frames starting at 120 and 300 s
    assert tumour.fit_frames == 2 and tumour.slope_units_per_s == pytest.approx(-1000.0 / 180.0)
    assert tumour.slope_suv_per_min == pytest.approx(-1000.0 / 180.0 * 60.0 * 0.001)
    assert result.slope_ratios["start"] == pytest.approx((-1000.0 / 180.0) / (1000.0 / 180.0))


def test_masks_are_resampled_by_nearest_neighbour_onto_another_dynamic_grid() -> None:
    static, lesions, reference = _study()
    dynamic = _volume((15, 15, 15), 4.0, True)
    result = analyse_study_dynamic(dynamic, static, lesions, reference, SUV, injection=T0)
    assert any("resampled" in w for w in result.warnings)
    for name, tac in TACS.items():
        np.testing.assert_allclose(result.tacs[name], tac)
    moved = resample_mask(lesions[0].mask_zyx, static.affine, dynamic)
    assert moved.shape == (15, 15, 15) and moved.sum() == 5**3  # centres 12..28 mm every 4 mm
    assert np.array_equal(moved, _regions((15, 15, 15), 4.0)["tumour"])


def test_time_origin_rules() -> None:
    static, lesions, reference = _study()
    dynamic = _volume((30, 30, 30), 2.0, True)
    unknown = analyse_study_dynamic(dynamic, static, lesions, reference, SUV)
    assert "injection time unknown" in unknown.warnings[0]
    np.testing.assert_allclose(unknown.starts_s, STARTS)
    # recorded start 10 min before the first frame, but the bolus arrives in frame 1:
    # the recorded time is a dose-assay time, the acquisition started at injection
    assay = analyse_study_dynamic(dynamic, static, lesions, reference, SUV,
                                  injection=T0 - dt.timedelta(minutes=10))
    assert "dose-assay" in assay.warnings[0]
    np.testing.assert_allclose(assay.starts_s, STARTS)
    early = analyse_study_dynamic(dynamic, static, lesions, reference, SUV,
                                  injection=T0 + dt.timedelta(seconds=30))
    assert "after the first frame start" in early.warnings[0]
    within = analyse_study_dynamic(dynamic, static, lesions, reference, SUV,
                                   injection=T0 - dt.timedelta(seconds=10))
    assert within.warnings == ()
    np.testing.assert_allclose(within.starts_s, np.array(STARTS) + 10.0)


def test_a_late_start_acquisition_keeps_the_recorded_injection_time() -> None:
    static, lesions, reference = _study()
    dynamic = _volume((30, 30, 30), 2.0, True)
    flat = tuple(PetFrame(f.start_s, f.duration_s, f.mid_s,
                          np.where(f.volume_zyx > 0, 3000.0, 0.0).astype(np.float32))
                 for f in dynamic.frames)
    late = PetVolume(flat, dynamic.affine, "1.2.4", "1.2.3", True, T0)
    result = analyse_study_dynamic(late, static, [], reference, SUV,
                                   injection=T0 - dt.timedelta(minutes=10))
    np.testing.assert_allclose(result.starts_s, np.array(STARTS) + 600.0)
    assert "starts 600 s after injection" in result.warnings[0]
    assert "tumour" not in result.tacs and result.slope_ratios == {}


def test_another_frame_of_reference_is_refused() -> None:
    static, lesions, reference = _study()
    other = _volume((30, 30, 30), 2.0, True, frame_of_reference="9.9.9")
    with pytest.raises(AnalysisError) as err:
        analyse_study_dynamic(other, static, lesions, reference, SUV)
    assert err.value.code == "dynamic_frame_of_reference"


def test_injection_datetime_from_the_header() -> None:
    item = Dataset()
    item.RadiopharmaceuticalStartTime = "083000"
    ds = Dataset()
    ds.SeriesDate = "20260302"
    ds.RadiopharmaceuticalInformationSequence = [item]
    assert injection_datetime(ds) == dt.datetime(2026, 3, 2, 8, 30)
    item.RadiopharmaceuticalStartDateTime = "20260302083115"
    assert injection_datetime(ds) == dt.datetime(2026, 3, 2, 8, 31, 15)
    assert injection_datetime(Dataset()) is None
