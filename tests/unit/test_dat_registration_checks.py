"""The DaT registration gate's checks, one by one: a case that passes, one refused with its reason.

Pure checks (:func:`service.pipelines.dat_spect.registration_checks.run_checks`)
on arrays on the atlas grid: the "scan" is the template as the gate sees it
(:func:`service.pipelines.dat_spect.normalise.template_view`), changed in
one respect per test; then, with the simulator, a correctly aligned scan
with strong extracerebral uptake passes and the same scan shifted 20 mm is
refused.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from service.imaging import register
from service.imaging.atlas import load_atlas
from service.pipelines.dat_spect import registration_checks as rc
from service.pipelines.dat_spect.assets import load_dat_models
from service.pipelines.dat_spect.normalise import evaluate, register_scan, template_view
from service.sim.pose import PosedScan, simulate_posed

pytestmark = pytest.mark.no_storage  # never opens the node's rows: not rerun on PostgreSQL

ATLAS = load_atlas()
FOV = np.ones(ATLAS.shape_zyx, bool)


def _view() -> rc.TemplateView:
    return template_view(load_dat_models().template_zyx, ATLAS)


def _fit(similarity_scale: float = 1.0, size: float = 1.0) -> register.Fit:
    return register.Fit(sitk.AffineTransform(3), "affine", np.full(3, size), similarity_scale,
                        False, ())


def _check(scan_zyx: np.ndarray, similarity_scale: float = 1.0, size: float = 1.0) -> rc.Checks:
    return rc.run_checks(scan_zyx.astype(np.float32), FOV, _view(), ATLAS,
                         _fit(similarity_scale, size))


def _template() -> np.ndarray:
    return _view().processed_zyx.copy()


def test_the_template_itself_passes_every_check() -> None:
    checks = _check(_template())
    assert checks.failure is None
    assert checks.head_dice == pytest.approx(1.0)
    assert checks.quality == pytest.approx(1.0)
    assert checks.hot_in_striatum > 0.9 and checks.hot_contrast >= rc.HOT_X_BRAIN_MEDIAN
    assert checks.outline_gap_mm == 0.0


@pytest.mark.parametrize("scale", [0.70, 1.40])
def test_head_size_outside_an_adult_head_is_refused(scale: float) -> None:
    assert _check(_template(), 0.80).failure is None
    assert _check(_template(), scale).failure == f"head size x{scale:.2f} outside 0.75-1.33"


def test_a_head_outline_30_mm_off_is_refused() -> None:
    shifted = ndimage.shift(_template(), (0.0, 15.0, 0.0), order=1)  # 15 voxels of 2 mm
    failure = _check(shifted).failure
    assert failure is not None and failure.startswith("head outline overlap 0.")
    assert failure.endswith(f"< {rc.MIN_HEAD_DICE:.2f}")


def test_a_blurrier_scan_passes() -> None:
    """A scan 16 mm FWHM blurrier than the template (outline wider, contrasts flatter)."""
    scan = ndimage.gaussian_filter(_template(), 16.0 / 2.355 / 2.0)  # sigma in 2 mm voxels
    checks = _check(scan)
    assert checks.failure is None and checks.outline_gap_mm > 0.0


def test_outline_dice_allows_the_gap_not_more() -> None:
    """A scan outline 4 mm outside the template's (a brain shrunk in its skull, a hot
    scalp) passes with the allowance used; one 36 mm outside (18 voxels of the
    face-connected dilation: far more than skull, scalp and atrophy) is refused."""
    template = _view().head_zyx
    gap_voxels = int(rc.OUTLINE_GAP_MM / 2.0)
    wider = ndimage.binary_dilation(template, iterations=2)
    dice, gap = rc.outline_dice(wider, template, gap_voxels)
    assert gap == 2 and dice == pytest.approx(1.0)
    assert rc.outline_dice(wider, template, 0)[0] < dice
    much_wider = ndimage.binary_dilation(template, iterations=18)
    assert rc.outline_dice(much_wider, template, gap_voxels)[0] < rc.MIN_HEAD_DICE


def test_the_outline_allowance_grows_only_with_a_small_fitted_head() -> None:
    assert rc.outline_allowance_mm(np.ones(3)) == rc.OUTLINE_GAP_MM
    assert rc.outline_allowance_mm(np.full(3, 1.1)) == rc.OUTLINE_GAP_MM
    assert rc.outline_allowance_mm(np.full(3, 0.9)) == pytest.approx(
        rc.OUTLINE_GAP_MM + rc.BRAIN_RADIUS_MM / 9.0)
    # the size is the geometric mean of the singular values
    assert rc.outline_allowance_mm(np.array([0.81, 0.9, 1.0])) == pytest.approx(
        rc.outline_allowance_mm(np.full(3, 0.9)))


def test_a_small_fitted_head_may_lie_further_inside_the_scans_outline() -> None:
    """The scan's outline 32 mm outside the template's everywhere (face-connected
    dilation, 16 voxels): refused at the template's size; fitted at 0.85 (an
    atrophic brain in its younger skull) the allowance reaches 20 mm and it passes."""
    view = _view()
    wide = ndimage.binary_dilation(view.head_zyx, iterations=16)
    scan = np.clip(np.where(wide, 1.0, 0.0) + np.where(view.head_zyx, _template() - 1.0, 0.0),
                   0.0, None)
    refused = _check(scan).failure
    assert refused is not None and refused.startswith("head outline overlap 0.")
    small = _check(scan, 0.85, size=0.85)
    assert small.failure is None and small.outline_gap_mm == 20.0


def test_an_outline_far_outside_the_template_is_refused_by_the_gate() -> None:
    """A head 1.5 x the template's (outline only: values of its head median inside)."""
    head = ndimage.zoom(_view().head_zyx.astype(float), 1.5, order=0) > 0.5
    start = [(h - s) // 2 for h, s in zip(head.shape, ATLAS.shape_zyx, strict=True)]
    big = head[tuple(slice(a, a + s) for a, s in zip(start, ATLAS.shape_zyx, strict=True))]
    scan = np.where(big, 1.0, 0.0) + np.where(_view().head_zyx, _template() - 1.0, 0.0)
    failure = _check(np.clip(scan, 0.0, None)).failure
    assert failure is not None and failure.startswith("head outline overlap 0.")


def test_a_hot_spot_outside_the_striatum_is_refused() -> None:
    scan = _template()
    striatum = ndimage.binary_dilation((ATLAS.labels_zyx >= 1) & (ATLAS.labels_zyx <= 4),
                                       iterations=3)
    scan[striatum] = float(np.median(scan[ATLAS.brain_zyx]))
    scan[ATLAS.mask("occipital")] = 4.0
    failure = _check(scan).failure
    assert failure is not None and failure.startswith("striatal hot spot ")
    assert failure.endswith("% inside the striatum < 50 %")


def test_a_scan_without_brain_structure_is_refused_by_the_correlation_floor() -> None:
    """The outline and striatum of a head, the brain inside it noise."""
    scan = _template()
    brain = ndimage.binary_dilation(ATLAS.brain_zyx, iterations=2) & ~ndimage.binary_dilation(
        (ATLAS.labels_zyx >= 1) & (ATLAS.labels_zyx <= 4), iterations=4)
    rng = np.random.default_rng(5)
    scan[brain] = rng.permutation(scan[brain])
    checks = _check(scan)
    assert checks.failure == rc.below("quality", checks.quality, rc.MIN_QUALITY)


def test_extracerebral_uptake_does_not_lower_the_correlation() -> None:
    """Glands and scalp 3 x the head median outside the brain leave the quality high."""
    scan = _template()
    head = _view().head_zyx
    outside = head & ~ndimage.binary_dilation(ATLAS.brain_zyx, iterations=4)
    scan[outside] = 3.0
    checks = _check(scan)
    assert checks.failure is None and checks.quality > 0.95


#: One broad-family subject with the robustness set's strong extracerebral
#: uptake (scalp 1.2, salivary glands 4, nasal mucosa 3, soft tissue 0.8 of
#: grey matter), 64 x 64, 4.4 mm voxels, 60 views (fast).
STRONG_EXTRACEREBRAL = {"scalp": 1.2, "salivary": 4.0, "nasal": 3.0, "extracerebral": 0.8}


@lru_cache(maxsize=1)
def _extracerebral() -> PosedScan:
    return simulate_posed("broad", 44, 0, {"matrix": 64, "voxel_mm": 4.4, "n_views": 60},
                          anatomy=STRONG_EXTRACEREBRAL)


def test_strong_extracerebral_uptake_passes_aligned_and_is_refused_shifted() -> None:
    posed = _extracerebral()
    models = load_dat_models()
    good = register_scan(posed.image, models.template_zyx, ATLAS)
    assert good.refusal is None, good.checks
    wrong = register.as_affine(good.transform)
    wrong.SetTranslation((np.array(wrong.GetTranslation()) + (0.0, 0.0, 20.0)).tolist())
    shifted = evaluate(posed.image, register.Fit(wrong, "affine", good.scales, 1.0, False, ()),
                       models.template_zyx, ATLAS)
    assert shifted.refusal is not None and shifted.refusal.startswith("normalisation failed: ")


def test_a_refusal_never_prints_its_value_equal_to_the_bound() -> None:
    """Just under the bound reads as under it ("0.799 < 0.80", not "0.80 < 0.80")."""
    assert rc.below("head outline overlap", 0.79996, 0.80) == "head outline overlap 0.799 < 0.80"
    assert rc.below("quality", 0.5, 0.55) == "quality 0.500 < 0.55"
