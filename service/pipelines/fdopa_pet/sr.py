"""The DICOM SR of one FDOPA analysis: TID 1500 in a Comprehensive 3D SR (highdicom).

Content tree (PS3.16 TID 1500 "Measurement Report"; docs/conformance_sr.md,
section "FDOPA PET", lists every code):

* language, observation context with a device observer (TID 1004: dopanode
  and its version), procedure reported (44138-6, LN, "Brain PET");
* "Imaging Measurements" with, in this order:

  - one TID 1411 volumetric group per lesion segment of the SEG (Referenced
    Segment; tracking identifier "Lesion k" with the SEG's tracking UID):
    SUVbw max/mean/peak, TBRmax/TBRmean with the background segment
    referenced, MTV (cm3), T/S and T/N (Genoa) with their reference segment;
    measurable / touches striatum / infratentorial as Yes/No evaluations;
  - one TID 1501 group "Tumour (all lesions)" (no single segment: the union
    of the lesion segments): the same measures over all lesions, and from a
    dynamic series the tumour's TTP, late slopes and the slope ratio;
  - one TID 1411 group per reference segment (background crescent,
    contralateral striatum, contralateral white matter): SUVbw mean or max,
    volume, the lesion threshold (background), their TTP and slopes;
  - on the MR-guided route, one TID 1411 group "Tumour VOI (paediatric
    FLAIR-guided)" on the PET SEG's VOI segment (:mod:`.sr_route`) with its
    own T/S and T/N concepts, and with the FLAIR SEG one TID 1411 group
    "FLAIR lesion (paediatric FLAIR-guided)" on its segment (the FLAIR's
    instances are then evidence too);

* "Qualitative Evaluations": the analysis route and why (:mod:`.sr_route`),
  segmentation method (U-Net or threshold-only
  baseline), SUV available (and why not), registration quality, the
  reference side rule, quality flags, the dynamic note or time convention,
  warnings, and "Research use, not for diagnosis" with the simulated-data
  statement.

Each TID 1411/1501 group carries the algorithm identification (TID 4019).
Without SUV, the SUV numbers are absent (never zero) and the ratios remain.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import cast

import highdicom as hd
from highdicom.sr import (
    AlgorithmIdentification,
    CodeContentItem,
    ContainerContentItem,
    ContentItem,
    NumContentItem,
    TextContentItem,
)
from highdicom.sr.enum import RelationshipTypeValues
from pydicom.dataset import Dataset

from service.pipelines.base import OutputRef
from service.pipelines.fdopa_pet import report_codes as rc
from service.pipelines.fdopa_pet.result import FdopaResult
from service.pipelines.fdopa_pet.sr_content import all_groups, value
from service.pipelines.fdopa_pet.sr_route import (
    flair_guided_group,
    flair_lesion_group,
    route_items,
)
from service.report.evidence import evidence_headers
from service.report.identity import RESEARCH_USE_TEXT, stamp_times
from service.report.sr_common import (
    mark_separate,
    observation_context,
    sr_document_arguments,
)

logger = logging.getLogger(__name__)

SR_SERIES_NUMBER = 9912
SR_SERIES_DESCRIPTION = "dopanode FDOPA SR - research use, not for diagnosis"
#: The statement on every FDOPA output a reader sees (with RESEARCH_USE_TEXT).
SIMULATED_DATA_TEXT = ("Tumour segmentation model and FDOPA template derived from simulated "
                       "data, not from patients")


def private_coding_scheme() -> hd.coding_schemes.CodingSchemeIdentificationItem:
    """Coding Scheme Identification item for the private ``99DOPANODE`` scheme."""
    return hd.coding_schemes.CodingSchemeIdentificationItem(
        designator=rc.PRIVATE_SCHEME, name="dopanode private codes (DaT SPECT, FDOPA PET)",
        responsible_organization="dopanode project")


def research_statement(result: FdopaResult) -> str:
    """'Research use, not for diagnosis' and what the result was derived from."""
    if result.segmentation.method == "threshold":
        return (f"{RESEARCH_USE_TEXT}. Threshold-only baseline segmentation; FDOPA template "
                "derived from simulated data, not from patients.")
    return f"{RESEARCH_USE_TEXT}. {SIMULATED_DATA_TEXT}."


def algorithm_identification(result: FdopaResult) -> AlgorithmIdentification:
    """TID 4019: name, version, and the segmentation method and model as parameters."""
    info = result.segmentation
    parameters = [f"segmentation: {'U-Net' if info.method == 'unet' else 'threshold-only'}"]
    if info.model_name:
        parameters.append(f"model: {info.model_name}")
    if info.model_sha256:
        parameters.append(f"model sha256: {info.model_sha256}")
    return AlgorithmIdentification(name=result.algorithm.name, version=result.algorithm.version,
                                   parameters=parameters)


def time_convention_text(result: FdopaResult) -> str:
    """How the dynamic times were taken, in words (empty without curves)."""
    if result.dynamic is None:
        return ""
    windows = sorted({p.fit_from_s for p in result.dynamic.parameters})
    return ("Dynamic curves: mean of each region per frame; times from injection; TTP and "
            "late slopes with frame start times (Genoa) and with frame mid times; slopes by "
            f"least squares from {', '.join(f'{w:g}' for w in windows)} s to the last frame; "
            "slope ratio = tumour slope / striatum slope.")


def _evaluation_items(result: FdopaResult) -> list[ContentItem]:
    contains = RelationshipTypeValues.CONTAINS
    method = rc.UNET_METHOD if result.segmentation.method == "unet" else rc.THRESHOLD_METHOD
    items: list[ContentItem] = [
        *route_items(result),
        CodeContentItem(rc.SEGMENTATION_METHOD, method, contains),
        CodeContentItem(rc.SUV_AVAILABLE, rc.YES if result.suv.available else rc.NO, contains),
    ]
    if result.suv.available:
        items.append(TextContentItem(rc.SUV_BW_METHOD, result.suv.method[:64] or "-", contains))
    else:
        items.append(TextContentItem(rc.SUV_UNAVAILABLE_REASON, result.suv.reason or "unknown",
                                     contains))
    items += [
        NumContentItem(rc.REGISTRATION_QUALITY, value(result.atlas.quality,
                                                      "registration quality"),
                       rc.UCUM_NO_UNITS, relationship_type=contains),
        TextContentItem(rc.REFERENCE_SIDE_RULE, result.reference.rule, contains),
    ]
    items += [TextContentItem(rc.QUALITY_FLAG, flag, contains) for flag in result.flags]
    if result.dynamic is None:
        items.append(TextContentItem(rc.DYNAMIC_NOTE, result.dynamic_note or "no dynamic series",
                                     contains))
    else:
        items.append(TextContentItem(rc.COMMENT, time_convention_text(result), contains))
    items.append(TextContentItem(rc.COMMENT, research_statement(result), contains))
    items += [TextContentItem(rc.COMMENT, f"Warning: {w}", contains) for w in result.warnings]
    return items


def qualitative_evaluations(result: FdopaResult) -> ContainerContentItem:
    """TID 1500 "Qualitative Evaluations" container (module docstring)."""
    container = ContainerContentItem(name=rc.QUALITATIVE_EVALUATIONS,
                                     relationship_type=RelationshipTypeValues.CONTAINS)
    container.ContentSequence = hd.sr.ContentSequence(_evaluation_items(result))
    return container


def build_measurement_report(result: FdopaResult, seg: Dataset, job_key: str,
                             flair_seg: Dataset | None = None) -> hd.sr.MeasurementReport:
    """The TID 1500 content tree (module docstring)."""
    if [les.index for les in result.lesions] != [m.index for m in result.measures.lesions]:
        raise ValueError("the lesion measures do not follow the lesions")
    n_segments = len(result.lesions) + 3 + (result.flair_guided is not None)
    if len(seg.get("SegmentSequence", [])) != n_segments or (
            seg.get("StudyInstanceUID") != result.source.study_instance_uid):
        raise ValueError("the SEG is not the segmentation of this result")
    algorithm_id = algorithm_identification(result)
    groups = list(all_groups(result, seg, job_key, algorithm_id))
    guided = flair_guided_group(result, seg, job_key, algorithm_id)
    if guided is not None:
        groups.append(guided)
    if flair_seg is not None:
        groups.append(flair_lesion_group(result, flair_seg, job_key, algorithm_id))
    report = hd.sr.MeasurementReport(
        observation_context=observation_context(),
        procedure_reported=[rc.PROCEDURE_BRAIN_PET],
        imaging_measurements=cast(Sequence[hd.sr.MeasurementsAndQualitativeEvaluations], groups),
    )
    report[0].ContentSequence.append(qualitative_evaluations(result))
    mark_separate(report[0])
    return report


def build_sr(
    result: FdopaResult,
    datasets: Sequence[Dataset],
    seg: Dataset,
    job_key: str,
    created_at: float,
    previous_srs: Sequence[OutputRef] = (),
    flair: tuple[Dataset, Sequence[Dataset]] | None = None,
) -> hd.sr.Comprehensive3DSR:
    """Build the Comprehensive 3D SR (TID 1500) of one FDOPA analysis.

    Parameters
    ----------
    result : FdopaResult
    datasets : sequence of pydicom.Dataset
        The instances of ``result.source`` (headers suffice): the evidence,
        with the SEG; the SR inherits their patient and study.
    seg : pydicom.Dataset
        The SEG of the same result (:func:`.seg.build_seg`); its segments are
        referenced by number.
    job_key : str
        Stable job identifier; the UIDs derive from it.
    created_at : float
        When the job was made (seconds since the epoch).
    previous_srs : sequence of OutputRef
        Earlier SRs of the same series this one replaces (Predecessor
        Documents Sequence, PS3.3 C.17.2).
    flair : (pydicom.Dataset, sequence of pydicom.Dataset), optional
        On the MR-guided route, the FLAIR SEG (:func:`.seg_flair.build_flair_seg`)
        and the FLAIR's instances (headers suffice), both evidence.

    Returns
    -------
    highdicom.sr.Comprehensive3DSR

    Raises
    ------
    ValueError
        Empty or foreign evidence; lesion measures out of step with the lesions;
        a SEG of another result.
    service.errors.AnalysisError
        A NaN or infinite number (code ``"non_finite_result"``).
    """
    headers = evidence_headers(result.source, datasets)
    flair_seg, flair_evidence = (None, []) if flair is None else (flair[0], [*flair[1], flair[0]])
    sr = hd.sr.Comprehensive3DSR(
        evidence=[*headers, seg, *flair_evidence],
        content=build_measurement_report(result, seg, job_key, flair_seg),
        **sr_document_arguments(job_key, result.algorithm, SR_SERIES_NUMBER,
                                SR_SERIES_DESCRIPTION, private_coding_scheme(), previous_srs),
    )
    stamp_times(sr, created_at)
    logger.info("built SR", extra={"fields": {
        "event": "sr_built", "sop_instance_uid": str(sr.SOPInstanceUID),
        "lesions": len(result.lesions), "suv_available": result.suv.available}})
    return sr
