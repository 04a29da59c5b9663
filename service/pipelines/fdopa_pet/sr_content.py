"""The measurement groups of the FDOPA SR (TID 1411 per SEG segment, TID 1501 for the tumour).

Every number carries its definition in its codes (docs/conformance_sr.md,
"FDOPA PET"): SUVbw (126401, DCM) with derivation Maximum / Mean / Peak Value
Within ROI and method "SUV body weight calculation method"; TBRmax and
TBRmean as "Lesion to Background SUV Ratio" (126039, DCM) with derivation
Maximum / Mean and the background segment referenced as INFERRED FROM IMAGE
(126040, DCM) "Background for Lesion to Background SUV Ratio"; Metabolic
Volume (126032, DCM) in cm3 by the sum-of-voxels method; the Genoa ratios
T/S and T/N under their own private concepts with their reference segment;
dynamic: Time To Peak (113069, DCM) in min and the late slope in Bq/mL/s,
SUVbw/min and %/min, each with the time convention (frame start, Genoa; or
frame mid) as its method and the fit window start as its own number.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from highdicom.sr import (
    AlgorithmIdentification,
    FindingSite,
    ImageContentItem,
    Measurement,
    MeasurementsAndQualitativeEvaluations,
    QualitativeEvaluation,
    ReferencedSegment,
    SourceImageForSegmentation,
    SourceSeriesForSegmentation,
    TrackingIdentifier,
    VolumetricROIMeasurementsAndQualitativeEvaluations,
)
from highdicom.sr.enum import RelationshipTypeValues
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from service.errors import AnalysisError
from service.pipelines.fdopa_pet import report_codes as rc
from service.pipelines.fdopa_pet.kinetics import DynamicResult
from service.pipelines.fdopa_pet.result import FdopaResult, LesionMeasures
from service.pipelines.fdopa_pet.seg import REFERENCE_KINDS, REFERENCE_LABELS
from service.report.uids import derive_uid

#: Significant digits kept for every number (far below the noise of any of them).
SIGNIFICANT_DIGITS = 7


def value(number: float, what: str) -> float:
    """``number`` rounded to :data:`SIGNIFICANT_DIGITS`, refusing NaN and infinity.

    Raises
    ------
    service.errors.AnalysisError
        Code ``"non_finite_result"`` (a NaN or infinite number has no DS encoding).
    """
    if not math.isfinite(number):
        raise AnalysisError(f"{what} is not a finite number", "non_finite_result")
    return float(f"{number:.{SIGNIFICANT_DIGITS}g}")


def _measure(name: Code, number: float, unit: Code, what: str, derivation: Code | None = None,
             method: Code | None = None) -> Measurement:
    return Measurement(name=name, value=value(number, what), unit=unit, derivation=derivation,
                       method=method)


def _infer_from(measurement: Measurement, concept: Code, seg: Dataset, segment: int
                ) -> Measurement:
    """Add INFERRED FROM IMAGE (concept) naming ``segment`` of the SEG to a measurement."""
    item = ImageContentItem(
        name=concept, referenced_sop_class_uid=seg.SOPClassUID,
        referenced_sop_instance_uid=seg.SOPInstanceUID, referenced_segment_numbers=segment,
        relationship_type=RelationshipTypeValues.INFERRED_FROM)
    num = measurement[0]
    if "ContentSequence" not in num:
        num.ContentSequence = []
    num.ContentSequence.append(item)
    return measurement


def _frame_sources(frames: Sequence[Dataset]) -> list[SourceImageForSegmentation]:
    """The distinct source images (instance and frame) the SEG frames derive from."""
    seen: dict[tuple[str, int | None], SourceImageForSegmentation] = {}
    for frame in frames:
        for derivation in frame.get("DerivationImageSequence", []):
            for source in derivation.SourceImageSequence:
                number = source.get("ReferencedFrameNumber")
                key = (str(source.ReferencedSOPInstanceUID),
                       None if number is None else int(number))
                seen.setdefault(key, SourceImageForSegmentation(
                    source.ReferencedSOPClassUID, source.ReferencedSOPInstanceUID,
                    None if key[1] is None else [key[1]]))
    return list(seen.values())


def referenced_segment(seg: Dataset, number: int) -> ReferencedSegment:
    """TID 1411 Referenced Segment, with its source images.

    A segment without any voxel has no frame to name its source images; it
    is then referenced with its source series (TID 1411 "Source series for
    segmentation"), which the template allows in place of the images.
    """
    shared = seg.SharedFunctionalGroupsSequence[0]
    frames = [item for item in seg.PerFrameFunctionalGroupsSequence
              if int((item.get("SegmentIdentificationSequence")
                      or shared.SegmentIdentificationSequence)[0].ReferencedSegmentNumber)
              == number]
    if frames and "SegmentIdentificationSequence" in shared:
        # One segment: highdicom keeps its identification in the shared groups,
        # where ReferencedSegment.from_segmentation does not look.
        return ReferencedSegment(seg.SOPClassUID, seg.SOPInstanceUID, number,
                                 source_images=_frame_sources(frames))
    if frames:
        return ReferencedSegment.from_segmentation(seg, segment_number=number)
    series = seg.ReferencedSeriesSequence[0].SeriesInstanceUID
    return ReferencedSegment(seg.SOPClassUID, seg.SOPInstanceUID, number,
                             source_series=SourceSeriesForSegmentation(series))


def _yes_no(flag: bool) -> Code:
    return rc.YES if flag else rc.NO


def segment_numbers(result: FdopaResult) -> dict[str, int]:
    """SEG segment number of each reference region (after the lesions)."""
    n = len(result.lesions)
    return {kind: n + 1 + k for k, kind in enumerate(REFERENCE_KINDS)}


def lesion_measurements(m: LesionMeasures, seg: Dataset, numbers: dict[str, int],
                        suv_method: bool) -> list[Measurement]:
    """Static measures of a lesion (or of all lesions together)."""
    tag = f"lesion {m.index}" if m.index else "tumour"
    out: list[Measurement] = []
    for number, derivation, what in ((m.suv_max, rc.MAXIMUM, "SUVmax"),
                                     (m.suv_mean, rc.MEAN, "SUVmean"),
                                     (m.suv_peak, rc.PEAK, "SUVpeak")):
        if number is not None:
            out.append(_measure(rc.SUVBW, number, rc.UCUM_SUVBW, f"{tag} {what}", derivation,
                                rc.SUV_BW_METHOD if suv_method else None))
    bg = numbers["background"]
    out += [
        _infer_from(_measure(rc.LESION_TO_BACKGROUND, m.tbr_max, rc.UCUM_RATIO,
                             f"{tag} TBRmax", rc.MAXIMUM), rc.BACKGROUND_FOR_RATIO, seg, bg),
        _infer_from(_measure(rc.LESION_TO_BACKGROUND, m.tbr_mean, rc.UCUM_RATIO,
                             f"{tag} TBRmean", rc.MEAN), rc.BACKGROUND_FOR_RATIO, seg, bg),
        _measure(rc.METABOLIC_VOLUME, m.volume_ml, rc.UCUM_CM3, f"{tag} MTV",
                 method=rc.SUM_OF_VOXELS_METHOD),
        _infer_from(_measure(rc.TUMOUR_TO_STRIATUM, m.ts_ratio, rc.UCUM_RATIO, f"{tag} T/S",
                             rc.MAXIMUM), rc.RATIO_REFERENCE_REGION, seg, numbers["striatum"]),
        _infer_from(_measure(rc.TUMOUR_TO_NORMAL, m.tn_ratio, rc.UCUM_RATIO, f"{tag} T/N",
                             rc.MAXIMUM), rc.RATIO_REFERENCE_REGION, seg,
                    numbers["white-matter"]),
    ]
    return out


def lesion_evaluations(m: LesionMeasures) -> list[QualitativeEvaluation]:
    return [QualitativeEvaluation(rc.MEASURABLE_LESION, _yes_no(m.measurable)),
            QualitativeEvaluation(rc.TOUCHES_STRIATUM, _yes_no(m.touches_striatum)),
            QualitativeEvaluation(rc.INFRATENTORIAL, _yes_no(m.infratentorial))]


def dynamic_measurements(dynamic: DynamicResult | None, region: str) -> list[Measurement]:
    """TTP, fit window and late slopes of one region's TAC, per time convention."""
    if dynamic is None or region not in dynamic.tacs:
        return []
    out = []
    for p in (p for p in dynamic.parameters if p.region == region):
        conv = rc.CONVENTION_CODES[p.convention]
        what = f"{region} {p.convention}"
        out += [_measure(rc.TIME_TO_PEAK, p.ttp_min, rc.UCUM_MINUTE, f"{what} TTP", method=conv),
                _measure(rc.FIT_WINDOW_START, p.fit_from_s, rc.UCUM_SECOND, f"{what} window",
                         method=conv)]
        for number, unit in ((p.slope_bqml_per_s, rc.UCUM_BQML_PER_S),
                             (p.slope_suv_per_min, rc.UCUM_SUVBW_PER_MIN),
                             (p.slope_percent_per_min, rc.UCUM_PERCENT_PER_MIN)):
            if number is not None:
                out.append(_measure(rc.TAC_LATE_SLOPE, number, unit, f"{what} slope",
                                    method=conv))
    if region == "tumour":
        out += [_measure(rc.SLOPE_RATIO, ratio, rc.UCUM_RATIO, f"slope ratio {conv_name}",
                         method=rc.CONVENTION_CODES[conv_name])
                for conv_name, ratio in dynamic.slope_ratios.items()]
    return out


def lesion_group(result: FdopaResult, seg: Dataset, job_key: str, number: int,
                 m: LesionMeasures, algorithm_id: AlgorithmIdentification
                 ) -> VolumetricROIMeasurementsAndQualitativeEvaluations:
    """TID 1411 for SEG segment ``number`` (lesion ``m.index``)."""
    return VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(
            uid=derive_uid(job_key, result.algorithm, f"tracking-lesion-{m.index}"),
            identifier=f"Lesion {m.index}"),
        referenced_segment=referenced_segment(seg, number),
        finding_type=rc.TUMOUR, finding_sites=[FindingSite(rc.BRAIN)],
        algorithm_id=algorithm_id,
        measurements=lesion_measurements(m, seg, segment_numbers(result), result.suv.available),
        qualitative_evaluations=lesion_evaluations(m))


def tumour_group(result: FdopaResult, seg: Dataset, job_key: str,
                 algorithm_id: AlgorithmIdentification) -> MeasurementsAndQualitativeEvaluations:
    """TID 1501 for all lesions together (the tumour's static and dynamic measures)."""
    m = result.measures.tumour
    assert m is not None
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(
            uid=derive_uid(job_key, result.algorithm, "tracking-tumour"),
            identifier="Tumour (all lesions)"),
        finding_type=rc.TUMOUR, finding_sites=[FindingSite(rc.BRAIN)], algorithm_id=algorithm_id,
        measurements=(lesion_measurements(m, seg, segment_numbers(result), result.suv.available)
                      + dynamic_measurements(result.dynamic, "tumour")),
        qualitative_evaluations=[QualitativeEvaluation(rc.MEASURABLE_LESION,
                                                       _yes_no(m.measurable))])


def _reference_measurements(result: FdopaResult, kind: str) -> list[Measurement]:
    ref = result.measures.reference
    suv, volume, region, derivation = {
        "background": (ref.background_suv_mean, ref.background_ml, "background", rc.MEAN),
        "striatum": (ref.striatum_suv_max, ref.striatum_ml, "striatum", rc.MAXIMUM),
        "white-matter": (ref.white_matter_suv_max, ref.white_matter_ml, "white matter",
                         rc.MAXIMUM)}[kind]
    out = [_measure(rc.VOLUME, volume, rc.UCUM_ML, f"{region} volume")]
    if suv is not None:
        out.insert(0, _measure(rc.SUVBW, suv, rc.UCUM_SUVBW, f"{region} SUV", derivation,
                               rc.SUV_BW_METHOD))
    if kind == "background" and result.suv.factor is not None:
        out.append(_measure(rc.LESION_THRESHOLD, result.measures.threshold_units
                            * result.suv.factor, rc.UCUM_SUVBW, "lesion threshold"))
    return out + dynamic_measurements(result.dynamic, kind)


def reference_groups(result: FdopaResult, seg: Dataset, job_key: str,
                     algorithm_id: AlgorithmIdentification
                     ) -> list[VolumetricROIMeasurementsAndQualitativeEvaluations]:
    """TID 1411 for the background crescent, contralateral striatum and white matter."""
    numbers = segment_numbers(result)
    sites = {"background": rc.BRAIN, "striatum": rc.CORPUS_STRIATUM,
             "white-matter": rc.CEREBRAL_WHITE_MATTER}
    side = rc.LEFT if result.reference.side == "left" else rc.RIGHT
    return [VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(
            uid=derive_uid(job_key, result.algorithm, f"tracking-{kind}"), identifier=label),
        referenced_segment=referenced_segment(seg, numbers[kind]),
        finding_sites=[FindingSite(sites[kind], laterality=side)], algorithm_id=algorithm_id,
        measurements=_reference_measurements(result, kind))
        for kind, label in zip(REFERENCE_KINDS, REFERENCE_LABELS, strict=True)]


def all_groups(result: FdopaResult, seg: Dataset, job_key: str,
               algorithm_id: AlgorithmIdentification) -> Sequence[object]:
    """Lesions (by segment number), the tumour, then the reference regions."""
    groups: list[object] = [
        lesion_group(result, seg, job_key, number, m, algorithm_id)
        for number, m in enumerate(result.measures.lesions, start=1)]
    if result.measures.tumour is not None:
        groups.append(tumour_group(result, seg, job_key, algorithm_id))
    groups += reference_groups(result, seg, job_key, algorithm_id)
    return groups
