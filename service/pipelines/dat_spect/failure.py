"""The DaT "analysis not possible" report (the generic one of :mod:`service.report.failure`).

A DaT series the pipeline took (right tracer, NM) but could not analyse
(registration failed, slices missing, an incomplete series, inconsistent
geometry) still sends a short Comprehensive SR to the destinations, in the
source study, so the reader is never left with nothing. It holds no levels
and no verdict. Content tree (see :mod:`service.report.failure`):

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

from collections.abc import Sequence

import highdicom as hd
from pydicom.dataset import Dataset

from service.pipelines.dat_spect import codes
from service.pipelines.dat_spect.sr import private_coding_scheme
from service.report import failure
from service.report.failure import MAX_REASON_CHARS
from service.report.identity import AlgorithmInfo

__all__ = ["FAILURE_SR_SERIES_DESCRIPTION", "FAILURE_SR_SERIES_NUMBER", "MAX_REASON_CHARS",
           "build_failure_sr", "failure_text"]

FAILURE_SR_SERIES_NUMBER = 9903
FAILURE_SR_SERIES_DESCRIPTION = "dopanode DaT analysis not possible - research use"
NOT_PRODUCED = "No levels and no global score were produced."


def failure_text(reason: str) -> str:
    """The sentence a reader sees."""
    return failure.failure_text(reason, NOT_PRODUCED)


def build_failure_sr(
    evidence: Sequence[Dataset],
    reason: str,
    job_key: str,
    algorithm: AlgorithmInfo,
    created_at: float | None = None,
) -> hd.sr.ComprehensiveSR:
    """The "analysis not possible" SR of one DaT job (:func:`service.report.failure.build_failure_sr`).

    Raises
    ------
    ValueError
        Empty evidence or an instance without its UIDs.
    """
    style = failure.FailureReportStyle(codes.SPECT_BRAIN, NOT_PRODUCED, FAILURE_SR_SERIES_NUMBER,
                                       FAILURE_SR_SERIES_DESCRIPTION, private_coding_scheme())
    return failure.build_failure_sr(evidence, reason, job_key, algorithm, style, created_at)
