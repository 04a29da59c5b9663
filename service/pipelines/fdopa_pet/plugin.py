"""The FDOPA pipeline's registry entry: its ``[pipelines.fdopa_pet]`` settings and builder.

Imports nothing heavy: :func:`build` loads the template and the U-Net only
when the node starts the pipeline.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from service.pipelines.base import ModelStatus, Pipeline
from service.pipelines.fdopa_pet.codes import DEFAULT_KEYWORDS
from service.pipelines.registry import PipelineSettings, PipelineSpec


class FdopaPetSettings(PipelineSettings):
    """``[pipelines.fdopa_pet]``: the [18F]FDOPA brain PET tumour analysis.

    Attributes
    ----------
    fallback_keywords : str
        Comma-separated keywords matched against the Radiopharmaceutical text
        and the Series Description, used only when no radiopharmaceutical is
        coded (empty: tracer code required).
    segmentation : {"unet", "threshold"}
        ``"unet"``: the PET-only 3D U-Net (refuses to start without its model,
        never falls back); ``"threshold"``: the classical threshold-only
        baseline, named so in every output.
    model_path : Path or None
        The U-Net ONNX file (None: the shipped one, ``segment.DEFAULT_MODEL``).
    model_sha256 : str or None
        Expected checksum (None: the model's ``.sha256`` sidecar).
    template_path : Path or None
        The FDOPA template (None: the shipped one, built from simulated scans).
    min_registration_quality : float
        A study whose registration to the template scores below this (0-1)
        is refused with the reason, never measured.
    warn_registration_quality : float
        Below this (and at or above the minimum) the result carries a
        "registration quality" flag.
    companion_wait_s : float
        How long, after a series of the study completed, routing waits for
        an FDOPA companion series that is announced but not complete (a
        dynamic series still arriving, a per-slice series with fewer
        instances than its header announces). Then the job is made with what
        is there (a static analysed without curves says why).
    static_wait_s : float
        How long a dynamic series with no static series in its study waits
        for one after it completed; then the static image is summed from the
        dynamic frames.
    static_window_min : tuple of two floats
        Window (minutes from the dynamic acquisition start, taken as the
        injection) of the frames summed into a static image when the study
        has no static series; default 10-30 min (PET RANO / Nancy).
    report_failures : bool
        Send a short "analysis not possible" SR for a taken study that cannot
        be analysed.
    flair_wait_s : float
        How long, after the PET series completed, routing waits for a FLAIR
        MR series of the study that is announced (received in part) or
        expected (``expect_flair``); then the job runs on the PET-only route
        and says why (:mod:`.plan`).
    expect_flair : bool
        This site's FDOPA studies come with a FLAIR: wait ``flair_wait_s``
        for one even when none has arrived yet (default: wait only for a
        FLAIR already partly received).
    flair_keywords : str
        Comma-separated keywords of Series Description / Protocol Name that
        make an MR series a FLAIR when its header has no inversion time
        (:mod:`.flair_gate`).
    flair_segmentation : {"auto", "unet", "threshold"}
        The FLAIR lesion of the MR-guided route: ``"auto"`` the FLAIR U-Net
        when ``flair_model_path`` exists, else the classical threshold (named
        so in every output); ``"unet"`` the U-Net or no start;
        ``"threshold"`` the classical threshold.
    flair_model_path : Path or None
        The FLAIR U-Net ONNX file (None: ``models/dopanode_flair_seg.onnx``).
    min_flair_registration_quality : float
        FLAIR-to-PET registrations scoring below this (edge alignment, 0-1)
        are refused: the PET-only route runs and says why.
    """

    fallback_keywords: str = ",".join(DEFAULT_KEYWORDS)
    segmentation: Literal["unet", "threshold"] = "unet"
    model_path: Path | None = None
    model_sha256: str | None = None
    template_path: Path | None = None
    min_registration_quality: float = Field(default=0.6, ge=0.0, le=1.0)
    warn_registration_quality: float = Field(default=0.75, ge=0.0, le=1.0)
    companion_wait_s: float = Field(default=600.0, ge=0.0)
    static_wait_s: float = Field(default=120.0, ge=0.0)
    static_window_min: tuple[float, float] = (10.0, 30.0)
    report_failures: bool = True
    flair_wait_s: float = Field(default=600.0, ge=0.0)
    expect_flair: bool = False
    flair_keywords: str = "FLAIR"
    flair_segmentation: Literal["auto", "unet", "threshold"] = "auto"
    flair_model_path: Path | None = None
    min_flair_registration_quality: float = Field(default=0.9, ge=0.0, le=1.0)

    @field_validator("model_sha256")
    @classmethod
    def _hex64(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[0-9a-f]{64}", value):
            raise ValueError("must be 64 lower-case hex digits")
        return value

    @field_validator("static_window_min")
    @classmethod
    def _window(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 <= value[0] < value[1]:
            raise ValueError("must be [start, end] minutes with 0 <= start < end")
        return value

    @model_validator(mode="after")
    def _quality_order(self) -> FdopaPetSettings:
        if self.warn_registration_quality < self.min_registration_quality:
            raise ValueError("warn_registration_quality must not be below "
                             "min_registration_quality")
        return self

    @property
    def keywords(self) -> tuple[str, ...]:
        return tuple(k.strip() for k in self.fallback_keywords.split(",") if k.strip())

    @property
    def flair_gate_keywords(self) -> tuple[str, ...]:
        return tuple(k.strip() for k in self.flair_keywords.split(",") if k.strip())

    @property
    def unet_path(self) -> Path | None:
        """The ONNX file the pipeline serves, or None for the threshold baseline."""
        if self.segmentation != "unet":
            return None
        if self.model_path is not None:
            return self.model_path
        from service.pipelines.fdopa_pet.segment import DEFAULT_MODEL

        return DEFAULT_MODEL


def build(settings: FdopaPetSettings) -> Pipeline:
    """The FDOPA pipeline with its template and (for ``"unet"``) its model.

    Raises
    ------
    FileNotFoundError, ValueError, AnalysisError
        When the template or the configured model cannot be loaded or fails
        its checksum (or ``flair_segmentation = "unet"`` without the FLAIR
        model): the node refuses to start rather than analyse with
        something else.
    """
    from service.pipelines.fdopa_pet.flair_lesion import flair_segmenter
    from service.pipelines.fdopa_pet.pipeline import FdopaPetPipeline, Options
    from service.pipelines.fdopa_pet.reference import load_fdopa_template

    template = load_fdopa_template(settings.template_path)
    segmenter = None
    path = settings.unet_path
    if path is not None:
        from service.pipelines.fdopa_pet.segment import TumourSegmenter

        segmenter = TumourSegmenter(path, settings.model_sha256)
    flair = flair_segmenter(settings.flair_segmentation, settings.flair_model_path)
    return FdopaPetPipeline(template, segmenter, Options.of(settings), flair)


def check_models(settings: FdopaPetSettings) -> tuple[ModelStatus, ...]:
    """The U-Net file (presence and SHA-256), or a note that the threshold baseline is used;
    the same for the FLAIR U-Net of the MR-guided route."""
    from service.inference.manifest import check_model

    path = settings.unet_path
    if path is None:
        return (ModelStatus("fdopa_unet", "", True,
                            "segmentation = threshold: classical threshold-only baseline, "
                            "no model"), flair_model_status(settings))
    check = check_model(path, settings.model_sha256)
    return (ModelStatus("fdopa_unet", check.path or "", check.ok, check.detail, check.sha256),
            flair_model_status(settings))


def flair_model_status(settings: FdopaPetSettings) -> ModelStatus:
    """The FLAIR U-Net of the MR-guided route, or which classical threshold is used instead."""
    from service.inference.manifest import check_model
    from service.pipelines.fdopa_pet.flair_lesion import THRESHOLD_TEXT, default_flair_model

    path = settings.flair_model_path or default_flair_model()
    if settings.flair_segmentation == "threshold":
        return ModelStatus("fdopa_flair_unet", "", True,
                           "flair_segmentation = threshold: FLAIR lesion by classical threshold")
    if settings.flair_segmentation == "auto" and not path.is_file():
        return ModelStatus("fdopa_flair_unet", "", True, f"FLAIR lesion: {THRESHOLD_TEXT}")
    check = check_model(path, None)
    return ModelStatus("fdopa_flair_unet", check.path or "", check.ok, check.detail,
                       check.sha256)


SPEC = PipelineSpec(
    name="fdopa_pet",
    title="[18F]FDOPA brain PET: tumour segmentation, TBR, T/S, MTV, curves; SEG, SR, picture",
    settings_model=FdopaPetSettings,
    build=build,
    check_models=check_models,
    command_modules=(),
)
