"""The DaT pipeline's registry entry: its ``[pipelines.dat_spect]`` settings and builder.

Imports nothing heavy: :func:`build` loads the template, calibration and the
CNN only when the node starts the pipeline.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import Field, field_validator

from service.pipelines.base import ModelStatus, Pipeline
from service.pipelines.registry import PipelineSettings, PipelineSpec

#: The shipped CNN, in :func:`service.paths.default_models_dir`.
MODEL_FILE = "dopanode_dat_cnn.onnx"


class DatSpectSettings(PipelineSettings):
    """``[pipelines.dat_spect]``: the [123I]FP-CIT SPECT analysis.

    Attributes
    ----------
    template_dir : Path or None
        FP-CIT template, SBR calibration and normal database (None: the
        shipped ``models/template``, built from simulated scans).
    fallback_keywords : str
        Comma-separated Series Description keywords that admit a series whose
        Radiopharmaceutical Code Sequence is absent (empty: tracer code required).
    cnn_enabled : bool
        False scores by SBR thresholds only.
    model_path : Path or None
        The CNN (None: the shipped ``models/dopanode_dat_cnn.onnx``).
    model_sha256 : str or None
        Expected checksum (None: the model's ``.sha256`` sidecar).
    report_failures : bool
        Send a short "analysis not possible" SR to the destinations for a
        taken series that cannot be analysed (registration failed, slices
        missing, incomplete series, inconsistent geometry).
    incomplete_wait_s : float
        Seconds routing waits, after the usual quiet time, for the rest of a
        per-slice series whose header announces more slices than arrived;
        then it is reported as incomplete, never analysed.
    asymmetry_decides : bool
        A normal CNN call above a clear one-sided putamen loss (both the VOI
        SBR ratio and the learnt putamen estimator put one putamen below
        0.78 x the other, one of them clearly: the VOI below 0.741 or the
        estimator below 0.66; until December 2026 the VOI below 0.741 alone)
        is reported *reduced*, not
        inconclusive (:func:`service.pipelines.dat_spect.verdict.one_sided_override`).
        On by default since 2026-12-02 (``models/training/README.md``,
        "The asymmetry decides"); since 2026-12-04 it also keeps a one-sided
        CNN call with a putamen at level 3+ *reduced* where that putamen's
        SBR is below 0.95 x the other's while the SBR thresholds see nothing
        (:func:`service.pipelines.dat_spect.verdict.cnn_side_override`).
        False reports both kinds of scan inconclusive.
    estimator_path : Path or None
        The learnt putamen estimator read from the CNN's input crop
        (:mod:`service.pipelines.dat_spect.putamen_estimator`; None: the
        shipped ``models/dopanode_dat_putamen_estimator.npz``); loaded with
        the CNN.
    estimator_sha256 : str or None
        Its expected checksum (None: the file's ``.sha256`` sidecar).
    """

    template_dir: Path | None = None
    fallback_keywords: str = ""
    cnn_enabled: bool = True
    model_path: Path | None = None
    model_sha256: str | None = None
    report_failures: bool = True
    incomplete_wait_s: float = Field(default=600.0, ge=0.0)
    asymmetry_decides: bool = True
    estimator_path: Path | None = None
    estimator_sha256: str | None = None

    @field_validator("model_sha256", "estimator_sha256")
    @classmethod
    def _hex64(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[0-9a-f]{64}", value):
            raise ValueError("must be 64 lower-case hex digits")
        return value

    @property
    def keywords(self) -> tuple[str, ...]:
        return tuple(k.strip() for k in self.fallback_keywords.split(",") if k.strip())

    @property
    def cnn_path(self) -> Path | None:
        """The ONNX file the pipeline serves, or None when the CNN is off."""
        from service.paths import default_models_dir

        if not self.cnn_enabled:
            return None
        return self.model_path if self.model_path is not None else default_models_dir() / MODEL_FILE

    @property
    def estimator_file(self) -> Path | None:
        """The putamen estimator the pipeline serves with the CNN, or None when the CNN is off."""
        from service.paths import default_models_dir
        from service.pipelines.dat_spect.putamen_estimator import ESTIMATOR_FILE

        if not self.cnn_enabled:
            return None
        return (self.estimator_path if self.estimator_path is not None
                else default_models_dir() / ESTIMATOR_FILE)


def build(settings: DatSpectSettings) -> Pipeline:
    """The DaT pipeline with its template, calibration and (optional) CNN.

    Raises
    ------
    FileNotFoundError, ValueError, AnalysisError
        When the template, calibration or the configured model cannot be
        loaded or fails its checksum.
    """
    from service.pipelines.dat_spect.assets import load_dat_models
    from service.pipelines.dat_spect.cnn import CnnSession
    from service.pipelines.dat_spect.pipeline import DatSpectPipeline
    from service.pipelines.dat_spect.putamen_estimator import load_putamen_estimator

    models = load_dat_models(settings.template_dir)
    path, estimator_file = settings.cnn_path, settings.estimator_file
    cnn = CnnSession(path, settings.model_sha256) if path is not None else None
    estimator = None
    if cnn is not None and estimator_file is not None:
        estimator = load_putamen_estimator(estimator_file, models.atlas, cnn.contract,
                                           settings.estimator_sha256)
    return DatSpectPipeline(models, settings.keywords, cnn=cnn,
                            report_failures=settings.report_failures,
                            incomplete_wait_s=settings.incomplete_wait_s,
                            asymmetry_decides=settings.asymmetry_decides,
                            estimator=estimator)


def check_models(settings: DatSpectSettings) -> tuple[ModelStatus, ...]:
    """The CNN file and the putamen estimator served with it (presence and SHA-256), or a
    note that SBR thresholds alone are used."""
    from service.inference.manifest import check_model

    check = check_model(settings.cnn_path, settings.model_sha256)
    out = [ModelStatus("dat_cnn", check.path or "", check.ok, check.detail, check.sha256)]
    if settings.estimator_file is not None:
        est = check_model(settings.estimator_file, settings.estimator_sha256)
        out.append(ModelStatus("dat_putamen_estimator", est.path or "", est.ok, est.detail,
                               est.sha256))
    return tuple(out)


SPEC = PipelineSpec(
    name="dat_spect",
    title="[123I]FP-CIT (DaTscan) SPECT: striatal levels, SBR, SR and picture report",
    settings_model=DatSpectSettings,
    build=build,
    check_models=check_models,
    command_modules=("service.pipelines.dat_spect.commands",
                     "service.pipelines.dat_spect.train_commands"),
)
