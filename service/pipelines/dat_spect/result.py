"""What one DaT SPECT analysis produces: frozen dataclasses, no I/O.

The pipeline (:mod:`service.pipelines.dat_spect.pipeline`) fills these; the report
builders (:mod:`service.report`) and the API read them. Nothing here knows of
sockets, SQLite or files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Any

import numpy as np

from service.pipelines.dat_spect.provenance import CalibrationInfo
from service.report.identity import AlgorithmInfo, SourceReference

__all__ = ["AlgorithmInfo", "SourceReference"]  # re-exported: part of a StudyResult


class Region(StrEnum):
    """The four striatal subregions rated by dopanode."""

    CAUDATE_LEFT = "caudate_left"
    CAUDATE_RIGHT = "caudate_right"
    PUTAMEN_LEFT = "putamen_left"
    PUTAMEN_RIGHT = "putamen_right"

    @property
    def structure(self) -> str:
        """``"caudate"`` or ``"putamen"``."""
        return self.value.split("_")[0]

    @property
    def side(self) -> str:
        """``"left"`` or ``"right"`` (the patient's side)."""
        return self.value.split("_")[1]


REGIONS: tuple[Region, ...] = tuple(Region)


class Level(IntEnum):
    """Five-level rating of regional [123I]FP-CIT uptake."""

    NORMAL = 0
    BORDERLINE = 1
    MODERATE_REDUCTION = 2
    STRONG_REDUCTION = 3
    ALMOST_MISSING = 4

    @property
    def label(self) -> str:
        return self.name.replace("_", " ").lower()


@dataclass(frozen=True)
class RegionResult:
    """Numbers and ratings for one subregion.

    Attributes
    ----------
    region : Region
    sbr : float
        Specific binding ratio, mean(ROI) / mean(reference) - 1 (unitless).
    z_score : float or None
        (sbr - age-expected normal mean) / normal SD; None without a normal database.
    normal_mean, normal_sd : float or None
        Age-expected normal SBR and its SD, for charts.
    level_sbr : Level
        Conventional rating from SBR thresholds (always present).
    level_cnn : Level or None
        CNN rating; None when no model is installed.
    cnn_probabilities : tuple of 5 floats or None
        CNN class probabilities for levels 0..4.
    by_asymmetry : bool
        The reported level is not the CNN's although a CNN rated the region:
        a putamen the one-sided override found under a normal CNN call
        (:func:`service.pipelines.dat_spect.verdict.apply_verdict`); its
        reported level is its SBR level, at least 2 (moderate reduction).
    sbr_estimated : float or None
        A putamen's SBR as the learnt putamen estimator (X) reads it from the
        CNN's input crop (:mod:`service.pipelines.dat_spect.putamen_estimator`);
        the one-sided override compares the two putamina by it. None for the
        caudates and without a CNN.
    """

    region: Region
    sbr: float
    level_sbr: Level
    z_score: float | None = None
    normal_mean: float | None = None
    normal_sd: float | None = None
    level_cnn: Level | None = None
    cnn_probabilities: tuple[float, ...] | None = None
    by_asymmetry: bool = False
    sbr_estimated: float | None = None

    @property
    def level(self) -> Level:
        """The reported level: the CNN's when present (unless ``by_asymmetry``:
        the SBR level, at least moderate reduction), else the conventional one."""
        if self.level_cnn is not None and not self.by_asymmetry:
            return self.level_cnn
        if self.by_asymmetry:
            return max(self.level_sbr, Level.MODERATE_REDUCTION)
        return self.level_sbr


@dataclass(frozen=True)
class GlobalScore:
    """Binary study-level score derived from the four regional levels.

    Attributes
    ----------
    reduced : bool
        True for "reduced" (abnormal), False for "normal".
    inconclusive : bool
        True when the method is unsure (see ``rule``).
    rule : str
        Human-readable statement of the rule that produced it.
    method : str
        ``"cnn"``, ``"sbr"``, ``"cnn+asymmetry"`` (a normal CNN call
        overridden by a clear one-sided putamen loss,
        :func:`service.pipelines.dat_spect.verdict.one_sided_override`) or
        ``"cnn+side"`` (a strong one-sided CNN call kept where the putamen
        ratio points to it, :func:`service.pipelines.dat_spect.verdict.cnn_side_override`).
    """

    reduced: bool
    inconclusive: bool
    rule: str
    method: str


@dataclass(frozen=True)
class Ratios:
    """Conventional derived numbers beside the SBRs (unitless).

    Asymmetry index is 100 * |L - R| / mean(L, R) in percent.
    """

    putamen_caudate_left: float
    putamen_caudate_right: float
    asymmetry_caudate_pct: float
    asymmetry_putamen_pct: float


@dataclass(frozen=True, eq=False)
class ReportImages:
    """Pictures for the picture report, in normalised MNI space.

    Attributes
    ----------
    slab_yx : (H, W) float32 array
        Mean of the axial slab through the striatum, display orientation
        (row 0 anterior, column 0 patient right, as readers view axial slices).
    labels_yx : (H, W) uint8 array
        Region outline labels on the same grid: 0 none, 1 caudate L,
        2 caudate R, 3 putamen L, 4 putamen R, 5 reference.
    pixel_mm : float
        Pixel size of both arrays in millimetres.
    """

    slab_yx: np.ndarray
    labels_yx: np.ndarray
    pixel_mm: float


@dataclass(frozen=True, eq=False)
class StudyResult:
    """The complete outcome of one DaT SPECT analysis.

    ``calibration`` says where the SBR thresholds and normal database came
    from (None: not stated, e.g. a result built by hand).
    ``registration_target`` names the template the scan was registered to
    (``standard``, or ``no_ac`` after the standard one was refused:
    :func:`service.pipelines.dat_spect.normalise.normalise_series`).
    """

    source: SourceReference
    regions: tuple[RegionResult, ...]
    global_score: GlobalScore
    ratios: Ratios
    reference_region: str
    registration_quality: float
    algorithm: AlgorithmInfo
    images: ReportImages | None = None
    patient_age_years: float | None = None
    warnings: tuple[str, ...] = field(default_factory=tuple)
    calibration: CalibrationInfo | None = None
    registration_target: str = "standard"

    def region(self, region: Region) -> RegionResult:
        for r in self.regions:
            if r.region is region:
                return r
        raise KeyError(region)


def summary_dict(result: StudyResult) -> dict[str, Any]:
    """JSON-ready summary of a result: numbers, levels, UIDs; no patient identifiers.

    The one serialisation of a result, used by ``dopanode analyze`` (summary.json)
    and by the worker (the job's result, served by the API). Pictures, patient
    age and the list of source instances are left out.
    """
    return {
        "study_instance_uid": result.source.study_instance_uid,
        "series_instance_uid": result.source.series_instance_uid,
        "algorithm": {
            "name": result.algorithm.name,
            "version": result.algorithm.version,
            "model_name": result.algorithm.model_name,
            "model_sha256": result.algorithm.model_sha256,
        },
        "global": {
            "reduced": result.global_score.reduced,
            "inconclusive": result.global_score.inconclusive,
            "method": result.global_score.method,
            "rule": result.global_score.rule,
        },
        "regions": {
            r.region.value: {
                "sbr": _finite_or_none(r.sbr),
                "level": int(r.level),
                "level_sbr": int(r.level_sbr),
                "level_cnn": None if r.level_cnn is None else int(r.level_cnn),
                "level_by_asymmetry": r.by_asymmetry,
                "sbr_estimated": _finite_or_none(r.sbr_estimated),
                "cnn_probabilities": (
                    None if r.cnn_probabilities is None else list(r.cnn_probabilities)
                ),
                "z_score": _finite_or_none(r.z_score),
                "normal_mean": _finite_or_none(r.normal_mean),
                "normal_sd": _finite_or_none(r.normal_sd),
            }
            for r in result.regions
        },
        "ratios": {k: _finite_or_none(v) for k, v in vars(result.ratios).items()},
        "reference_region": result.reference_region,
        "registration_quality": _finite_or_none(result.registration_quality),
        "registration_target": result.registration_target,
        "warnings": list(result.warnings),
        "calibration": None if result.calibration is None else result.calibration.to_dict(),
    }


def _finite_or_none(value: float | None) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None
