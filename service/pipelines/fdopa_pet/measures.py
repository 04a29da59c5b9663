"""FDOPA static measures: reference regions, lesions and all lesions together.

Definitions, each named as in the SR (research notes ``fdopa.md`` §1a-§1b,
``fdopa_sim_and_product.md`` §0, §1.4, §6.2; ``docs/fdopa_analysis.md``
"Static measures and lesions"):

* **volume_ml** = voxel count x voxel volume (``prod(spacing)``), mL; the
  metabolic tumour volume (MTV) of PET RANO when the lesions are the 1.6 x
  background voxels (Nancy ``HM_Vol``).
* **measurable** (PET RANO 1.0 as coded by Nancy ``data_generation.py``):
  volume ``> 0.5`` mL (:data:`~.result.MEASURABLE_ML`).
* **max / mean** of the lesion voxels, series units; SUVbw = value x
  ``SuvScale.factor`` (None when SUV is not available; ratios need no SUV).
* **peak**: the highest mean over a sphere of 1 mL (radius
  :data:`PEAK_RADIUS_MM` = 6.2 mm) centred on any lesion voxel, taken over
  every image voxel whose centre lies inside the sphere (inside or outside
  the lesion), on the native grid (PERCIST 1.0, Wahl 2009, with the sphere
  centred on a lesion voxel, as EANM/EARL tools do; no resampling, so on a
  2 mm grid the discrete sphere holds about 123 voxels = 0.98 mL).
* **TBRmax / TBRmean** (PET RANO, Nancy): max / mean over background mean,
  the healthy-brain crescent contralateral to the lesion (Unterrainer 2017).
* **T/S** (Genoa paediatric, Bianconi 2025 / Mureddu 2024): lesion max /
  contralateral striatum (caudate + putamen + pallidum) max. **T/N**: lesion
  max / contralateral eroded cerebral white matter max. Both are taken over
  the Genoa tumour VOI (:func:`genoa_tumour_voi`), whose maximum is the
  lesion's on either branch of the rule.
* **centroid** in LPS mm (mean voxel index through the affine).
* **touches_striatum**: a lesion voxel within one voxel (26-neighbourhood)
  of any atlas striatum label, either side; T/S then mixes striatal and
  tumour uptake and is flagged.
* **infratentorial**: the atlas label at the centroid voxel is brain stem or
  cerebellum.

All lesions together (``index`` 0): the same measures over the union mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from service.errors import AnalysisError
from service.imaging.suv import SuvScale
from service.pipelines.fdopa_pet.curves import analyse_study_dynamic
from service.pipelines.fdopa_pet.lesions import (
    FULL_26,
    INFRATENTORIAL_PREFIXES,
    STRIATUM_PREFIXES,
    atlas_names,
    ball,
    baseline_candidates,
    lesions_from_candidates,
)
from service.pipelines.fdopa_pet.result import (
    MEASURABLE_ML,
    TUMOUR_THRESHOLD_X_BACKGROUND,
    AtlasOnPet,
    Lesion,
    LesionMeasures,
    ReferenceMeasures,
    ReferenceRegions,
    StaticMeasures,
)

__all__ = [
    "PEAK_RADIUS_MM", "GenoaVoi", "analyse_study_dynamic", "baseline_candidates",
    "genoa_tumour_voi", "lesions_from_candidates", "measure_reference", "measure_static",
    "peak_mean",
]

#: Radius of a 1 mL sphere, mm: (3 x 1000 mm^3 / 4 pi)^(1/3).
PEAK_RADIUS_MM = float((3000.0 / (4.0 * np.pi)) ** (1.0 / 3.0))



def spacing_from_affine(affine: np.ndarray) -> np.ndarray:
    """(3,) voxel size along z, y, x (mm) from a (4, 4) index-to-LPS affine."""
    return np.linalg.norm(np.asarray(affine, float)[:3, :3], axis=0)


def _suv(value: float, suv: SuvScale) -> float | None:
    return None if suv.factor is None else value * suv.factor


def _check_grid(mask: np.ndarray, shape: tuple[int, ...], what: str) -> np.ndarray:
    mask = np.asarray(mask, bool)
    if mask.shape != shape:
        raise AnalysisError(f"{what} is not on the PET grid", "voi_grid")
    if not mask.any():
        raise AnalysisError(f"{what} is empty", "empty_reference")
    return mask


def measure_reference(volume_zyx: np.ndarray, reference: ReferenceRegions,
                      spacing_zyx_mm: np.ndarray, suv: SuvScale) -> ReferenceMeasures:
    """Background mean, contralateral striatum max and white-matter max, with volumes.

    Parameters
    ----------
    volume_zyx : (z, y, x) float array
        Static PET, series units.
    reference : ReferenceRegions
        Masks on the same grid.
    spacing_zyx_mm : (3,) array
        Voxel size, mm.
    suv : SuvScale
        Of the static series; SUV values are None when it has no factor.

    Raises
    ------
    service.errors.AnalysisError
        ``code="empty_reference"`` (an empty region), ``"voi_grid"`` (wrong
        shape) or ``"reference_values"`` (background mean not positive).
    """
    volume = np.asarray(volume_zyx)
    shape = volume.shape
    background = _check_grid(reference.background_zyx, shape, "background reference region")
    striatum = _check_grid(reference.striatum_zyx, shape, "striatum reference region")
    wm = _check_grid(reference.white_matter_zyx, shape, "white-matter reference region")
    bg_mean = float(volume[background].mean(dtype=np.float64))
    if not bg_mean > 0:
        raise AnalysisError("background reference mean is not positive", "reference_values")
    st_max, wm_max = float(volume[striatum].max()), float(volume[wm].max())
    voxel_ml = float(np.prod(np.asarray(spacing_zyx_mm, float))) / 1000.0
    return ReferenceMeasures(
        background_mean_units=bg_mean, striatum_max_units=st_max, white_matter_max_units=wm_max,
        background_suv_mean=_suv(bg_mean, suv), striatum_suv_max=_suv(st_max, suv),
        white_matter_suv_max=_suv(wm_max, suv),
        background_ml=float(background.sum()) * voxel_ml,
        striatum_ml=float(striatum.sum()) * voxel_ml, white_matter_ml=float(wm.sum()) * voxel_ml)


def peak_mean(volume_zyx: np.ndarray, mask_zyx: np.ndarray, spacing_zyx_mm: np.ndarray,
              radius_mm: float = PEAK_RADIUS_MM) -> float:
    """Highest mean over a ``radius_mm`` sphere centred on a voxel of ``mask_zyx``.

    The sphere holds the voxels whose centres lie within ``radius_mm`` of
    the centre voxel's centre (:func:`.lesions.ball`); near the image edge
    only the voxels inside the image count. Computed on the mask's bounding
    box plus the sphere's half-width.

    Parameters
    ----------
    volume_zyx : (z, y, x) float array
    mask_zyx : (z, y, x) bool array
        Non-empty.
    spacing_zyx_mm : (3,) array
        Voxel size, mm.

    Returns
    -------
    float
        Same units as ``volume_zyx``.
    """
    element = ball(spacing_zyx_mm, radius_mm)
    half = np.array(element.shape) // 2
    where = np.argwhere(mask_zyx)
    shape = np.array(volume_zyx.shape)
    lo = np.maximum(where.min(axis=0) - half, 0)
    hi = np.minimum(where.max(axis=0) + half + 1, shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    crop = np.asarray(volume_zyx[box], np.float64)
    kernel = element.astype(np.float64)
    sums = ndimage.correlate(crop, kernel, mode="constant", cval=0.0)
    counts = ndimage.correlate(np.ones_like(crop), kernel, mode="constant", cval=0.0)
    return float((sums / counts)[np.asarray(mask_zyx[box], bool)].max())


@dataclass(frozen=True, eq=False)
class GenoaVoi:
    """The Genoa paediatric PET tumour VOI and which branch of the low-uptake rule gave it.

    Attributes
    ----------
    mask_zyx : (z, y, x) bool array
    pet_voi : bool
        True: the PET VOI (lesion voxels above the white-matter max); False:
        the low-uptake fallback, the lesion mask itself.
    rule : str
        Patient-free explanation.
    """

    mask_zyx: np.ndarray
    pet_voi: bool
    rule: str


def genoa_tumour_voi(lesion_zyx: np.ndarray, volume_zyx: np.ndarray,
                     white_matter_max: float, striatum_max: float) -> GenoaVoi:
    """Genoa's tumour VOI with its low-uptake rule (``Pediatric_fdopa_pipeline``
    ``analysis.py::variable_def``, research note ``fdopa.md`` §1a).

    PET VOI = lesion voxels with SUVr > 1 against the **maximum** of the
    contralateral eroded white matter. It is used only when both the PET
    VOI and the lesion have max / WM max >= 1 and max / striatum max >= 1
    (the code's "any < 1" rule); otherwise the lesion mask itself is the VOI
    (low-uptake tumours). In Genoa the lesion is the FLAIR lesion (MR route,
    issue 13). On this PET-only route the lesion is already the 1.6 x
    background PET lesion, so the rule never changes a maximum (the PET VOI
    holds the lesion's maximum voxel whenever it is used): T/S and T/N are
    the same on both branches; only the VOI's extent differs.

    Parameters
    ----------
    lesion_zyx : (z, y, x) bool array
        Non-empty.
    volume_zyx : (z, y, x) float array
    white_matter_max, striatum_max : float
        Reference maxima, same units; positive.
    """
    lesion = np.asarray(lesion_zyx, bool)
    volume = np.asarray(volume_zyx)
    if not (white_matter_max > 0 and striatum_max > 0):
        raise AnalysisError("reference maxima are not positive", "reference_values")
    pet = lesion & (volume > white_matter_max)
    lesion_max = float(volume[lesion].max())
    pet_max = float(volume[pet].max()) if pet.any() else 0.0
    ok = all(m / white_matter_max >= 1.0 and m / striatum_max >= 1.0
             for m in (pet_max, lesion_max))
    if ok:
        return GenoaVoi(pet, True, "lesion voxels above the contralateral white-matter maximum")
    return GenoaVoi(lesion, False, "low uptake (T/N or T/S < 1): the lesion itself")


@dataclass(frozen=True)
class _Context:
    volume: np.ndarray
    affine: np.ndarray
    spacing: np.ndarray
    suv: SuvScale
    reference: ReferenceMeasures
    striatum_any: np.ndarray
    infratentorial_labels: tuple[int, ...]
    atlas_labels: np.ndarray


def _centroid(mask: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    index = np.argwhere(mask).mean(axis=0)
    lps = np.asarray(affine, float) @ np.append(index, 1.0)
    return index, lps[:3]


def _lesion_measures(index: int, mask: np.ndarray, ctx: _Context) -> LesionMeasures:
    values = ctx.volume[mask]
    top, mean = float(values.max()), float(values.mean(dtype=np.float64))
    peak = peak_mean(ctx.volume, mask, ctx.spacing)
    ref = ctx.reference
    genoa = genoa_tumour_voi(mask, ctx.volume, ref.white_matter_max_units,
                             ref.striatum_max_units)
    genoa_max = float(ctx.volume[genoa.mask_zyx].max())
    voxel_ml = float(np.prod(ctx.spacing)) / 1000.0
    volume_ml = float(mask.sum()) * voxel_ml
    centre, lps = _centroid(mask, ctx.affine)
    at = tuple(int(np.clip(np.rint(c), 0, n - 1)) for c, n in zip(centre, mask.shape, strict=True))
    touches = bool((ndimage.binary_dilation(mask, FULL_26) & ctx.striatum_any).any())
    return LesionMeasures(
        index=index, voxels=int(mask.sum()), volume_ml=volume_ml,
        measurable=volume_ml > MEASURABLE_ML, max_units=top, mean_units=mean, peak_units=peak,
        suv_max=_suv(top, ctx.suv), suv_mean=_suv(mean, ctx.suv), suv_peak=_suv(peak, ctx.suv),
        tbr_max=top / ref.background_mean_units, tbr_mean=mean / ref.background_mean_units,
        ts_ratio=genoa_max / ref.striatum_max_units,
        tn_ratio=genoa_max / ref.white_matter_max_units,
        centroid_lps_mm=(float(lps[0]), float(lps[1]), float(lps[2])),
        touches_striatum=touches,
        infratentorial=int(ctx.atlas_labels[at]) in ctx.infratentorial_labels)


def measure_static(volume_zyx: np.ndarray, affine: np.ndarray, suv: SuvScale,
                   lesions: Sequence[Lesion], reference: ReferenceRegions, atlas: AtlasOnPet,
                   *, reference_measures: ReferenceMeasures | None = None) -> StaticMeasures:
    """Per-lesion and all-lesions measures of the static image (module docstring).

    Parameters
    ----------
    volume_zyx : (z, y, x) float array
        Static PET, series units.
    affine : (4, 4) array
        Voxel index (z, y, x) to LPS mm of the voxel centre.
    suv : SuvScale
        Of the static series.
    lesions : sequence of Lesion
        From :func:`lesions_from_candidates`, masks on the same grid.
    reference : ReferenceRegions
    atlas : AtlasOnPet
        For touches_striatum and infratentorial.
    reference_measures : ReferenceMeasures, optional
        Already computed by :func:`measure_reference`; computed here if None.

    Returns
    -------
    StaticMeasures
        ``tumour`` None when ``lesions`` is empty; ``threshold_units`` = 1.6 x
        the background mean.

    Raises
    ------
    service.errors.AnalysisError
        From :func:`measure_reference`; ``code="voi_grid"`` for a lesion or
        atlas on another grid, ``"atlas_labels"`` for missing label groups.
    """
    volume = np.asarray(volume_zyx)
    spacing = spacing_from_affine(affine)
    ref = reference_measures or measure_reference(volume, reference, spacing, suv)
    if atlas.labels_zyx.shape != volume.shape:
        raise AnalysisError("atlas labels are not on the PET grid", "voi_grid")
    ctx = _Context(
        volume, np.asarray(affine, float), spacing, suv, ref,
        atlas.mask(*atlas_names(atlas, STRIATUM_PREFIXES, "striatum")),
        tuple(atlas.names[n] for n in atlas_names(atlas, INFRATENTORIAL_PREFIXES,
                                                   "brain stem or cerebellum")),
        atlas.labels_zyx)
    masks = [_check_grid(lesion.mask_zyx, volume.shape, f"lesion {lesion.index}")
             for lesion in lesions]
    per = tuple(_lesion_measures(lesion.index, m, ctx)
                for lesion, m in zip(lesions, masks, strict=True))
    tumour = _lesion_measures(0, np.logical_or.reduce(masks), ctx) if masks else None
    return StaticMeasures(per, tumour, ref,
                          TUMOUR_THRESHOLD_X_BACKGROUND * ref.background_mean_units)
