"""The DICOM SR of one DaT SPECT analysis: TID 1500 in a Comprehensive SR.

Content tree (PS3.16 TID 1500 "Measurement Report"; see docs/conformance_sr.md):

* language, observation context with a device observer (TID 1004: dopanode and
  its version), procedure reported;
* "Imaging Measurements" with one TID 1501 group per striatal region (finding
  site caudate/putamen with a laterality modifier; SBR, z-score; the reported,
  SBR-threshold and CNN uptake levels as qualitative evaluations; algorithm
  identification TID 4019) and one group for the whole striatum (putamen/caudate
  ratios, asymmetry indices, registration quality);
* "Qualitative Evaluations" with the global finding (normal/abnormal), the
  inconclusive flag, the rule, the reference region, the calibration
  provenance (shipped simulated or the site's own) with its note (levels and
  z-scores indicative when simulated), warnings and the text "Research use,
  not for diagnosis".

Comprehensive SR rather than Comprehensive 3D SR: no 3D coordinates are
carried, and Comprehensive SR is more widely supported by viewers.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import highdicom as hd
from highdicom.sr import (
    AlgorithmIdentification,
    CodeContentItem,
    ContainerContentItem,
    ContentItem,
    FindingSite,
    Measurement,
    MeasurementsAndQualitativeEvaluations,
    QualitativeEvaluation,
    TextContentItem,
    TrackingIdentifier,
)
from highdicom.sr.enum import RelationshipTypeValues
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from service.errors import AnalysisError
from service.pipelines.base import OutputRef
from service.pipelines.dat_spect import codes
from service.pipelines.dat_spect.result import Region, RegionResult, StudyResult
from service.report.evidence import evidence_headers
from service.report.identity import RESEARCH_USE_TEXT, stamp_times
from service.report.sr_common import (
    mark_separate,
    observation_context,
    sr_document_arguments,
)
from service.report.uids import derive_uid

__all__ = ["build_sr", "mark_separate", "observation_context", "private_coding_scheme"]

logger = logging.getLogger(__name__)

#: Decimals kept for SBR, z-scores, ratios and percentages (far below their noise).
VALUE_DECIMALS = 4
SR_SERIES_NUMBER = 9901
SR_SERIES_DESCRIPTION = "dopanode DaT SR - research use, not for diagnosis"

_STRUCTURE_CODES: dict[str, Code] = {"caudate": codes.CAUDATE, "putamen": codes.PUTAMEN}
_SIDE_CODES: dict[str, Code] = {"left": codes.LEFT, "right": codes.RIGHT}


def private_coding_scheme() -> hd.coding_schemes.CodingSchemeIdentificationItem:
    """Coding Scheme Identification item for the private ``99DOPANODE`` scheme."""
    return hd.coding_schemes.CodingSchemeIdentificationItem(
        designator=codes.PRIVATE_SCHEME,
        name="dopanode DaT SPECT codes",
        responsible_organization="dopanode project",
    )


def check_finite(result: StudyResult) -> None:
    """Refuse NaN or infinite numbers: they have no DS encoding and no meaning.

    Raises
    ------
    service.errors.AnalysisError
        Code ``"non_finite_result"``, naming the first offending value (a
        degenerate scan that the quantification let through; never written).
    """
    ratios = result.ratios
    values: dict[str, float | None] = {
        "registration quality": result.registration_quality,
        "putamen/caudate ratio left": ratios.putamen_caudate_left,
        "putamen/caudate ratio right": ratios.putamen_caudate_right,
        "caudate asymmetry": ratios.asymmetry_caudate_pct,
        "putamen asymmetry": ratios.asymmetry_putamen_pct,
    }
    for r in result.regions:
        values[f"{r.region.value} SBR"] = r.sbr
        values[f"{r.region.value} z-score"] = r.z_score
        values[f"{r.region.value} estimated SBR"] = r.sbr_estimated
    for name, value in values.items():
        if value is not None and not math.isfinite(value):
            raise AnalysisError(f"{name} is not a finite number: {value}", "non_finite_result")


def algorithm_identification(result: StudyResult) -> AlgorithmIdentification:
    """TID 4019 for the result: name, version, model and checksum as parameters."""
    algorithm = result.algorithm
    parameters = [f"reference region: {result.reference_region}"]
    if algorithm.model_name:
        parameters.append(f"model: {algorithm.model_name}")
    if algorithm.model_sha256:
        parameters.append(f"model sha256: {algorithm.model_sha256}")
    parameters.extend(algorithm.parameters)
    return AlgorithmIdentification(
        name=algorithm.name, version=algorithm.version, parameters=parameters
    )


def _level_evaluations(region_result: RegionResult) -> list[QualitativeEvaluation]:
    evaluations = [
        QualitativeEvaluation(codes.UPTAKE_LEVEL_CONCEPT, codes.LEVEL_CODES[region_result.level]),
        QualitativeEvaluation(
            codes.UPTAKE_LEVEL_SBR_CONCEPT, codes.LEVEL_CODES[region_result.level_sbr]
        ),
    ]
    if region_result.level_cnn is not None:
        evaluations.append(
            QualitativeEvaluation(
                codes.UPTAKE_LEVEL_CNN_CONCEPT, codes.LEVEL_CODES[region_result.level_cnn]
            )
        )
    return evaluations


def region_group(
    region_result: RegionResult,
    algorithm_id: AlgorithmIdentification,
    tracking_uid: str,
) -> MeasurementsAndQualitativeEvaluations:
    """TID 1501 group for one region: finding site, SBR, z-score, the learnt
    estimator's SBR (putamina rated by the CNN) and levels."""
    region = region_result.region
    site = FindingSite(
        anatomic_location=_STRUCTURE_CODES[region.structure],
        laterality=_SIDE_CODES[region.side],
    )
    values = ((codes.SPECIFIC_BINDING_RATIO, region_result.sbr, codes.UCUM_RATIO),
              (codes.Z_SCORE, region_result.z_score, codes.UCUM_NO_UNITS),
              (codes.ESTIMATED_SBR, region_result.sbr_estimated, codes.UCUM_RATIO))
    measurements = [Measurement(name=name, value=round(float(value), VALUE_DECIMALS), unit=unit)
                    for name, value, unit in values if value is not None]
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(
            uid=tracking_uid, identifier=region.value.replace("_", " ")
        ),
        algorithm_id=algorithm_id,
        finding_sites=[site],
        measurements=measurements,
        qualitative_evaluations=_level_evaluations(region_result),
    )


def striatum_group(
    result: StudyResult, algorithm_id: AlgorithmIdentification, tracking_uid: str
) -> MeasurementsAndQualitativeEvaluations:
    """TID 1501 group for the whole striatum: ratios, asymmetry, registration quality."""
    ratios = result.ratios

    def measure(name: Code, value: float, unit: Code, site: FindingSite | None) -> Measurement:
        return Measurement(
            name=name,
            value=round(float(value), VALUE_DECIMALS),
            unit=unit,
            finding_sites=[site] if site is not None else None,
        )

    measurements = [
        measure(
            codes.PUTAMEN_CAUDATE_RATIO,
            ratios.putamen_caudate_left,
            codes.UCUM_RATIO,
            FindingSite(codes.CORPUS_STRIATUM, laterality=codes.LEFT),
        ),
        measure(
            codes.PUTAMEN_CAUDATE_RATIO,
            ratios.putamen_caudate_right,
            codes.UCUM_RATIO,
            FindingSite(codes.CORPUS_STRIATUM, laterality=codes.RIGHT),
        ),
        measure(
            codes.ASYMMETRY_INDEX,
            ratios.asymmetry_caudate_pct,
            codes.UCUM_PERCENT,
            FindingSite(codes.CAUDATE),
        ),
        measure(
            codes.ASYMMETRY_INDEX,
            ratios.asymmetry_putamen_pct,
            codes.UCUM_PERCENT,
            FindingSite(codes.PUTAMEN),
        ),
        measure(codes.REGISTRATION_QUALITY, result.registration_quality, codes.UCUM_NO_UNITS, None),
    ]
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=tracking_uid, identifier="striatum"),
        algorithm_id=algorithm_id,
        finding_sites=[FindingSite(codes.CORPUS_STRIATUM)],
        measurements=measurements,
    )


def calibration_items(result: StudyResult) -> list[ContentItem]:
    """Calibration provenance (coded) and its note; none when the result does not state it."""
    info = result.calibration
    if info is None:
        return []
    contains = RelationshipTypeValues.CONTAINS
    value = codes.SIMULATED_CALIBRATION if info.indicative else codes.SITE_CALIBRATION
    return [
        CodeContentItem(codes.CALIBRATION_PROVENANCE, value, contains),
        TextContentItem(codes.CALIBRATION_NOTE, info.statement(), contains),
    ]


def qualitative_evaluations(result: StudyResult) -> ContainerContentItem:
    """TID 1500 "Qualitative Evaluations" container: the global result and notes."""
    contains = RelationshipTypeValues.CONTAINS
    score = result.global_score
    container = ContainerContentItem(name=codes.QUALITATIVE_EVALUATIONS, relationship_type=contains)
    items: list[ContentItem] = [
        CodeContentItem(codes.FINDING, codes.ABNORMAL if score.reduced else codes.NORMAL, contains),
        CodeContentItem(
            codes.RESULT_INCONCLUSIVE, codes.YES if score.inconclusive else codes.NO, contains
        ),
        TextContentItem(codes.GLOBAL_SCORE_METHOD, score.method, contains),
        TextContentItem(codes.GLOBAL_SCORE_RULE, score.rule, contains),
        TextContentItem(codes.REFERENCE_REGION, result.reference_region, contains),
        *calibration_items(result),
        TextContentItem(codes.COMMENT, RESEARCH_USE_TEXT, contains),
    ]
    items.extend(TextContentItem(codes.COMMENT, f"Warning: {w}", contains) for w in result.warnings)
    container.ContentSequence = hd.sr.ContentSequence(items)
    return container


def build_measurement_report(result: StudyResult, job_key: str) -> hd.sr.MeasurementReport:
    """The TID 1500 content tree of the SR (see the module docstring)."""
    algorithm_id = algorithm_identification(result)
    by_region = {r.region: r for r in result.regions}
    missing = [region.value for region in Region if region not in by_region]
    if missing:
        raise ValueError(f"result lacks regions: {', '.join(missing)}")
    groups = [
        region_group(
            by_region[region],
            algorithm_id,
            derive_uid(job_key, result.algorithm, f"tracking-{region.value}"),
        )
        for region in Region
    ]
    groups.append(
        striatum_group(
            result, algorithm_id, derive_uid(job_key, result.algorithm, "tracking-striatum")
        )
    )
    report = hd.sr.MeasurementReport(
        observation_context=observation_context(),
        procedure_reported=[codes.SPECT_BRAIN],
        imaging_measurements=groups,
    )
    report[0].ContentSequence.append(qualitative_evaluations(result))
    mark_separate(report[0])
    return report


def build_sr(
    result: StudyResult,
    evidence: Sequence[Dataset],
    job_key: str,
    created_at: float | None = None,
    previous: Sequence[OutputRef] = (),
) -> hd.sr.ComprehensiveSR:
    """Build the Comprehensive SR (TID 1500) of one analysis.

    Parameters
    ----------
    result : StudyResult
        The analysis outcome; all four regions must be present.
    evidence : sequence of pydicom.Dataset
        The analysed source instances (headers suffice; pixel data is ignored).
        They become the Current Requested Procedure Evidence, and the SR
        inherits their patient and study.
    job_key : str
        Stable job identifier; the SR's UIDs are derived from it.
    created_at : float or None
        When the job was made (seconds since the epoch): creation and content
        date/time derive from it, so a retried job writes the same bytes.
        None: now.
    previous : sequence of OutputRef
        Earlier SRs of the same series already sent, which this one replaces
        (Predecessor Documents Sequence, PS3.3 C.17.2).

    Returns
    -------
    highdicom.sr.ComprehensiveSR
        A pydicom Dataset; write it with ``dcmwrite(path, sr)``.

    Raises
    ------
    ValueError
        Empty or foreign evidence, a result without all four regions.
    service.errors.AnalysisError
        A NaN or infinite number in the result (code ``"non_finite_result"``).
    """
    check_finite(result)
    headers = evidence_headers(result.source, evidence)
    sr = hd.sr.ComprehensiveSR(
        evidence=headers,
        content=build_measurement_report(result, job_key),
        **sr_document_arguments(job_key, result.algorithm, SR_SERIES_NUMBER,
                                SR_SERIES_DESCRIPTION, private_coding_scheme(), previous),
    )
    if created_at is not None:
        stamp_times(sr, created_at)
    logger.info(
        "built SR",
        extra={
            "fields": {
                "event": "sr_built",
                "sop_instance_uid": str(sr.SOPInstanceUID),
                "global_reduced": result.global_score.reduced,
                "inconclusive": result.global_score.inconclusive,
            }
        },
    )
    return sr
