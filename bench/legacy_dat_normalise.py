"""Today's (before issue 10) DaT normalisation engine, frozen for bench/dat_registration.py.

A verbatim copy of ``service/pipelines/dat_spect/normalise.py`` at commit fb44551
(multi-start rigid then free affine, quality = Pearson correlation with the
simulated template, gate 0.7), kept only as the "before" column of the
registration benchmark. Not used by the node.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from service.errors import AnalysisError
from service.imaging.atlas import Atlas

log = logging.getLogger(__name__)

#: Below this correlation (head without striatum) the registration is rejected.
#: Measured: smoothed phantoms 0.98; simulated scans (service.sim) 0.86-0.93,
#: the lowest for FBP without attenuation correction (darker brain centre);
#: an upside-down head 0.59, noise 0.01. A featureless sphere scores 0.79 and
#: passes: the score checks alignment, the gate checks that it is a DaT scan.
MIN_QUALITY = 0.7
#: Accepted range of the affine's singular values (head size relative to MNI).
SCALE_RANGE = (0.7, 1.4)
#: Rotations (degrees, about x, y, z) tried from the centred start.
START_ANGLES_DEG = (-20.0, 0.0, 20.0)
#: Voxel size of the registration copy of the template, millimetres.
WORK_SPACING_MM = 4.0
#: First step of the affine optimiser (physical-shift scaled, about mm). A
#: step of 1 threw some scans far from the rigid solution on the first
#: iteration (site_a_00000: correlation 0.91 -> 0.28, AP scale 0.69 at the
#: end); 0.25 converges to the truth's scales within 21 iterations.
AFFINE_STEP = 0.25
#: Margin kept around the head when the scan is cropped for registration, mm.
CROP_MARGIN_MM = 24.0


@dataclass(frozen=True, eq=False)
class Normalisation:
    """Outcome of :func:`normalise`.

    Attributes
    ----------
    volume_zyx : (91, 109, 91) float32 array
        The scan resampled onto the atlas grid (linear), original count units.
    transform : SimpleITK.Transform
        Maps template (MNI, LPS mm) points to scan points.
    quality : float
        Correlation with the template in the head minus striatum, -1..1.
    scales : (3,) float array
        Singular values of the affine matrix (scan mm per MNI mm).
    """

    volume_zyx: np.ndarray
    transform: sitk.Transform
    quality: float
    scales: np.ndarray


@dataclass(frozen=True, eq=False)
class _Fixed:
    image: sitk.Image
    mask: sitk.Image
    quality_mask_zyx: np.ndarray
    centre_lps_mm: np.ndarray


def normalise(moving: sitk.Image, template_zyx: np.ndarray, atlas: Atlas) -> Normalisation:
    """Register a SPECT volume to the template and resample it to the atlas grid.

    Parameters
    ----------
    moving : SimpleITK.Image
        3-D scan in LPS (origin, spacing, direction from the DICOM header).
    template_zyx : (91, 109, 91) float32 array
        FP-CIT template on the atlas grid (see :mod:`service.pipelines.dat_spect.template`).
    atlas : Atlas

    Returns
    -------
    Normalisation
        The resampled scan, the transform and the quality score.

    Raises
    ------
    AnalysisError
        ``normalisation_failed`` when the optimiser fails, the affine is
        implausible or the quality score is below :data:`MIN_QUALITY`.
    """
    fixed = _prepare_fixed(template_zyx, atlas)
    moving = sitk.Cast(moving, sitk.sitkFloat32)
    work = _working_copy(moving)
    try:
        rigid = _rigid(fixed, work, _best_start(fixed, work))
        affine = _affine(fixed, work, rigid)
    except RuntimeError as exc:  # SimpleITK reports optimiser failures so
        raise AnalysisError(
            "normalisation failed: optimiser error", "normalisation_failed"
        ) from exc
    scales = np.linalg.svd(np.asarray(affine.GetMatrix()).reshape(3, 3), compute_uv=False)
    volume = sitk.Resample(moving, atlas.reference_image(), affine, sitk.sitkLinear, 0.0)
    volume_zyx = sitk.GetArrayFromImage(volume).astype(np.float32)
    quality = _correlation(volume_zyx, template_zyx, fixed.quality_mask_zyx)
    log.info(
        "normalised",
        extra={"fields": {"quality": round(quality, 3), "scales": np.round(scales, 3).tolist()}},
    )
    if not SCALE_RANGE[0] <= scales.min() <= scales.max() <= SCALE_RANGE[1]:
        raise AnalysisError(
            f"normalisation failed: implausible scaling {scales.min():.2f}-{scales.max():.2f}",
            "normalisation_failed",
        )
    if not quality >= MIN_QUALITY:
        raise AnalysisError(
            f"normalisation failed: quality {quality:.2f} < {MIN_QUALITY}", "normalisation_failed"
        )
    return Normalisation(volume_zyx, affine, quality, scales)


def _head_mask_zyx(volume_zyx: np.ndarray) -> np.ndarray:
    """Head outline: above 25 % of a robust maximum that ignores the striatum.

    The 90th percentile of positive voxels is a level of non-specific brain
    uptake in healthy and diseased scans alike, so the outline does not
    collapse onto a hot striatum.
    """
    positive = volume_zyx[volume_zyx > 0]
    if positive.size == 0:
        return np.zeros(volume_zyx.shape, bool)
    level = float(np.percentile(positive, 90))
    mask = volume_zyx > 0.25 * level
    labels, n = ndimage.label(mask)
    if n > 1:  # keep the largest component: noise specks move a centroid
        sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
        mask = labels == (1 + int(np.argmax(sizes)))
    return mask


def _working_copy(moving: sitk.Image) -> sitk.Image:
    """The head's bounding box (plus a margin), at no finer than the work spacing.

    Large fields of view (128^3 and more) hold mostly empty space; cropping and
    coarsening keep the optimiser's cost independent of the camera's matrix.
    """
    mask_zyx = _head_mask_zyx(sitk.GetArrayViewFromImage(moving))
    if mask_zyx.sum() < 100:
        raise AnalysisError("normalisation failed: no head found in volume", "normalisation_failed")
    margin = np.ceil(CROP_MARGIN_MM / np.array(moving.GetSpacing())).astype(int)
    nonzero = np.nonzero(mask_zyx)
    lo_xyz = np.array([int(v.min()) for v in nonzero])[::-1] - margin
    hi_xyz = np.array([int(v.max()) for v in nonzero])[::-1] + margin
    lo_xyz = np.maximum(lo_xyz, 0)
    hi_xyz = np.minimum(hi_xyz, np.array(moving.GetSize()) - 1)
    cropped = sitk.RegionOfInterest(moving, (hi_xyz - lo_xyz + 1).tolist(), lo_xyz.tolist())
    spacing = np.array(cropped.GetSpacing())
    if spacing.min() >= 0.8 * WORK_SPACING_MM:
        return cropped
    new_spacing = np.maximum(spacing, WORK_SPACING_MM)
    size = np.ceil(np.array(cropped.GetSize()) * spacing / new_spacing).astype(int)
    return sitk.Resample(
        cropped, size.tolist(), sitk.Transform(), sitk.sitkLinear, cropped.GetOrigin(),
        new_spacing.tolist(), cropped.GetDirection(), 0.0, sitk.sitkFloat32,
    )


def _mask_centre_lps(image: sitk.Image) -> np.ndarray:
    """Physical centre (LPS mm) of the head outline of an image."""
    mask_zyx = _head_mask_zyx(sitk.GetArrayViewFromImage(image))
    centre_zyx = np.array(ndimage.center_of_mass(mask_zyx))
    return np.array(image.TransformContinuousIndexToPhysicalPoint(centre_zyx[::-1].tolist()))


@lru_cache(maxsize=2)
def _fixed_cached(template_bytes: bytes, shape: tuple[int, int, int], atlas: Atlas) -> _Fixed:
    template_zyx = np.frombuffer(template_bytes, np.float32).reshape(shape)
    full = atlas.reference_image(template_zyx.copy())
    factor = int(round(WORK_SPACING_MM / atlas.spacing_mm[0]))
    image = sitk.BinShrink(full, [factor] * 3)
    head = _head_mask_zyx(template_zyx)
    mask_zyx = ndimage.binary_dilation(head, iterations=4)
    mask = sitk.BinShrink(atlas.reference_image(mask_zyx.astype(np.float32)), [factor] * 3) > 0
    striatum = ndimage.binary_dilation((atlas.labels_zyx >= 1) & (atlas.labels_zyx <= 4), iterations=4)
    return _Fixed(
        image=image,
        mask=sitk.Cast(mask, sitk.sitkUInt8),
        quality_mask_zyx=head & ~striatum,
        centre_lps_mm=_mask_centre_lps(full),
    )


def _prepare_fixed(template_zyx: np.ndarray, atlas: Atlas) -> _Fixed:
    if template_zyx.shape != atlas.shape_zyx:
        raise ValueError(f"template shape {template_zyx.shape} is not {atlas.shape_zyx}")
    data = np.ascontiguousarray(template_zyx, np.float32)
    return _fixed_cached(data.tobytes(), data.shape, atlas)


def _method(fixed: _Fixed, iterations: int, shrink: list[int], step: float = 1.0
            ) -> sitk.ImageRegistrationMethod:
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsCorrelation()
    reg.SetMetricFixedMask(fixed.mask)
    reg.SetMetricSamplingStrategy(reg.REGULAR)
    reg.SetMetricSamplingPercentage(0.5, seed=1)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetMetricUseMovingImageGradientFilter(False)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=step, minStep=0.01, numberOfIterations=iterations, relaxationFactor=0.6
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(shrink)
    reg.SetSmoothingSigmasPerLevel([0] * len(shrink))
    return reg


def _best_start(fixed: _Fixed, moving: sitk.Image) -> sitk.Euler3DTransform:
    """Centre the head outlines, then keep the best of a grid of rotations."""
    shift = _mask_centre_lps(moving) - fixed.centre_lps_mm
    reg = _method(fixed, iterations=0, shrink=[2])
    coarse_fixed = sitk.BinShrink(fixed.image, [2, 2, 2])
    reg.SetMetricFixedMask(sitk.Cast(sitk.BinShrink(fixed.mask, [2, 2, 2]) > 0, sitk.sitkUInt8))
    best: tuple[float, sitk.Euler3DTransform] | None = None
    for angles in itertools.product(START_ANGLES_DEG, repeat=3):
        if sum(a != 0 for a in angles) > 1:  # one axis at a time: 7 starts
            continue
        tx = sitk.Euler3DTransform()
        tx.SetCenter(fixed.centre_lps_mm.tolist())
        tx.SetRotation(*np.deg2rad(angles).tolist())
        tx.SetTranslation(shift.tolist())
        reg.SetInitialTransform(tx, inPlace=False)
        value = reg.MetricEvaluate(coarse_fixed, moving)
        if best is None or value < best[0]:
            best = (value, tx)
    assert best is not None
    return best[1]


def _rigid(fixed: _Fixed, moving: sitk.Image, start: sitk.Euler3DTransform) -> sitk.Transform:
    reg = _method(fixed, iterations=40, shrink=[2, 1])
    reg.SetInitialTransform(start, inPlace=False)
    return reg.Execute(fixed.image, moving)


def _affine(fixed: _Fixed, moving: sitk.Image, rigid: sitk.Transform) -> sitk.AffineTransform:
    euler = sitk.Euler3DTransform(sitk.CompositeTransform(rigid).GetNthTransform(0))
    affine = sitk.AffineTransform(3)
    affine.SetCenter(euler.GetCenter())
    affine.SetMatrix(euler.GetMatrix())
    affine.SetTranslation(euler.GetTranslation())
    reg = _method(fixed, iterations=40, shrink=[1], step=AFFINE_STEP)
    reg.SetInitialTransform(affine, inPlace=True)
    reg.Execute(fixed.image, moving)
    return affine


def _correlation(a_zyx: np.ndarray, b_zyx: np.ndarray, mask_zyx: np.ndarray) -> float:
    a = a_zyx[mask_zyx].astype(np.float64)
    b = b_zyx[mask_zyx].astype(np.float64)
    a -= a.mean()
    b -= b.mean()
    denom = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denom) if denom > 0 else 0.0
