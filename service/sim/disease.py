"""Disease model: true specific binding per striatal subregion, with known truth.

The truth of a subregion is its *true binding ratio*: striatal activity
concentration over non-specific grey-matter concentration, minus one (what an
ideal SBR measurement without partial-volume loss would give). It is

``BR = BR_young[region] * age_factor * sex_factor * subject_factor * (1 - loss[region])``

with ``age_factor = 0.95 ** ((age - 20) / 10)`` (about 5 % per decade), women
about 6 % higher, a log-normal subject factor, and a disease-specific
fractional loss per subregion:

* ``normal``: no loss;
* ``borderline``: mild posterior-putamen loss (12-30 %), one or both sides;
* ``pd`` (Parkinson's disease): asymmetric, posterior putamen first, then
  anterior putamen, caudate last; severity 0.1-1 reaches almost missing uptake;
* ``atypical`` (MSA/PSP-like): nearly symmetric loss with caudate involvement.

Pure numerics: a seeded ``numpy.random.Generator`` in, frozen dataclasses out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from service.sim.anatomy import STRIATAL_COMPONENTS

#: Class mix of a clinical referral population (roughly a third normal).
CLASS_MIX: dict[str, float] = {"normal": 0.35, "borderline": 0.12, "pd": 0.41, "atypical": 0.12}
#: True binding ratio of a 20-year-old man, per subregion family.
BR_YOUNG: dict[str, float] = {"caudate": 6.3, "putamen_anterior": 2.85, "putamen_posterior": 2.35}
AGE_DECLINE_PER_DECADE = 0.05
FEMALE_FACTOR = 1.06


@dataclass(frozen=True)
class Background:
    """Non-specific uptake relative to grey matter (= 1) of one subject.

    Attributes
    ----------
    white_matter, extracerebral, salivary : float
        Concentration relative to grey matter.
    """

    white_matter: float
    extracerebral: float
    salivary: float

    def amplitudes(self) -> np.ndarray:
        """Amplitudes of (grey, white, extracerebral, salivary) components, shape (4,)."""
        return np.array([1.0, self.white_matter, self.extracerebral, self.salivary])


def sample_background(rng: np.random.Generator) -> Background:
    """Draw non-specific background levels (subject-to-subject variation)."""
    return Background(
        white_matter=float(rng.uniform(0.55, 0.8)),
        extracerebral=float(rng.uniform(0.15, 0.4)),
        salivary=float(rng.uniform(0.4, 1.6)),
    )


@dataclass(frozen=True)
class DiseaseState:
    """Truth of one simulated scan's specific binding.

    Attributes
    ----------
    disease_class : str
        One of :data:`CLASS_MIX`.
    severity : float
        0 (none) .. 1 (end stage); 0 for normal.
    more_affected_side : str
        ``"left"``/``"right"`` (``"none"`` for normal).
    age_years : int
    sex : str
        ``"M"`` or ``"F"``.
    binding : dict of str to float
        True binding ratio per name of :data:`STRIATAL_COMPONENTS`.
    loss : dict of str to float
        Fractional disease loss per component (0 none .. 0.97); the subject's
        binding without disease is ``binding / (1 - loss)``. Empty when unknown.
    """

    disease_class: str
    severity: float
    more_affected_side: str
    age_years: int
    sex: str
    binding: dict[str, float] = field(hash=False)
    loss: dict[str, float] = field(default_factory=dict, hash=False)

    def striatal_amplitudes(self) -> np.ndarray:
        """Concentration of each striatal component relative to grey matter, shape (6,)."""
        return np.array([1.0 + self.binding[c] for c in STRIATAL_COMPONENTS])

    def normal_binding(self) -> dict[str, float]:
        """The subject's binding without disease loss, per component."""
        return {c: b / (1.0 - self.loss.get(c, 0.0)) for c, b in self.binding.items()}


def _family(component: str) -> str:
    return component.rsplit("_", 1)[0]


def _losses(
    disease_class: str, severity: float, side: str, rng: np.random.Generator
) -> dict[str, float]:
    """Fractional loss per striatal component for one class and severity."""
    loss: dict[str, float] = {}
    if disease_class == "normal":
        return dict.fromkeys(STRIATAL_COMPONENTS, 0.0)
    if disease_class == "borderline":
        both = rng.random() < 0.4
        for comp in STRIATAL_COMPONENTS:
            hit = both or comp.endswith(side)
            fam = _family(comp)
            lo, hi = {
                "putamen_posterior": (0.12, 0.30),
                "putamen_anterior": (0.0, 0.12),
                "caudate": (0.0, 0.05),
            }[fam]
            loss[comp] = float(rng.uniform(lo, hi)) if hit else float(rng.uniform(0, lo / 2 + 0.02))
        return loss
    if disease_class == "pd":
        other = severity * float(rng.uniform(0.35, 0.85))
        for comp in STRIATAL_COMPONENTS:
            s = severity if comp.endswith(side) else other
            onset, slope = {
                "putamen_posterior": (0.0, 1.5),
                "putamen_anterior": (0.15, 1.3),
                "caudate": (0.35, 1.1),
            }[_family(comp)]
            loss[comp] = slope * max(s - onset, 0.0)
    else:  # atypical
        for comp in STRIATAL_COMPONENTS:
            s = severity * (1.0 + float(rng.normal(0.0, 0.08)))
            loss[comp] = s * (float(rng.uniform(0.75, 1.0)) if comp.startswith("caudate") else 1.0)
    return {c: float(np.clip(v + rng.normal(0.0, 0.03), 0.0, 0.97)) for c, v in loss.items()}


def sample_state(
    rng: np.random.Generator,
    disease_class: str | None = None,
    age_years: int | None = None,
    sex: str | None = None,
    br_young: dict[str, float] | None = None,
) -> DiseaseState:
    """Draw one scan's disease state (class from :data:`CLASS_MIX` unless given).

    ``br_young`` replaces :data:`BR_YOUNG` (the broad simulator's per-subject
    caudate/putamen ratio and anterior-posterior gradient); the random draws
    are the same either way.
    """
    young = BR_YOUNG if br_young is None else br_young
    classes = list(CLASS_MIX)
    if disease_class is None:
        disease_class = str(rng.choice(classes, p=np.array(list(CLASS_MIX.values()))))
    if disease_class not in CLASS_MIX:
        raise ValueError(f"unknown disease class {disease_class!r}")
    if age_years is None:
        mean = 52.0 if disease_class == "normal" else 66.0
        age_years = int(np.clip(round(rng.normal(mean, 11.0)), 25, 90))
    sex = sex or ("F" if rng.random() < 0.45 else "M")
    severity = {"normal": 0.0, "borderline": 0.15}.get(disease_class, float(rng.uniform(0.1, 1.0)))
    side = "none" if disease_class == "normal" else str(rng.choice(["left", "right"]))
    losses = _losses(disease_class, severity, side, rng)
    factor = (1.0 - AGE_DECLINE_PER_DECADE) ** ((age_years - 20) / 10.0)
    factor *= FEMALE_FACTOR if sex == "F" else 1.0
    factor *= float(np.exp(rng.normal(0.0, 0.08)))
    binding = {
        c: young[_family(c)] * factor * float(np.exp(rng.normal(0.0, 0.03))) * (1.0 - losses[c])
        for c in STRIATAL_COMPONENTS
    }
    return DiseaseState(disease_class, severity, side, age_years, sex, binding, losses)
