"""One template registration engine: multi-start rigid, similarity, bounded affine.

Both tracer pipelines register a patient volume (moving; any LPS grid) to a
template (fixed; MNI grid) with the same steps, on a working grid of a few mm:

1. **start**: the centres of the two head outlines are aligned, then a set of
   rotations (one axis at a time, :attr:`Settings.start_angles_deg`) is scored
   at twice the working voxel size and the best starts the optimisation;
2. **rigid** (Euler, 6 parameters);
3. **similarity** (rotation, translation and one isotropic scale), optional;
4. **affine** (12 parameters), started from the similarity or the rigid
   result (:attr:`Settings.affine_from_similarity`).

Scaling is bounded: an affine whose singular values leave
:attr:`Settings.scale_range`, or whose axes differ by more than
:attr:`Settings.max_anisotropy`, is replaced by the previous stage's result,
and a similarity whose scale leaves the range is either refitted with its
scale held at the nearest bound (:attr:`Fit.scale_clipped`) or only reported
(:attr:`Settings.affine_from_similarity`): a head is never shrunk (or grown)
past the bound to raise a correlation. The bound comes from adult head size: intracranial
volume has a coefficient of variation of about 10 % (e.g. Buckner et al.,
NeuroImage 2004, 23:724), i.e. linear size about 3.3 % per SD, so 0.85-1.15
is more than 4 SD either way; the simulator draws 0.92-1.08 per axis.

Frames: LPS mm. The transform maps fixed (template) points to moving (scan)
points, as ``SimpleITK.Resample`` of the scan onto the template grid expects.
Pure numerics: images in, frozen dataclasses out, no I/O.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

log = logging.getLogger(__name__)

#: Plausible adult head size relative to the MNI template (see module docstring).
HEAD_SCALE_RANGE = (0.85, 1.15)
#: Most a fitted affine's largest singular value may exceed its smallest (ratio).
MAX_ANISOTROPY = 1.15


@dataclass(frozen=True)
class Settings:
    """How :func:`fit` optimises (all sizes in mm).

    Attributes
    ----------
    start_angles_deg : tuple of float
        Rotations tried about each axis (one axis at a time) from the centred start.
    rigid_iterations, affine_iterations : int
    shrink, sigmas_mm : tuple
        Pyramid of the rigid and similarity stages (shrink factors of the
        working grid, smoothing sigmas in mm).
    affine_shrink, affine_sigmas_mm : tuple
        Pyramid of the affine stage.
    affine_step : float
        First step of the affine optimiser (physical-shift scaled, about mm).
    sampling_fraction : float
        Fraction of the fixed mask's voxels sampled by the metric (1 = all).
    similarity : bool
        Whether the similarity stage runs (else rigid then affine).
    affine : bool
        Whether the affine stage runs (else the similarity or rigid result is kept).
    affine_from_similarity : bool
        True: a similarity outside the range is refitted with its scale held
        at the nearest bound, the affine starts from it and an implausible
        affine falls back to it. False: the similarity only measures the head
        size (:attr:`Fit.similarity_scale`); the affine starts from the rigid
        result and an implausible affine falls back to it (the mean head size).
    scale_range : (float, float)
        Accepted singular values of the fitted matrix.
    max_anisotropy : float
        Accepted ratio of the largest to the smallest singular value.
    metric : str
        ``"correlation"`` (normalised cross correlation) or ``"mattes"``
        (Mattes mutual information, 32 bins).
    """

    start_angles_deg: tuple[float, ...] = (-20.0, 0.0, 20.0)
    rigid_iterations: int = 40
    affine_iterations: int = 40
    shrink: tuple[int, ...] = (2, 1)
    sigmas_mm: tuple[float, ...] = (0.0, 0.0)
    affine_shrink: tuple[int, ...] = (1,)
    affine_sigmas_mm: tuple[float, ...] = (0.0,)
    affine_step: float = 0.25
    sampling_fraction: float = 0.5
    similarity: bool = True
    affine: bool = True
    affine_from_similarity: bool = True
    scale_range: tuple[float, float] = HEAD_SCALE_RANGE
    max_anisotropy: float = MAX_ANISOTROPY
    metric: str = "correlation"


@dataclass(frozen=True, eq=False)
class Fit:
    """Outcome of :func:`fit`.

    Attributes
    ----------
    transform : SimpleITK.AffineTransform
        Fixed (template) to moving (scan) points, LPS mm: the kept stage.
    stage : str
        Which stage was kept: ``"affine"``, ``"similarity"`` or ``"rigid"``.
    scales : (3,) float array
        Singular values of the kept matrix, descending (scan mm per template mm).
    similarity_scale : float
        Free isotropic scale of the similarity stage (1.0 when it did not run).
    scale_clipped : bool
        True when the similarity's free scale (:attr:`similarity_scale`) was
        outside the range and the similarity was refitted at the nearest bound.
    warnings : tuple of str
        Patient-free notes on stages that were replaced.
    rejected_affine : SimpleITK.AffineTransform or None
        The affine fit that left the bounds and was replaced (None when it
        was kept or did not run), for a caller that bounds it
        (:func:`bounded_affine`).
    """

    transform: sitk.AffineTransform
    stage: str
    scales: np.ndarray
    similarity_scale: float
    scale_clipped: bool
    warnings: tuple[str, ...]
    rejected_affine: sitk.AffineTransform | None = None


def fit(fixed: sitk.Image, fixed_mask: sitk.Image, moving: sitk.Image,
        settings: Settings = Settings()) -> Fit:
    """Register ``moving`` to ``fixed`` (both float32 on working grids).

    Parameters
    ----------
    fixed : SimpleITK.Image
        Template on its working grid.
    fixed_mask : SimpleITK.Image
        uint8 mask on the same grid: where the metric is evaluated.
    moving : SimpleITK.Image
        Scan on its working grid (any orientation).
    settings : Settings

    Returns
    -------
    Fit

    Raises
    ------
    RuntimeError
        When SimpleITK's optimiser fails (callers turn it into their error).
    """
    start = best_start(fixed, fixed_mask, moving, settings.start_angles_deg)
    rigid = _optimise(fixed, fixed_mask, moving, start, settings, affine=False)
    kept, stage, sim_scale, clipped_scale = as_affine(rigid), "rigid", 1.0, False
    warnings: list[str] = []
    rejected: sitk.AffineTransform | None = None
    if settings.similarity:
        sim = _similarity(fixed, fixed_mask, moving, rigid, settings)
        sim_scale = float(sim.GetScale())
        lo, hi = settings.scale_range
        inside = lo <= sim_scale <= hi
        if not inside:
            warnings.append(f"head size x{sim_scale:.2f} outside {lo:.2f}-{hi:.2f}")
        if settings.affine_from_similarity:
            if not inside:  # held at the nearest bound, the rest refitted
                sim.SetScale(float(np.clip(sim_scale, lo, hi)))
                sim = sitk.Similarity3DTransform(_optimise(
                    fixed, fixed_mask, moving, sim, settings, affine=False, fixed_scale=True))
                clipped_scale = True
            kept, stage = as_affine(sim), "similarity"
    if settings.affine:
        affine = as_affine(_optimise(fixed, fixed_mask, moving, kept, settings, affine=True))
        scales = singular_values(affine)
        if _plausible(scales, settings):
            kept, stage = affine, "affine"
        else:
            rejected = affine
            warnings.append(fallback_warning(scales, stage))
    return Fit(kept, stage, singular_values(kept), sim_scale, clipped_scale, tuple(warnings),
               rejected)


def fallback_warning(scales: np.ndarray, stage: str) -> str:
    """The warning of :func:`fit` when an affine of singular values ``scales`` left the
    bounds and ``stage``'s result was kept instead."""
    return (f"affine scaling {scales.min():.2f}-{scales.max():.2f} implausible: "
            f"{stage} registration used")


def bounded_affine(affine: sitk.AffineTransform, settings: Settings = Settings()
                   ) -> sitk.AffineTransform:
    """``affine`` with its singular values brought inside the bounds.

    Clipped to :attr:`Settings.scale_range`, then to within the square root
    of :attr:`Settings.max_anisotropy` of their geometric mean either way;
    the rotations (the SVD's U and V), the centre and the translation are kept.
    """
    u, values, vt = np.linalg.svd(np.asarray(affine.GetMatrix()).reshape(3, 3))
    lo, hi = settings.scale_range
    values = np.clip(values, lo, hi)
    mean = float(np.exp(np.log(values).mean()))
    spread = float(np.sqrt(settings.max_anisotropy))
    values = np.clip(values, mean / spread, mean * spread)
    out = as_affine(affine)
    out.SetMatrix((u @ np.diag(values) @ vt).ravel().tolist())
    return out


def _similarity(fixed: sitk.Image, mask: sitk.Image, moving: sitk.Image,
                rigid: sitk.Transform, settings: Settings) -> sitk.Similarity3DTransform:
    sim = sitk.Similarity3DTransform()
    sim.SetCenter(rigid.GetCenter())  # type: ignore[attr-defined]
    sim.SetMatrix(rigid.GetMatrix())  # type: ignore[attr-defined]
    sim.SetTranslation(rigid.GetTranslation())  # type: ignore[attr-defined]
    out = _optimise(fixed, mask, moving, sim, settings, affine=False)
    return sitk.Similarity3DTransform(out)


def _plausible(scales: np.ndarray, settings: Settings) -> bool:
    lo, hi = settings.scale_range
    return bool(lo <= scales.min() and scales.max() <= hi
                and scales.max() <= settings.max_anisotropy * scales.min())


def singular_values(transform: sitk.Transform) -> np.ndarray:
    """Singular values (descending) of a matrix transform's 3x3 matrix."""
    matrix = np.asarray(transform.GetMatrix()).reshape(3, 3)  # type: ignore[attr-defined]
    return np.linalg.svd(matrix, compute_uv=False)


def as_affine(transform: sitk.Transform) -> sitk.AffineTransform:
    """The same mapping as an ``AffineTransform`` (Euler, similarity or affine in)."""
    affine = sitk.AffineTransform(3)
    affine.SetCenter(transform.GetCenter())  # type: ignore[attr-defined]
    affine.SetMatrix(transform.GetMatrix())  # type: ignore[attr-defined]
    affine.SetTranslation(transform.GetTranslation())  # type: ignore[attr-defined]
    return affine


def _method(mask: sitk.Image, iterations: int, shrink: tuple[int, ...],
            sigmas_mm: tuple[float, ...], sampling: float, step: float = 1.0,
            metric: str = "correlation") -> sitk.ImageRegistrationMethod:
    reg = sitk.ImageRegistrationMethod()
    if metric == "mattes":
        reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    else:
        reg.SetMetricAsCorrelation()
    reg.SetMetricFixedMask(mask)
    if sampling < 1.0:
        reg.SetMetricSamplingStrategy(reg.REGULAR)
        reg.SetMetricSamplingPercentage(sampling, seed=1)
    else:
        reg.SetMetricSamplingStrategy(reg.NONE)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=step, minStep=0.01, numberOfIterations=iterations, relaxationFactor=0.6)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(list(shrink))
    reg.SetSmoothingSigmasPerLevel(list(sigmas_mm))
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    return reg


def _optimise(fixed: sitk.Image, mask: sitk.Image, moving: sitk.Image, start: sitk.Transform,
              settings: Settings, *, affine: bool, fixed_scale: bool = False) -> sitk.Transform:
    """Optimise a copy of ``start`` (its type decides the stage) and return it.

    ``fixed_scale`` holds a similarity's scale (its 7th parameter) where it is.
    """
    if affine:
        tx: sitk.Transform = as_affine(start)
        reg = _method(mask, settings.affine_iterations, settings.affine_shrink,
                      settings.affine_sigmas_mm, settings.sampling_fraction,
                      settings.affine_step, settings.metric)
    else:
        tx = type(start)(start)
        reg = _method(mask, settings.rigid_iterations, settings.shrink, settings.sigmas_mm,
                      settings.sampling_fraction, metric=settings.metric)
    if fixed_scale:
        reg.SetOptimizerWeights([1.0] * 6 + [0.0])
    reg.SetInitialTransform(tx, inPlace=True)
    reg.Execute(fixed, moving)
    return tx


def best_start(fixed: sitk.Image, mask: sitk.Image, moving: sitk.Image,
               angles_deg: tuple[float, ...]) -> sitk.Euler3DTransform:
    """Align the head centres, then keep the best of the rotations (scored at 2x the grid)."""
    centre = mask_centre_lps(fixed)
    shift = mask_centre_lps(moving) - centre
    coarse = sitk.BinShrink(fixed, [2, 2, 2])
    reg = _method(sitk.Cast(sitk.BinShrink(mask, [2, 2, 2]) > 0, sitk.sitkUInt8), 0, (1,),
                  (0.0,), 1.0)
    best: tuple[float, sitk.Euler3DTransform] | None = None
    for angles in itertools.product(angles_deg, repeat=3):
        if sum(a != 0 for a in angles) > 1:  # one axis at a time
            continue
        tx = sitk.Euler3DTransform()
        tx.SetCenter(centre.tolist())
        tx.SetRotation(*np.deg2rad(angles).tolist())
        tx.SetTranslation(shift.tolist())
        reg.SetInitialTransform(tx, inPlace=False)
        value = reg.MetricEvaluate(coarse, moving)
        if best is None or value < best[0]:
            best = (value, tx)
    assert best is not None
    return best[1]


def head_mask(volume_zyx: np.ndarray, fraction_of_p90: float = 0.25) -> np.ndarray:
    """Head outline: the largest component above ``fraction_of_p90`` of the positive p90.

    The 90th percentile of the positive voxels is a level of non-specific
    uptake in healthy and diseased scans alike, so the outline does not
    collapse onto a hot striatum or tumour.

    Returns
    -------
    (z, y, x) bool array
        Empty when there are fewer than 100 positive voxels.
    """
    positive = volume_zyx[volume_zyx > 0]
    if positive.size < 100:
        return np.zeros(volume_zyx.shape, bool)
    mask = volume_zyx > fraction_of_p90 * float(np.percentile(positive, 90))
    labels, n = ndimage.label(mask)
    if n > 1:  # keep the largest component: noise specks move a centroid
        sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
        mask = labels == (1 + int(np.argmax(sizes)))
    return np.asarray(mask)


def mask_centre_lps(image: sitk.Image) -> np.ndarray:
    """Physical centre (LPS mm) of the head outline of an image."""
    mask_zyx = head_mask(sitk.GetArrayViewFromImage(image))
    centre_zyx = np.array(ndimage.center_of_mass(mask_zyx))
    return np.array(image.TransformContinuousIndexToPhysicalPoint(centre_zyx[::-1].tolist()))


def coarser_grid(image: sitk.Image, spacing_mm: float) -> sitk.Image:
    """``image`` resampled (linear, float32) onto voxels of at least ``spacing_mm`` per
    axis, same orientation, the new grid's corner on the old one's."""
    spacing = np.array(image.GetSpacing())
    new_spacing = np.maximum(spacing, spacing_mm)
    size = np.maximum(np.round(np.array(image.GetSize()) * spacing / new_spacing), 1).astype(int)
    origin = np.array(image.TransformContinuousIndexToPhysicalPoint(
        (0.5 * (new_spacing / spacing) - 0.5).tolist()))
    return sitk.Resample(image, size.tolist(), sitk.Transform(), sitk.sitkLinear,
                         origin.tolist(), new_spacing.tolist(), image.GetDirection(), 0.0,
                         sitk.sitkFloat32)
