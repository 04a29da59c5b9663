"""The FDOPA segmentation preprocessing contract: geometry forward and back, normalisation."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from service.errors import AnalysisError
from service.pipelines.fdopa_pet.segment import (
    CONTRACT,
    SegContract,
    head_centre_lps_mm,
    image_from_zyx,
    preprocess,
    to_native,
)

pytestmark = pytest.mark.no_storage  # never opens the node's rows: not rerun on PostgreSQL

HEAD_CENTRE = np.array([4.0, -12.0, 30.0])  # LPS mm
BLOB = np.array([38.0, 10.0, 45.0])  # LPS mm, left posterior superior of the centre


def _rotation(deg: tuple[float, float, float]) -> np.ndarray:
    a, b, c = np.radians(deg)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rx @ ry @ rz


def _grid(kind: str) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and affine (index z, y, x -> LPS voxel centre) of a test grid around the head."""
    if kind == "axial":
        spacing, rot, shape = (2.0, 2.0, 2.0), np.eye(3), (90, 128, 128)
    elif kind == "anisotropic":
        spacing, rot, shape = (2.79, 1.17, 1.17), np.eye(3), (64, 220, 220)
    elif kind == "oblique":
        spacing, rot, shape = (3.0, 1.8, 2.2), _rotation((14.0, -9.0, 21.0)), (66, 140, 120)
    else:  # flipped, improper (det -1): columns run right, slices inferior
        spacing, rot, shape = (2.5, 2.0, 2.0), np.diag([-1.0, 1.0, -1.0]), (76, 120, 120)
    # columns: slice step along LPS z, row step along LPS y, column step along LPS x
    steps = np.column_stack([rot[:, 2] * spacing[0], rot[:, 1] * spacing[1],
                             rot[:, 0] * spacing[2]])
    affine = np.eye(4)
    affine[:3, :3] = steps
    affine[:3, 3] = HEAD_CENTRE - steps @ ((np.array(shape) - 1) / 2.0)
    return shape, affine


def _points(shape: tuple[int, int, int], affine: np.ndarray) -> np.ndarray:
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    return idx @ affine[:3, :3].T + affine[:3, 3]


def _head(shape: tuple[int, int, int], affine: np.ndarray, units: float = 1.0) -> np.ndarray:
    """Ellipsoidal head (brain level 1) with a hot 12 mm sphere at ``BLOB`` (3 x brain)."""
    p = _points(shape, affine)
    r = np.sqrt((((p - HEAD_CENTRE) / np.array([70.0, 90.0, 65.0])) ** 2).sum(-1))
    vol = np.where(r <= 1.0, 1.0, 0.0)
    vol[np.linalg.norm(p - BLOB, axis=-1) <= 12.0] = 3.0
    return (vol * units).astype(np.float32)


@pytest.mark.parametrize("kind", ["axial", "anisotropic", "oblique", "flipped"])
def test_a_blob_goes_to_the_box_and_back_onto_itself(kind: str) -> None:
    shape, affine = _grid(kind)
    vol = _head(shape, affine)
    net_input = preprocess(vol, affine)
    assert net_input.image_zyx.shape == CONTRACT.box_shape_zyx
    assert net_input.image_zyx.dtype == np.float32
    # box: identity direction, 2 mm, centred on the head (unweighted centroid)
    half = (np.array(CONTRACT.box_shape_zyx[::-1]) - 1) / 2.0
    np.testing.assert_allclose(net_input.origin_lps_mm + 2.0 * half, HEAD_CENTRE, atol=1.5)
    hot = net_input.image_zyx > 2.0
    idx_xyz = np.argwhere(hot).mean(axis=0)[::-1]
    np.testing.assert_allclose(net_input.origin_lps_mm + 2.0 * idx_xyz, BLOB, atol=1.0)
    # brain-level normalisation: healthy brain at 1
    assert np.median(net_input.image_zyx[net_input.image_zyx > 0.5]) == pytest.approx(1.0, abs=0.02)
    prob = to_native(hot.astype(np.float32), net_input, shape, affine)
    assert prob.shape == shape and prob.dtype == np.float32
    assert 0.0 <= prob.min() and prob.max() <= 1.0
    truth, back = vol > 2.0, prob >= 0.5
    dice = 2 * (truth & back).sum() / (truth.sum() + back.sum())
    assert dice > 0.85, dice


def test_normalisation_does_not_depend_on_units() -> None:
    shape, affine = _grid("oblique")
    a = preprocess(_head(shape, affine), affine)
    b = preprocess(_head(shape, affine, units=5300.0), affine)  # Bq/mL-like numbers
    np.testing.assert_allclose(a.image_zyx, b.image_zyx, atol=1e-4)
    assert b.scale_units == pytest.approx(5300.0 * a.scale_units, rel=1e-4)


def test_the_affine_convention_is_the_pet_volume_one() -> None:
    shape, affine = _grid("oblique")
    image = image_from_zyx(np.zeros(shape, np.float32), affine)
    for index_zyx in ((0, 0, 0), (5, 17, 3), (65, 139, 119)):
        want = affine[:3, :3] @ np.array(index_zyx, float) + affine[:3, 3]
        got = image.TransformIndexToPhysicalPoint(tuple(int(v) for v in index_zyx[::-1]))
        np.testing.assert_allclose(got, want, atol=1e-6)
    assert sitk.GetArrayFromImage(image).shape == shape


def test_the_head_centre_ignores_a_hot_lesion() -> None:
    shape, affine = _grid("axial")
    centre = head_centre_lps_mm(_head(shape, affine), affine)
    np.testing.assert_allclose(centre, HEAD_CENTRE, atol=1.5)


def test_an_empty_volume_is_an_analysis_error() -> None:
    shape, affine = _grid("axial")
    with pytest.raises(AnalysisError) as err:
        preprocess(np.zeros(shape, np.float32), affine)
    assert err.value.code == "empty_volume"


def test_the_contract_round_trips_and_rejects_garbage() -> None:
    other = SegContract(head_fraction=0.2)
    assert SegContract.from_json(other.to_json()) == other != CONTRACT
    for text in ("not json", '{"version": 1, "unknown": 3, "box_shape_zyx": [8, 8, 8]}', "{}"):
        with pytest.raises(ValueError):
            SegContract.from_json(text)


@pytest.mark.slow
def test_simulate_static_is_the_image_the_benchmark_writes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Training data = the PT_STATIC series of the study (same draws, same grid, same labels)."""
    import pydicom

    from models.fdopa_seg.data import affine_of
    from service.imaging.pet_volume import volume_from_datasets
    from service.sim.fdopa.profiles import PET_PROFILES, get_pet_profile
    from service.sim.fdopa.study import StudyPlan, simulate_static, simulate_study

    profile = replace(get_pet_profile("philips_vereos_like"), name="test_small",
                      sim_voxel_mm=4.5, n_views=30, iterations=2, subsets=5, matrix=64,
                      pixel_mm=3.6, slice_mm=3.6)
    monkeypatch.setitem(PET_PROFILES, "test_small", profile)
    plan = StudyPlan("t_00002", "test_small", "hgg", False, seed=91)
    simulate_study(plan, tmp_path)
    image, labels, _ = simulate_static(plan)
    written = volume_from_datasets(
        [pydicom.dcmread(p) for p in sorted((tmp_path / plan.study_id / "PT_STATIC").glob("*"))])
    ours = sitk.GetArrayFromImage(image)
    np.testing.assert_allclose(written.affine, affine_of(image), atol=1e-3)
    # the series is decay corrected to its start (START), ours to injection: one factor
    w = written.frames[0].volume_zyx
    factor = float(np.median(w[ours > 0.2 * ours.max()] / ours[ours > 0.2 * ours.max()]))
    assert 0.9 < factor <= 1.0
    np.testing.assert_allclose(w, factor * ours, atol=1e-3 * float(w.max()))
    truth = sitk.ReadImage(str(tmp_path / plan.study_id / "truth_seg.nii.gz"))
    assert np.array_equal(sitk.GetArrayFromImage(truth), sitk.GetArrayFromImage(labels))
