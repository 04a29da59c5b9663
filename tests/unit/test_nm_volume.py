"""NM volume reader: every encoding variant lands the marker at the right LPS point."""

from __future__ import annotations

import copy

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from service.errors import AnalysisError
from service.imaging.nm_volume import volume_from_datasets
from service.sim.nm_writer import STORED_MAX, EncodingVariant, build_nm_datasets
from service.testing.nmdata import (
    CAMERA,
    SUBJECT,
    marker_image,
    marker_lps_mm,
    rotation_lps,
    write_marker_study,
)

pytestmark = pytest.mark.no_storage  # never opens the node's rows: not rerun on PostgreSQL

GEOMETRIES = {
    "axial": {},
    # oblique, non-square pixels, non-cubic matrix: where row/column order bugs show
    "oblique_nonsquare": {
        "shape_xyz": (64, 48, 40),
        "spacing_mm": (3.3, 2.2, 4.8),
        "direction": rotation_lps((12.0, -7.0, 25.0)),
        "origin_mm": (-90.0, -60.0, -40.0),
    },
}


def _read(paths: list) -> object:
    return volume_from_datasets([pydicom.dcmread(p) for p in paths])


def _on_grid(image: sitk.Image, reference: sitk.Image) -> np.ndarray:
    """``image`` sampled at ``reference``'s voxel centres (nearest neighbour)."""
    out = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, -1.0)
    return sitk.GetArrayFromImage(out)


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
@pytest.mark.parametrize("variant", list(EncodingVariant))
def test_variant_round_trip_in_patient_coordinates(tmp_path, variant, geometry):
    image = marker_image(**GEOMETRIES[geometry])
    paths = write_marker_study(tmp_path, variant, image=image)
    vol = _read(paths)
    assert vol.n_instances == len(paths)
    assert vol.warnings == ()
    np.testing.assert_allclose(marker_lps_mm(vol.image), marker_lps_mm(image), atol=1e-3)
    assert np.allclose(sorted(vol.image.GetSpacing()), sorted(image.GetSpacing()), atol=1e-4)
    assert np.linalg.det(np.reshape(vol.image.GetDirection(), (3, 3))) == pytest.approx(1.0)
    ref = sitk.GetArrayFromImage(image)
    got = _on_grid(vol.image, image)
    assert got.min() >= 0  # every reference voxel centre is inside the read volume
    gain = 1.0 if variant is EncodingVariant.RESCALED else STORED_MAX / float(ref.max())
    np.testing.assert_allclose(got / gain, ref, atol=0.6 / gain + 1e-3 * float(ref.max()))


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
@pytest.mark.parametrize("variant", list(EncodingVariant))
def test_agrees_with_simpleitk_reader(tmp_path, variant, geometry):
    """GDCM (through SimpleITK) reads NM geometry too: both must give the same voxels."""
    image = marker_image(**GEOMETRIES[geometry])
    paths = write_marker_study(tmp_path, variant, image=image)
    if variant is EncodingVariant.PER_SLICE:
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path)))
        theirs = reader.Execute()
    else:
        theirs = sitk.ReadImage(str(paths[0]))
    ours = _read(paths).image
    if variant in (EncodingVariant.MULTIFRAME, EncodingVariant.PER_SLICE):
        np.testing.assert_allclose(ours.GetOrigin(), theirs.GetOrigin(), atol=1e-3)
        np.testing.assert_allclose(ours.GetDirection(), theirs.GetDirection(), atol=1e-5)
    np.testing.assert_allclose(sorted(ours.GetSpacing()), sorted(theirs.GetSpacing()), atol=1e-4)
    resampled = _on_grid(sitk.Cast(theirs, sitk.sitkFloat32), ours)
    np.testing.assert_allclose(resampled, sitk.GetArrayFromImage(ours), rtol=1e-5, atol=1e-4)


def test_left_handed_input_reads_back_right_handed(tmp_path):
    flip_z = np.diag([1.0, 1.0, -1.0])
    image = marker_image(direction=rotation_lps((0, 0, 15)) @ flip_z, origin_mm=(-100, -90, 120))
    vol = _read(write_marker_study(tmp_path, EncodingVariant.MULTIFRAME, image=image))
    np.testing.assert_allclose(marker_lps_mm(vol.image), marker_lps_mm(image), atol=1e-3)
    assert np.reshape(vol.image.GetDirection(), (3, 3))[2, 2] == pytest.approx(1.0)


def _small(variant=EncodingVariant.MULTIFRAME, **kw):
    image = marker_image(shape_xyz=(32, 32, 16), **kw)
    return build_nm_datasets(image, CAMERA, SUBJECT, variant, "small")


def test_slice_vector_order_is_trusted():
    (ds,) = _small()
    reference = volume_from_datasets([ds]).image
    frames = ds.pixel_array.copy()
    order = np.random.default_rng(3).permutation(frames.shape[0])
    ds.PixelData = frames[order].tobytes()
    ds.SliceVector = [int(i) + 1 for i in order]
    shuffled = volume_from_datasets([ds]).image
    np.testing.assert_array_equal(sitk.GetArrayFromImage(shuffled), sitk.GetArrayFromImage(reference))


def test_per_slice_order_does_not_matter():
    datasets = _small(EncodingVariant.PER_SLICE)
    a = volume_from_datasets(datasets).image
    b = volume_from_datasets(datasets[::-1]).image
    assert a.GetOrigin() == b.GetOrigin()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))


def test_identical_duplicate_dropped_with_warning():
    datasets = _small(EncodingVariant.PER_SLICE)
    twin = copy.deepcopy(datasets[5])
    twin.SOPInstanceUID = pydicom.uid.generate_uid()
    vol = volume_from_datasets([*datasets, twin])
    assert vol.image.GetSize()[2] == 16
    assert any("duplicate" in w for w in vol.warnings)


def _expect(code: str, datasets, match: str) -> None:
    with pytest.raises(AnalysisError, match=match) as err:
        volume_from_datasets(datasets)
    assert err.value.code == code


def test_conflicting_duplicate_refused():
    datasets = _small(EncodingVariant.PER_SLICE)
    twin = copy.deepcopy(datasets[5])
    twin.PixelData = (twin.pixel_array // 2).astype(np.uint16).tobytes()
    _expect("duplicate_slices", [*datasets, twin], "^duplicate slices")


def test_missing_slice_reported():
    datasets = _small(EncodingVariant.PER_SLICE)
    _expect("missing_slices", datasets[:7] + datasets[8:], "^missing slices: 1 gap")


def test_irregular_spacing_refused():
    datasets = _small(EncodingVariant.PER_SLICE)
    item = datasets[7].DetectorInformationSequence[0]
    item.ImagePositionPatient[2] = float(item.ImagePositionPatient[2]) + 1.7
    _expect("inconsistent_slices", datasets, "irregular slice spacing")


def test_sheared_stack_refused():
    datasets = _small(EncodingVariant.PER_SLICE)
    for k, ds in enumerate(datasets):
        item = ds.DetectorInformationSequence[0]
        item.ImagePositionPatient[0] = float(item.ImagePositionPatient[0]) + 0.8 * k
    _expect("inconsistent_slices", datasets, "not on one line")


def test_mixed_orientation_refused():
    datasets = _small(EncodingVariant.PER_SLICE)
    datasets[3].DetectorInformationSequence[0].ImageOrientationPatient = [0, 1, 0, 1, 0, 0]
    _expect("inconsistent_slices", datasets, "orientation")


def test_missing_geometry_refused():
    (ds,) = _small()
    del ds.DetectorInformationSequence[0].ImagePositionPatient
    _expect("missing_geometry", [ds], "^missing geometry: no Image Orientation")
    (ds,) = _small()
    del ds.PixelSpacing
    _expect("missing_geometry", [ds], "Pixel Spacing")
    (ds,) = _small()
    del ds.SpacingBetweenSlices, ds.SliceThickness
    _expect("missing_geometry", [ds], "Spacing Between Slices")


def test_slice_thickness_fallback_is_reported():
    (ds,) = _small()
    del ds.SpacingBetweenSlices
    vol = volume_from_datasets([ds])
    assert vol.image.GetSpacing()[2] == pytest.approx(4.0)
    assert any("Slice Thickness" in w for w in vol.warnings)


def test_absurd_sizes_refused():
    (ds,) = _small()
    ds.Rows = ds.Columns = 1
    _expect("absurd_size", [ds], "^absurd size: 1x1 pixels")
    (ds,) = _small()
    ds.PixelSpacing = [0.01, 0.01]
    _expect("absurd_size", [ds], "pixel spacing")
    datasets = _small(EncodingVariant.PER_SLICE)
    _expect("absurd_size", datasets[:3], "only 3 slice")


def test_mixed_series_and_empty_refused():
    datasets = _small(EncodingVariant.PER_SLICE)
    datasets[2].SeriesInstanceUID = pydicom.uid.generate_uid()
    _expect("mixed_series", datasets, "more than one series")
    _expect("no_instances", [], "no instances")


def test_undecodable_pixels_refused():
    (ds,) = _small(EncodingVariant.RLE)
    ds.PixelData = b"\x00" * 64
    _expect("pixel_decode_failed", [ds], "could not be decoded")


def test_large_matrix_fine_voxels():
    image = marker_image(shape_xyz=(256, 256, 12), spacing_mm=(2.0, 2.0, 2.2))
    (ds,) = build_nm_datasets(image, CAMERA, SUBJECT, EncodingVariant.RLE, "big")
    vol = volume_from_datasets([ds])
    assert vol.image.GetSize() == (256, 256, 12)
    np.testing.assert_allclose(marker_lps_mm(vol.image), marker_lps_mm(image), atol=1e-3)


def test_signed_pixels_with_negative_values():
    (ds,) = _small()
    stored = ds.pixel_array.astype(np.int32) - 100
    ds.PixelRepresentation = 1
    ds.PixelData = stored.astype(np.int16).tobytes()
    got = sitk.GetArrayFromImage(volume_from_datasets([ds]).image)
    np.testing.assert_array_equal(got, stored.astype(np.float32))


def test_per_instance_rescale_is_applied():
    datasets = _small(EncodingVariant.PER_SLICE)
    reference = sitk.GetArrayFromImage(volume_from_datasets(datasets).image)
    ds = datasets[3]
    ds.PixelData = (ds.pixel_array // 2).astype(np.uint16).tobytes()
    ds.RescaleSlope, ds.RescaleIntercept = "2", "1"
    got = sitk.GetArrayFromImage(volume_from_datasets(datasets).image)
    np.testing.assert_array_equal(np.delete(got, 3, axis=0), np.delete(reference, 3, axis=0))
    assert np.max(np.abs(got[3] - reference[3])) <= 1.0


def test_top_level_geometry_used_with_warning():
    datasets = _small(EncodingVariant.PER_SLICE)
    reference = volume_from_datasets(datasets).image
    for ds in datasets:
        item = ds.DetectorInformationSequence[0]
        ds.ImagePositionPatient = item.ImagePositionPatient
        ds.ImageOrientationPatient = item.ImageOrientationPatient
        del item.ImagePositionPatient, item.ImageOrientationPatient
    vol = volume_from_datasets(datasets)
    assert vol.image.GetOrigin() == reference.GetOrigin()
    assert any("top-level" in w for w in vol.warnings)


def test_bad_slice_vector_and_frame_count_refused():
    (ds,) = _small()
    ds.SliceVector = [1] * 16
    _expect("inconsistent_slices", [ds], "Slice Vector does not number 16")
    (ds,) = _small()
    ds.NumberOfFrames = 15
    with pytest.warns(UserWarning, match="Number of Frames"):  # pydicom's own note
        _expect("inconsistent_slices", [ds], "Number of Frames")


def test_missing_slice_vector_uses_file_order_with_warning():
    (ds,) = _small()
    reference = volume_from_datasets([ds]).image
    del ds.SliceVector
    vol = volume_from_datasets([ds])
    np.testing.assert_array_equal(sitk.GetArrayFromImage(vol.image),
                                  sitk.GetArrayFromImage(reference))
    assert any("Slice Vector" in w for w in vol.warnings)


@pytest.mark.parametrize("slope", ["0", "0.0", 0])
def test_rescale_slope_zero_is_refused_not_read_as_one(slope):
    """Reliability audit D16: a DS of 0 is falsy and used to fall back to slope 1."""
    datasets = _small(EncodingVariant.MULTIFRAME)
    datasets[0].RescaleSlope = slope
    with pytest.raises(AnalysisError, match="Rescale Slope is 0"):
        volume_from_datasets(datasets)
