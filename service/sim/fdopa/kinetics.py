"""FDOPA kinetics: one plasma input, compartment models per tissue class, frame schedules.

All concentrations are decay-corrected and expressed in SUV units (activity
concentration x body weight / injected activity, g/mL), so that a tissue curve
times ``dose / weight`` is Bq/mL. Time is in minutes from injection.

Model (research note ``fdopa_sim_and_product.md`` §2.4-2.5):

* plasma input ``Cp(t) = A1 t exp(-t/tau1) + A2 exp(-t/tau2) + A3 exp(-t/tau3)``;
* tissue ``C_T = (1 - vB) * (h * Cp) + vB * Cp`` with the impulse response
  ``h(t) = K1 exp(-k2 t)`` (reversible one-tissue model, 1TC) or
  ``h(t) = K1 / (k2 + k3) * (k3 + k2 exp(-(k2 + k3) t))`` (irreversible
  two-tissue model, 2TC, for the striatum).

Curves are computed on a 1-s grid and averaged over each frame.
Pure numerics: numpy and scipy.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy.signal import fftconvolve

#: F-18 half-life, s (DICOM Radionuclide Half Life).
F18_HALF_LIFE_S = 6586.2
#: Time step of the curve grid, min (1 s).
DT_MIN = 1.0 / 60.0


@dataclass(frozen=True)
class PlasmaInput:
    """Tri-exponential plasma input in SUV units; times in minutes.

    Attributes
    ----------
    a1_per_min, a2, a3 : float
        Amplitudes (``a1`` multiplies ``t`` so is SUV/min).
    tau1_min, tau2_min, tau3_min : float
        Time constants, min.
    """

    a1_per_min: float = 30.0
    tau1_min: float = 0.30
    a2: float = 2.5
    tau2_min: float = 2.0
    a3: float = 1.6
    tau3_min: float = 45.0

    def at(self, t_min: np.ndarray) -> np.ndarray:
        """Plasma concentration (SUV) at ``t_min``; zero before injection."""
        t = np.clip(t_min, 0.0, None)
        cp = (
            self.a1_per_min * t * np.exp(-t / self.tau1_min)
            + self.a2 * np.exp(-t / self.tau2_min)
            + self.a3 * np.exp(-t / self.tau3_min)
        )
        return np.where(t_min < 0, 0.0, cp)

    def scaled(self, factor: float) -> PlasmaInput:
        """The same shape with every amplitude times ``factor`` (e.g. carbidopa)."""
        return replace(self, a1_per_min=self.a1_per_min * factor, a2=self.a2 * factor,
                       a3=self.a3 * factor)


@dataclass(frozen=True)
class Kinetics:
    """Compartment parameters of one tissue.

    Attributes
    ----------
    k1_ml_per_ml_min : float
        K1, mL/cm3/min.
    k2_per_min, k3_per_min : float
        Rate constants, 1/min; ``k3 = 0`` gives the reversible 1TC model.
    blood_fraction : float
        Fractional blood volume vB, 0..1.
    """

    k1_ml_per_ml_min: float
    k2_per_min: float
    k3_per_min: float = 0.0
    blood_fraction: float = 0.03

    def __post_init__(self) -> None:
        if self.k1_ml_per_ml_min < 0 or self.k2_per_min < 0 or self.k3_per_min < 0:
            raise ValueError("rate constants must be >= 0")
        if not 0.0 <= self.blood_fraction < 1.0:
            raise ValueError(f"blood_fraction must be in [0, 1), got {self.blood_fraction}")

    def impulse_response(self, t_min: np.ndarray) -> np.ndarray:
        """h(t) of the tissue compartments, 1/min."""
        k1, k2, k3 = self.k1_ml_per_ml_min, self.k2_per_min, self.k3_per_min
        if k3 == 0.0:
            return k1 * np.exp(-k2 * t_min)
        return k1 / (k2 + k3) * (k3 + k2 * np.exp(-(k2 + k3) * t_min))


def time_grid_min(end_min: float) -> np.ndarray:
    """Sample times 0, 1 s, ... up to ``end_min`` inclusive, min."""
    return np.arange(0.0, end_min + DT_MIN / 2, DT_MIN)


def tissue_curve(kin: Kinetics, plasma: PlasmaInput, t_min: np.ndarray) -> np.ndarray:
    """Tissue TAC (SUV) on the uniform grid ``t_min`` (from :func:`time_grid_min`)."""
    cp = plasma.at(t_min)
    h = kin.impulse_response(t_min)
    conv = fftconvolve(cp, h)[: len(t_min)] * DT_MIN
    return (1.0 - kin.blood_fraction) * conv + kin.blood_fraction * cp


@dataclass(frozen=True)
class FrameSchedule:
    """Dynamic frame timing from injection.

    Attributes
    ----------
    name : str
    durations_s : tuple of float
        Frame durations in acquisition order, s; frames are contiguous from
        ``start_s``.
    start_s : float
        Start of the first frame after injection, s.
    """

    name: str
    durations_s: tuple[float, ...]
    start_s: float = 0.0

    @property
    def starts_s(self) -> np.ndarray:
        """Frame start times from injection, s, shape (n,)."""
        d = np.asarray(self.durations_s, float)
        return self.start_s + np.concatenate([[0.0], np.cumsum(d)[:-1]])

    @property
    def mids_s(self) -> np.ndarray:
        """Frame mid times from injection, s."""
        return self.starts_s + 0.5 * np.asarray(self.durations_s, float)

    @property
    def end_s(self) -> float:
        return float(self.start_s + sum(self.durations_s))


def _frames(*groups: tuple[int, float]) -> tuple[float, ...]:
    return tuple(float(d) for n, d in groups for _ in range(n))


#: Framing protocols of the research note §2.1 (Girard 2020, Genoa code, Parkinson studies).
SCHEDULES: dict[str, FrameSchedule] = {
    s.name: s
    for s in (
        FrameSchedule("nancy30", _frames((8, 15), (2, 30), (2, 60), (5, 300))),
        FrameSchedule("rennes20", _frames((8, 15), (2, 30), (2, 60), (3, 300))),
        FrameSchedule(
            "genoa25", _frames((6, 10), (3, 20), (2, 30), (4, 60), (2, 150), (3, 270))
        ),
        FrameSchedule("late90", _frames((18, 300))),
    )
}
#: Static acquisition windows (start, end), min p.i.
STATIC_WINDOWS_MIN: dict[str, tuple[float, float]] = {"10-30": (10.0, 30.0), "20-40": (20.0, 40.0)}


def frame_means(curve: np.ndarray, t_min: np.ndarray, schedule: FrameSchedule) -> np.ndarray:
    """Mean of ``curve`` over each frame of ``schedule``, shape (n_frames,)."""
    out = np.empty(len(schedule.durations_s))
    for i, (s, d) in enumerate(zip(schedule.starts_s, schedule.durations_s, strict=True)):
        sel = (t_min >= s / 60.0) & (t_min < (s + d) / 60.0)
        out[i] = curve[sel].mean()
    return out


def window_mean(curve: np.ndarray, t_min: np.ndarray, window_min: tuple[float, float]) -> float:
    """Mean of ``curve`` over a static window (start, end) in min p.i."""
    sel = (t_min >= window_min[0]) & (t_min < window_min[1])
    return float(curve[sel].mean())


def time_to_peak_min(tac: np.ndarray, times_s: np.ndarray) -> float:
    """TTP: the time (min) of the frame with the highest mean (Genoa: frame start)."""
    return float(times_s[int(np.argmax(tac))]) / 60.0


def slope(
    tac: np.ndarray, times_s: np.ndarray, from_s: float = 120.0
) -> tuple[float, float]:
    """Linear-regression slope of ``tac`` against ``times_s`` from ``from_s`` to the end.

    Returns
    -------
    per_s : float
        Slope in TAC units per second (Genoa: Bq/mL/s for BQML input).
    percent_per_min : float
        ``100 * 60 * per_s / mean(tac in the window)``.
    """
    sel = times_s >= from_s - 1e-6
    if sel.sum() < 2:
        raise ValueError(f"fewer than two frames from {from_s} s")
    per_s = float(np.polyfit(times_s[sel], tac[sel], 1)[0])
    return per_s, 100.0 * 60.0 * per_s / float(tac[sel].mean())


def decay_factor(t_s: np.ndarray | float) -> np.ndarray:
    """Fraction of F-18 activity left ``t_s`` seconds after the reference time."""
    return np.power(2.0, -np.asarray(t_s, float) / F18_HALF_LIFE_S)
