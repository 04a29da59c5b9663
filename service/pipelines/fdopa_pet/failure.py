"""The FDOPA "analysis not possible" report (the generic one of :mod:`service.report.failure`).

An FDOPA study the pipeline took (a [18F]FDOPA PET series) but could not
analyse (registration failed, no usable static window, inconsistent
geometry, ...) still gets a short Comprehensive SR in its study: the
patient-free reason, "No segmentation, measurements or curves were
produced.", and "Research use, not for diagnosis". Procedure reported:
(44138-6, LN, "Brain PET"); series 9913. UIDs from the job key (kinds
``failure-sr-series``, ``failure-sr-instance``), dates from the job.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
from pydicom.dataset import Dataset

from service.pipelines.fdopa_pet import report_codes as rc
from service.pipelines.fdopa_pet.sr import private_coding_scheme
from service.report import failure
from service.report.identity import AlgorithmInfo

FAILURE_SR_SERIES_NUMBER = 9913
FAILURE_SR_SERIES_DESCRIPTION = "dopanode FDOPA analysis not possible - research use"
NOT_PRODUCED = "No segmentation, measurements or curves were produced."


def failure_text(reason: str) -> str:
    """The sentence a reader sees."""
    return failure.failure_text(reason, NOT_PRODUCED)


def build_failure_sr(datasets: Sequence[Dataset], reason: str, job_key: str,
                     algorithm: AlgorithmInfo, created_at: float) -> hd.sr.ComprehensiveSR:
    """The "analysis not possible" SR of one FDOPA job.

    Parameters
    ----------
    datasets : sequence of pydicom.Dataset
        The instances of the series the job took (headers suffice); those
        of the first instance's series are the evidence.
    reason : str
        Patient-free (an ``AnalysisError.reason``).
    job_key : str
    algorithm : AlgorithmInfo
    created_at : float
        When the job was made (seconds since the epoch).

    Raises
    ------
    ValueError
        Empty datasets or an instance without its UIDs.
    """
    style = failure.FailureReportStyle(rc.PROCEDURE_BRAIN_PET, NOT_PRODUCED,
                                       FAILURE_SR_SERIES_NUMBER, FAILURE_SR_SERIES_DESCRIPTION,
                                       private_coding_scheme())
    return failure.build_failure_sr(datasets, reason, job_key, algorithm, style, created_at)
