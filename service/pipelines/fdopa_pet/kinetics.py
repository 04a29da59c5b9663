"""Dynamic FDOPA: time-activity curves, time to peak, late slopes and the slope ratio.

Definitions (the paediatric Genoa pipeline, ``MicheleMureddu/Pediatric_fdopa_pipeline``
``utils.py::get_tacs`` / ``get_dynamic_parameters``, read in research note
``fdopa.md`` §1a; units and conversions from ``fdopa_sim_and_product.md`` §2.3):

* TAC of a VOI: the **mean** voxel value in each frame (series units: Bq/mL
  for BQML).
* Time convention: frame **start** (Genoa's ``FrameTimesStart``), or frame
  **mid** as the alternative; both are reported, each named.
* TTP: the time of the frame with the highest TAC value, in the chosen
  convention.
* Slope: least-squares line (``scipy.stats.linregress`` in Genoa, here
  ``numpy.polyfit`` degree 1, the same estimator) of the TAC against time
  over the frames from the fit start to the **last** frame. Fit start: 120 s;
  Genoa's rule for newer scanners is 150 s when no frame starts at 120 s
  (:func:`genoa_fit_start_s`). Frames taken are those whose time (in the
  chosen convention) is ``>= fit start``.
* Units: series units per second (``Bq/mL/s`` for BQML, the Genoa unit); per
  minute in SUVbw (``SUV/min = units/s x 60 x SUV factor``); and
  ``%/min = 100 x 60 x slope / mean(TAC in the fit window)``.
* Slope ratio (Genoa "DSR"): tumour slope / striatum slope, same convention
  and window.

Times are seconds from injection: frame times of the volume plus
``offset_s`` (the first frame's start after injection; 0 when the dynamic
acquisition starts at injection, as in the reference protocols).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from service.errors import AnalysisError
from service.imaging.pet_volume import PetVolume
from service.imaging.suv import SuvScale

Convention = Literal["start", "mid"]
FIT_FROM_S = 120.0
FIT_FROM_NEWER_S = 150.0
_TIME_TOL_S = 0.5


def time_activity_curves(volume: PetVolume, masks: Mapping[str, np.ndarray]
                         ) -> dict[str, np.ndarray]:
    """Mean value per frame inside each VOI.

    Parameters
    ----------
    volume : PetVolume
        Dynamic (or static: one value) series.
    masks : mapping of str to (z, y, x) bool array
        VOIs on the volume's grid.

    Returns
    -------
    dict of str to (n_frames,) float64 array
        Series units (Bq/mL for BQML).

    Raises
    ------
    service.errors.AnalysisError
        ``code="empty_voi"`` for an empty mask, ``"voi_grid"`` for a wrong shape.
    """
    out = {}
    for name, mask in masks.items():
        mask = np.asarray(mask, bool)
        if mask.shape != volume.shape_zyx:
            raise AnalysisError(f"VOI {name} is not on the PET grid", "voi_grid")
        if not mask.any():
            raise AnalysisError(f"VOI {name} is empty", "empty_voi")
        out[name] = np.array([float(f.volume_zyx[mask].mean(dtype=np.float64))
                              for f in volume.frames])
    return out


def frame_times_s(volume: PetVolume, convention: Convention, offset_s: float = 0.0
                  ) -> np.ndarray:
    """(n_frames,) frame start or mid times from injection, s."""
    times = volume.starts_s if convention == "start" else volume.mids_s
    return times + offset_s


def genoa_fit_start_s(starts_s: np.ndarray) -> float:
    """120 s, or 150 s when no frame starts at 120 s but one starts at 150 s (Genoa rule)."""
    if np.any(np.abs(starts_s - FIT_FROM_S) <= _TIME_TOL_S):
        return FIT_FROM_S
    if np.any(np.abs(starts_s - FIT_FROM_NEWER_S) <= _TIME_TOL_S):
        return FIT_FROM_NEWER_S
    return FIT_FROM_S


def time_to_peak_s(tac: np.ndarray, times_s: np.ndarray) -> float:
    """Time of the frame with the highest TAC value (first one on ties), s."""
    return float(times_s[int(np.argmax(tac))])


def late_slope_per_s(tac: np.ndarray, times_s: np.ndarray, from_s: float
                     ) -> tuple[float, float, int]:
    """(slope in TAC units/s, %/min, frames fitted) from ``from_s`` to the last frame.

    Raises
    ------
    service.errors.AnalysisError
        ``code="too_few_frames"`` with fewer than two frames in the window.
    """
    sel = times_s >= from_s - 1e-6
    if int(sel.sum()) < 2:
        raise AnalysisError(f"fewer than two dynamic frames from {from_s:g} s",
                            "too_few_frames")
    per_s = float(np.polyfit(times_s[sel], tac[sel], 1)[0])
    return per_s, 100.0 * 60.0 * per_s / float(tac[sel].mean()), int(sel.sum())


@dataclass(frozen=True)
class CurveParameters:
    """TTP and late slope of one TAC under one time convention.

    Attributes
    ----------
    region : str
    convention : {"start", "mid"}
        Frame time used for TTP and the fit.
    ttp_s : float
        Time to peak from injection, s.
    fit_from_s : float
        Fit window start (s from injection); the window ends at the last frame.
    fit_frames : int
    slope_units_per_s : float
        In series units per second.
    slope_bqml_per_s : float or None
        Bq/mL/s (None when the units cannot be converted, e.g. GML).
    slope_suv_per_min : float or None
        SUVbw (g/mL) per minute (None when SUV is not available).
    slope_percent_per_min : float
        Relative to the mean TAC value in the fit window.
    """

    region: str
    convention: Convention
    ttp_s: float
    fit_from_s: float
    fit_frames: int
    slope_units_per_s: float
    slope_bqml_per_s: float | None
    slope_suv_per_min: float | None
    slope_percent_per_min: float

    @property
    def ttp_min(self) -> float:
        return self.ttp_s / 60.0


def curve_parameters(region: str, tac: np.ndarray, times_s: np.ndarray,
                     convention: Convention, from_s: float,
                     scale: SuvScale | None = None) -> CurveParameters:
    """TTP and slope of ``tac`` (series units) at ``times_s`` (s from injection)."""
    per_s, percent, n = late_slope_per_s(tac, times_s, from_s)
    bqml = per_s * scale.bqml_per_unit if scale and scale.bqml_per_unit else None
    suv = per_s * 60.0 * scale.factor if scale and scale.factor is not None else None
    return CurveParameters(region, convention, time_to_peak_s(tac, times_s), from_s, n, per_s,
                           bqml, suv, percent)


@dataclass(frozen=True)
class DynamicResult:
    """Curves and parameters of a dynamic series.

    Attributes
    ----------
    starts_s, durations_s : (n_frames,) float64 arrays
        Frame starts from injection and durations, s.
    tacs : dict of str to (n_frames,) float64 array
        Mean TAC per VOI, series units.
    parameters : tuple of CurveParameters
        Per region and convention (start first, then mid).
    slope_ratios : dict of str to float
        Convention to tumour slope / striatum slope (empty without both VOIs).
    warnings : tuple of str
        Patient-free notes on assumptions made (time origin, resampled VOIs).
    """

    starts_s: np.ndarray
    durations_s: np.ndarray
    tacs: dict[str, np.ndarray]
    parameters: tuple[CurveParameters, ...]
    slope_ratios: dict[str, float]
    warnings: tuple[str, ...] = ()

    def get(self, region: str, convention: Convention = "start") -> CurveParameters:
        return next(p for p in self.parameters
                    if p.region == region and p.convention == convention)


def analyse_dynamic(volume: PetVolume, masks: Mapping[str, np.ndarray],
                    scale: SuvScale | None = None, offset_s: float = 0.0,
                    from_s: float | None = None,
                    conventions: Sequence[Convention] = ("start", "mid"),
                    ratio: tuple[str, str] = ("tumour", "striatum")) -> DynamicResult:
    """TACs, TTP, slopes and slope ratio of a dynamic series (module docstring).

    ``from_s`` None applies :func:`genoa_fit_start_s` to the frame starts; the
    same window start is used for every convention.
    """
    if len(volume.frames) < 3:
        raise AnalysisError("too few dynamic frames for curves", "too_few_frames")
    tacs = time_activity_curves(volume, masks)
    starts = frame_times_s(volume, "start", offset_s)
    window = genoa_fit_start_s(starts) if from_s is None else from_s
    params = tuple(
        curve_parameters(region, tac, frame_times_s(volume, conv, offset_s), conv, window, scale)
        for conv in conventions for region, tac in tacs.items())
    ratios: dict[str, float] = {}
    if ratio[0] in tacs and ratio[1] in tacs:
        for conv in conventions:
            num = next(p for p in params if p.region == ratio[0] and p.convention == conv)
            den = next(p for p in params if p.region == ratio[1] and p.convention == conv)
            if den.slope_units_per_s != 0.0:
                ratios[conv] = num.slope_units_per_s / den.slope_units_per_s
    return DynamicResult(starts, volume.durations_s, tacs, params, ratios)
