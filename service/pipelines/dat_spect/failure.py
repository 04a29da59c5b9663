"""The "analysis not possible" report: what a reader gets when a taken series cannot be analysed.

A DaT series the pipeline took (right tracer, NM) but could not analyse
(registration failed, slices missing, an incomplete series, inconsistent
geometry) still sends a short Comprehensive SR to the destinations, in the
source study, so the reader is never left with nothing. It holds no levels
and no verdict. Content tree:

* root CONTAINER "Diagnostic Imaging Report" (LN 18748-4), SEPARATE;
* the device observer context (dopanode and its version, as in the result SR);
* procedure reported: SPECT brain (LN);
* TEXT "Analysis not possible" (``99DOPANODE DN-0020``): the patient-free reason;
* TEXT "Comment": "Analysis not possible: <reason>. No levels and no global
  score were produced." and "Research use, not for diagnosis".

UIDs derive from the job key (kinds ``failure-sr-series`` and
``failure-sr-instance``), so a retried job sends the same object; its date
and time come from the job.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import cast

import highdicom as hd
from highdicom.sr import CodeContentItem, ContainerContentItem, ContentItem, TextContentItem
from highdicom.sr.enum import RelationshipTypeValues
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as dcm_codes

from service import __version__
from service.pipelines.dat_spect import codes
from service.pipelines.dat_spect.sr import (
    mark_separate,
    observation_context,
    private_coding_scheme,
)
from service.report.evidence import evidence_headers
from service.report.identity import (
    MANUFACTURER,
    RESEARCH_USE_TEXT,
    AlgorithmInfo,
    SourceReference,
    stamp_times,
)
from service.report.uids import derive_uid

logger = logging.getLogger(__name__)

FAILURE_SR_SERIES_NUMBER = 9903
FAILURE_SR_SERIES_DESCRIPTION = "dopanode DaT analysis not possible - research use"
#: Longest reason kept (an UT value could hold more; a reader needs a line).
MAX_REASON_CHARS = 200


def failure_text(reason: str) -> str:
    """The sentence a reader sees."""
    return (f"Analysis not possible: {reason[:MAX_REASON_CHARS]}. "
            "No levels and no global score were produced.")


def _content(reason: str) -> ContainerContentItem:
    contains = RelationshipTypeValues.CONTAINS
    root = ContainerContentItem(name=dcm_codes.LN.DiagnosticImagingReport)
    # ObservationContext holds ContentItems, typed as plain Datasets by highdicom.
    items = cast(list[ContentItem], list(observation_context()))
    items += [
        CodeContentItem(dcm_codes.DCM.ProcedureReported, codes.SPECT_BRAIN,
                        RelationshipTypeValues.HAS_CONCEPT_MOD),
        TextContentItem(codes.ANALYSIS_NOT_POSSIBLE, reason[:MAX_REASON_CHARS], contains),
        TextContentItem(codes.COMMENT, failure_text(reason), contains),
        TextContentItem(codes.COMMENT, RESEARCH_USE_TEXT, contains),
    ]
    root.ContentSequence = hd.sr.ContentSequence(items)
    mark_separate(root)
    return root


def build_failure_sr(
    evidence: Sequence[Dataset],
    reason: str,
    job_key: str,
    algorithm: AlgorithmInfo,
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
        content=_content(reason),
        series_instance_uid=derive_uid(job_key, algorithm, "failure-sr-series"),
        series_number=FAILURE_SR_SERIES_NUMBER,
        sop_instance_uid=derive_uid(job_key, algorithm, "failure-sr-instance"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=FAILURE_SR_SERIES_DESCRIPTION,
        manufacturer_model_name="dopanode",
        software_versions=__version__,
        coding_schemes=[private_coding_scheme()],
    )
    if created_at is not None:
        stamp_times(sr, created_at)
    logger.info("built failure SR", extra={"fields": {
        "event": "failure_sr_built", "sop_instance_uid": str(sr.SOPInstanceUID)}})
    return sr

