"""FDOPA lesions and static measures on hand-made phantoms with hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from service.errors import AnalysisError
from service.imaging.suv import SuvScale
from service.pipelines.fdopa_pet.lesions import (
    MIN_LESION_ML,
    ball,
    baseline_candidates,
    lesions_from_candidates,
    opening_by_reconstruction,
)
from service.pipelines.fdopa_pet.measures import (
    PEAK_RADIUS_MM,
    genoa_tumour_voi,
    measure_reference,
    measure_static,
    peak_mean,
)
from service.pipelines.fdopa_pet.result import AtlasOnPet, Lesion, ReferenceRegions

pytestmark = pytest.mark.no_storage  # never opens the node's rows: not rerun on PostgreSQL

NAMES = {"white_matter_left": 1, "white_matter_right": 2, "striatum_left": 3,
         "striatum_right": 4, "brain_stem": 7, "cerebellum_left": 8, "cerebellum_right": 9,
         "cortex_left": 10, "cortex_right": 11}
SUV = SuvScale(0.5, 1.0, 0.5, "BQML, START, series time")
NO_SUV = SuvScale(None, 1.0, None, "", "no SUV: no patient weight")


def _affine(spacing_zyx: tuple[float, float, float]) -> np.ndarray:
    """Index (z, y, x) to LPS: x along columns, y along rows, z along slices, origin (-50, -60, -40)."""
    a = np.zeros((4, 4))
    a[2, 0], a[1, 1], a[0, 2] = spacing_zyx
    a[:3, 3] = (-50.0, -60.0, -40.0)
    a[3, 3] = 1.0
    return a


def _sphere(shape: tuple[int, int, int], spacing: tuple[float, float, float],
            centre_mm: tuple[float, float, float], radius_mm: float) -> np.ndarray:
    grids = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing, strict=True)],
                        indexing="ij")
    return sum((g - c) ** 2 for g, c in zip(grids, centre_mm, strict=True)) <= radius_mm**2


class Phantom:
    """Background 1.0 (right cortex/WM), striatum 2.5 (max), WM 1.25 (max), labelled atlas."""

    def __init__(self, spacing: tuple[float, float, float] = (2.5, 2.0, 2.0),
                 shape: tuple[int, int, int] = (40, 60, 60)) -> None:
        self.spacing, self.shape = np.array(spacing), shape
        self.affine = _affine(spacing)
        self.volume = np.ones(shape, np.float32)
        self.labels = np.zeros(shape, np.int16)
        self.labels[5:35, 5:55, 5:30] = NAMES["cortex_right"]
        self.labels[5:35, 5:55, 30:55] = NAMES["cortex_left"]
        self.labels[10:30, 30:50, 8:20] = NAMES["white_matter_right"]
        self.labels[10:30, 30:50, 40:52] = NAMES["white_matter_left"]
        self.labels[14:20, 10:18, 8:14] = NAMES["striatum_right"]
        self.labels[14:20, 10:18, 46:52] = NAMES["striatum_left"]
        self.labels[30:35, 20:30, 25:35] = NAMES["brain_stem"]
        self.volume[self.labels == NAMES["striatum_right"]] = 2.5
        self.volume[self.labels == NAMES["white_matter_right"]] = 1.0
        self.volume[12, 35, 10] = 1.25  # WM maximum ...
        self.volume[12, 36, 10] = 0.75  # ... and the background mean stays 1
        self.atlas = AtlasOnPet(self.labels, NAMES, np.zeros(shape, np.float32), 1.0)
        self.reference = ReferenceRegions(
            "right", "test", self.labels == NAMES["striatum_right"],
            self.labels == NAMES["white_matter_right"],
            np.isin(self.labels, [NAMES["cortex_right"], NAMES["white_matter_right"]]))

    def add_sphere(self, centre_mm: tuple[float, float, float], radius_mm: float,
                   value: float) -> np.ndarray:
        mask = _sphere(self.shape, tuple(self.spacing), centre_mm, radius_mm)
        self.volume[mask] = value
        return mask


def test_the_peak_sphere_is_one_millilitre_and_anisotropic_balls_are_exact() -> None:
    assert 4.0 / 3.0 * np.pi * PEAK_RADIUS_MM**3 == pytest.approx(1000.0)
    assert int(ball(np.array([2.0, 2.0, 2.0]), PEAK_RADIUS_MM).sum()) == 123  # |i|^2 <= 9: hand count
    element = ball(np.array([3.0, 2.0, 1.0]), 3.0)
    assert element.shape == (3, 3, 7)  # half-widths floor(3/3), floor(3/2), floor(3/1)
    assert element[1, 1, 6] and element[0, 1, 3] and element[1, 0, 3]  # 3, 3 and 2 mm away
    assert not element[0, 0, 3] and not element[1, 0, 6]  # sqrt(13) mm away
    assert ball(np.array([2.0, 2.0, 2.0]), 1.0).sum() == 1


def test_a_sphere_of_known_activity_on_anisotropic_voxels() -> None:
    ph = Phantom()
    centre = (50.0, 60.0, 84.0)  # mm from the first voxel centre: in the left hemisphere
    sphere = ph.add_sphere(centre, 10.0, 5.0)
    box = np.zeros(ph.shape, bool)
    box[10:30, 20:40, 30:55] = True  # the candidates: a box around the sphere
    lesions = lesions_from_candidates(box, ph.volume, 1.6, ph.spacing)
    assert len(lesions) == 1 and np.array_equal(lesions[0].mask_zyx, sphere)
    sm = measure_static(ph.volume, ph.affine, SUV, lesions, ph.reference, ph.atlas)
    m = sm.lesions[0]
    voxel_ml = 2.5 * 2.0 * 2.0 / 1000.0
    assert m.voxels == int(sphere.sum()) and m.volume_ml == pytest.approx(m.voxels * voxel_ml)
    assert m.volume_ml == pytest.approx(4.0 / 3.0 * np.pi, rel=0.05) and m.measurable
    assert (m.max_units, m.mean_units, m.peak_units) == pytest.approx((5.0, 5.0, 5.0))
    assert (m.suv_max, m.suv_mean, m.suv_peak) == pytest.approx((2.5, 2.5, 2.5))
    assert sm.reference.background_mean_units == pytest.approx(1.0)
    assert (m.tbr_max, m.tbr_mean, m.ts_ratio, m.tn_ratio) == pytest.approx((5.0, 5.0, 2.0, 4.0))
    # LPS: x = -50 + 2 * col, y = -60 + 2 * row, z = -40 + 2.5 * slice
    assert m.centroid_lps_mm == pytest.approx((-50 + 84.0, -60 + 60.0, -40 + 50.0), abs=1e-6)
    assert not m.touches_striatum and not m.infratentorial
    assert sm.tumour is not None and sm.tumour.index == 0 and sm.tumour.voxels == m.voxels
    assert sm.threshold_units == pytest.approx(1.6)
    assert sm.reference.striatum_ml == pytest.approx(6 * 8 * 6 * voxel_ml)


def test_suv_peak_of_a_known_blob_and_against_a_brute_force_reference() -> None:
    volume = np.zeros((20, 20, 20))
    volume[10, 10, 10], volume[10, 10, 11] = 100.0, 50.0
    mask = volume > 0
    spacing = np.array([2.0, 2.0, 2.0])
    assert peak_mean(volume, mask, spacing) == pytest.approx(150.0 / 123.0)
    rng = np.random.default_rng(4)
    volume = rng.gamma(2.0, 1.0, (18, 16, 20))
    mask = rng.random(volume.shape) > 0.97
    mask[0, 0, 0] = True  # a corner voxel: the sphere is cut by the image edge
    spacing = np.array([3.0, 2.0, 1.5])
    element = ball(spacing, PEAK_RADIUS_MM)
    half = np.array(element.shape) // 2
    offsets = np.argwhere(element) - half
    best = -np.inf
    for voxel in np.argwhere(mask):
        idx = offsets + voxel
        ok = np.all((idx >= 0) & (idx < volume.shape), axis=1)
        best = max(best, float(volume[tuple(idx[ok].T)].mean()))
    assert peak_mean(volume, mask, spacing) == pytest.approx(best, rel=1e-12)


def test_multifocal_lesions_are_indexed_by_volume_and_measured_together() -> None:
    ph = Phantom(spacing=(2.0, 2.0, 2.0), shape=(40, 60, 60))
    small = ph.add_sphere((40.0, 30.0, 84.0), 5.0, 4.0)
    big = ph.add_sphere((40.0, 70.0, 84.0), 8.0, 3.0)
    no_striatum = (ph.labels > 0) & ~np.isin(ph.labels, [3, 4])
    lesions = lesions_from_candidates(no_striatum, ph.volume, 1.6, ph.spacing)
    assert [les.index for les in lesions] == [1, 2]
    assert np.array_equal(lesions[0].mask_zyx, big) and np.array_equal(lesions[1].mask_zyx, small)
    sm = measure_static(ph.volume, ph.affine, SUV, lesions, ph.reference, ph.atlas)
    assert sm.tumour is not None
    assert sm.tumour.voxels == big.sum() + small.sum()
    assert sm.tumour.max_units == pytest.approx(4.0) and sm.lesions[0].max_units == 3.0
    mean = (3.0 * big.sum() + 4.0 * small.sum()) / (big.sum() + small.sum())
    assert sm.tumour.mean_units == pytest.approx(mean)
    assert sm.tumour.peak_units == pytest.approx(max(m.peak_units for m in sm.lesions))


def test_26_connectivity_joins_corner_neighbours() -> None:
    volume = np.zeros((10, 10, 10), np.float32)
    volume[2:5, 2:5, 2:5] = 3.0
    volume[5:8, 5:8, 5:8] = 3.0  # touches the first cube at one corner only
    lesions = lesions_from_candidates(volume > 0, volume, 1.0, np.array([2.0, 2.0, 2.0]))
    assert len(lesions) == 1 and lesions[0].mask_zyx.sum() == 54


def test_components_under_the_minimum_volume_are_dropped() -> None:
    volume = np.zeros((20, 20, 20), np.float32)
    volume[2:4, 2:4, 2:4] = 3.0     # 8 voxels x 8 uL = 0.064 mL < 0.1 mL
    volume[10:13, 10:13, 10:13] = 3.0  # 27 x 8 uL = 0.216 mL
    spacing = np.array([2.0, 2.0, 2.0])
    assert 8 * 8e-3 < MIN_LESION_ML < 27 * 8e-3
    lesions = lesions_from_candidates(volume > 0, volume, 1.0, spacing)
    assert len(lesions) == 1 and lesions[0].mask_zyx.sum() == 27
    assert len(lesions_from_candidates(volume > 0, volume, 1.0, spacing, min_ml=0.05)) == 2


def test_candidates_are_thresholded_and_probabilities_cut_at_one_half() -> None:
    volume = np.zeros((12, 12, 12), np.float32)
    volume[2:8, 2:8, 2:8] = 2.0
    volume[2:8, 2:8, 2] = 1.5  # below the threshold: not lesion
    prob = np.zeros(volume.shape, np.float32)
    prob[2:8, 2:8, 2:5] = 0.5
    prob[2:8, 2:8, 5:8] = 0.49
    lesions = lesions_from_candidates(prob, volume, 1.6, np.array([2.0, 2.0, 2.0]))
    assert len(lesions) == 1 and lesions[0].mask_zyx.sum() == 36 * 2
    with pytest.raises(AnalysisError) as err:
        lesions_from_candidates(prob[:-1], volume, 1.6, np.array([2.0, 2.0, 2.0]))
    assert err.value.code == "candidates"
    with pytest.raises(AnalysisError) as err:
        lesions_from_candidates(prob, volume, float("nan"), np.array([2.0, 2.0, 2.0]))
    assert err.value.code == "threshold"


def test_opening_by_reconstruction_on_a_1mm_grid_and_identity_on_a_2mm_grid() -> None:
    mask = np.zeros((20, 20, 20), bool)
    mask[5:10, 5:10, 5:10] = True
    mask[7, 7, 10:16] = True        # a one-voxel tail attached to the blob: kept (reconstruction)
    mask[15, 2:18, 15] = True       # a detached one-voxel line: no 1 mm core, removed
    opened = opening_by_reconstruction(mask, np.array([1.0, 1.0, 1.0]))
    assert opened[7, 7, 15] and not opened[15, 10, 15]
    assert opened.sum() == 125 + 6
    assert np.array_equal(opening_by_reconstruction(mask, np.array([2.0, 2.0, 2.0])), mask)


def test_a_lesion_touching_the_striatum_and_an_infratentorial_one_are_flagged() -> None:
    ph = Phantom(spacing=(2.0, 2.0, 2.0))
    touching = np.zeros(ph.shape, bool)
    touching[20:23, 18:21, 14:17] = True  # (20, 18, 14) is diagonal to striatum voxel (19, 17, 13)
    gap = np.zeros(ph.shape, bool)
    gap[14:18, 10:14, 30:34] = True  # far from both striata
    stem = np.zeros(ph.shape, bool)
    stem[31:34, 23:27, 28:32] = True
    for m in (touching, gap, stem):
        ph.volume[m] = 3.0
    lesions = [Lesion(i + 1, m) for i, m in enumerate((touching, gap, stem))]
    sm = measure_static(ph.volume, ph.affine, SUV, lesions, ph.reference, ph.atlas)
    assert [m.touches_striatum for m in sm.lesions] == [True, False, False]
    assert [m.infratentorial for m in sm.lesions] == [False, False, True]
    moved = np.roll(touching, 1, axis=0)  # (21, 18, 14): two slices from the striatum
    sm = measure_static(ph.volume, ph.affine, SUV, [Lesion(1, moved)], ph.reference, ph.atlas)
    assert not sm.lesions[0].touches_striatum


def test_without_suv_the_suv_values_are_none_and_the_ratios_stay() -> None:
    ph = Phantom()
    sphere = ph.add_sphere((50.0, 60.0, 84.0), 8.0, 4.0)
    lesions = [Lesion(1, sphere)]
    with_suv = measure_static(ph.volume, ph.affine, SUV, lesions, ph.reference, ph.atlas)
    without = measure_static(ph.volume, ph.affine, NO_SUV, lesions, ph.reference, ph.atlas)
    m, n = with_suv.lesions[0], without.lesions[0]
    assert (n.suv_max, n.suv_mean, n.suv_peak) == (None, None, None)
    assert without.reference.background_suv_mean is None
    assert without.reference.striatum_suv_max is None
    assert (n.tbr_max, n.tbr_mean, n.ts_ratio, n.tn_ratio) == (
        m.tbr_max, m.tbr_mean, m.ts_ratio, m.tn_ratio)
    assert n.tbr_max == pytest.approx(4.0)


def test_the_genoa_low_uptake_rule_and_its_fallback() -> None:
    volume = np.array([[[1.0, 1.3, 2.0, 3.0]]])
    lesion = np.array([[[False, True, True, True]]])
    voi = genoa_tumour_voi(lesion, volume, white_matter_max=1.5, striatum_max=2.5)
    assert voi.pet_voi and voi.mask_zyx.tolist() == [[[False, False, True, True]]]
    low = genoa_tumour_voi(lesion, volume, white_matter_max=1.5, striatum_max=3.5)  # T/S < 1
    assert not low.pet_voi and np.array_equal(low.mask_zyx, lesion)
    assert float(volume[voi.mask_zyx].max()) == float(volume[low.mask_zyx].max())


def test_empty_or_misplaced_reference_regions_are_refused() -> None:
    ph = Phantom()
    empty = ReferenceRegions("right", "test", np.zeros(ph.shape, bool),
                             ph.reference.white_matter_zyx, ph.reference.background_zyx)
    with pytest.raises(AnalysisError) as err:
        measure_reference(ph.volume, empty, ph.spacing, SUV)
    assert err.value.code == "empty_reference"
    with pytest.raises(AnalysisError) as err:
        measure_static(ph.volume[:-1], ph.affine, SUV, [], ph.reference, ph.atlas)
    assert err.value.code == "voi_grid"
    sm = measure_static(ph.volume, ph.affine, SUV, [], ph.reference, ph.atlas)
    assert sm.tumour is None and sm.lesions == ()


def test_the_threshold_baseline_finds_a_hot_tumour_but_not_the_striatum() -> None:
    ph = Phantom(spacing=(2.0, 2.0, 2.0))
    ph.volume[ph.labels == NAMES["striatum_left"]] = 2.5
    tumour = ph.add_sphere((40.0, 70.0, 84.0), 8.0, 3.0)
    cand = baseline_candidates(ph.volume, ph.atlas, ph.spacing)
    assert np.array_equal(cand, tumour)
    lesions = lesions_from_candidates(cand, ph.volume, 1.6, ph.spacing)
    assert len(lesions) == 1 and np.array_equal(lesions[0].mask_zyx, tumour)
    # known failure mode: a tumour next to the striatum is cut by the 6 mm exclusion
    near = ph.add_sphere((34.0, 36.0, 36.0), 6.0, 3.0)  # 2 voxels from the right striatum
    cut = baseline_candidates(ph.volume, ph.atlas, ph.spacing)
    assert 0 < (cut & near).sum() < near.sum()
    ph.volume[:] = 0.0
    with pytest.raises(AnalysisError) as err:
        baseline_candidates(ph.volume, ph.atlas, ph.spacing)
    assert err.value.code == "reference_values"
