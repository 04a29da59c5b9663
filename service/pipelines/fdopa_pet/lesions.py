"""FDOPA lesions: PET RANO post-processing of tumour candidates, and the threshold-only baseline.

Definitions (each with its source; research notes ``fdopa.md`` §1b/§2 and
``fdopa_sim_and_product.md`` §1.4, §5.2):

* **Lesion voxels** (PET RANO 1.0 / Nancy ground truth, Zaragori 2026,
  ``IADI-Nancy/FDOPA-PET-GliomaSeg`` ``tumor_TBR_segmentation``): candidate
  voxels (a boolean mask, or a probability ``>= 0.5``) whose value is
  ``>= threshold_units``, the pipeline's 1.6 x the healthy-background mean.
* **Opening by reconstruction** (Nancy ``morphological_opening_by_reconstruction``,
  kernel 1 voxel on their 1 mm grid): erosion by a ball of radius 1 mm, then
  reconstruction by dilation inside the thresholded mask. It removes every
  component with no core 1 mm thick around a voxel and keeps the others
  whole. Here it runs on the *native* PET grid with the ball in millimetres
  (voxels whose centres lie within 1 mm of the centre). On a grid coarser
  than 1 mm in every axis that ball is the single centre voxel, so the
  opening changes nothing: on clinical PET grids (2-4 mm) the job of that
  opening, dropping specks thinner than about 3 mm, is done by the minimum
  volume below, which is larger than any 3 mm speck.
* **Components**: 26-connectivity (voxels sharing a face, an edge or a
  corner belong together), as ``scipy.ndimage.label`` with a 3x3x3
  structure; a diagonal bridge of one voxel joins two foci into one lesion.
* **Minimum volume** :data:`MIN_LESION_ML` = 0.1 mL: a sphere of 0.1 mL is
  5.8 mm across, about one resolution element of a brain PET (4.5-6 mm
  FWHM), so a smaller component cannot be told from a noise peak or a
  spill-in speck. It is 5x below the PET RANO measurable size (0.5 mL), so
  no lesion that could be measurable is lost; small non-measurable lesions
  are kept and reported as such.
* **U-Net lesions** (:data:`UNET_MIN_LESION_ML` = 0.25 mL, with the
  left-right mirror TTA of :mod:`.segment`): smaller components of the
  U-Net's candidates are dropped. Chosen on validation studies by the rule
  written down before the first run (docs/fdopa_analysis.md, "False-positive
  suppression"): for run1 on 27 synthetic-anatomy studies 0.5 mL (false-
  positive lesions 4 -> 1); rerun for the shipped run4 on the 54 studies of
  both training anatomies, 0.25 mL (measurable truth tumours found 28/30,
  0.5 mL 27/30; false-positive lesions 1 both; controls with a lesion 0/10
  both). The price: a U-Net lesion (or a focus of a multifocal tumour) below
  0.25 mL is not reported; the threshold baseline keeps :data:`MIN_LESION_ML`.
* One :class:`Lesion` per component, ``index`` 1.. by decreasing volume
  (ties by raster order of the first voxel).

The threshold-only baseline (:func:`baseline_candidates`) is the classical
method the U-Net is compared with; its definition and failure modes are in its
docstring.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from service.errors import AnalysisError
from service.pipelines.fdopa_pet.result import TUMOUR_THRESHOLD_X_BACKGROUND, AtlasOnPet, Lesion

#: Components below this volume are dropped (mL; module docstring).
MIN_LESION_ML = 0.1
#: The U-Net's components below this volume are dropped (mL; module docstring).
UNET_MIN_LESION_ML = 0.25
#: Radius of the opening-by-reconstruction ball (mm; Nancy: 1 voxel of 1 mm).
OPENING_RADIUS_MM = 1.0
#: A probability at or above this makes a voxel a candidate.
PROBABILITY_CUT = 0.5
#: Shell around a lesion for :func:`component_contrast`: from this distance (mm) ...
SHELL_INNER_MM = 4.0
#: ... to this one (mm).
SHELL_OUTER_MM = 10.0
#: The baseline's brain mask is the atlas brain dilated by this (mm).
BASELINE_BRAIN_MARGIN_MM = 4.0
#: The baseline excludes the atlas striatum dilated by this (mm).
BASELINE_STRIATUM_MARGIN_MM = 6.0

#: Atlas label-name prefixes of each group (names as in ``AtlasOnPet.names``).
STRIATUM_PREFIXES = ("striatum", "caudate", "putamen", "pallidum")
INFRATENTORIAL_PREFIXES = ("brain_stem", "brainstem", "cerebellum")
HEALTHY_BRAIN_PREFIXES = ("cortex", "grey_matter", "gray_matter", "white_matter")

#: 26-connectivity (face, edge and corner neighbours), for labelling and dilation.
FULL_26 = np.ones((3, 3, 3), bool)


def atlas_names(atlas: AtlasOnPet, prefixes: tuple[str, ...], what: str) -> tuple[str, ...]:
    """Atlas label names starting with one of ``prefixes``.

    Raises
    ------
    service.errors.AnalysisError
        ``code="atlas_labels"`` when the atlas has none (a template defect,
        never silently ignored).
    """
    names = tuple(sorted(n for n in atlas.names if n.startswith(prefixes)))
    if not names:
        raise AnalysisError(f"atlas has no {what} labels", "atlas_labels")
    return names


def ball(spacing_zyx_mm: np.ndarray, radius_mm: float) -> np.ndarray:
    """Boolean structuring element: voxels whose centres lie within ``radius_mm`` of the centre.

    Parameters
    ----------
    spacing_zyx_mm : (3,) array
        Voxel size along z, y, x, mm (anisotropic allowed).
    radius_mm : float

    Returns
    -------
    (2a+1, 2b+1, 2c+1) bool array
        Odd-sized, centred; the single centre voxel when every spacing
        exceeds ``radius_mm``.
    """
    spacing = np.asarray(spacing_zyx_mm, float)
    half = np.floor(radius_mm / spacing + 1e-9).astype(int)
    axes = [np.arange(-h, h + 1) * s for h, s in zip(half, spacing, strict=True)]
    zz, yy, xx = np.meshgrid(*axes, indexing="ij")
    return np.asarray(zz**2 + yy**2 + xx**2 <= radius_mm**2 + 1e-9)


def candidate_mask(candidates_zyx: np.ndarray, shape_zyx: tuple[int, ...]) -> np.ndarray:
    """Boolean candidates from a mask, or from a probability (``>= 0.5``).

    Raises
    ------
    service.errors.AnalysisError
        ``code="candidates"`` for a wrong shape or a non-finite probability.
    """
    cand = np.asarray(candidates_zyx)
    if cand.shape != tuple(shape_zyx):
        raise AnalysisError("tumour candidates are not on the PET grid", "candidates")
    if cand.dtype == bool:
        return cand
    if not np.all(np.isfinite(cand)):
        raise AnalysisError("tumour probability has non-finite values", "candidates")
    return np.asarray(cand >= PROBABILITY_CUT)


def opening_by_reconstruction(mask_zyx: np.ndarray, spacing_zyx_mm: np.ndarray,
                              radius_mm: float = OPENING_RADIUS_MM) -> np.ndarray:
    """Erode by a ``radius_mm`` ball, then reconstruct by 26-connected dilation inside the mask.

    Parameters
    ----------
    mask_zyx : (z, y, x) bool array
    spacing_zyx_mm : (3,) array
        Voxel size, mm.
    radius_mm : float

    Returns
    -------
    (z, y, x) bool array
        The components of ``mask_zyx`` that keep at least one voxel after the
        erosion, whole; an unchanged copy when the ball is one voxel.
    """
    mask = np.asarray(mask_zyx, bool)
    element = ball(spacing_zyx_mm, radius_mm)
    if element.sum() == 1:
        return mask.copy()
    seeds = ndimage.binary_erosion(mask, structure=element)
    return np.asarray(ndimage.binary_propagation(seeds, structure=FULL_26, mask=mask))


def lesions_from_candidates(candidates_zyx: np.ndarray, volume_zyx: np.ndarray,
                            threshold_units: float, spacing_zyx_mm: np.ndarray, *,
                            min_ml: float = MIN_LESION_ML,
                            opening_radius_mm: float = OPENING_RADIUS_MM) -> tuple[Lesion, ...]:
    """PET RANO lesions: thresholded candidates, opened, split into 26-connected components.

    Parameters
    ----------
    candidates_zyx : (z, y, x) bool or float array
        Tumour candidates on the static grid (bool mask, or probability in
        [0, 1], candidate where ``>= 0.5``).
    volume_zyx : (z, y, x) float array
        Static PET, series units.
    threshold_units : float
        Lesion threshold, series units (1.6 x the healthy-background mean).
    spacing_zyx_mm : (3,) array
        Voxel size along z, y, x, mm.
    min_ml, opening_radius_mm : float
        Minimum component volume (mL) and opening radius (mm); module docstring.

    Returns
    -------
    tuple of Lesion
        By decreasing volume, ``index`` 1..n; empty when nothing is left.

    Raises
    ------
    service.errors.AnalysisError
        ``code="candidates"`` (shape, non-finite probability) or
        ``"threshold"`` (threshold not finite and positive).
    """
    volume = np.asarray(volume_zyx)
    cand = candidate_mask(candidates_zyx, volume.shape)
    if not (np.isfinite(threshold_units) and threshold_units > 0):
        raise AnalysisError("lesion threshold is not a positive number", "threshold")
    spacing = np.asarray(spacing_zyx_mm, float)
    mask = opening_by_reconstruction(cand & (volume >= threshold_units), spacing,
                                     opening_radius_mm)
    labels, n = ndimage.label(mask, structure=FULL_26)
    if n == 0:
        return ()
    counts = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    voxel_ml = float(np.prod(spacing)) / 1000.0
    kept = sorted((k for k in range(1, n + 1) if counts[k - 1] * voxel_ml >= min_ml),
                  key=lambda k: (-counts[k - 1], k))
    return tuple(Lesion(i, labels == k) for i, k in enumerate(kept, start=1))


def method_lesions(candidates_zyx: np.ndarray, volume_zyx: np.ndarray, threshold_units: float,
                   spacing_zyx_mm: np.ndarray) -> tuple[Lesion, ...]:
    """The pipeline's lesions of either method: a U-Net probability (float) or a baseline mask.

    A probability is cut at :data:`PROBABILITY_CUT` and its components need
    :data:`UNET_MIN_LESION_ML`; a boolean (threshold baseline) mask keeps
    :data:`MIN_LESION_ML`. Otherwise :func:`lesions_from_candidates`.
    """
    cand = np.asarray(candidates_zyx)
    min_ml = MIN_LESION_ML if cand.dtype == bool else UNET_MIN_LESION_ML
    return lesions_from_candidates(cand, volume_zyx, threshold_units, spacing_zyx_mm,
                                   min_ml=min_ml)


def baseline_candidates(volume_zyx: np.ndarray, atlas: AtlasOnPet, spacing_zyx_mm: np.ndarray,
                        *, factor: float = TUMOUR_THRESHOLD_X_BACKGROUND,
                        brain_margin_mm: float = BASELINE_BRAIN_MARGIN_MM,
                        striatum_margin_mm: float = BASELINE_STRIATUM_MARGIN_MM) -> np.ndarray:
    """The classical threshold-only baseline ("threshold" method): no network, no lesion side.

    Definition: candidate = a voxel of the atlas brain (every label > 0,
    dilated by ``brain_margin_mm`` = 4 mm for registration error at the
    cortex) whose value is ``>= factor`` (1.6) x the **median** of the
    cortex and white-matter labels of *both* hemispheres, outside the atlas
    striatum (caudate, putamen, pallidum; both sides) dilated by
    ``striatum_margin_mm`` = 6 mm (about 4 mm of registration error plus
    2 mm of spill-out: a striatum at 2.3-3.5 x background, blurred by a
    5-6 mm FWHM, falls below 1.6 x within about 2 mm of its edge). The
    normal FDOPA striatum is above 1.6 x background, so without the
    exclusion it would always be "tumour". The median needs no lesion side
    and stays a healthy-brain value while the tumour is under half of
    cortex + white matter.

    Known failure modes: a tumour touching or invading the striatum loses
    the part inside the dilated striatum (or all of it); a tumour within
    6 mm of the striatum is cut at that margin; extracerebral or
    choroid-plexus uptake inside the dilated brain is kept; a diffuse
    low-grade tumour below 1.6 x is missed (as it is by the PET RANO
    definition); noise peaks in hot cortex can pass the voxel threshold and
    rely on :data:`MIN_LESION_ML` in :func:`lesions_from_candidates`.

    Parameters
    ----------
    volume_zyx : (z, y, x) float array
        Static PET, series units.
    atlas : AtlasOnPet
        Labels on the same grid.
    spacing_zyx_mm : (3,) array
        Voxel size, mm.

    Returns
    -------
    (z, y, x) bool array
        Candidates, for :func:`lesions_from_candidates`.

    Raises
    ------
    service.errors.AnalysisError
        ``code="atlas_labels"`` (a label group is missing, or the grids
        differ) or ``"reference_values"`` (healthy-brain median not positive).
    """
    volume = np.asarray(volume_zyx, float)
    if atlas.labels_zyx.shape != volume.shape:
        raise AnalysisError("atlas labels are not on the PET grid", "atlas_labels")
    spacing = np.asarray(spacing_zyx_mm, float)
    healthy = atlas.mask(*atlas_names(atlas, HEALTHY_BRAIN_PREFIXES, "cortex or white matter"))
    if not healthy.any():
        raise AnalysisError("atlas cortex and white matter are empty on the PET grid",
                            "atlas_labels")
    reference = float(np.median(volume[healthy]))
    if not reference > 0:
        raise AnalysisError("healthy-brain median is not positive", "reference_values")
    allowed = brain_outside_striatum(atlas, spacing, brain_margin_mm, striatum_margin_mm)
    return np.asarray(allowed & (volume >= factor * reference))


def brain_outside_striatum(atlas: AtlasOnPet, spacing_zyx_mm: np.ndarray,
                           brain_margin_mm: float = BASELINE_BRAIN_MARGIN_MM,
                           striatum_margin_mm: float = BASELINE_STRIATUM_MARGIN_MM) -> np.ndarray:
    """(z, y, x) bool: the atlas brain dilated by ``brain_margin_mm`` outside the atlas
    striatum (both sides) dilated by ``striatum_margin_mm`` (the baseline's search region,
    :func:`baseline_candidates`)."""
    spacing = np.asarray(spacing_zyx_mm, float)
    brain = ndimage.binary_dilation(atlas.labels_zyx > 0, ball(spacing, brain_margin_mm))
    striatum = atlas.mask(*atlas_names(atlas, STRIATUM_PREFIXES, "striatum"))
    return np.asarray(brain & ~ndimage.binary_dilation(striatum, ball(spacing, striatum_margin_mm)))


def component_contrast(volume_zyx: np.ndarray, mask_zyx: np.ndarray, exclude_zyx: np.ndarray,
                       spacing_zyx_mm: np.ndarray, within_zyx: np.ndarray | None = None, *,
                       inner_mm: float = SHELL_INNER_MM, outer_mm: float = SHELL_OUTER_MM
                       ) -> float:
    """How far a lesion's peak stands out: its maximum / the mean of a shell around it.

    The shell holds the voxels whose centres lie more than ``inner_mm`` and
    at most ``outer_mm`` from the lesion (Euclidean, in mm; the inner gap
    keeps the lesion's own blurred rim out), minus ``exclude_zyx`` (other
    candidates) and, when given, only inside ``within_zyx`` (e.g. the atlas
    brain, so scalp and air do not lower the surroundings).

    Returns
    -------
    float
        ``inf`` when the shell is empty or its mean is not positive.
    """
    volume = np.asarray(volume_zyx, float)
    mask = np.asarray(mask_zyx, bool)
    spacing = np.asarray(spacing_zyx_mm, float)
    idx = np.argwhere(mask)
    if idx.size == 0:
        return 0.0
    pad = np.ceil(outer_mm / spacing).astype(int) + 1
    lo, hi = np.maximum(idx.min(axis=0) - pad, 0), np.minimum(idx.max(axis=0) + pad + 1,
                                                             mask.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    dist = ndimage.distance_transform_edt(~mask[box], sampling=spacing)
    shell = (dist > inner_mm) & (dist <= outer_mm) & ~np.asarray(exclude_zyx, bool)[box]
    if within_zyx is not None:
        shell &= np.asarray(within_zyx, bool)[box]
    around = float(volume[box][shell].mean()) if shell.any() else 0.0
    return float(volume[mask].max()) / around if around > 0 else float("inf")
