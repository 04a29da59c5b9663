"""The one exception type for expected failures.

The core raises :class:`AnalysisError`; each edge translates it exactly once
(a DICOM status at the SCP, a failed job at the worker, a problem response at
the API). ``reason`` must be short, free of patient identifiers, and fit a
DICOM ErrorComment (64 characters are kept there; the job record keeps all).
"""

from __future__ import annotations


class AnalysisError(Exception):
    """An expected, explainable failure of input or analysis.

    Parameters
    ----------
    reason : str
        Short, patient-free explanation, e.g. ``"not a DaT SPECT series:
        radiopharmaceutical is not Ioflupane I-123"``.
    code : str
        Stable machine-readable slug, e.g. ``"not_dat"``,
        ``"missing_geometry"``, ``"normalisation_failed"``.
    """

    def __init__(self, reason: str, code: str = "analysis_error") -> None:
        if not reason:
            raise ValueError("AnalysisError needs a non-empty reason")
        super().__init__(reason)
        self.reason = reason
        self.code = code

    def __str__(self) -> str:
        return self.reason
