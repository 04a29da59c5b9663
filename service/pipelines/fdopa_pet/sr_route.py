"""The route of the FDOPA analysis in the SR, and the MR-guided route's measurement group.

Qualitative Evaluations (every SR): "FDOPA analysis route" (DN-0121) coded
"MR-guided route (FLAIR lesion)" (DN-0122) or "PET-only route" (DN-0123),
"Why this route" (DN-0124, TEXT, e.g. "PET-only route: FLAIR registration
refused (quality 0.84 < 0.90)"), and on the MR-guided route the FLAIR lesion
method (DN-0125, TEXT, e.g. "FLAIR lesion: classical threshold (no FLAIR U-Net
shipped)"), the refinements of the FLAIR-guided VOI as the reference code
makes them (DN-0133, TEXT, e.g. "striatum removal: 0 voxel(s) out
(ipsilateral removed); sinus removal (k-means on distance and early-frame
maps): 41 voxel(s) out", :mod:`.voi_refine`) and the FLAIR-to-PET
registration quality (DN-0126, NUM).

Measurements (MR-guided route only): one TID 1411 group "Tumour VOI
(paediatric FLAIR-guided)" referencing the PET SEG's "Paediatric
FLAIR-guided PET VOI" segment (the last one), apart from the PET RANO
lesion groups, whose
ratios have their own concepts so that a reader cannot take one definition
for the other: T/S and T/N "(paediatric FLAIR-guided, max/max)" (DN-0127,
DN-0128), the VOI and FLAIR lesion volumes (DN-0129, DN-0130), SUVbw max of
the VOI and of its two reference regions (finding sites: contralateral
striatum, contralateral cerebral white matter), the low-uptake fallback as a
Yes/No evaluation (DN-0131), and from a dynamic series the VOI's TTP and late
slopes at frame start (the paper's convention) with the slope ratio under
its own concept (DN-0132). With the FLAIR SEG (:mod:`.seg_flair`), a
second TID 1411 group "FLAIR lesion (paediatric FLAIR-guided)" references
its segment 1 and gives the lesion's volume on the FLAIR's own grid (Volume,
118565006 SCT, mL). docs/conformance_sr.md lists them.
"""

from __future__ import annotations

from highdicom.sr import (
    AlgorithmIdentification,
    CodeContentItem,
    ContentItem,
    FindingSite,
    Measurement,
    NumContentItem,
    QualitativeEvaluation,
    TextContentItem,
    TrackingIdentifier,
    VolumetricROIMeasurementsAndQualitativeEvaluations,
)
from highdicom.sr.enum import RelationshipTypeValues
from pydicom.dataset import Dataset

from service.pipelines.fdopa_pet import report_codes as rc
from service.pipelines.fdopa_pet.kinetics import DynamicResult
from service.pipelines.fdopa_pet.result import FdopaResult, FlairGuidedMeasures
from service.pipelines.fdopa_pet.seg import VOI_TRACKING_ID
from service.pipelines.fdopa_pet.seg_flair import FLAIR_LESION_TRACKING_ID
from service.pipelines.fdopa_pet.sr_content import referenced_segment, value
from service.report.uids import derive_uid

#: Tracking identifier of the MR-guided route's group (that of the PET SEG's VOI segment).
FLAIR_GUIDED_GROUP = VOI_TRACKING_ID


def route_items(result: FdopaResult) -> list[ContentItem]:
    """The route evaluations (module docstring), for "Qualitative Evaluations"."""
    contains = RelationshipTypeValues.CONTAINS
    route = result.route
    code = rc.MR_GUIDED_ROUTE if route.route == "mr_guided" else rc.PET_ONLY_ROUTE
    items: list[ContentItem] = [CodeContentItem(rc.ANALYSIS_ROUTE, code, contains),
                                TextContentItem(rc.ROUTE_REASON, route.reason, contains)]
    if route.flair_method:
        items.append(TextContentItem(rc.FLAIR_LESION_METHOD, route.flair_method, contains))
    guided = result.flair_guided
    if guided is not None and guided.voi_refinements:
        items.append(TextContentItem(rc.FLAIR_GUIDED_VOI_REFINEMENTS,
                                     "; ".join(guided.voi_refinements)[:1024], contains))
    if route.registration_quality is not None:
        items.append(NumContentItem(
            rc.FLAIR_REGISTRATION_QUALITY,
            value(route.registration_quality, "FLAIR registration quality"),
            rc.UCUM_NO_UNITS, relationship_type=contains))
    return items


def _suv_max(number: float | None, what: str, site: FindingSite | None = None
             ) -> list[Measurement]:
    if number is None:
        return []
    return [Measurement(rc.SUVBW, value(number, what), rc.UCUM_SUVBW, derivation=rc.MAXIMUM,
                        method=rc.SUV_BW_METHOD,
                        finding_sites=None if site is None else [site])]


def _static(g: FlairGuidedMeasures, side: FindingSite, wm: FindingSite) -> list[Measurement]:
    ref = g.reference_measures
    return [
        Measurement(rc.FLAIR_GUIDED_TS, value(g.ts_ratio, "FLAIR-guided T/S"), rc.UCUM_RATIO,
                    derivation=rc.MAXIMUM),
        Measurement(rc.FLAIR_GUIDED_TN, value(g.tn_ratio, "FLAIR-guided T/N"), rc.UCUM_RATIO,
                    derivation=rc.MAXIMUM),
        Measurement(rc.FLAIR_GUIDED_VOI_VOLUME, value(g.voi_ml, "FLAIR-guided VOI volume"),
                    rc.UCUM_CM3, method=rc.SUM_OF_VOXELS_METHOD),
        Measurement(rc.FLAIR_LESION_VOLUME, value(g.flair_lesion_ml, "FLAIR lesion volume"),
                    rc.UCUM_CM3, method=rc.SUM_OF_VOXELS_METHOD),
        *_suv_max(g.voi_suv_max, "FLAIR-guided VOI SUVmax"),
        *_suv_max(ref.striatum_suv_max, "FLAIR-guided striatum SUVmax", side),
        *_suv_max(ref.white_matter_suv_max, "FLAIR-guided white matter SUVmax", wm),
    ]


def _dynamic(dynamic: DynamicResult | None) -> list[Measurement]:
    """TTP, window and slopes of the VOI at frame start (the paper's convention), the DSR."""
    if dynamic is None or "tumour" not in dynamic.tacs:
        return []
    p, conv = dynamic.get("tumour", "start"), rc.FRAME_START_TIMES
    out = [Measurement(rc.TIME_TO_PEAK, value(p.ttp_min, "FLAIR-guided TTP"), rc.UCUM_MINUTE,
                       method=conv),
           Measurement(rc.FIT_WINDOW_START, value(p.fit_from_s, "FLAIR-guided window"),
                       rc.UCUM_SECOND, method=conv)]
    for number, unit in ((p.slope_bqml_per_s, rc.UCUM_BQML_PER_S),
                         (p.slope_suv_per_min, rc.UCUM_SUVBW_PER_MIN)):
        if number is not None:
            out.append(Measurement(rc.TAC_LATE_SLOPE, value(number, "FLAIR-guided slope"),
                                   unit, method=conv))
    if "start" in dynamic.slope_ratios:
        out.append(Measurement(rc.FLAIR_GUIDED_SLOPE_RATIO,
                               value(dynamic.slope_ratios["start"], "FLAIR-guided DSR"),
                               rc.UCUM_RATIO, method=conv))
    return out


def voi_segment_number(result: FdopaResult) -> int:
    """The PET SEG's number of the FLAIR-guided VOI segment (after lesions and references)."""
    return len(result.lesions) + 4


def flair_guided_group(result: FdopaResult, seg: Dataset, job_key: str,
                       algorithm_id: AlgorithmIdentification
                       ) -> VolumetricROIMeasurementsAndQualitativeEvaluations | None:
    """TID 1411 of the MR-guided route on the PET SEG's VOI segment (None on the PET-only route)."""
    g = result.flair_guided
    if g is None:
        return None
    side = rc.LEFT if g.reference.side == "left" else rc.RIGHT
    return VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(
            uid=derive_uid(job_key, result.algorithm, "tracking-flair-guided-voi"),
            identifier=FLAIR_GUIDED_GROUP),
        referenced_segment=referenced_segment(seg, voi_segment_number(result)),
        finding_type=rc.TUMOUR, finding_sites=[FindingSite(rc.BRAIN)], algorithm_id=algorithm_id,
        measurements=(_static(g, FindingSite(rc.CORPUS_STRIATUM, laterality=side),
                              FindingSite(rc.CEREBRAL_WHITE_MATTER, laterality=side))
                      + _dynamic(g.dynamic)),
        qualitative_evaluations=[QualitativeEvaluation(
            rc.LOW_UPTAKE_FALLBACK, rc.NO if g.pet_voi else rc.YES)])


def flair_lesion_group(result: FdopaResult, flair_seg: Dataset, job_key: str,
                       algorithm_id: AlgorithmIdentification
                       ) -> VolumetricROIMeasurementsAndQualitativeEvaluations:
    """TID 1411 on segment 1 of the FLAIR SEG: the lesion's volume on the FLAIR grid.

    Raises
    ------
    ValueError
        Not the MR-guided route (no FLAIR on the result).
    """
    g = result.flair_guided
    if g is None or g.flair is None:
        raise ValueError("the result has no FLAIR lesion (not the MR-guided route)")
    return VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(
            uid=derive_uid(job_key, result.algorithm, "tracking-flair-lesion"),
            identifier=FLAIR_LESION_TRACKING_ID),
        referenced_segment=referenced_segment(flair_seg, 1),
        finding_type=rc.LESION, finding_sites=[FindingSite(rc.BRAIN)],
        algorithm_id=algorithm_id,
        measurements=[Measurement(rc.VOLUME, value(g.flair.lesion_ml, "FLAIR lesion volume"),
                                  rc.UCUM_ML, method=rc.SUM_OF_VOXELS_METHOD)])
