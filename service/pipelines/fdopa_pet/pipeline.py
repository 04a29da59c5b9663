"""The [18F]FDOPA PET pipeline in the node: routing, the analysis, its outputs.

* :meth:`FdopaPetPipeline.select` takes attenuation-corrected FDOPA static
  and dynamic PET series (:func:`.gate.classify_series`); a non-AC FDOPA
  series is declined with "not attenuation-corrected ...", anything else
  with the gate's reason.
* :meth:`FdopaPetPipeline.inputs` gives the study-level plan of
  :mod:`.plan` (roles ``"primary"``, ``"dynamic"`` and ``"flair"``; bounded
  waits; one current result per study).
* :meth:`FdopaPetPipeline.run` analyses (:mod:`.analysis`; the MR-guided
  route of :mod:`.mr_route` beside the PET-only one when the plan has a
  FLAIR) and builds the
  DICOM SEG, the Comprehensive 3D SR (naming the superseded result's SR as
  predecessor) and the picture report, all in the study of the analysed
  series, plus the JSON summary (:mod:`.summary`).
* :meth:`FdopaPetPipeline.failure_report`: a short "analysis not possible" SR.

Routing imports no numerics: the analysis and output modules are imported
when the first job runs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pydicom.dataset import Dataset

from service import __version__
from service.dicom.codes import COMPREHENSIVE_SR_STORAGE
from service.pipelines.base import (
    InputPlan,
    JobContext,
    LoadedInputs,
    PipelineOutput,
    Selection,
    SeriesView,
)
from service.pipelines.fdopa_pet.flair_gate import classify_mr_series
from service.pipelines.fdopa_pet.gate import classify_series
from service.pipelines.fdopa_pet.plan import DYNAMIC, FLAIR, WaitRules, flair_plan, study_plan
from service.pipelines.fdopa_pet.timing import stage
from service.report.identity import AlgorithmInfo

if TYPE_CHECKING:
    from service.pipelines.fdopa_pet.analysis import AnalysisOptions
    from service.pipelines.fdopa_pet.flair_lesion import FlairLesionSegmenter
    from service.pipelines.fdopa_pet.plugin import FdopaPetSettings
    from service.pipelines.fdopa_pet.reference import FdopaTemplate
    from service.pipelines.fdopa_pet.result import FdopaResult
    from service.pipelines.fdopa_pet.segment import TumourSegmenter

log = logging.getLogger(__name__)

ALGORITHM_UNET = "dopanode FDOPA PET U-Net"
ALGORITHM_THRESHOLD = "dopanode FDOPA PET threshold-only baseline"


def algorithm_info(template: FdopaTemplate, segmenter: TumourSegmenter | None) -> AlgorithmInfo:
    """What makes the results: the U-Net (its name and checksum) or the threshold baseline."""
    if segmenter is None:
        return AlgorithmInfo(ALGORITHM_THRESHOLD, __version__,
                             "FDOPA template (threshold-only baseline)", template.sha256)
    info = segmenter.info
    return AlgorithmInfo(ALGORITHM_UNET, __version__, info.model_name, info.model_sha256)


@dataclass(frozen=True)
class Options:
    """The pipeline's settings, validated (:class:`.plugin.FdopaPetSettings`)."""

    fallback_keywords: tuple[str, ...] = ()
    min_registration_quality: float = 0.6
    warn_registration_quality: float = 0.75
    static_window_s: tuple[float, float] = (600.0, 1800.0)
    rules: WaitRules = field(default_factory=WaitRules)
    report_failures: bool = True
    min_flair_registration_quality: float = 0.9

    @classmethod
    def of(cls, settings: FdopaPetSettings) -> Options:
        start, end = settings.static_window_min
        return cls(settings.keywords, settings.min_registration_quality,
                   settings.warn_registration_quality, (60.0 * start, 60.0 * end),
                   WaitRules(settings.companion_wait_s, settings.static_wait_s,
                             settings.flair_wait_s, settings.expect_flair,
                             settings.flair_gate_keywords),
                   settings.report_failures, settings.min_flair_registration_quality)

    def analysis(self) -> AnalysisOptions:
        from service.pipelines.fdopa_pet.analysis import AnalysisOptions

        return AnalysisOptions(self.fallback_keywords, self.min_registration_quality,
                               self.warn_registration_quality, self.static_window_s,
                               self.min_flair_registration_quality, self.rules.flair_keywords)


class FdopaPetPipeline:
    """[18F]FDOPA brain PET analysis (implements :class:`service.pipelines.base.Pipeline`).

    Parameters
    ----------
    template : FdopaTemplate
        The FDOPA template and its atlas (:func:`.reference.load_fdopa_template`).
    segmenter : TumourSegmenter or None
        The U-Net; None segments by the classical threshold-only baseline
        (named so in every output).
    options : Options
    flair : FlairLesionSegmenter or None
        The FLAIR lesion segmenter of the MR-guided route (None: the
        classical threshold, :data:`.flair_lesion.THRESHOLD_SEGMENTER`).
    """

    name = "fdopa_pet"
    version = __version__

    def __init__(self, template: FdopaTemplate, segmenter: TumourSegmenter | None,
                 options: Options | None = None,
                 flair: FlairLesionSegmenter | None = None) -> None:
        self.template = template
        self.segmenter = segmenter
        self.options = options or Options()
        self.flair = flair
        self.algorithm: AlgorithmInfo = algorithm_info(template, segmenter)

    def select(self, series: SeriesView) -> Selection:
        """Take an AC FDOPA static or dynamic PET series, or a FLAIR (for a late FLAIR, whose
        plan is its study's FDOPA PET plan or no job); decline anything else with its reason."""
        if series.modality.upper() == "MR":
            mr = classify_mr_series(series.header, self.options.rules.flair_keywords)
            if mr.is_flair:
                return Selection.take(f"FLAIR for the MR-guided route ({mr.reason})")
        decision = classify_series(series.header, self.options.fallback_keywords)
        if decision.role in ("static", "dynamic"):
            return Selection.take(decision.reason)
        return Selection.decline(decision.reason)

    def inputs(self, primary: SeriesView, study: Sequence[SeriesView], now: float) -> InputPlan:
        """The study-level plan (:func:`.plan.study_plan`; a FLAIR: :func:`.plan.flair_plan`)."""
        if primary.modality.upper() == "MR":
            return flair_plan(primary, study, now, self.options.fallback_keywords,
                              self.options.rules)
        return study_plan(primary, study, now, self.options.fallback_keywords, self.options.rules)

    def run(self, inputs: LoadedInputs, context: JobContext) -> PipelineOutput:
        """Analyse the study and build its SEG, SR and picture report."""
        from service.pipelines.fdopa_pet.analysis import analyse_study
        from service.pipelines.fdopa_pet.summary import summary_dict

        durations_s: dict[str, float] = {}
        result = analyse_study(inputs.primary, inputs.series.get(DYNAMIC), self.template,
                               self.segmenter, self.algorithm, self.options.analysis(),
                               durations_s, note=context.note,
                               flair=inputs.series.get(FLAIR), flair_segmenter=self.flair)
        datasets = self.build_outputs(result, inputs.primary, context, durations_s,
                                      flair=inputs.series.get(FLAIR))
        with stage(durations_s, "summary"):
            summary = summary_dict(result)
        log.info("fdopa_analysis_done", extra={"fields": {
            "lesions": len(result.lesions), "dynamic": result.dynamic is not None,
            "route": result.route.route,
            "durations_s": {k: round(v, 3) for k, v in durations_s.items()}}})
        return PipelineOutput(
            summary=summary, datasets=datasets, stage_durations_s=durations_s,
            warnings=result.warnings,
            supersedes=tuple(p.sop_instance_uid for p in context.previous_outputs))

    def build_outputs(self, result: FdopaResult, datasets: Sequence[Dataset],
                      context: JobContext, durations_s: dict[str, float],
                      flair: Sequence[Dataset] | None = None) -> tuple[Dataset, ...]:
        """SEG, the FLAIR SEG (MR-guided route, given the FLAIR's instances), SR
        (referencing the SEGs and the previous SRs) and picture report."""
        from service.pipelines.fdopa_pet.picture import build_picture_report
        from service.pipelines.fdopa_pet.seg import build_seg
        from service.pipelines.fdopa_pet.seg_flair import build_flair_seg
        from service.pipelines.fdopa_pet.sr import build_sr

        previous_srs = [p for p in context.previous_outputs
                        if p.sop_class_uid == COMPREHENSIVE_SR_STORAGE]
        guided = result.flair_guided
        with stage(durations_s, "seg"):
            seg = build_seg(result, datasets, context.job_key, context.created_at)
            flair_seg = (build_flair_seg(result, flair, context.job_key, context.created_at)
                         if flair and guided is not None and guided.flair is not None
                         else None)
        with stage(durations_s, "sr"):
            sr = build_sr(result, datasets, seg, context.job_key, context.created_at,
                          previous_srs, None if flair_seg is None or not flair
                          else (flair_seg, flair))
        with stage(durations_s, "picture"):
            picture = build_picture_report(result, datasets, context.job_key,
                                           context.created_at)
        segs = (seg,) if flair_seg is None else (seg, flair_seg)
        return (*segs, sr, picture)

    def failure_report(self, inputs: LoadedInputs, context: JobContext,
                       reason: str) -> tuple[Dataset, ...]:
        """A short "analysis not possible" SR (:mod:`.failure`), unless turned off."""
        if not self.options.report_failures:
            return ()
        from service.pipelines.fdopa_pet.failure import build_failure_sr

        return (build_failure_sr(inputs.primary, reason, context.job_key, self.algorithm,
                                 context.created_at),)
