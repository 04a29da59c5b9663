"""The "analysis not possible" SR of any pipeline: a reader is never left with nothing.

A series a pipeline took (right tracer and modality) but could not analyse
still sends a short Comprehensive SR to the destinations, in the source
study. Content tree:

* root CONTAINER "Diagnostic Imaging Report" (LN 18748-4), SEPARATE;
* the device observer context (dopanode and its version, as in the result SR);
* procedure reported: the pipeline's procedure code (e.g. LN SPECT brain,
  LN Brain PET);
* TEXT "Analysis not possible" (``99DOPANODE DN-0020``): the patient-free reason;
* TEXT "Comment": "Analysis not possible: <reason>. <what was not produced>"
  and "Research use, not for diagnosis".

UIDs derive from the job key (kinds ``failure-sr-series`` and
``failure-sr-instance``), so a retried job sends the same object; its date
and time come from the job. Each pipeline wraps :func:`build_failure_sr`
with its procedure, wording, series number and description (the DaT one in
:mod:`service.pipelines.dat_spect.failure`, byte-identical to its earlier
own builder).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import highdicom as hd
from highdicom.sr import CodeContentItem, ContainerContentItem, ContentItem, TextContentItem
from highdicom.sr.enum import RelationshipTypeValues
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as dcm_codes
from pydicom.sr.coding import Code

from service import __version__
from service.report.evidence import evidence_headers
from service.report.identity import (
    MANUFACTURER,
    RESEARCH_USE_TEXT,
    AlgorithmInfo,
    SourceReference,
    stamp_times,
)
from service.report.sr_common import mark_separate, observation_context
from service.report.uids import derive_uid

logger = logging.getLogger(__name__)

#: Longest reason kept (an UT value could hold more; a reader needs a line).
MAX_REASON_CHARS = 200
ANALYSIS_NOT_POSSIBLE = Code("DN-0020", "99DOPANODE", "Analysis not possible")


@dataclass(frozen=True)
class FailureReportStyle:
    """What differs between pipelines' failure SRs.

    Attributes
    ----------
    procedure : pydicom Code
        Procedure reported (CID 100).
    not_produced : str
        The sentence after the reason, e.g. "No levels and no global score
        were produced."
    series_number : int
    series_description : str
        Must say research use.
    coding_scheme : highdicom CodingSchemeIdentificationItem
        The private scheme item (designator ``99DOPANODE``).
    """

    procedure: Code
    not_produced: str
    series_number: int
    series_description: str
    coding_scheme: hd.coding_schemes.CodingSchemeIdentificationItem


def failure_text(reason: str, not_produced: str) -> str:
    """The sentence a reader sees."""
    return f"Analysis not possible: {reason[:MAX_REASON_CHARS]}. {not_produced}"


def _content(reason: str, style: FailureReportStyle) -> ContainerContentItem:
    contains = RelationshipTypeValues.CONTAINS
    root = ContainerContentItem(name=dcm_codes.LN.DiagnosticImagingReport)
    # ObservationContext holds ContentItems, typed as plain Datasets by highdicom.
    items = cast(list[ContentItem], list(observation_context()))
    items += [
        CodeContentItem(dcm_codes.DCM.ProcedureReported, style.procedure,
                        RelationshipTypeValues.HAS_CONCEPT_MOD),
        TextContentItem(ANALYSIS_NOT_POSSIBLE, reason[:MAX_REASON_CHARS], contains),
        TextContentItem(dcm_codes.DCM.Comment, failure_text(reason, style.not_produced),
                        contains),
        TextContentItem(dcm_codes.DCM.Comment, RESEARCH_USE_TEXT, contains),
    ]
    root.ContentSequence = hd.sr.ContentSequence(items)
    mark_separate(root)
    return root


def build_failure_sr(
    evidence: Sequence[Dataset],
    reason: str,
    job_key: str,
    algorithm: AlgorithmInfo,
    style: FailureReportStyle,
    created_at: float | None = None,
) -> hd.sr.ComprehensiveSR:
    """The "analysis not possible" SR of one job.

    Parameters
    ----------
    evidence : sequence of pydicom.Dataset
        The series' instances (headers suffice); those of the first
        instance's series become the evidence, and the SR joins their study.
    reason : str
        The patient-free reason (an ``AnalysisError.reason``).
    job_key : str
        Stable job identifier; the UIDs derive from it.
    algorithm : AlgorithmInfo
        The pipeline's algorithm identity (part of the UIDs' entropy).
    style : FailureReportStyle
        The pipeline's procedure, wording and series.
    created_at : float or None
        When the job was made (seconds since the epoch); None: now.

    Raises
    ------
    ValueError
        Empty evidence or an instance without its UIDs.
    """
    if len(evidence) == 0:
        raise ValueError("evidence must hold at least one source instance")
    first = evidence[0]
    same_series = [ds for ds in evidence
                   if ds.get("SeriesInstanceUID") == first.get("SeriesInstanceUID")]
    headers = evidence_headers(SourceReference.of(same_series), same_series)
    sr = hd.sr.ComprehensiveSR(
        evidence=headers,
        content=_content(reason, style),
        series_instance_uid=derive_uid(job_key, algorithm, "failure-sr-series"),
        series_number=style.series_number,
        sop_instance_uid=derive_uid(job_key, algorithm, "failure-sr-instance"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=style.series_description,
        manufacturer_model_name="dopanode",
        software_versions=__version__,
        coding_schemes=[style.coding_scheme],
    )
    if created_at is not None:
        stamp_times(sr, created_at)
    logger.info("built failure SR", extra={"fields": {
        "event": "failure_sr_built", "sop_instance_uid": str(sr.SOPInstanceUID)}})
    return sr
