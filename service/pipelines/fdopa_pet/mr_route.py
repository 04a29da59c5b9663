"""The MR-guided route of the FDOPA analysis: FLAIR lesion onto the PET, the paediatric measures.

The route (issue 13; the paediatric Genoa method, ``research/fdopa.md``
section 1a) runs per study beside the PET-only one when routing gave the job
a FLAIR (:mod:`.plan`). :func:`flair_route` decides the route (and keeps the
FLAIR with its lesion on its own grid for the FLAIR SEG and the picture):

1. the series is still a FLAIR by its header (:mod:`.flair_gate`);
2. it reads as one volume (:func:`service.imaging.mr_volume.mr_volume_from_datasets`);
3. it registers rigidly onto the static PET (:mod:`.flair_registration`) with
   an edge alignment of at least the configured minimum (0.90 by default);
4. the FLAIR segmenter (:mod:`.flair_lesion`) finds a lesion, and the lesion
   carried through the registration lies in the PET's field of view.

Each failure gives the PET-only route with the reason ("PET-only route: FLAIR
registration refused (quality 0.84 < 0.90)", "... FLAIR not a usable volume:
<reason>", ...), never an analysis failure: the PET-only result is always made.

On the MR-guided route :func:`flair_guided_measures` applies the paper's
definitions on the PET grid: reference regions contralateral to the FLAIR
lesion (:func:`.reference.reference_regions`: contralateral eroded cerebral
white matter; contralateral caudate + putamen + pallidum), the PET tumour VOI
(:func:`.measures.genoa_tumour_voi`: lesion voxels above the white-matter
maximum, low-uptake fallback to the whole lesion, the reference code's "any
ratio < 1" rule), T/S and T/N as VOI max over reference max, and
:func:`flair_guided_dynamic` the VOI's curves: TTP at frame start, slopes from
120 s (150 s on newer framings) to the last frame in Bq/mL/s and SUV/min, and
the slope ratio (:mod:`.kinetics`). On the PET-VOI branch the VOI is refined
as the reference code does (:func:`paper_voi`, :mod:`.voi_refine`): striatum
removal, then the distance-map cut (static) or, with a dynamic series, the
sinus removal (:func:`with_sinus_removal`); the notes of each step are in
``voi_refinements`` (SR, summary). Pure: datasets and arrays in, frozen
dataclasses out.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
from pydicom.dataset import Dataset

from service.errors import AnalysisError
from service.imaging.mr_volume import mr_volume_from_datasets
from service.imaging.pet_volume import PetVolume
from service.imaging.suv import SuvScale
from service.pipelines.fdopa_pet.curves import analyse_study_dynamic, same_grid
from service.pipelines.fdopa_pet.flair_gate import DEFAULT_KEYWORDS, classify_mr_series
from service.pipelines.fdopa_pet.flair_lesion import FlairLesionSegmenter
from service.pipelines.fdopa_pet.flair_registration import (
    QUALITY_GATE,
    flair_on_pet,
    lesion_on_pet,
    register_flair_to_pet,
)
from service.pipelines.fdopa_pet.measures import GenoaVoi, genoa_tumour_voi, measure_reference
from service.pipelines.fdopa_pet.reference import reference_regions
from service.pipelines.fdopa_pet.result import (
    AtlasOnPet,
    FlairGuidedMeasures,
    FlairImage,
    Lesion,
    ReferenceMeasures,
    ReferenceRegions,
    RouteInfo,
)
from service.pipelines.fdopa_pet.voi_refine import (
    distance_map,
    remove_sinus,
    remove_striatum,
    sinus_map,
)

#: The refinement note of a VOI computed with ``refine=False`` (the evaluation's "before").
NO_REFINEMENT = "no refinement"


def _pet_only(reason: str, uid: str, quality: float | None = None) -> tuple[RouteInfo, None]:
    return RouteInfo("pet_only", f"PET-only route: {reason}", uid, quality), None


def flair_lesion_on_pet(flair: Sequence[Dataset], static: PetVolume,
                        segmenter: FlairLesionSegmenter, min_quality: float = QUALITY_GATE,
                        keywords: Sequence[str] = DEFAULT_KEYWORDS
                        ) -> tuple[RouteInfo, np.ndarray | None]:
    """The route of one study and, on the MR-guided route, the FLAIR lesion on the PET grid.

    :func:`flair_route` without the FLAIR image (same parameters).
    """
    route, image = flair_route(flair, static, segmenter, min_quality, keywords)
    return route, None if image is None else image[1]


def flair_route(flair: Sequence[Dataset], static: PetVolume,
                segmenter: FlairLesionSegmenter, min_quality: float = QUALITY_GATE,
                keywords: Sequence[str] = DEFAULT_KEYWORDS
                ) -> tuple[RouteInfo, tuple[FlairImage, np.ndarray] | None]:
    """The route of one study and, on the MR-guided route, the FLAIR and its lesion on the PET.

    Parameters
    ----------
    flair : sequence of pydicom.Dataset
        The FLAIR series (role ``"flair"`` of the plan), pixels included.
    static : PetVolume
        The analysed static PET (one frame); its grid is the result's.
    segmenter : FlairLesionSegmenter
    min_quality : float
        Least FLAIR-to-PET edge alignment accepted.
    keywords : sequence of str
        The FLAIR gate's description fallback.

    Returns
    -------
    RouteInfo, (FlairImage, (z, y, x) bool array) or None
        On the MR-guided route the FLAIR with its lesion on its own grid and
        the lesion on the static PET grid, else None (the reason says why).
    """
    uid = str(flair[0].get("SeriesInstanceUID", "")) if flair else ""
    if not flair:
        return _pet_only("no FLAIR in the study", uid)
    decision = classify_mr_series(flair[0], keywords)
    if not decision.is_flair:
        return _pet_only(f"series is not a FLAIR: {decision.reason}", uid)
    try:
        mr = mr_volume_from_datasets(flair)
    except AnalysisError as exc:
        return _pet_only(f"FLAIR not a usable volume: {exc.reason}", uid)
    pet, pet_affine = static.frames[0].volume_zyx, static.affine
    try:
        reg = register_flair_to_pet(mr.array_zyx, mr.affine, pet, pet_affine, gate=0.0)
    except AnalysisError as exc:
        return _pet_only(f"FLAIR registration refused ({exc.reason})", uid)
    if not reg.quality >= min_quality:
        return _pet_only(f"FLAIR registration refused (quality {reg.quality:.2f} < "
                         f"{min_quality:.2f})", uid, reg.quality)
    try:
        lesion = np.asarray(segmenter.probabilities(mr)) >= 0.5
    except AnalysisError as exc:
        return _pet_only(f"FLAIR lesion not segmented: {exc.reason}", uid, reg.quality)
    if lesion.shape != mr.array_zyx.shape:
        raise ValueError("the FLAIR segmenter's output is not on the FLAIR grid")
    if not lesion.any():
        return _pet_only(f"no lesion found on the FLAIR by the {segmenter.description}", uid,
                         reg.quality)
    on_pet = lesion_on_pet(lesion.astype(np.float32), mr.affine, reg, pet.shape, pet_affine)
    if not on_pet.any():
        return _pet_only("FLAIR lesion outside the PET field of view", uid, reg.quality)
    number = flair[0].get("SeriesNumber")
    name = f"FLAIR series {number}" if number not in (None, "") else "FLAIR series"
    image = FlairImage(np.asarray(mr.array_zyx, np.float32), mr.affine, lesion,
                       flair_on_pet(mr.array_zyx, mr.affine, reg, pet.shape, pet_affine),
                       uid, segmenter.method)
    return RouteInfo("mr_guided", f"MR-guided route: {name} registered (quality "
                     f"{reg.quality:.2f})", uid, reg.quality,
                     f"FLAIR lesion: {segmenter.description}"), (image, on_pet)


def paper_voi(lesion_zyx: np.ndarray, volume_zyx: np.ndarray, ref: ReferenceMeasures,
              reference: ReferenceRegions, atlas: AtlasOnPet, *,
              sinus_zyx: np.ndarray | None = None, refine: bool = True
              ) -> tuple[GenoaVoi, tuple[str, ...]]:
    """The paper's PET tumour VOI with the reference code's refinements, and their notes.

    :func:`.measures.genoa_tumour_voi` (low-uptake rule), then on the PET-VOI
    branch only (``refine``): striatum removal, then the distance-map cut
    (static, ``sinus_zyx`` None) or the sinus removal (:mod:`.voi_refine`).
    """
    lesion = np.asarray(lesion_zyx, bool)
    voi = genoa_tumour_voi(lesion, volume_zyx, ref.white_matter_max_units,
                           ref.striatum_max_units)
    if not refine:
        return voi, (NO_REFINEMENT,)
    if not voi.pet_voi:
        return voi, ("no refinement (low-uptake fallback: the FLAIR lesion itself)",)
    striatum = remove_striatum(voi.mask_zyx, lesion, atlas, reference.side)
    cut = remove_sinus(striatum.mask_zyx, distance_map(striatum.mask_zyx, lesion), sinus_zyx)
    return replace(voi, mask_zyx=cut.mask_zyx), (striatum.note, cut.note)


def flair_guided_measures(static: PetVolume, suv: SuvScale, atlas: AtlasOnPet,
                          lesion_zyx: np.ndarray, *, refine: bool = True,
                          sinus_zyx: np.ndarray | None = None,
                          reference: ReferenceRegions | None = None) -> FlairGuidedMeasures:
    """The paper's static measures from the FLAIR lesion on the PET grid (module docstring).

    Parameters
    ----------
    static : PetVolume
        The analysed static PET (series units).
    suv : SuvScale
        Of the static series.
    atlas : AtlasOnPet
        The template's atlas on the static grid.
    lesion_zyx : (z, y, x) bool array
        The FLAIR lesion on the static grid, non-empty.
    refine : bool
        Apply the reference code's VOI refinements (:func:`paper_voi`).
    sinus_zyx : (z, y, x) float array, optional
        The early-frame sinus map (:func:`.voi_refine.sinus_map`): sinus
        removal instead of the static distance-map cut.
    reference : ReferenceRegions, optional
        Already computed for this lesion (else computed here).

    Raises
    ------
    AnalysisError
        ``reference_failed`` / ``empty_reference`` / ``reference_values`` from
        the reference regions.
    """
    volume, affine = static.frames[0].volume_zyx, static.affine
    spacing = static.spacing_zyx_mm
    lesion = np.asarray(lesion_zyx, bool)
    reference = reference or reference_regions(atlas, lesion, affine)
    ref = measure_reference(volume, reference, spacing, suv)
    voi, notes = paper_voi(lesion, volume, ref, reference, atlas, sinus_zyx=sinus_zyx,
                           refine=refine)
    top = float(volume[voi.mask_zyx].max())
    voxel_ml = float(np.prod(spacing)) / 1000.0
    return FlairGuidedMeasures(
        flair_lesion_zyx=lesion, voi_zyx=voi.mask_zyx, pet_voi=voi.pet_voi,
        voi_rule=voi.rule, reference=reference, reference_measures=ref,
        flair_lesion_ml=float(lesion.sum()) * voxel_ml,
        voi_ml=float(voi.mask_zyx.sum()) * voxel_ml, voi_max_units=top,
        voi_suv_max=None if suv.factor is None else top * suv.factor,
        ts_ratio=top / ref.striatum_max_units, tn_ratio=top / ref.white_matter_max_units,
        voi_refinements=notes)


def with_sinus_removal(measures: FlairGuidedMeasures, dynamic: PetVolume, static: PetVolume,
                       suv: SuvScale, atlas: AtlasOnPet) -> FlairGuidedMeasures:
    """``measures`` with the VOI refined by sinus removal from the dynamic's first frames.

    Only for a refined PET VOI (not the fallback, not ``refine=False``) and a
    dynamic series on the static grid; otherwise ``measures`` unchanged (a
    dynamic series on another grid adds a note).
    """
    if not measures.pet_voi or NO_REFINEMENT in measures.voi_refinements:
        return measures
    if not same_grid(dynamic, static):
        return replace(measures, voi_refinements=(
            *measures.voi_refinements, "sinus removal not applied: dynamic series on "
                                       "another grid than the static"))
    frames = sorted(dynamic.frames, key=lambda f: f.start_s)
    sinus = sinus_map([f.volume_zyx for f in frames], [f.duration_s for f in frames],
                      atlas.labels_zyx > 0)
    again = flair_guided_measures(static, suv, atlas, measures.flair_lesion_zyx,
                                  sinus_zyx=sinus, reference=measures.reference)
    return replace(again, flair=measures.flair)


def flair_guided_dynamic(measures: FlairGuidedMeasures, dynamic: PetVolume | None,
                         static: PetVolume, suv: SuvScale | None,
                         injection: dt.datetime | None, note: str,
                         atlas: AtlasOnPet | None = None,
                         static_suv: SuvScale | None = None) -> FlairGuidedMeasures:
    """``measures`` with the curves of the FLAIR-guided VOI (or why there are none).

    With ``atlas`` (and ``static_suv``, the static series' SUV scale) the VOI
    is first refined by sinus removal (:func:`with_sinus_removal`). The same
    kinetics as the PET-only route (:func:`.curves.analyse_study_dynamic`)
    with the FLAIR-guided VOI as ``"tumour"`` and the FLAIR-guided reference
    regions.
    """
    if dynamic is None or suv is None:
        return replace(measures, dynamic_note=note or "no dynamic series in the study")
    if atlas is not None and static_suv is not None:
        measures = with_sinus_removal(measures, dynamic, static, static_suv, atlas)
    try:
        curves = analyse_study_dynamic(dynamic, static, (Lesion(1, measures.voi_zyx),),
                                       measures.reference, suv, injection=injection)
    except AnalysisError as exc:
        return replace(measures, dynamic_note=f"no curves: {exc.reason}")
    return replace(measures, dynamic=curves)
