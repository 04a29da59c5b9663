"""Spatial normalisation of an FDOPA PET to the FDOPA template (SimpleITK).

The PET (moving; native grid, any orientation, LPS affine) is registered to the
template (fixed; MNI 2 mm grid): centre-of-head initialisation and a few
rotations, then rigid, then affine, maximising the normalised correlation of
two robustly normalised, clipped and smoothed images on a 4 mm working grid
(8 mm then 4 mm). Both images are divided by the median of their own head
outline and clipped at :data:`CLIP_X_HEAD_MEDIAN`: what steers the registration
is then the large-scale shape (head and brain outline, the striatal pair,
grey/white contrast), not the height of a hot tumour, which after clipping is
no brighter than a normal striatum; the working grid and smoothing remove the
reconstruction's texture.

The transform maps template points to PET points (LPS mm), as
``SimpleITK.Resample`` of the PET onto the template grid expects; its inverse
brings the atlas onto the PET. The quality score is the normalised cross
correlation (NCC) of the normalised, clipped PET resampled onto the template
grid with the template, inside the template brain, floored at 0; voxels hotter
than any normal brain (1.15 x the template's maximum: tumour) are left out.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from service.errors import AnalysisError
from service.imaging import register
from service.imaging.register import coarser_grid
from service.pipelines.fdopa_pet.result import AtlasOnPet
from service.pipelines.fdopa_pet.template import FdopaTemplate, image_from_affine

log = logging.getLogger(__name__)

#: Intensities are divided by the head-outline median and clipped here (a
#: normal striatum is about 2-2.5 x brain; hotter tumours are clipped to it).
CLIP_X_HEAD_MEDIAN = 2.5
#: In the quality score, PET voxels above this x the (normalised) template's
#: maximum, a normal striatum, are abnormal (tumour) and left out.
ABNORMAL_X_TEMPLATE_MAX = 1.15
#: Head outline: above this fraction of the 90th percentile of positive voxels.
HEAD_FRACTION_OF_P90 = 0.25
#: Working voxel size (mm) and the pre-smoothing of the PET before it, mm FWHM.
WORK_SPACING_MM = 4.0
WORK_FWHM_MM = 6.0
#: Rotations (degrees, one axis at a time) scored from the centred start.
START_ANGLES_DEG = (-20.0, 0.0, 20.0)
#: Accepted singular values of the affine (PET mm per template mm); outside
#: them the rigid result is kept, with a warning.
SCALE_RANGE = (0.75, 1.35)
#: Fixed-image mask: the template brain dilated by this, mm (keeps the outline).
MASK_MARGIN_MM = 12.0
#: Suggested gate for the pipeline: below it the atlas should not be trusted.
#: Measured (docs/fdopa_analysis.md "Reference regions"): 12 simulated studies of
#: all four profiles 0.78-0.88; the 27 template-build scans 0.79-0.91; the
#: template moved by a known transform and scored with a wrong one: 0.54 (10 mm
#: shift), 0.31 (20 mm), 0.26 (upside down), but 0.72 with 15 degrees of pitch.
QUALITY_GATE = 0.6


@dataclass(frozen=True, eq=False)
class Registration:
    """Outcome of :func:`fit_registration`.

    Attributes
    ----------
    transform : SimpleITK.AffineTransform
        Template (LPS mm) to PET (LPS mm).
    quality : float
        NCC in the template brain, [0, 1].
    scales : (3,) float array
        Singular values of the affine matrix.
    seconds : float
    warnings : tuple of str
    """

    transform: sitk.AffineTransform
    quality: float
    scales: np.ndarray
    seconds: float
    warnings: tuple[str, ...] = ()


def register_to_template(volume_zyx: np.ndarray, affine: np.ndarray,
                         template: FdopaTemplate) -> AtlasOnPet:
    """Register a static FDOPA PET to the template and bring the atlas onto it.

    Parameters
    ----------
    volume_zyx : (z, y, x) float array
        Static PET in any units proportional to activity.
    affine : (4, 4) float array
        Voxel index ``(z, y, x)`` to LPS mm of the voxel centre.
    template : FdopaTemplate

    Returns
    -------
    AtlasOnPet
        Atlas labels on the PET grid (nearest neighbour, int16), the lateral
        distance map (float32, mm in template space from the template's
        mid-sagittal plane, + = patient left) and the quality; a low quality
        is returned, not raised (the pipeline gates it).

    Raises
    ------
    AnalysisError
        ``registration_failed`` when no head is found or the optimiser fails.
    """
    reg = fit_registration(volume_zyx, affine, template)
    inverse = reg.transform.GetInverse()
    labels_img = image_from_affine(template.labels_zyx.astype(np.int16), template.affine)
    native = image_from_affine(np.zeros(volume_zyx.shape, np.uint8), affine)
    labels = sitk.GetArrayFromImage(
        sitk.Resample(labels_img, native, inverse, sitk.sitkNearestNeighbor, 0, sitk.sitkInt16))
    lateral = lateral_map_mm(volume_zyx.shape, affine, reg.transform)
    return AtlasOnPet(labels.astype(np.int16), dict(template.names), lateral, reg.quality,
                      reg.warnings)


def fit_registration(volume_zyx: np.ndarray, affine: np.ndarray,
                     template: FdopaTemplate) -> Registration:
    """The template-to-PET affine transform and its quality (see the module docstring)."""
    t0 = time.perf_counter()
    _check_geometry(volume_zyx, affine)
    volume = np.nan_to_num(np.asarray(volume_zyx, np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    fixed, fixed_mask = _fixed(template)
    moving = _work_image(volume, affine)
    try:
        result = register.fit(fixed, fixed_mask, moving, _settings())
    except RuntimeError as exc:  # SimpleITK reports optimiser failures so
        raise AnalysisError("registration failed: optimiser error",
                            "registration_failed") from exc
    scales, warnings = result.scales, list(result.warnings)
    quality = registration_quality(volume, affine, result.transform, template)
    seconds = time.perf_counter() - t0
    log.info("fdopa registered", extra={"fields": {
        "quality": round(quality, 3), "scales": np.round(scales, 3).tolist(),
        "seconds": round(seconds, 2)}})
    return Registration(result.transform, quality, scales, seconds, tuple(warnings))


def _settings() -> register.Settings:
    """The shared engine's schedule for FDOPA: rigid then affine (no similarity
    stage), 60 iterations each on an 8 mm then 4 mm pyramid, every mask voxel;
    an affine outside :data:`SCALE_RANGE` falls back to the rigid result."""
    return register.Settings(
        start_angles_deg=START_ANGLES_DEG, rigid_iterations=60, affine_iterations=60,
        shrink=(2, 1), sigmas_mm=(4.0, 2.0), affine_shrink=(2, 1), affine_sigmas_mm=(4.0, 2.0),
        affine_step=0.25, sampling_fraction=1.0, similarity=False, scale_range=SCALE_RANGE,
        max_anisotropy=SCALE_RANGE[1] / SCALE_RANGE[0])


def _check_geometry(volume_zyx: np.ndarray, affine: np.ndarray) -> None:
    """A 3-D volume and a finite affine with orthogonal, non-zero axes (else no registration)."""
    a = np.asarray(affine, float)
    if np.ndim(volume_zyx) != 3 or a.shape != (4, 4):
        raise ValueError("volume_zyx must be 3-D and affine (4, 4)")
    spacing = np.linalg.norm(a[:3, :3], axis=0)
    if not np.isfinite(a).all() or spacing.min() <= 0:
        raise AnalysisError("registration failed: degenerate PET geometry", "registration_failed")
    cols = a[:3, :3] / spacing
    if not np.allclose(cols.T @ cols, np.eye(3), atol=1e-4):
        raise AnalysisError("registration failed: PET axes not orthogonal", "registration_failed")


def robust_normalise(volume_zyx: np.ndarray) -> np.ndarray:
    """Divide by the head-outline median and clip to [0, :data:`CLIP_X_HEAD_MEDIAN`].

    Raises
    ------
    AnalysisError
        ``registration_failed`` when there are too few positive voxels for a head.
    """
    return np.clip(volume_zyx / head_level(volume_zyx), 0.0, CLIP_X_HEAD_MEDIAN).astype(
        np.float32)


def head_mask(volume_zyx: np.ndarray) -> np.ndarray:
    """Largest component above :data:`HEAD_FRACTION_OF_P90` of the positive voxels' p90."""
    return register.head_mask(volume_zyx, HEAD_FRACTION_OF_P90)


def head_level(volume_zyx: np.ndarray) -> float:
    """Median inside the head outline (:func:`head_mask`), the volume's units.

    Raises
    ------
    AnalysisError
        ``registration_failed`` when there are too few positive voxels for a head.
    """
    head = head_mask(volume_zyx)
    if head.sum() < 100:
        raise AnalysisError("registration failed: no head found in the volume",
                            "registration_failed")
    return float(np.median(volume_zyx[head]))




def _work_image(volume_zyx: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """Normalised, smoothed PET on a grid of :data:`WORK_SPACING_MM` (its own orientation)."""
    image = image_from_affine(robust_normalise(volume_zyx), affine)
    sigma_mm = WORK_FWHM_MM / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    return coarser_grid(sitk.SmoothingRecursiveGaussian(image, float(sigma_mm)),
                        WORK_SPACING_MM)




@lru_cache(maxsize=4)  # templates hash by identity (eq=False)
def _fixed(template: FdopaTemplate) -> tuple[sitk.Image, sitk.Image]:
    image = template.image(robust_normalise(np.asarray(template.image_zyx, np.float32)))
    factor = max(1, int(round(WORK_SPACING_MM / float(np.linalg.norm(template.affine[:3, 0])))))
    spacing = float(np.linalg.norm(template.affine[:3, 0]))
    grow = max(1, int(round(MASK_MARGIN_MM / spacing)))
    mask_zyx = ndimage.binary_dilation(template.brain_zyx, iterations=grow)
    mask = sitk.BinShrink(template.image(mask_zyx.astype(np.float32)), [factor] * 3) > 0
    return sitk.BinShrink(image, [factor] * 3), sitk.Cast(mask, sitk.sitkUInt8)














def warp_to_template(volume_zyx: np.ndarray, affine: np.ndarray, transform: sitk.Transform,
                     template: FdopaTemplate) -> np.ndarray:
    """The PET resampled (linear) onto the template grid, float32 ``[z, y, x]``, its units."""
    moving = image_from_affine(np.asarray(volume_zyx, np.float32), affine)
    out = sitk.Resample(moving, template.image(), transform, sitk.sitkLinear, 0.0,
                        sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)


def registration_quality(volume_zyx: np.ndarray, affine: np.ndarray, transform: sitk.Transform,
                         template: FdopaTemplate) -> float:
    """NCC of the normalised, clipped PET and template inside the template brain, [0, 1].

    Voxels hotter than :data:`ABNORMAL_X_TEMPLATE_MAX` x the template's maximum
    (no normal brain is; a hot tumour) are left out, so that a large hot
    tumour does not lower the score of a correct registration.
    """
    level = head_level(np.asarray(volume_zyx, np.float32))
    warped = warp_to_template(np.asarray(volume_zyx, np.float32) / level, affine, transform,
                              template)
    reference = robust_normalise(np.asarray(template.image_zyx, np.float32))
    brain = template.brain_zyx & (warped <= ABNORMAL_X_TEMPLATE_MAX * float(reference.max()))
    warped = np.clip(warped, 0.0, CLIP_X_HEAD_MEDIAN)
    a = warped[brain].astype(np.float64)
    b = reference[brain].astype(np.float64)
    a -= a.mean()
    b -= b.mean()
    denom = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return max(0.0, float((a * b).sum() / denom)) if denom > 0 else 0.0


def lateral_map_mm(shape_zyx: tuple[int, ...], affine: np.ndarray,
                   transform: sitk.AffineTransform) -> np.ndarray:
    """Template-space LPS x (mm, + = patient left) of every PET voxel centre, float32 ``[z, y, x]``.

    The template's mid-sagittal plane is x = 0, so this is the signed lateral
    distance from it.
    """
    m = np.asarray(transform.GetMatrix()).reshape(3, 3)
    c = np.asarray(transform.GetCenter())
    t = np.asarray(transform.GetTranslation())
    forward = np.eye(4)
    forward[:3, :3] = m
    forward[:3, 3] = t + c - m @ c
    row = (np.linalg.inv(forward) @ affine)[0]  # template x as a function of (z, y, x, 1)
    nz, ny, nx = shape_zyx
    return (row[0] * np.arange(nz, dtype=np.float32)[:, None, None]
            + row[1] * np.arange(ny, dtype=np.float32)[None, :, None]
            + row[2] * np.arange(nx, dtype=np.float32)[None, None, :]
            + np.float32(row[3])).astype(np.float32)
