"""The reference code's refinements of the paediatric FLAIR-guided PET VOI (issue 13 point 4).

``Pediatric_fdopa_pipeline`` (research note ``fdopa.md`` §1a;
``analysis.py::variable_def`` and ``ref_tumor_seg.py::ref_seg``) refines its
PET tumour VOI in two named steps, applied only when the PET VOI is used
(never to the low-uptake fallback, which is the FLAIR lesion itself):

1. **Striatum removal** (:func:`remove_striatum`): the contralateral
   striatum (caudate + putamen + pallidum on the reference side) is taken
   out of the VOI, and the ipsilateral striatum too unless the FLAIR lesion
   overlaps it (a tumour infiltrating its own striatum keeps it). This
   matters for lesions crossing the midline, whose reference side is the
   left by default while the lesion may cover part of the left striatum.
2. **Distance map and sinus removal** (:func:`distance_map`,
   :func:`sinus_map`, :func:`remove_sinus`): the largest connected component
   of PET VOI plus FLAIR lesion is smoothed by a Gaussian of FWHM 5 voxels
   and scaled to a maximum of 1 (the "distance/probability map"). Static
   study: the VOI keeps its voxels where the map is above
   :data:`DISTANCE_CUT` (0.30). With a dynamic series: the "sinus map" (the
   frame-duration-weighted sum of the first two frames, inside the brain,
   over its maximum) and the distance map, each scaled to [0, 1] over the
   VOI voxels, are clustered into two groups by k-means; the group with the
   higher mean distance is kept (the other holds the rim and the early,
   vascular voxels of the sagittal sinus).

Differences from the reference code, each deliberate: our VOI is already
inside the FLAIR lesion (the reference thresholds the whole brain), so the
PET-plus-FLAIR component is the FLAIR lesion's largest component; k-means is
Lloyd's algorithm in numpy with a deterministic start (the voxel with the
highest distance value and the voxel farthest from it in feature space)
instead of scikit-learn's k-means++ with seed 42, and the reference's RBF-SVM
fitted on the k-means labels (which reproduces their partition) is left out;
a step that would empty the VOI is skipped and says so. Pure: arrays in,
arrays and patient-free notes out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from service.pipelines.fdopa_pet.lesions import FULL_26
from service.pipelines.fdopa_pet.result import AtlasOnPet

#: The static refinement keeps VOI voxels whose distance map is above this (reference HEAD).
DISTANCE_CUT = 0.30
#: FWHM of the Gaussian of the distance map, voxels (the reference code's ``fwhm = 5``).
DISTANCE_FWHM_VOXELS = 5.0
#: Frames summed for the sinus map (the first two, weighted by their durations).
SINUS_FRAMES = 2


@dataclass(frozen=True, eq=False)
class RefinedVoi:
    """A VOI after one refinement step, and what the step did (patient-free)."""

    mask_zyx: np.ndarray
    note: str


def _striatum(atlas: AtlasOnPet, side: str) -> np.ndarray:
    return atlas.mask(f"caudate_{side}", f"putamen_{side}", f"pallidum_{side}")


def remove_striatum(voi_zyx: np.ndarray, lesion_zyx: np.ndarray, atlas: AtlasOnPet,
                    reference_side: str) -> RefinedVoi:
    """Striatum removal (module docstring, step 1).

    Parameters
    ----------
    voi_zyx, lesion_zyx : (z, y, x) bool arrays
        The PET VOI and the FLAIR lesion on the static PET grid.
    atlas : AtlasOnPet
        On the same grid, with caudate, putamen and pallidum of both sides.
    reference_side : {"left", "right"}
        The side of the reference regions (contralateral to the lesion).
    """
    voi = np.asarray(voi_zyx, bool)
    other = "right" if reference_side == "left" else "left"
    contra, ipsi = _striatum(atlas, reference_side), _striatum(atlas, other)
    removed = voi & contra
    keep_ipsi = bool((np.asarray(lesion_zyx, bool) & ipsi).any())
    if not keep_ipsi:
        removed |= voi & ipsi
    out = voi & ~removed
    if not out.any():
        return RefinedVoi(voi, "striatum removal skipped (it would empty the VOI)")
    why = "ipsilateral kept: the FLAIR lesion overlaps it" if keep_ipsi else \
        "ipsilateral removed"
    return RefinedVoi(out, f"striatum removal: {int(removed.sum())} voxel(s) out ({why})")


def distance_map(voi_zyx: np.ndarray, lesion_zyx: np.ndarray) -> np.ndarray:
    """The reference code's distance/probability map (module docstring), float32 in [0, 1].

    The largest 26-connected component of ``voi | lesion``, smoothed by a
    Gaussian of FWHM :data:`DISTANCE_FWHM_VOXELS` voxels (in voxel units, as
    the reference code), divided by its maximum. All zero when both are empty.
    """
    union = np.asarray(voi_zyx, bool) | np.asarray(lesion_zyx, bool)
    labels, n = ndimage.label(union, structure=FULL_26)
    if n == 0:
        return np.zeros(union.shape, np.float32)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    main = (labels == 1 + int(np.argmax(sizes))).astype(np.float32)
    smooth = ndimage.gaussian_filter(main, DISTANCE_FWHM_VOXELS / 2.355)
    return (smooth / float(smooth.max())).astype(np.float32)


def sinus_map(frames_zyx: Sequence[np.ndarray], durations_s: Sequence[float],
              brain_zyx: np.ndarray) -> np.ndarray:
    """The early-frame "sinus map": duration-weighted sum of the first frames over its maximum.

    Parameters
    ----------
    frames_zyx : sequence of (z, y, x) float arrays
        The dynamic frames in time order, on the VOI's grid (at least one).
    durations_s : sequence of float
        Their durations, s (the weights).
    brain_zyx : (z, y, x) bool array
        Outside it the map is 0.
    """
    n = min(SINUS_FRAMES, len(frames_zyx))
    if n == 0:
        raise ValueError("the sinus map needs at least one frame")
    total = sum(np.asarray(frames_zyx[i], np.float64) * float(durations_s[i]) for i in range(n))
    total = np.where(np.asarray(brain_zyx, bool), total, 0.0)
    top = float(total.max())
    return (total / top if top > 0 else total).astype(np.float32)


def _scaled(values: np.ndarray) -> np.ndarray:
    span = float(values.max() - values.min())
    return (values - values.min()) / span if span > 0 else np.zeros_like(values)


def two_means(features: np.ndarray, iterations: int = 100) -> np.ndarray:
    """Lloyd's k-means with k = 2 from a deterministic start; labels 0/1 per row.

    Start: centre 0 at the row with the highest first feature, centre 1 at
    the row farthest from it. ``features`` is ``(n, d)`` float, n >= 2.
    """
    x = np.asarray(features, float)
    first = x[int(np.argmax(x[:, 0]))]
    second = x[int(np.argmax(((x - first) ** 2).sum(axis=1)))]
    centres = np.stack([first, second])
    labels = np.zeros(len(x), int)
    for _ in range(iterations):
        dist = ((x[:, None, :] - centres[None]) ** 2).sum(axis=2)
        new = np.argmin(dist, axis=1)
        if np.array_equal(new, labels) and _ > 0:
            break
        labels = new
        for k in (0, 1):
            if (labels == k).any():
                centres[k] = x[labels == k].mean(axis=0)
    return labels


def remove_sinus(voi_zyx: np.ndarray, distance_zyx: np.ndarray,
                 sinus_zyx: np.ndarray | None) -> RefinedVoi:
    """Distance-map refinement, with sinus removal when there is a sinus map (module docstring).

    Parameters
    ----------
    voi_zyx : (z, y, x) bool array
    distance_zyx : (z, y, x) float array
        :func:`distance_map`.
    sinus_zyx : (z, y, x) float array or None
        :func:`sinus_map`; None for a static study (the 0.30 cut instead).
    """
    voi = np.asarray(voi_zyx, bool)
    if sinus_zyx is None:
        out = voi & (np.asarray(distance_zyx) > DISTANCE_CUT)
        if not out.any():
            return RefinedVoi(voi, "distance-map cut skipped (it would empty the VOI)")
        return RefinedVoi(out, f"distance map > {DISTANCE_CUT:.2f}: "
                               f"{int(voi.sum() - out.sum())} voxel(s) out (static)")
    if voi.sum() < 2:
        return RefinedVoi(voi, "sinus removal skipped (VOI under 2 voxels)")
    idx = np.nonzero(voi)
    features = np.stack([_scaled(np.asarray(distance_zyx, float)[idx]),
                         _scaled(np.asarray(sinus_zyx, float)[idx])], axis=1)
    labels = two_means(features)
    means = [features[labels == k, 0].mean() if (labels == k).any() else -1.0 for k in (0, 1)]
    keep = labels == int(np.argmax(means))
    out = np.zeros_like(voi)
    out[tuple(i[keep] for i in idx)] = True
    return RefinedVoi(out, f"sinus removal (k-means on distance and early-frame maps): "
                           f"{int((~keep).sum())} voxel(s) out")
