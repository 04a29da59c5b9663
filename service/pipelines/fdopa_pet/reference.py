"""FDOPA reference regions contralateral to the lesion (issue 12 point 3).

Stage functions: :func:`load_fdopa_template` and :func:`register_to_template`
(re-exported from :mod:`.template` and :mod:`.normalise`) and
:func:`reference_regions`, which turns the atlas on the PET grid and the
tumour candidates into the three reference VOIs of the two reference works:

* **striatum** (Genoa T/S denominator, Bianconi 2025 / Mureddu 2024):
  contralateral caudate + putamen + pallidum (candidate voxels removed);
* **white matter** (Genoa T/N denominator): contralateral cerebral white
  matter, eroded: voxels whose centre lies more than :data:`WM_EROSION_MM`
  from the nearest voxel outside the label, at least :data:`DEEP_GREY_MARGIN_MM`
  from the striatum and thalamus (either side) and at least :data:`MARGIN_MM`
  from every candidate voxel;
* **background crescent** (PET RANO TBR denominator; Unterrainer et al.,
  EJNMMI Res 2017, crescent including grey and white matter): contralateral
  cortex + cerebral white matter in a :data:`SLAB_MM` axial slab (patient LPS
  z, i.e. the image's axial slices) centred at the lesion's level, at least
  :data:`MARGIN_MM` from every candidate voxel.

Side rules, evaluated on the **main lesion** (the connected component of the
candidates with the largest summed weight; weight = 1 for a boolean mask, the
probability for a probability map, voxels below 0.5 ignored):

1. no lesion (None, or no voxel >= 0.5): left side, slab at the level of the
   left striatum;
2. **infratentorial**: more than half of the main lesion's weight on labelled
   atlas voxels lies in the brain stem or cerebellum: left side (the Genoa
   code's default for infratentorial tumours), slab at the level of the left
   striatum (the supratentorial brain at the lesion's level is too small);
3. **midline**: the weighted mean of the lateral map over the main lesion is
   within :data:`MIDLINE_MM` of the template mid-sagittal plane, or each side
   holds at least :data:`CROSSING_FRACTION` of its weight (a crossing
   lesion): left side (Genoa default), slab at the lesion's level;
4. otherwise the side opposite the main lesion's centroid, slab at its level.

All masks are on the static PET grid of ``atlas`` (boolean ``(z, y, x)``).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from service.errors import AnalysisError
from service.pipelines.fdopa_pet.atlas_labels import INFRATENTORIAL
from service.pipelines.fdopa_pet.normalise import register_to_template
from service.pipelines.fdopa_pet.result import AtlasOnPet, ReferenceRegions, Side
from service.pipelines.fdopa_pet.template import FdopaTemplate, load_fdopa_template

__all__ = ["FdopaTemplate", "load_fdopa_template", "reference_regions", "register_to_template"]

#: A lesion centroid within this lateral distance of the mid-sagittal plane is midline, mm.
MIDLINE_MM = 5.0
#: A lesion with at least this share of its weight on each side crosses the midline.
CROSSING_FRACTION = 0.25
#: Thickness of the axial slab of the background crescent, mm (issue 12's and the
#: simulator truth's definition; the crescent's thickness in Unterrainer 2017 was
#: not verified here).
SLAB_MM = 30.0
#: Minimum distance of the background and white-matter VOIs from any candidate voxel, mm.
MARGIN_MM = 15.0
#: Erosion of the contralateral cerebral white matter, mm.
WM_EROSION_MM = 4.0
#: Minimum distance of the white-matter VOI from the striatum and thalamus, mm: at
#: 4-6 mm PET resolution their 2-2.5 x higher uptake spills into the nearest WM,
#: and a few mm of misregistration put striatal voxels into it; a maximum-based
#: reference (T/N) must see neither.
DEEP_GREY_MARGIN_MM = 8.0
#: Probability at or above which a voxel is a tumour candidate.
CANDIDATE_PROBABILITY = 0.5


def reference_regions(atlas: AtlasOnPet, candidates_zyx: np.ndarray | None,
                      affine: np.ndarray) -> ReferenceRegions:
    """Reference VOIs contralateral to the tumour candidates (rules in the module docstring).

    Parameters
    ----------
    atlas : AtlasOnPet
        Atlas labels and lateral map on the static PET grid.
    candidates_zyx : (z, y, x) bool or float array, or None
        Tumour candidates on the same grid: a mask, or a probability in
        [0, 1] (voxels >= 0.5 count, weighted by their probability).
    affine : (4, 4) float array
        Voxel index ``(z, y, x)`` to LPS mm of the voxel centre.

    Returns
    -------
    ReferenceRegions

    Raises
    ------
    ValueError
        ``candidates_zyx`` not on the atlas grid.
    AnalysisError
        ``reference_failed`` when a reference VOI is empty (e.g. after a
        failed registration).
    """
    weight = _weights(candidates_zyx, atlas.labels_zyx.shape)
    spacing = np.linalg.norm(np.asarray(affine, float)[:3, :3], axis=0)
    z_mm = _axial_mm(atlas.labels_zyx.shape, affine)
    side, rule, midline, infra, level = _choose_side(atlas, weight, z_mm)
    lesion = None if weight is None else weight > 0
    box = _box(atlas.labels_zyx > 0, lesion, spacing)
    sub = AtlasOnPet(atlas.labels_zyx[box], atlas.names, atlas.lateral_mm_zyx[box], 1.0)
    sub_lesion = None if lesion is None else lesion[box]
    far = _far_from(sub_lesion, spacing)
    striatum = sub.mask(*_striatum_names(side))
    if sub_lesion is not None:
        striatum &= ~sub_lesion
    wm = _eroded_white_matter(sub, side, spacing) & far
    slab = np.abs(z_mm[box] - level) <= SLAB_MM / 2.0
    background = sub.mask(f"cortex_{side}", f"white_matter_{side}") & slab & far
    masks = []
    for name, mask in (("striatum", striatum), ("white matter", wm),
                       ("background", background)):
        if not mask.any():
            raise AnalysisError(f"reference region empty: {name} ({side})", "reference_failed")
        full = np.zeros(atlas.labels_zyx.shape, bool)
        full[box] = mask
        masks.append(full)
    return ReferenceRegions(side, rule, masks[0], masks[1], masks[2], midline, infra)


def _choose_side(atlas: AtlasOnPet, weight: np.ndarray | None, z_mm: np.ndarray
                 ) -> tuple[Side, str, bool, bool, float]:
    """(side, rule, midline, infratentorial, slab centre LPS z mm) by the module's rules."""
    if weight is None:
        level = _level(z_mm, atlas.mask(*_striatum_names("left")), None)
        return ("left", "no lesion: left, slab at the striatum's level (default)", False, False,
                level)
    main = _main_lesion(weight)
    side, rule, midline, infra = _side_rule(atlas, weight * main)
    if infra:
        return side, rule, midline, infra, _level(z_mm, atlas.mask(*_striatum_names(side)), None)
    return side, rule, midline, infra, _level(z_mm, main, weight)


def _box(brain: np.ndarray, lesion: np.ndarray | None, spacing: np.ndarray
         ) -> tuple[slice, ...]:
    """Bounding box of the atlas and lesion, padded by :data:`MARGIN_MM` (work is done in it).

    Distances to the lesion are exact inside: every lesion voxel is in the box.
    """
    either = brain if lesion is None else brain | lesion
    if not either.any():
        raise AnalysisError("reference regions: atlas empty on this grid", "reference_failed")
    pad = np.ceil(MARGIN_MM / spacing).astype(int) + 1
    idx = np.argwhere(either)
    lo = np.maximum(idx.min(axis=0) - pad, 0)
    hi = np.minimum(idx.max(axis=0) + pad + 1, either.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def _eroded_white_matter(atlas: AtlasOnPet, side: str, spacing: np.ndarray) -> np.ndarray:
    """Cerebral WM of ``side`` eroded by :data:`WM_EROSION_MM`, away from the deep grey matter."""
    wm = atlas.mask(f"white_matter_{side}")
    eroded = ndimage.distance_transform_edt(wm, sampling=spacing) > WM_EROSION_MM
    deep = atlas.mask(*_striatum_names("left"), *_striatum_names("right"),
                      "thalamus_left", "thalamus_right")
    return np.asarray(eroded & (ndimage.distance_transform_edt(~deep, sampling=spacing)
                                >= DEEP_GREY_MARGIN_MM))


def _striatum_names(side: str) -> tuple[str, str, str]:
    return (f"caudate_{side}", f"putamen_{side}", f"pallidum_{side}")


def _weights(candidates_zyx: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray | None:
    """Float weights (0 below the candidate probability), or None when there is no candidate."""
    if candidates_zyx is None:
        return None
    c = np.asarray(candidates_zyx)
    if c.shape != shape:
        raise ValueError(f"candidates shape {c.shape} is not the atlas grid {shape}")
    w = c.astype(np.float32)
    w = np.where(np.isfinite(w) & (w >= CANDIDATE_PROBABILITY), w, 0.0).astype(np.float32)
    return w if w.any() else None


def _main_lesion(weight: np.ndarray) -> np.ndarray:
    """Mask of the connected component (26-connected) with the largest summed weight."""
    labels, n = ndimage.label(weight > 0, structure=np.ones((3, 3, 3), bool))
    sums = ndimage.sum_labels(weight, labels, index=np.arange(1, n + 1))
    return np.asarray(labels == 1 + int(np.argmax(sums)))


def _side_rule(atlas: AtlasOnPet, weight: np.ndarray) -> tuple[Side, str, bool, bool]:
    """(side, rule text, midline, infratentorial) of one weighted lesion."""
    total = float(weight.sum())
    labelled = weight * (atlas.labels_zyx > 0)
    infra_w = float((labelled * atlas.mask(*INFRATENTORIAL)).sum())
    if infra_w > 0.5 * float(labelled.sum()) and infra_w > 0:
        return ("left", "infratentorial lesion: left, slab at the striatum's level "
                "(Genoa default)", False, True)
    lateral = atlas.lateral_mm_zyx
    centre = float((weight * lateral).sum()) / total
    left_share = float(weight[lateral > 0].sum()) / total
    crossing = min(left_share, 1.0 - left_share) >= CROSSING_FRACTION
    if abs(centre) < MIDLINE_MM or crossing:
        why = (f"lesion crosses the midline ({100 * left_share:.0f} % left)" if crossing
               else f"lesion centroid {abs(centre):.0f} mm from the midline")
        return ("left", f"midline: {why}: left (Genoa default)", True, False)
    lesion_side = "left" if centre > 0 else "right"
    side: Side = "right" if lesion_side == "left" else "left"
    return (side, f"lesion centroid {abs(centre):.0f} mm {lesion_side} of the midline: "
            f"contralateral {side}", False, False)


def _axial_mm(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """LPS z (mm) of every voxel centre, float32 ``[z, y, x]``."""
    row = np.asarray(affine, float)[2]
    nz, ny, nx = shape
    return (row[0] * np.arange(nz, dtype=np.float32)[:, None, None]
            + row[1] * np.arange(ny, dtype=np.float32)[None, :, None]
            + row[2] * np.arange(nx, dtype=np.float32)[None, None, :]
            + np.float32(row[3])).astype(np.float32)


def _level(z_mm: np.ndarray, mask: np.ndarray, weight: np.ndarray | None) -> float:
    """(Weighted) mean LPS z of a mask, mm."""
    if not mask.any():
        raise AnalysisError("reference level undefined: empty atlas region", "reference_failed")
    w = mask.astype(np.float32) if weight is None else weight * mask
    return float((w * z_mm).sum() / w.sum())


def _far_from(lesion: np.ndarray | None, spacing_zyx: np.ndarray) -> np.ndarray:
    """Voxels at least :data:`MARGIN_MM` from every lesion voxel (all, without a lesion)."""
    if lesion is None:
        return np.ones((1, 1, 1), bool)
    return np.asarray(ndimage.distance_transform_edt(~lesion, sampling=spacing_zyx) >= MARGIN_MM)
