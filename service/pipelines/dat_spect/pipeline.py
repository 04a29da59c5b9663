"""The DaT SPECT analysis: files in, StudyResult plus SR and picture report out.

Stages (wall time of each is reported): ``read`` (pydicom), ``gate`` (is it
an [123I]FP-CIT SPECT series?), ``volume`` (LPS volume from the header),
``normalise`` (registration to the FP-CIT template, MNI 2 mm), ``quantify``
(SBR, ratios), ``score`` (levels from the calibration thresholds, z-scores
from the normal database, global score), ``report`` (SR and picture report).

The shipped template, calibration and normal database live in
``models/template/`` (see its README for how they were made).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np
from pydicom.dataset import Dataset

from service import __version__
from service.dicom.codes import COMPREHENSIVE_SR_STORAGE
from service.errors import AnalysisError
from service.imaging.atlas import LABELS, Atlas
from service.imaging.nm_volume import volume_from_datasets
from service.paths import default_models_dir
from service.pipelines.base import (
    PRIMARY,
    InputPlan,
    InputSeries,
    JobContext,
    LoadedInputs,
    PipelineOutput,
    Selection,
    SeriesView,
)
from service.pipelines.dat_spect.assets import CALIBRATION_FILE, DatModels, load_dat_models
from service.pipelines.dat_spect.cnn import CnnSession
from service.pipelines.dat_spect.completeness import (
    announced_slices,
    as_incomplete,
    check_count,
    check_coverage,
)
from service.pipelines.dat_spect.gate import check_dat_series
from service.pipelines.dat_spect.levels import Calibration, global_score, sbr_levels
from service.pipelines.dat_spect.normalise import Normalisation, normalise_series
from service.pipelines.dat_spect.normals import NormalDatabase
from service.pipelines.dat_spect.preprocess import cnn_input
from service.pipelines.dat_spect.protocol import ByProtocol, Family, correction_family
from service.pipelines.dat_spect.provenance import CalibrationInfo
from service.pipelines.dat_spect.putamen_estimator import (
    ESTIMATOR_FILE,
    PutamenEstimator,
    load_putamen_estimator,
)
from service.pipelines.dat_spect.quantify import REFERENCE_REGION, Quantification, quantify
from service.pipelines.dat_spect.result import (
    REGIONS,
    AlgorithmInfo,
    GlobalScore,
    Region,
    RegionResult,
    ReportImages,
    SourceReference,
    StudyResult,
    summary_dict,
)
from service.pipelines.dat_spect.verdict import apply_verdict, with_calibration

log = logging.getLogger(__name__)

ALGORITHM_NAME = "dopanode DaT SBR"
ALGORITHM_NAME_CNN = "dopanode DaT CNN"
#: Default wait for the rest of a per-slice series that announced more slices, seconds.
DEFAULT_INCOMPLETE_WAIT_S = 600.0
#: Half thickness of the axial slab shown in the picture report, in 2 mm slices.
SLAB_HALF_SLICES = 4


@contextmanager
def _stage(durations_s: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        durations_s[name] = time.perf_counter() - start


def patient_age_years(ds: Dataset) -> float | None:
    """Age from Patient's Age (``nnnY``, ``nnnM``, ``nnnW``, ``nnnD``), else None."""
    value = str(ds.get("PatientAge", "") or "").strip().upper()
    per_year = {"Y": 1.0, "M": 12.0, "W": 52.1775, "D": 365.25}
    if len(value) == 4 and value[:3].isdigit() and value[3] in per_year:
        return int(value[:3]) / per_year[value[3]]
    return None


def report_images(volume_zyx: np.ndarray, atlas: Atlas) -> ReportImages:
    """Axial slab through the striatum, in the display orientation of ReportImages.

    Rows run anterior to posterior (atlas y index reversed), columns from the
    patient's right to left (atlas x index, which increases to the left).
    """
    striatum_z = np.nonzero(((atlas.labels_zyx >= 1) & (atlas.labels_zyx <= 4)).any(axis=(1, 2)))[0]
    centre = int(round(striatum_z.mean()))
    zs = slice(centre - SLAB_HALF_SLICES, centre + SLAB_HALF_SLICES + 1)
    slab = volume_zyx[zs].mean(axis=0)[::-1, :]
    labels = atlas.labels_zyx[zs]
    striatal = np.where((labels >= 1) & (labels <= 4), labels, 0).max(axis=0)
    reference = (labels == LABELS["occipital"]).any(axis=0)
    labels_yx = np.where(striatal > 0, striatal, np.where(reference, LABELS["occipital"], 0))
    return ReportImages(
        slab_yx=np.ascontiguousarray(slab, np.float32),
        labels_yx=np.ascontiguousarray(labels_yx[::-1, :], np.uint8),
        pixel_mm=float(atlas.spacing_mm[0]),
    )


def score_regions(
    quant: Quantification,
    calibration: Calibration,
    normals: NormalDatabase | None,
    age_years: float | None,
) -> tuple[RegionResult, ...]:
    """Levels from the calibration (thresholds and the asymmetry rule) and
    z-scores from the normal database."""
    levels = sbr_levels(quant.sbr, calibration)
    results = []
    for region in REGIONS:
        sbr = quant.sbr[region]
        mean = sd = z = None
        if normals is not None:
            mean, sd = normals.expected(region, age_years)
            z = normals.z_score(region, sbr, age_years)
        results.append(
            RegionResult(
                region=region,
                sbr=sbr,
                level_sbr=levels[region],
                z_score=z,
                normal_mean=mean,
                normal_sd=sd,
            )
        )
    return tuple(results)


def rate_with_cnn(
    cnn: CnnSession, volume_mni_zyx: np.ndarray, atlas: Atlas, regions: Sequence[RegionResult],
    estimator: PutamenEstimator | None = None,
) -> tuple[tuple[RegionResult, ...], GlobalScore]:
    """Add the CNN's levels beside the conventional ones; the global score becomes the CNN's.

    Parameters
    ----------
    volume_mni_zyx : (91, 109, 91) float32 array
        The normalised scan, exactly as the SBRs were measured on it.
    regions : sequence of RegionResult
        The conventional results; their SBR levels are kept unchanged.
    estimator : PutamenEstimator or None
        The learnt putamen estimator; given, each putamen gets its estimate
        (``sbr_estimated``) read from the same crop the CNN rates.
    """
    crop = cnn_input(volume_mni_zyx, atlas, cnn.contract)
    prediction = cnn.predict(crop)
    estimates: dict[Region, float] = {}
    if estimator is not None:
        left, right = estimator.estimate(crop)
        estimates = {Region.PUTAMEN_LEFT: left, Region.PUTAMEN_RIGHT: right}
    rated = tuple(
        replace(
            r,
            level_cnn=prediction.region(r.region).level,
            cnn_probabilities=tuple(prediction.region(r.region).probabilities),
            sbr_estimated=estimates.get(r.region),
        )
        for r in regions
    )
    score = GlobalScore(
        reduced=prediction.reduced,
        inconclusive=prediction.inconclusive,
        rule=prediction.rule,
        method="cnn",
    )
    return rated, score


@dataclass(frozen=True, eq=False)
class Measurement:
    """The numbers of one series before any scoring.

    Attributes
    ----------
    normalisation : Normalisation
    quantification : Quantification
    age_years : float or None
    warnings : tuple of str
        Patient-free notes from the volume reader and the registration.
    family : Family
        The series' correction family (Corrected Image), which chose the
        registration targets and chooses the calibration.
    """

    normalisation: Normalisation
    quantification: Quantification
    age_years: float | None
    warnings: tuple[str, ...]
    family: Family


def measure(
    datasets: Sequence[Dataset],
    models: DatModels,
    fallback_keywords: Sequence[str],
    durations_s: dict[str, float],
) -> Measurement:
    """Gate, build the volume, normalise and quantify one series.

    Raises
    ------
    AnalysisError
        ``incomplete_series`` (:mod:`.completeness`): fewer slices than
        announced, gaps in the stack, or slices that do not cover the head;
        the gate's, the volume reader's and the registration's codes.
    """
    with _stage(durations_s, "gate"):
        check_dat_series(datasets[0], tuple(fallback_keywords))
        check_count(datasets)
    with _stage(durations_s, "volume"):
        try:
            volume = volume_from_datasets(datasets)
        except AnalysisError as exc:
            raise as_incomplete(exc) from exc
    with _stage(durations_s, "normalise"):
        family = correction_family(datasets[0].get("CorrectedImage"))
        norm = normalise_series(volume.image, models.template_zyx, models.atlas,
                                models.noac_template_zyx,
                                ac_stated=family.ac_stated)
        check_coverage(volume.image, norm.transform, models.atlas)
    with _stage(durations_s, "quantify"):
        quant = quantify(norm.volume_zyx, models.atlas)
    return Measurement(norm, quant, patient_age_years(datasets[0]),
                       (*volume.warnings, *((norm.target_note,) if norm.target_note else ())),
                       family)


class DatSpectPipeline:
    """[123I]FP-CIT SPECT analysis (implements :class:`service.pipelines.base.Pipeline`).

    Parameters
    ----------
    models : DatModels or None
        Template, calibration and normals; the shipped ones when None.
    fallback_keywords : sequence of str
        Series description keywords that admit a series without a tracer code.
    cnn : CnnSession or None
        The CNN that rates the regions; None scores by SBR thresholds only.
    report_failures : bool
        Send a short "analysis not possible" SR for a taken series that
        cannot be analysed (:mod:`.failure`); False sends nothing.
    incomplete_wait_s : float
        How long routing waits, after the series' quiet-time completion, for
        the rest of a per-slice series that announced more slices than
        arrived (:mod:`.completeness`); then the job is made and refused.
    asymmetry_decides : bool
        A normal CNN call above a clear one-sided putamen loss becomes
        *reduced* (:func:`.verdict.one_sided_override`), and a strong
        one-sided CNN call the putamen ratio points to stays *reduced*
        (:func:`.verdict.cnn_side_override`).
    """

    name = "dat_spect"
    version = __version__

    def __init__(
        self,
        models: DatModels | None = None,
        fallback_keywords: Sequence[str] = (),
        cnn: CnnSession | None = None,
        report_failures: bool = True,
        incomplete_wait_s: float = DEFAULT_INCOMPLETE_WAIT_S,
        asymmetry_decides: bool = True,
        estimator: PutamenEstimator | None = None,
    ) -> None:
        self.report_failures = report_failures
        self.asymmetry_decides = asymmetry_decides
        self.incomplete_wait_s = float(incomplete_wait_s)
        self.models = models or load_dat_models()
        if self.models.calibration is None:
            raise ValueError(f"no {CALIBRATION_FILE} beside the template: cannot score")
        self.calibrations: ByProtocol[Calibration] = self.models.calibration
        self.fallback_keywords = tuple(fallback_keywords)
        self.cnn = cnn
        #: The learnt putamen estimator, on the CNN's crop: the shipped one unless given.
        self.estimator: PutamenEstimator | None = None
        if cnn is not None:
            self.estimator = estimator or load_putamen_estimator(
                default_models_dir() / ESTIMATOR_FILE, self.models.atlas, cnn.contract)
        if cnn is None:
            self.algorithm = AlgorithmInfo(
                name=ALGORITHM_NAME,
                version=__version__,
                model_name="FP-CIT template and SBR calibration",
                model_sha256=self.models.sha256,
            )
        else:
            self.algorithm = AlgorithmInfo(
                name=ALGORITHM_NAME_CNN,
                version=__version__,
                model_name=cnn.name,
                model_sha256=cnn.sha256,
                parameters=(f"putamen estimator sha256: {self.estimator.sha256}",)
                if self.estimator is not None and self.estimator.sha256 else (),
            )

    def select(self, series: SeriesView) -> Selection:
        """Take an [123I]FP-CIT SPECT reconstruction (:mod:`.gate`), decline anything else."""
        try:
            return Selection.take(check_dat_series(series.header, self.fallback_keywords))
        except AnalysisError as exc:
            return Selection.decline(exc.reason)

    def inputs(self, primary: SeriesView, study: Sequence[SeriesView], now: float) -> InputPlan:
        """Only the series itself; but wait for the rest of an incomplete per-slice series.

        A per-slice series holding fewer instances than its header announces
        waits until ``incomplete_wait_s`` after its completion; the job made
        after that is refused as incomplete by :meth:`run`.
        """
        announced = announced_slices(primary.header)
        if announced is None or primary.instance_count >= announced:
            return InputPlan.single(primary.series_uid)
        since = primary.completed_at if primary.completed_at is not None else now
        until = since + self.incomplete_wait_s
        note = (f"incomplete: {primary.instance_count} of {announced} announced slices "
                f"after {self.incomplete_wait_s:g} s")
        if now < until:
            return InputPlan((InputSeries(PRIMARY, primary.series_uid),), until, note)
        return InputPlan.single(primary.series_uid, note)

    def run(self, inputs: LoadedInputs, context: JobContext) -> PipelineOutput:
        """Analyse one series and build its SR and picture report."""
        durations_s: dict[str, float] = {}
        datasets = inputs.primary
        result = self.analyse(datasets, durations_s)
        with _stage(durations_s, "report"):
            outputs = self.build_reports(result, datasets, context)
        log.info(
            "dat_analysis_done",
            extra={"fields": {"durations_s": {k: round(v, 3) for k, v in durations_s.items()}}},
        )
        return PipelineOutput(
            summary=summary_dict(result), datasets=outputs, stage_durations_s=durations_s,
            warnings=result.warnings,
            supersedes=tuple(p.sop_instance_uid for p in context.previous_outputs),
        )

    def failure_report(self, inputs: LoadedInputs, context: JobContext,
                       reason: str) -> tuple[Dataset, ...]:
        """A short "analysis not possible" SR (:mod:`.failure`), unless turned off."""
        if not self.report_failures:
            return ()
        from service.pipelines.dat_spect.failure import build_failure_sr

        return (build_failure_sr(inputs.primary, reason, context.job_key, self.algorithm,
                                 context.created_at),)

    def analyse(self, datasets: Sequence[Dataset], durations_s: dict[str, float]) -> StudyResult:
        """Gate, volume, normalise, quantify and score (no reports)."""
        m = measure(datasets, self.models, self.fallback_keywords, durations_s)
        with _stage(durations_s, "score"):
            calibration, normals, info = self.calibration_for(m.family)
            regions = score_regions(m.quantification, calibration, normals, m.age_years)
            levels = {r.region: r.level_sbr for r in regions}
            score = global_score(levels, m.quantification.sbr, calibration)
        if self.cnn is not None:
            with _stage(durations_s, "infer"):
                regions, score = rate_with_cnn(
                    self.cnn, m.normalisation.volume_zyx, self.models.atlas, regions,
                    self.estimator,
                )
        regions, score = apply_verdict(regions, score, self.asymmetry_decides)
        score = with_calibration(score, info)
        warnings = list(m.warnings)
        if m.age_years is None and self.models.normals is not None:
            warnings.append("patient age unknown: z-scores at the normal database mean age")
        return StudyResult(
            source=SourceReference.of(list(datasets)),
            regions=regions,
            global_score=score,
            ratios=m.quantification.ratios,
            reference_region=REFERENCE_REGION,
            registration_quality=m.normalisation.quality,
            algorithm=self.algorithm,
            images=report_images(m.normalisation.volume_zyx, self.models.atlas),
            patient_age_years=m.age_years,
            warnings=tuple(warnings),
            calibration=info,
            registration_target=m.normalisation.target,
        )

    def calibration_for(self, family: Family
                        ) -> tuple[Calibration, NormalDatabase | None, CalibrationInfo]:
        """Thresholds, normal database and what the reader is told, for one
        series' correction family (:mod:`.protocol`).

        Raises
        ------
        AnalysisError
            ``calibration``: a per-protocol file without this family.
        """
        try:
            calibration = self.calibrations.select(family)
            normals = None if self.models.normals is None else self.models.normals.select(family)
        except ValueError as exc:
            raise AnalysisError(str(exc), "calibration") from exc
        per_protocol = self.calibrations.per_protocol or (
            self.models.normals is not None and self.models.normals.per_protocol)
        info = CalibrationInfo(calibration.provenance,
                               None if normals is None else normals.provenance,
                               family.describe() if per_protocol else None)
        return calibration, normals, info

    def build_reports(
        self, result: StudyResult, datasets: Sequence[Dataset], context: JobContext
    ) -> tuple[Dataset, ...]:
        """The Comprehensive SR and the picture report of one result."""
        from service.pipelines.dat_spect.picture import build_picture_report
        from service.pipelines.dat_spect.sr import build_sr

        previous_srs = [p for p in context.previous_outputs
                        if p.sop_class_uid == COMPREHENSIVE_SR_STORAGE]
        return (
            build_sr(result, datasets, context.job_key, context.created_at, previous_srs),
            build_picture_report(result, datasets, context.job_key, context.created_at),
        )
