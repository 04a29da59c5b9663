"""The contract between the node and an analysis pipeline (a plug-in).

A pipeline is asked three things, in this order, and knows nothing of
sockets, SQLite or the spool:

1. at series completion, :meth:`Pipeline.select`: does it take this series
   (a :class:`Selection`), or decline it with a reason? A series that no
   enabled pipeline takes is recorded as *ignored* with every reason; no
   job exists for it.
2. for a series it took, :meth:`Pipeline.inputs`: which other series of the
   same study it needs beside it (e.g. a FLAIR MR beside the PET), and
   whether to wait for one that is not there yet (bounded by a deadline the
   pipeline gives). The answer becomes the job's input list.
3. :meth:`Pipeline.run`, pure over loaded inputs (datasets read by the
   worker), returning a generic :class:`PipelineOutput`: a JSON summary the
   API serves, the DICOM objects to send (SR, SEG, SC, ...), stage durations
   and warnings. Expected failures raise :class:`service.errors.AnalysisError`
   with a short, patient-free reason; the job ends failed and
   :meth:`Pipeline.failure_report` says what the reader is sent instead.

Completion (how many instances make a series) is shared DICOM knowledge, not
a pipeline's: :func:`service.dicom.header.expected_count`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pydicom.dataset import Dataset

#: The role of the series a job was made for.
PRIMARY = "primary"


@dataclass(frozen=True)
class SeriesView:
    """A completed series as routing sees it.

    Attributes
    ----------
    study_uid, series_uid : str
        Validated UIDs.
    sop_class_uid : str
    instance_count : int
        Instances received so far.
    header : pydicom.Dataset
        The whole header (no pixel data) of one instance of the series.
    is_complete : bool
        True when the series is complete (by count or quiet time).
    completed_at : float or None
        When it completed, seconds since the epoch.
    """

    study_uid: str
    series_uid: str
    sop_class_uid: str
    instance_count: int
    header: Dataset
    is_complete: bool = True
    completed_at: float | None = None

    @property
    def modality(self) -> str:
        return str(self.header.get("Modality", "") or "")


@dataclass(frozen=True)
class Selection:
    """A pipeline's answer to "do you take this series?".

    Attributes
    ----------
    taken : bool
    reason : str
        Why (patient-free; e.g. ``"code SCT 429296007"`` or ``"modality is CT, not NM"``).
    """

    taken: bool
    reason: str

    @classmethod
    def take(cls, reason: str) -> Selection:
        return cls(True, reason)

    @classmethod
    def decline(cls, reason: str) -> Selection:
        return cls(False, reason)


@dataclass(frozen=True)
class InputSeries:
    """One input series of a job, by role (``"primary"``, ``"flair"``, ...)."""

    role: str
    series_uid: str


@dataclass(frozen=True)
class InputPlan:
    """Which series a job reads, or that it must wait.

    Attributes
    ----------
    series : tuple of InputSeries
        The primary series first. Ignored while ``wait_until`` is set. Empty:
        no job for this study (the scheduler records the series as declined
        with ``note``), e.g. a FLAIR the FDOPA pipeline took by its header in
        a study without FDOPA PET. The
        primary need not be the series being routed: a study-level analysis
        answers every one of its series with the same plan, and since a job
        is keyed by its primary series and the instances of all its inputs,
        the same plan reached twice makes one job, and a later plan with the
        same primary supersedes the earlier job (e.g. the FDOPA pipeline,
        :mod:`service.pipelines.fdopa_pet.plan`).
    wait_until : float or None
        Seconds since the epoch: ask again at the next sweep until then (a
        companion series may still arrive). None: make the job now.
    note : str
        Patient-free text for the job record and the report (e.g. "no FLAIR
        in the study after 600 s: PET-only route").
    """

    series: tuple[InputSeries, ...]
    wait_until: float | None = None
    note: str = ""

    @classmethod
    def single(cls, series_uid: str, note: str = "") -> InputPlan:
        return cls((InputSeries(PRIMARY, series_uid),), None, note)


@dataclass(frozen=True)
class OutputRef:
    """A DICOM object a pipeline produced earlier (for Predecessor Documents)."""

    sop_class_uid: str
    sop_instance_uid: str
    series_uid: str
    study_uid: str


@dataclass(frozen=True)
class JobContext:
    """What a run knows about its job besides the inputs.

    Attributes
    ----------
    job_key : str
        Stable identifier of the job's content (SHA-256 over the sorted SOP
        Instance UIDs of all inputs); output UIDs derive from it, so a retried
        job produces the same objects.
    created_at : float
        When the job was made, seconds since the epoch; content date/time of
        the outputs derive from it (a retry writes byte-identical objects).
    previous_outputs : tuple of OutputRef
        Outputs of the job this one supersedes that were already sent: the
        new SR names them in its Predecessor Documents Sequence.
    note : str
        The routing note (see :class:`InputPlan`).
    """

    job_key: str
    created_at: float
    previous_outputs: tuple[OutputRef, ...] = ()
    note: str = ""


@dataclass(frozen=True, eq=False)
class LoadedInputs:
    """The job's input series, read by the worker.

    Attributes
    ----------
    series : mapping of role to tuple of pydicom.Dataset
        Full datasets (pixel data included), in spool order.
    """

    series: Mapping[str, tuple[Dataset, ...]]

    @property
    def primary(self) -> tuple[Dataset, ...]:
        return self.series[PRIMARY]


@dataclass(frozen=True, eq=False)
class PipelineOutput:
    """What a pipeline returns for one job.

    Attributes
    ----------
    summary : mapping
        JSON-ready result the API serves (pipeline-defined; carries its own
        ``schema`` version key).
    datasets : tuple of pydicom.Dataset
        Objects to send to every destination (SR, SEG, picture report, ...).
    stage_durations_s : mapping of str to float
        Wall time per stage, seconds.
    warnings : tuple of str
        Patient-free notes (also inside the summary where the pipeline wants).
    supersedes : tuple of str
        SOP Instance UIDs of earlier outputs these replace.
    """

    summary: Mapping[str, Any]
    datasets: tuple[Dataset, ...]
    stage_durations_s: Mapping[str, float]
    warnings: tuple[str, ...] = ()
    supersedes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelStatus:
    """One model a pipeline serves, as /ready reports it."""

    name: str
    path: str
    ok: bool
    detail: str
    sha256: str | None = None


class Pipeline(Protocol):
    """One analysis (e.g. DaT SPECT)."""

    name: str
    version: str

    def select(self, series: SeriesView) -> Selection:
        """Take or decline a completed series (header only; no pixels)."""
        ...

    def inputs(self, primary: SeriesView, study: Sequence[SeriesView], now: float) -> InputPlan:
        """The job's input series (``study``: the study's other series so far)."""
        ...

    def run(self, inputs: LoadedInputs, context: JobContext) -> PipelineOutput:
        """Analyse the loaded inputs.

        Raises
        ------
        service.errors.AnalysisError
            For any expected failure (bad geometry, registration, ...).
        """
        ...

    def failure_report(self, inputs: LoadedInputs, context: JobContext,
                       reason: str) -> tuple[Dataset, ...]:
        """What the reader gets when a series this pipeline took cannot be analysed.

        Called after :meth:`run` raised an ``AnalysisError`` with ``reason``
        (patient-free); returns the objects to send (e.g. a short "analysis
        not possible" SR), or ``()`` for none. The job still ends ``failed``.
        """
        ...

