"""Two pipelines that exist only in the tests, plugged in like any third-party one.

They are registered through the ``dopanode.pipelines`` entry points of the
distribution folder ``plugins/dopanode_test_pipelines-0.dist-info`` next to
this module (a node started by :class:`service.testing.node.NodeProcess` has
``plugins/`` on its PYTHONPATH) and are disabled unless a test's settings
enable them (:func:`service.testing.node.fake_settings`):

* ``fake_nm`` stands in for the DaT pipeline where a test is about the node,
  not the analysis: takes NM series, decodes every instance's pixels, waits
  ``delay_s`` (simulated work) and returns one Basic Text SR whose UID derives
  from the job key; ``runs_log`` gets a ``start``/``end`` line per run;
* ``echo_ct`` is the "second analysis": takes CT series and returns a small
  Basic Text SR naming the instance count.

Neither touches a shared file of the node: one module, one settings section
each, one entry point each.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from service.dicom import codes
from service.errors import AnalysisError
from service.pipelines.base import (
    InputPlan,
    JobContext,
    LoadedInputs,
    ModelStatus,
    PipelineOutput,
    Selection,
    SeriesView,
)
from service.pipelines.registry import PipelineSettings, PipelineSpec


def small_sr(source: Dataset, job_key: str, kind: str, text: str = "") -> Dataset:
    """A minimal Basic Text SR in the source's study, UIDs derived from ``job_key``."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = codes.BASIC_TEXT_SR_STORAGE
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[job_key, kind])
    ds.StudyInstanceUID = source.StudyInstanceUID
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[job_key, kind + "-series"])
    ds.Modality = "SR"
    ds.PatientName = source.get("PatientName", "")
    ds.PatientID = source.get("PatientID", "")
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    if text:
        ds.ContentSequence = [Dataset()]
        ds.ContentSequence[0].ValueType = "TEXT"
        ds.ContentSequence[0].TextValue = text
    return ds


class FakeNmSettings(PipelineSettings):
    enabled: bool = False
    delay_s: float = 0.0
    runs_log: Path | None = None


class FakeNmPipeline:
    """Takes NM series; see the module docstring."""

    name = "fake_nm"
    version = "0"

    def __init__(self, delay_s: float = 0.0, runs_log: Path | None = None) -> None:
        self.delay_s = delay_s
        self.runs_log = runs_log

    def _note(self, what: str, job_key: str) -> None:
        if self.runs_log is not None:
            with open(self.runs_log, "a", encoding="ascii") as f:
                f.write(f"{what} {job_key}\n")
                f.flush()
                os.fsync(f.fileno())

    def select(self, series: SeriesView) -> Selection:
        if series.modality != "NM":
            return Selection.decline(f"modality is {series.modality or 'missing'}, not NM")
        return Selection.take("NM series")

    def inputs(self, primary: SeriesView, study: Sequence[SeriesView], now: float) -> InputPlan:
        return InputPlan.single(primary.series_uid)

    def run(self, inputs: LoadedInputs, context: JobContext) -> PipelineOutput:
        self._note("start", context.job_key)
        headers = inputs.primary
        for h in headers:
            try:
                h.pixel_array  # noqa: B018 - decoding is the check
            except (ValueError, AttributeError, EOFError, RuntimeError) as exc:
                raise AnalysisError("pixel data could not be decoded", "bad_pixel_data") from exc
        deadline = time.monotonic() + self.delay_s
        while time.monotonic() < deadline:  # simulated work
            time.sleep(0.05)
        output = PipelineOutput(
            summary={"schema": 1, "instances": len(headers)},
            datasets=(small_sr(headers[0], context.job_key, "fake-sr"),),
            stage_durations_s={"fake": self.delay_s})
        self._note("end", context.job_key)
        return output

    def failure_report(self, inputs: LoadedInputs, context: JobContext,
                       reason: str) -> tuple[Dataset, ...]:
        return ()


def _no_models(settings: Any) -> tuple[ModelStatus, ...]:
    return ()


def _build_fake(settings: FakeNmSettings) -> FakeNmPipeline:
    return FakeNmPipeline(settings.delay_s, settings.runs_log)


FAKE_NM_SPEC = PipelineSpec("fake_nm", "test only: NM stand-in for the DaT pipeline",
                            FakeNmSettings, _build_fake, _no_models)


class EchoCtSettings(PipelineSettings):
    enabled: bool = False


class EchoCtPipeline:
    """Takes CT series and answers with a one-line SR."""

    name = "echo_ct"
    version = "0"

    def select(self, series: SeriesView) -> Selection:
        if series.sop_class_uid != codes.CT_IMAGE_STORAGE:
            return Selection.decline("not a CT Image Storage series")
        return Selection.take("CT series")

    def inputs(self, primary: SeriesView, study: Sequence[SeriesView], now: float) -> InputPlan:
        return InputPlan.single(primary.series_uid)

    def run(self, inputs: LoadedInputs, context: JobContext) -> PipelineOutput:
        n = len(inputs.primary)
        return PipelineOutput(
            summary={"schema": 1, "instances": n},
            datasets=(small_sr(inputs.primary[0], context.job_key, "echo-sr",
                               f"echo_ct saw {n} CT instances"),),
            stage_durations_s={"echo": 0.0})

    def failure_report(self, inputs: LoadedInputs, context: JobContext,
                       reason: str) -> tuple[Dataset, ...]:
        return ()


ECHO_CT_SPEC = PipelineSpec("echo_ct", "test only: CT echo", EchoCtSettings,
                            lambda settings: EchoCtPipeline(), _no_models)
