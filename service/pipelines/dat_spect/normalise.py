"""Spatial normalisation of a DaT SPECT volume to the MNI 2 mm template.

The shared engine (:mod:`service.imaging.register`: multi-start rigid,
similarity, bounded affine) registers the scan (moving, any LPS grid) to the
FP-CIT template (fixed, atlas grid) on a 4 mm grid, both divided by the
median of their own head outline and clipped at :data:`CLIP_X_HEAD_MEDIAN`.
Scaling is bounded (:data:`service.imaging.register.HEAD_SCALE_RANGE`): a
head is never shrunk to raise a correlation. The choices (no extra
smoothing, affine from the rigid result) are the most accurate of those
measured against the simulator's true poses (docs/dat_registration.md).

The engine's metric is evaluated in the atlas brain (dilated by
:data:`MASK_MARGIN_MM`), not the whole head: extracerebral uptake (scalp,
salivary glands, nasal mucosa) varies between subjects and pulled the fit.

The gate (:mod:`.registration_checks`) checks, after resampling to the atlas
grid, that the head outline overlaps the template's, that the fitted size is
that of a head, that the hot spot is the striatum and that the brain
correlates, not one correlation threshold; a failed check refuses the study
with ``normalisation failed: <check>, <value>``.

Frames: both images in LPS millimetres. The returned transform maps a point
of the template (MNI) space to the corresponding point of the scan, as
``SimpleITK.Resample`` expects.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from service.errors import AnalysisError
from service.imaging import register
from service.imaging.atlas import Atlas
from service.pipelines.dat_spect.registration_checks import (
    Checks,
    TemplateView,
    below,
    correlation,
    moved,
    probe_moves,
    run_checks,
    similarity,
    with_optimum,
)
from service.pipelines.dat_spect.result import REGIONS

log = logging.getLogger(__name__)

#: Voxel size of the registration copies, millimetres.
WORK_SPACING_MM = 4.0
#: Gaussian smoothing (FWHM, mm) of both images before registration. Measured
#: over 32 simulated studies of 8 profiles (docs/dat_registration.md): extra
#: smoothing (6 or 12 mm) made the striatal error worse (mean of the worst
#: region 4.1 and 4.5 mm against 3.9 without), so none.
WORK_FWHM_MM = 0.0
#: Both images are divided by their head-outline median and clipped here
#: (a normal striatum is about 3-4 x the head median; only hotter spots are
#: clipped, e.g. salivary glands at 2.5 x grey matter on a small head).
CLIP_X_HEAD_MEDIAN = 6.0
#: What the gate's checks compare: smoothed by this (mm) and clipped here, so
#: that noise and reconstruction texture do not decide a check.
CHECK_FWHM_MM = 6.0
CHECK_CLIP_X_HEAD_MEDIAN = 4.0
#: Margin kept around the head when the scan is cropped for registration, mm.
CROP_MARGIN_MM = 24.0
#: Fixed-image mask: the atlas brain dilated by this, mm. The metric sees the
#: brain, its edge and the skull, not the scalp, salivary glands or nasal
#: mucosa, whose uptake varies between subjects (up to 4 x grey matter in the
#: glands) and pulled the head-outline mask's fit 6-9 mm off on the
#: robustness set's strong extracerebral variant (docs/dat_registration.md).
MASK_MARGIN_MM = 8.0
#: The engine's schedule (see :class:`service.imaging.register.Settings`).
#: The affine starts from the rigid result (starting from the similarity was
#: worse: 4.4 against 3.9 mm, the similarity's scale overshooting on scans
#: without attenuation correction); the similarity measures the head size
#: for the gate. An affine outside the bounds falls back to the rigid result,
#: the mean head size (falling back to the similarity held at its bound was
#: worse: it was 1.13-1.16 on the scans without attenuation correction), except
#: for a small sharp head, which keeps that affine bounded
#: (:data:`SMALL_HEAD_BLUR_MAX_MM`).
SETTINGS = register.Settings(
    rigid_iterations=40, affine_iterations=40, shrink=(2, 1), sigmas_mm=(0.0, 0.0),
    affine_shrink=(1,), affine_sigmas_mm=(0.0,), affine_step=0.25, sampling_fraction=0.5,
    similarity=True, affine_from_similarity=False)


#: A series not stated as attenuation corrected whose fit to the standard
#: template is refused, or accepted below this correlation (the gate's floor
#: until check 5 replaced it as the test of misregistration), is registered to
#: the no-AC template too, whose accepted result is kept: on the benchmark's
#: weak no-AC fits it was 0.4-1.3 mm closer to the true pose (8 studies).
WEAK_QUALITY = 0.55
#: A rigid fallback (the affine left the bounds) is replaced by that affine,
#: bounded (:func:`service.imaging.register.bounded_affine`), when the
#: similarity's free scale is below 1 (and inside the engine's bounds) and the
#: scan's blur estimate (:func:`blur_estimate_mm`) is at most this: a small
#: sharp head, e.g. a severely atrophic one, is fitted near its size rather
#: than at the mean (the rigid fallback's size error on such heads: 10-15 %),
#: while a blurry scan, which looks small to the engine (the 18 mm camera:
#: similarity 7-12 % small, blur 16-28 mm), keeps the rigid fit. Rule and
#: measurement: ``models/training/rules/dat30_bounded_affine_small_sharp_head.md``.
SMALL_HEAD_BLUR_MAX_MM = 12.0
#: Extra Gaussian blurs (FWHM, mm) of the template that the blur estimate tries.
BLUR_GRID_MM = (0.0, 4.0, 8.0, 12.0, 16.0, 20.0, 24.0, 28.0)
#: The blur estimate compares the striatum dilated by this, mm.
BLUR_BOX_MARGIN_MM = 8.0

#: :attr:`Normalisation.target` of the shipped (CT-AC) template and of the no-AC one.
STANDARD_TARGET = "standard"
NOAC_TARGET = "no_ac"


@dataclass(frozen=True, eq=False)
class Normalisation:
    """Outcome of :func:`normalise` / :func:`register_scan`.

    Attributes
    ----------
    volume_zyx : (91, 109, 91) float32 array
        The scan resampled onto the atlas grid (linear), original count units.
    transform : SimpleITK.Transform
        Maps template (MNI, LPS mm) points to scan points.
    quality : float
        Correlation of the clipped, smoothed scan with the template inside
        the brain outside the striatum, -1..1 (:attr:`Checks.quality`;
        extracerebral uptake does not count).
    scales : (3,) float array
        Singular values of the affine matrix (scan mm per MNI mm).
    checks : Checks or None
        The gate's measurements (None only if the head could not be measured).
    refusal : str or None
        Patient-free reason when the gate refuses, else None.
    stage : str
        The engine's kept stage (``affine``, ``similarity`` or ``rigid``).
    warnings : tuple of str
        The engine's patient-free notes (a scale held at its bound, an affine
        replaced by the similarity).
    target : str
        The template registered to: :data:`STANDARD_TARGET` or, after the
        standard one was refused, :data:`NOAC_TARGET` (:func:`normalise_series`).
    target_note : str
        For a reader when the target is not the standard one (why, and that
        the quality is measured against that target), else empty.
    """

    volume_zyx: np.ndarray
    transform: sitk.Transform
    quality: float
    scales: np.ndarray
    checks: Checks | None = None
    refusal: str | None = None
    stage: str = "affine"
    warnings: tuple[str, ...] = ()
    target: str = STANDARD_TARGET
    target_note: str = ""


@dataclass(frozen=True, eq=False)
class _Fixed:
    image: sitk.Image
    mask: sitk.Image
    view: TemplateView


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
        The resampled scan, the transform, the quality score and the checks.

    Raises
    ------
    AnalysisError
        ``normalisation_failed`` when no head is found, the optimiser fails or
        a check of the gate fails (the reason names the check and its value).
    """
    result = register_scan(moving, template_zyx, atlas)
    if result.refusal is not None:
        raise AnalysisError(result.refusal, "normalisation_failed")
    return result


def normalise_series(moving: sitk.Image, template_zyx: np.ndarray, atlas: Atlas,
                     noac_template_zyx: np.ndarray | None, ac_stated: bool) -> Normalisation:
    """:func:`normalise`, with the no-AC template as a second target.

    A scan without attenuation correction (AC) looks unlike the standard
    (CT-AC) template; the engine then fits the head too large and the gate
    refused about one such scan in eight, docs/dat_registration.md, "Scans
    without attenuation correction"). A series whose header does not state AC
    (Corrected Image without ``ATTN``, or absent) whose fit to the standard
    template the gate refused, or accepted below :data:`WEAK_QUALITY`, is
    registered again to ``noac_template_zyx``
    (``models/template/build_noac_template.py``); the gate checks that
    registration against that template. An accepted second registration is
    kept, with :attr:`Normalisation.target` ``no_ac`` and a
    :attr:`Normalisation.target_note` that says so (the pipeline makes it a
    warning of the result: the SR and the picture show it); a refused one
    leaves the standard fit if that was accepted. A series fitted well to the
    standard template never reaches the second, and a series stated as AC
    never does.

    Parameters
    ----------
    moving : SimpleITK.Image
    template_zyx : (91, 109, 91) float32 array
        The standard template.
    atlas : Atlas
    noac_template_zyx : (91, 109, 91) float32 array or None
        The second target; None turns the second attempt off.
    ac_stated : bool
        True when the header says the series is attenuation corrected.

    Raises
    ------
    AnalysisError
        ``normalisation_failed``: no head, an optimiser error, or the gate
        refused every target tried (the reason names the standard template's
        failed check, then the second's).
    """
    result = register_series(moving, template_zyx, atlas, noac_template_zyx, ac_stated)
    if result.refusal is not None:
        raise AnalysisError(result.refusal, "normalisation_failed")
    return result


def register_series(moving: sitk.Image, template_zyx: np.ndarray, atlas: Atlas,
                    noac_template_zyx: np.ndarray | None, ac_stated: bool) -> Normalisation:
    """As :func:`normalise_series`, but a refused registration is returned, not raised.

    When both targets were tried and refused, the second's result is returned
    (``target`` ``no_ac``) with a refusal naming both failed checks.

    Raises
    ------
    AnalysisError
        ``normalisation_failed`` when no head is found or the optimiser fails.
    """
    first = register_scan(moving, template_zyx, atlas)
    weak = first.refusal is not None or first.quality < WEAK_QUALITY
    if not weak or ac_stated or noac_template_zyx is None:
        return first
    second = register_scan(moving, noac_template_zyx, atlas)
    if second.refusal is None:
        standard = (first.refusal.removeprefix("normalisation failed: ")
                    if first.refusal is not None
                    else "weak fit, " + below("quality", first.quality, WEAK_QUALITY))
        note = ("registered to the template for scans without attenuation correction "
                f"(the standard template: {standard}); registration quality is "
                "measured against that template")
        return replace(second, target=NOAC_TARGET, target_note=note)
    if first.refusal is None:
        return first
    both = (f"{first.refusal}; on the no-AC template: "
            f"{second.refusal.removeprefix('normalisation failed: ')}")
    return replace(second, target=NOAC_TARGET, refusal=both)


def register_scan(moving: sitk.Image, template_zyx: np.ndarray, atlas: Atlas) -> Normalisation:
    """As :func:`normalise`, but a refused registration is returned, not raised.

    ``refusal`` holds the gate's reason; the transform is the engine's best
    (for measuring refused studies, e.g. ``bench/dat_registration.py``).

    Raises
    ------
    AnalysisError
        ``normalisation_failed`` when no head is found or the optimiser fails.
    """
    fixed = _prepare_fixed(template_zyx, atlas)
    moving = sitk.Cast(moving, sitk.sitkFloat32)
    work = _working_copy(moving)
    try:
        fitted = register.fit(fixed.image, fixed.mask, work, SETTINGS)
    except RuntimeError as exc:  # SimpleITK reports optimiser failures so
        raise AnalysisError(
            "normalisation failed: optimiser error", "normalisation_failed"
        ) from exc
    return evaluate(moving, small_head_affine(moving, fitted, template_zyx, atlas),
                    template_zyx, atlas)


def small_head_affine(moving: sitk.Image, fitted: register.Fit, template_zyx: np.ndarray,
                      atlas: Atlas) -> register.Fit:
    """``fitted``, or its rejected affine bounded where a rigid fallback meets a small
    sharp head (:data:`SMALL_HEAD_BLUR_MAX_MM`)."""
    rejected = fitted.rejected_affine
    lo, _ = SETTINGS.scale_range
    if fitted.stage != "rigid" or rejected is None or not lo <= fitted.similarity_scale < 1.0:
        return fitted
    blur = blur_estimate_mm(moving, fitted.transform, template_zyx, atlas)
    if blur > SMALL_HEAD_BLUR_MAX_MM:
        return fitted
    bounded = register.bounded_affine(rejected, SETTINGS)
    scales = register.singular_values(bounded)
    note = (f"small head x{fitted.similarity_scale:.2f}, blur about {blur:.0f} mm: the affine "
            f"bounded to {scales.min():.2f}-{scales.max():.2f} used instead of the rigid one")
    replaced = register.fallback_warning(register.singular_values(rejected), fitted.stage)
    kept = tuple(w for w in fitted.warnings if w != replaced)
    return replace(fitted, transform=bounded, stage="affine", scales=scales,
                   warnings=(*kept, note))


def blur_estimate_mm(moving: sitk.Image, transform: sitk.Transform, template_zyx: np.ndarray,
                     atlas: Atlas) -> float:
    """How much blurrier than the template the scan is, about: FWHM in mm.

    The scan is resampled onto the atlas grid through ``transform``; the
    result is the extra Gaussian blur of :data:`BLUR_GRID_MM` that makes the
    template correlate best with it inside the AAL striatum dilated by
    :data:`BLUR_BOX_MARGIN_MM` (the striatum is the only sharp structure of
    an FP-CIT scan, so its width is the scan's resolution).
    """
    volume = sitk.Resample(sitk.Cast(moving, sitk.sitkFloat32), atlas.reference_image(),
                           transform, sitk.sitkLinear, 0.0)
    template = np.ascontiguousarray(template_zyx, np.float32)
    references, box = _blurred_striatum(template.tobytes(), template.shape, atlas)
    scan = sitk.GetArrayViewFromImage(volume)[box].astype(np.float64)
    scores = [correlation(scan, reference) for reference in references]
    return BLUR_GRID_MM[int(np.argmax(scores))]


@lru_cache(maxsize=2)
def _blurred_striatum(template_bytes: bytes, shape: tuple[int, int, int], atlas: Atlas
                      ) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """The template blurred by each of :data:`BLUR_GRID_MM`, inside the box (and the box)."""
    template = np.frombuffer(template_bytes, np.float32).reshape(shape).astype(np.float64)
    striatum = np.any([atlas.mask(region.value) for region in REGIONS], axis=0)
    grow = max(1, int(round(BLUR_BOX_MARGIN_MM / float(atlas.spacing_mm[0]))))
    box = ndimage.binary_dilation(striatum, iterations=grow)
    fwhm_per_sigma = 2.0 * np.sqrt(2.0 * np.log(2.0))
    blurred = tuple(
        (ndimage.gaussian_filter(template, fwhm / fwhm_per_sigma / float(atlas.spacing_mm[0]))
         if fwhm > 0 else template)[box] for fwhm in BLUR_GRID_MM)
    return blurred, box


def evaluate(moving: sitk.Image, fitted: register.Fit, template_zyx: np.ndarray,
             atlas: Atlas) -> Normalisation:
    """Resample the scan through ``fitted.transform`` and run the gate's checks.

    Parameters
    ----------
    moving : SimpleITK.Image
        The scan (LPS).
    fitted : service.imaging.register.Fit
        A fitted (or, in tests, a deliberately wrong) template-to-scan transform.
    template_zyx : (91, 109, 91) float32 array
    atlas : Atlas

    Returns
    -------
    Normalisation
        ``refusal`` set when a check fails.
    """
    fixed = _prepare_fixed(template_zyx, atlas)
    moving = sitk.Cast(moving, sitk.sitkFloat32)
    reference = atlas.reference_image()
    volume = sitk.Resample(moving, reference, fitted.transform, sitk.sitkLinear, 0.0)
    volume_zyx = sitk.GetArrayFromImage(volume).astype(np.float32)
    ones = moving * 0 + 1
    fov = sitk.Resample(ones, reference, fitted.transform, sitk.sitkNearestNeighbor, 0.0)
    processed_zyx = sitk.GetArrayFromImage(
        _process(atlas.reference_image(volume_zyx), CHECK_FWHM_MM, CHECK_CLIP_X_HEAD_MEDIAN))
    checks = run_checks(processed_zyx, sitk.GetArrayFromImage(fov) > 0, fixed.view, atlas,
                        fitted)
    if checks.failure is None:
        checks = with_optimum(checks, _best_probe_quality(moving, ones, fitted.transform,
                                                          fixed.view, atlas))
    quality = checks.quality
    log.info("normalised", extra={"fields": {
        "quality": round(quality, 3), "scales": np.round(fitted.scales, 3).tolist(),
        "stage": fitted.stage, "head_dice": round(checks.head_dice, 3),
        "outline_gap_mm": checks.outline_gap_mm,
        "warnings": list(fitted.warnings),
        "refused": checks.failure is not None}})
    refusal = None if checks.failure is None else f"normalisation failed: {checks.failure}"
    return Normalisation(volume_zyx, fitted.transform, quality, fitted.scales, checks, refusal,
                         fitted.stage, fitted.warnings)


def _best_probe_quality(moving: sitk.Image, ones: sitk.Image, transform: sitk.Transform,
                        view: TemplateView, atlas: Atlas) -> float:
    """The best check-4 correlation at the probes of check 5 around ``transform``
    (``ones``: the scan's grid filled with 1, for its field of view)."""
    reference = atlas.reference_image()
    best = -1.0
    for rotation, shift in probe_moves():
        probe = moved(transform, rotation, shift)
        volume = sitk.Resample(moving, reference, probe, sitk.sitkLinear, 0.0)
        fov = sitk.Resample(ones, reference, probe, sitk.sitkNearestNeighbor, 0.0)
        processed = sitk.GetArrayFromImage(
            _process(volume, CHECK_FWHM_MM, CHECK_CLIP_X_HEAD_MEDIAN))
        best = max(best, similarity(processed, sitk.GetArrayFromImage(fov) > 0, view, atlas))
    return best


def template_view(template_zyx: np.ndarray, atlas: Atlas) -> TemplateView:
    """The template as the gate compares it (cached).

    Parameters
    ----------
    template_zyx : (91, 109, 91) float32 array
    atlas : Atlas

    Returns
    -------
    TemplateView
    """
    return _prepare_fixed(template_zyx, atlas).view


def _process(image: sitk.Image, fwhm_mm: float, clip: float) -> sitk.Image:
    """Smooth by ``fwhm_mm``, divide by the head median, clip at ``clip`` (float32, same grid)."""
    image = sitk.Cast(image, sitk.sitkFloat32)
    if fwhm_mm > 0:
        sigma_mm = fwhm_mm / (2.0 * np.sqrt(2.0 * np.log(2.0)))
        image = sitk.SmoothingRecursiveGaussian(image, float(sigma_mm))
    arr = sitk.GetArrayFromImage(image)
    arr = np.clip(arr, 0.0, None)
    head = register.head_mask(arr)
    level = float(np.median(arr[head])) if head.sum() >= 100 else float(arr.max() or 1.0)
    out = sitk.GetImageFromArray(np.clip(arr / level, 0.0, clip).astype(np.float32))
    out.CopyInformation(image)
    return out


def _working_copy(moving: sitk.Image) -> sitk.Image:
    """The head's bounding box (plus a margin), processed, at no finer than the work spacing.

    Large fields of view (128^3 and more) hold mostly empty space; cropping and
    coarsening keep the optimiser's cost independent of the camera's matrix.
    """
    mask_zyx = register.head_mask(sitk.GetArrayViewFromImage(moving))
    if mask_zyx.sum() < 100:
        raise AnalysisError("normalisation failed: no head found in volume", "normalisation_failed")
    margin = np.ceil(CROP_MARGIN_MM / np.array(moving.GetSpacing())).astype(int)
    nonzero = np.nonzero(mask_zyx)
    lo_xyz = np.array([int(v.min()) for v in nonzero])[::-1] - margin
    hi_xyz = np.array([int(v.max()) for v in nonzero])[::-1] + margin
    lo_xyz = np.maximum(lo_xyz, 0)
    hi_xyz = np.minimum(hi_xyz, np.array(moving.GetSize()) - 1)
    cropped = sitk.RegionOfInterest(moving, (hi_xyz - lo_xyz + 1).tolist(), lo_xyz.tolist())
    return register.coarser_grid(_process(cropped, WORK_FWHM_MM, CLIP_X_HEAD_MEDIAN),
                                 WORK_SPACING_MM)


@lru_cache(maxsize=2)
def _fixed_cached(template_bytes: bytes, shape: tuple[int, int, int], atlas: Atlas) -> _Fixed:
    template_zyx = np.frombuffer(template_bytes, np.float32).reshape(shape)
    image = atlas.reference_image(template_zyx.copy())
    processed = _process(image, WORK_FWHM_MM, CLIP_X_HEAD_MEDIAN)
    factor = int(round(WORK_SPACING_MM / atlas.spacing_mm[0]))
    grow = max(1, int(round(MASK_MARGIN_MM / float(atlas.spacing_mm[0]))))
    mask_zyx = ndimage.binary_dilation(atlas.brain_zyx, iterations=grow)
    mask = sitk.BinShrink(atlas.reference_image(mask_zyx.astype(np.float32)), [factor] * 3) > 0
    return _Fixed(
        image=sitk.BinShrink(processed, [factor] * 3),
        mask=sitk.Cast(mask, sitk.sitkUInt8),
        view=_template_view(image),
    )


def _template_view(template: sitk.Image) -> TemplateView:
    """The template processed as a scan is for the checks, and its head outline."""
    processed_zyx = sitk.GetArrayFromImage(
        _process(template, CHECK_FWHM_MM, CHECK_CLIP_X_HEAD_MEDIAN))
    return TemplateView(processed_zyx, register.head_mask(processed_zyx))


def _prepare_fixed(template_zyx: np.ndarray, atlas: Atlas) -> _Fixed:
    if template_zyx.shape != atlas.shape_zyx:
        raise ValueError(f"template shape {template_zyx.shape} is not {atlas.shape_zyx}")
    data = np.ascontiguousarray(template_zyx, np.float32)
    return _fixed_cached(data.tobytes(), data.shape, atlas)

