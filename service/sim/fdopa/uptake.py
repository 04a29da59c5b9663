"""Per-subject FDOPA kinetics: tissue classes, tumour classes and their sampling.

Anchors are the parameter set of research note ``fdopa_sim_and_product.md``
§2.5 (reproduced exactly by :mod:`.kinetics`, see the unit test), except the
striatum, whose rate constants are re-tuned so that the occipital-reference
Patlak slope Kocc lands in the measured 0.008-0.011 /min (note §2.2) while the
static SUV stays about 2.3. Each subject draws every parameter log-normally
around its anchor; the tumour class sets the tumour kinetics.

Pure numerics: a seeded ``numpy.random.Generator`` in, frozen dataclasses out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from service.sim.fdopa.kinetics import (
    STATIC_WINDOWS_MIN,
    FrameSchedule,
    Kinetics,
    PlasmaInput,
    frame_means,
    time_grid_min,
    tissue_curve,
    window_mean,
)

#: Normal tissues: anchor kinetics and log-normal CV of K1 between subjects.
TISSUE_ANCHORS: dict[str, Kinetics] = {
    "grey_matter": Kinetics(0.117, 0.104, 0.0, 0.033),
    "white_matter": Kinetics(0.080, 0.103, 0.0, 0.033),
    "striatum": Kinetics(0.155, 0.070, 0.0045, 0.030),
    "extracerebral": Kinetics(0.045, 0.090, 0.0, 0.030),
    "necrosis": Kinetics(0.030, 0.100, 0.0, 0.010),
    "oedema": Kinetics(0.095, 0.103, 0.0, 0.035),
}
NORMAL_CV = 0.12

#: Tumour classes: anchor kinetics, K1 factor range, CVs and TTP behaviour.
#: ``hgg`` IDH-wildtype high grade (early peak, wash-out); ``lgg`` IDH-mutant
#: low grade (rising); ``low_uptake`` a FLAIR-visible lesion below the striatum
#: (T/S < 1 on purpose); ``dmg`` paediatric diffuse midline glioma (pons);
#: ``treatment_change`` radionecrosis / treatment-related change overlapping
#: recurrence; ``none`` a control without tumour.
TUMOUR_ANCHORS: dict[str, Kinetics] = {
    "hgg": Kinetics(0.35, 0.141, 0.0, 0.030),
    "lgg": Kinetics(0.105, 0.044, 0.0, 0.077),
    "low_uptake": Kinetics(0.105, 0.044, 0.0, 0.060),
    "dmg": Kinetics(0.35, 0.141, 0.0, 0.030),
    "treatment_change": Kinetics(0.115, 0.085, 0.0, 0.040),
}
#: Uniform range of the multiplier applied to the anchor K1, per class.
TUMOUR_K1_FACTOR: dict[str, tuple[float, float]] = {
    "hgg": (0.70, 1.25),
    "lgg": (0.65, 1.1),
    "low_uptake": (0.45, 0.70),
    "dmg": (0.45, 1.15),
    "treatment_change": (0.75, 1.2),
}
TUMOUR_CV = 0.20
#: Narrower spread for treatment-related change (its TBR range is narrow, note §1.3).
TUMOUR_CV_BY_CLASS = {"treatment_change": 0.12}
#: Ratio of the hottest tumour voxel to the mean of the active tumour (heterogeneity).
PEAK_FACTOR_RANGE: dict[str, tuple[float, float]] = {
    "hgg": (1.2, 1.5),
    "lgg": (1.1, 1.3),
    "low_uptake": (1.05, 1.25),
    "dmg": (1.15, 1.45),
    "treatment_change": (1.05, 1.3),
}
TUMOUR_CLASSES: tuple[str, ...] = ("none", *TUMOUR_ANCHORS)
#: Carbidopa premedication: plasma input multiplier (note §1.5).
CARBIDOPA_INPUT_FACTOR = (1.3, 1.6)


@dataclass(frozen=True)
class SubjectKinetics:
    """One subject's input and tissue kinetics.

    Attributes
    ----------
    tumour_class : str
        One of :data:`TUMOUR_CLASSES`.
    plasma : PlasmaInput
    tissues : dict of str to Kinetics
        Normal tissues (keys of :data:`TISSUE_ANCHORS`) plus ``"tumour"``
        (absent for ``none``).
    peak_factor : float
        Max / mean of the active tumour's uptake map (1 for ``none``).
    carbidopa : bool
    """

    tumour_class: str
    plasma: PlasmaInput
    tissues: dict[str, Kinetics] = field(default_factory=dict)
    peak_factor: float = 1.0
    carbidopa: bool = False

    def curves(self, end_min: float) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """1-s grid (min) and the decay-corrected TAC (SUV) of every tissue."""
        t = time_grid_min(end_min)
        return t, {name: tissue_curve(k, self.plasma, t) for name, k in self.tissues.items()}

    def static_suv(self, window: str = "10-30") -> dict[str, float]:
        """Mean SUV of each tissue over a static window (:data:`STATIC_WINDOWS_MIN`)."""
        w = STATIC_WINDOWS_MIN[window]
        t, curves = self.curves(w[1])
        return {name: window_mean(c, t, w) for name, c in curves.items()}

    def frame_tacs(self, schedule: FrameSchedule) -> dict[str, np.ndarray]:
        """Frame-mean SUV of every tissue for ``schedule``, each (n_frames,)."""
        t, curves = self.curves(schedule.end_s / 60.0)
        return {name: frame_means(c, t, schedule) for name, c in curves.items()}


def _jitter(rng: np.random.Generator, kin: Kinetics, cv: float, k1_factor: float = 1.0) -> Kinetics:
    """Log-normal draw of K1 and k2 around ``kin`` (vB uniform +-30 %, k3 with K1)."""
    def ln(x: float, c: float) -> float:
        return float(x * np.exp(rng.normal(-0.5 * c**2, c)))

    vb = float(np.clip(kin.blood_fraction * rng.uniform(0.7, 1.3), 0.005, 0.09))
    return Kinetics(
        ln(kin.k1_ml_per_ml_min * k1_factor, cv),
        ln(kin.k2_per_min, 0.6 * cv),
        ln(kin.k3_per_min, cv) if kin.k3_per_min > 0 else 0.0,
        vb,
    )


def sample_subject_kinetics(
    rng: np.random.Generator, tumour_class: str, carbidopa_probability: float = 0.1
) -> SubjectKinetics:
    """Draw one subject's kinetics for ``tumour_class`` (see :data:`TUMOUR_CLASSES`)."""
    if tumour_class not in TUMOUR_CLASSES:
        raise ValueError(f"unknown tumour class {tumour_class!r}; known: {TUMOUR_CLASSES}")
    carbidopa = bool(rng.random() < carbidopa_probability)
    plasma = PlasmaInput(
        a2=2.5 * float(rng.uniform(0.85, 1.15)), tau3_min=45.0 * float(rng.uniform(0.8, 1.25))
    )
    if carbidopa:
        plasma = plasma.scaled(float(rng.uniform(*CARBIDOPA_INPUT_FACTOR)))
    subject_factor = float(np.exp(rng.normal(0.0, NORMAL_CV)))
    tissues = {
        name: _jitter(rng, kin, 0.5 * NORMAL_CV, subject_factor if name != "extracerebral" else 1)
        for name, kin in TISSUE_ANCHORS.items()
    }
    peak = 1.0
    if tumour_class != "none":
        k1f = float(rng.uniform(*TUMOUR_K1_FACTOR[tumour_class]))
        cv = TUMOUR_CV_BY_CLASS.get(tumour_class, TUMOUR_CV)
        tissues["tumour"] = _jitter(rng, TUMOUR_ANCHORS[tumour_class], cv, k1f)
        peak = float(rng.uniform(*PEAK_FACTOR_RANGE[tumour_class]))
    return SubjectKinetics(tumour_class, plasma, tissues, peak, carbidopa)
