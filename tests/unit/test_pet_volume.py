"""PET volume reader against the FDOPA simulator's writer: geometry, frame timing, refusals."""

from __future__ import annotations

import copy

import highdicom as hd
import numpy as np
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset

from service.errors import AnalysisError
from service.imaging.pet_volume import static_window, volume_from_datasets
from service.sim.fdopa.kinetics import F18_HALF_LIFE_S, SCHEDULES
from service.sim.fdopa.pet_writer import (
    PetEncoding,
    PetSeriesInfo,
    build_legacy_enhanced,
    build_pet_series,
)

pytestmark = pytest.mark.no_storage  # never opens the node's rows: not rerun on PostgreSQL

INFO = PetSeriesInfo("vol-seed", 72.5, 180.0, 54, "F", "SIEMENS", "Biograph", "OSEM", 2,
                     "Brain FDOPA")
SHAPE_ZYX = (6, 12, 16)  # non-square in-plane
SPACING_XYZ = (2.0, 2.5, 3.0)
ORIGIN = (-20.0, -13.0, 40.0)
SCHED = SCHEDULES["rennes20"]


def _volume(seed: int) -> sitk.Image:
    arr = np.random.default_rng(seed).uniform(500.0, 9000.0, SHAPE_ZYX).astype(np.float32)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(SPACING_XYZ)
    img.SetOrigin(ORIGIN)
    return img


def _static(enc: PetEncoding | None = None) -> tuple[sitk.Image, list[Dataset]]:
    img = _volume(1)
    return img, build_pet_series([img], [600.0], [1200.0], INFO, enc or PetEncoding(), False)


def _dynamic(enc: PetEncoding) -> tuple[list[sitk.Image], list[Dataset]]:
    frames = [_volume(10 + i) for i in range(len(SCHED.durations_s))]
    return frames, build_pet_series(frames, list(SCHED.starts_s), list(SCHED.durations_s),
                                    INFO, enc, True)


def _check_geometry(vol) -> None:
    assert vol.shape_zyx == SHAPE_ZYX
    np.testing.assert_allclose(vol.affine[:3, 3], ORIGIN, atol=1e-4)
    np.testing.assert_allclose(vol.affine[:3, :3], [[0, 0, SPACING_XYZ[0]],
                                                    [0, SPACING_XYZ[1], 0],
                                                    [SPACING_XYZ[2], 0, 0]], atol=1e-5)
    np.testing.assert_allclose(vol.spacing_zyx_mm, SPACING_XYZ[::-1], atol=1e-5)
    back = vol.to_simpleitk()
    np.testing.assert_allclose(back.GetOrigin(), ORIGIN, atol=1e-4)
    np.testing.assert_allclose(back.GetSpacing(), SPACING_XYZ, atol=1e-5)
    np.testing.assert_allclose(back.GetDirection(), np.eye(3).ravel(), atol=1e-6)


@pytest.mark.parametrize("shuffle", [False, True])
def test_static_per_slice_geometry_and_values(shuffle: bool) -> None:
    img, datasets = _static(PetEncoding(signed_pixels=True))
    if shuffle:
        datasets = [datasets[i] for i in np.random.default_rng(0).permutation(len(datasets))]
    vol = volume_from_datasets(datasets)
    _check_geometry(vol)
    assert not vol.is_dynamic and len(vol.frames) == 1
    frame = vol.frames[0]
    assert (frame.start_s, frame.duration_s, frame.mid_s) == (0.0, 1200.0, 600.0)
    assert frame.volume_zyx.dtype == np.float32
    decay = 2.0 ** (-600.0 / F18_HALF_LIFE_S)  # BQML START: decay-corrected to the scan start
    np.testing.assert_allclose(frame.volume_zyx, sitk.GetArrayFromImage(img) * decay,
                               rtol=2e-3, atol=1.0)


def test_descending_slices_are_flipped_to_the_normal() -> None:
    img, datasets = _static()
    for ds in datasets:  # same voxels, slices listed top-down with a flipped column axis
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "-1", "0"]
        ds.ImagePositionPatient = [ds.ImagePositionPatient[0],
                                   str(ORIGIN[1] + SPACING_XYZ[1] * (SHAPE_ZYX[1] - 1)),
                                   ds.ImagePositionPatient[2]]
        arr = ds.pixel_array[::-1].copy()
        ds.PixelData = arr.tobytes()
    vol = volume_from_datasets(datasets)
    normal = np.cross([1, 0, 0], [0, -1, 0])
    assert vol.affine[:3, 0] @ normal > 0  # axis 0 runs along row x column
    world = sitk.Resample(vol.to_simpleitk(), img, sitk.Transform(), sitk.sitkNearestNeighbor)
    decay = 2.0 ** (-600.0 / F18_HALF_LIFE_S)
    np.testing.assert_allclose(sitk.GetArrayFromImage(world), sitk.GetArrayFromImage(img) * decay,
                               rtol=2e-3, atol=1.0)


@pytest.mark.parametrize("variant", ["mid", "start", "reversed"])
def test_dynamic_frames_and_timing(variant: str) -> None:
    enc = PetEncoding(frame_reference="start" if variant == "start" else "mid",
                      reversed_order=variant == "reversed")
    frames, datasets = _dynamic(enc)
    vol = volume_from_datasets(datasets[::-1] if variant == "mid" else datasets)
    _check_geometry(vol)
    assert vol.is_dynamic and len(vol.frames) == len(SCHED.durations_s)
    np.testing.assert_allclose(vol.starts_s, SCHED.starts_s, atol=1e-3)
    np.testing.assert_allclose(vol.durations_s, SCHED.durations_s)
    np.testing.assert_allclose(vol.mids_s, SCHED.mids_s, atol=1e-3)
    decay = 2.0 ** (-SCHED.starts_s[0] / F18_HALF_LIFE_S)
    for f in (0, 7, len(frames) - 1):
        np.testing.assert_allclose(vol.frames[f].volume_zyx,
                                   sitk.GetArrayFromImage(frames[f]) * decay, rtol=2e-3, atol=1.0)


def test_frame_reference_time_fallback_without_acquisition_time() -> None:
    _, datasets = _dynamic(PetEncoding(frame_reference="mid"))
    for ds in datasets:
        del ds.AcquisitionTime
    vol = volume_from_datasets(datasets)
    np.testing.assert_allclose(vol.starts_s, SCHED.starts_s, atol=1e-2)
    assert any("Frame Reference Time" in w for w in vol.warnings)


def test_legacy_converted_enhanced_static() -> None:
    img, singles = _static()
    vol = volume_from_datasets([build_legacy_enhanced(singles, INFO)])
    _check_geometry(vol)
    ref = volume_from_datasets(singles)
    np.testing.assert_allclose(vol.frames[0].volume_zyx, ref.frames[0].volume_zyx, rtol=1e-6)
    assert vol.frames[0].duration_s == pytest.approx(1200.0)


def test_multiframe_dynamic_split_by_frame_content() -> None:
    frames, singles = _dynamic(PetEncoding(reversed_order=True))
    enhanced = hd.legacy.LegacyConvertedEnhancedPETImage(
        singles, series_instance_uid=hd.UID(), series_number=5, sop_instance_uid=hd.UID(),
        instance_number=1)
    vol = volume_from_datasets([enhanced])
    _check_geometry(vol)
    ref = volume_from_datasets(singles)
    assert len(vol.frames) == len(ref.frames)
    np.testing.assert_allclose(vol.starts_s, SCHED.starts_s, atol=1e-3)
    for a, b in zip(vol.frames, ref.frames, strict=True):
        np.testing.assert_allclose(a.volume_zyx, b.volume_zyx, rtol=1e-6)


def test_static_window_from_dynamic_frames() -> None:
    frames, datasets = _dynamic(PetEncoding())
    vol = volume_from_datasets(datasets)
    window = static_window(vol, 300.0, 1200.0)  # the three 5-min frames of rennes20
    inside = [i for i, s in enumerate(SCHED.starts_s) if s >= 300.0]
    expected = np.mean([vol.frames[i].volume_zyx for i in inside], axis=0)
    np.testing.assert_allclose(window.volume_zyx, expected, rtol=1e-5)
    assert (window.start_s, window.duration_s) == (300.0, 900.0)
    with pytest.raises(AnalysisError, match="no dynamic frame") as err:
        static_window(vol, 2000.0, 2400.0)
    assert err.value.code == "missing_frames"


def _refused(datasets: list[Dataset], code: str, match: str) -> None:
    with pytest.raises(AnalysisError, match=match) as err:
        volume_from_datasets(datasets)
    assert err.value.code == code
    assert "SIM^" not in err.value.reason


def test_refusals_name_the_problem() -> None:
    _, static = _static()
    _refused(static[:2] + static[3:], "missing_slices", "missing slices")
    _refused([], "no_instances", "no instances")
    spaced = copy.deepcopy(static)
    spaced[2].PixelSpacing = ["2.6", "2.0"]
    _refused(spaced, "inconsistent_geometry", "inconsistent geometry")
    other = copy.deepcopy(static)
    other[0].SeriesInstanceUID = "1.2.3"
    _refused(other, "mixed_series", "more than one series")
    twice = static + [copy.deepcopy(ds) for ds in static]
    for ds in twice[len(static):]:
        ds.AcquisitionTime = "093000.00"
    _refused(twice, "mixed_frames", "static series with 2 time frames")
    _, dynamic = _dynamic(PetEncoding())
    n = SHAPE_ZYX[0]
    _refused(dynamic[n:], "missing_frames", "14 of 15 time frames")
    mixed = copy.deepcopy(dynamic)
    mixed[n + 1].AcquisitionTime = "095959.00"
    _refused(mixed, "mixed_frames", "one time frame has instances")
    no_time = copy.deepcopy(static)
    for ds in no_time:
        del ds.ActualFrameDuration
    _refused(no_time, "missing_timing", "Actual Frame Duration")


def _rotation(angles_deg: tuple[float, float, float]) -> np.ndarray:
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def test_oblique_stack_matches_simpleitk(tmp_path) -> None:
    """Oblique, non-square, anisotropic: where row/column order bugs show."""
    from service.sim.fdopa.pet_writer import write_series

    rot = _rotation((12.0, -7.0, 25.0))
    _, datasets = _static()
    for ds in datasets:
        ds.ImageOrientationPatient = [f"{v:.10f}" for v in np.concatenate(
            [rot[:, 0], rot[:, 1]])]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in rot @ np.array(
            [float(v) for v in ds.ImagePositionPatient])]
    vol = volume_from_datasets(datasets[::-1])
    np.testing.assert_allclose(vol.affine[:3, 3], rot @ np.array(ORIGIN), atol=1e-4)
    np.testing.assert_allclose(vol.affine[:3, 2], rot[:, 0] * SPACING_XYZ[0], atol=1e-5)
    np.testing.assert_allclose(vol.affine[:3, 1], rot[:, 1] * SPACING_XYZ[1], atol=1e-5)
    np.testing.assert_allclose(vol.affine[:3, 0], rot[:, 2] * SPACING_XYZ[2], atol=1e-5)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(p) for p in write_series(datasets, tmp_path)])
    theirs = reader.Execute()
    ours = vol.to_simpleitk()
    np.testing.assert_allclose(ours.GetOrigin(), theirs.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(ours.GetDirection(), theirs.GetDirection(), atol=1e-5)
    np.testing.assert_allclose(ours.GetSpacing(), theirs.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(theirs),
                               rtol=1e-5, atol=1e-3)


def test_decoded_pixels_are_not_kept_on_the_input_datasets() -> None:
    """pydicom's pixel_array cache is dropped once the volume is built (serve's peak RSS)."""
    frames, datasets = _dynamic(PetEncoding())
    vol = volume_from_datasets(datasets)
    assert all(getattr(ds, "_pixel_array", None) is None for ds in datasets)
    again = volume_from_datasets(datasets)  # the encoded Pixel Data is still there
    for a, b in zip(vol.frames, again.frames, strict=True):
        np.testing.assert_array_equal(a.volume_zyx, b.volume_zyx)
    assert len(vol.frames) == len(frames)
