"""The contract between the worker and an analysis pipeline.

The worker knows only :class:`Pipeline`: it hands over the spooled files of
one complete series and receives a :class:`PipelineOutput` (the result and the
DICOM objects to send), or an :class:`service.errors.AnalysisError` with a
reason for the job record.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pydicom.dataset import Dataset

from service.pipelines.dat_spect.result import StudyResult


@dataclass(frozen=True, eq=False)
class PipelineOutput:
    """What a pipeline returns for one series.

    Attributes
    ----------
    result : StudyResult
        The numbers and ratings (also served as JSON by the API).
    datasets : tuple of pydicom.Dataset
        Objects to send to every destination (the SR, the picture report).
    stage_durations_s : dict of str to float
        Wall time per stage (``"volume"``, ``"normalise"``, ...), seconds.
    """

    result: StudyResult
    datasets: tuple[Dataset, ...]
    stage_durations_s: dict[str, float]


class Pipeline(Protocol):
    """One analysis (e.g. DaT SPECT)."""

    name: str

    def run(self, instance_paths: Sequence[Path], job_key: str) -> PipelineOutput:
        """Analyse one complete series.

        Parameters
        ----------
        instance_paths : sequence of Path
            The series' spooled DICOM files (Part 10).
        job_key : str
            Stable identifier of the job's content; output UIDs are derived
            from it so a retried job produces the same objects.

        Raises
        ------
        service.errors.AnalysisError
            For any expected failure (not DaT, bad geometry, registration).
        """
        ...
