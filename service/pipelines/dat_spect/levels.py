"""Five-level regional ratings and the global binary score.

The rule (ours; the reference paper's exact thresholds are not published)
-------------------------------------------------------------------------
For one structure (caudate or putamen, both sides pooled) of one dataset a
Gaussian mixture is fitted to the SBR histogram (:mod:`service.imaging.gmm`,
number of components by BIC among 2..4: a referral dataset holds at least a
normal and a reduced population). The *normal* component N is the one with the
highest mean among those holding at least :data:`MIN_NORMAL_WEIGHT` of the
scans. Its mean ``mu`` is used as fitted. Its spread is the *normal spread*

``s = min(sd_N, NORMAL_CV_MAX * mu)``

because in a referral population the upper component also absorbs the mild
and one-sided disease lying just below the normals, which pushes every
threshold down (simulated CT-AC OSEM putamen: component SD 0.37 and 0.46 in
two sets whose normals alone had 0.29 and 0.34; the previous Bayes-boundary
rule then put ``t12`` at 0.86 and missed most PD). :data:`NORMAL_CV_MAX`
(0.15) is the coefficient of variation of the simulated normal databases
(SD / mean 0.13-0.17 per region); a site sets it from its own normals
(``label_dataset(cv_max=...)``). Four thresholds then split the SBR axis,
highest first:

* ``t01 = mu - 1.5 s``: below it a region is no longer clearly normal
  (about 7 % of a Gaussian normal population lies below);
* ``t12 = max(mu - 2 s, bayes)``, clipped to ``t01``: the normal/reduced
  boundary, at ``z = -2`` of the normal population, raised to the Bayes
  boundary (posterior of N = 0.5 against all lower components) where the
  dataset's reduced population reaches higher than that;
* ``t34 = ALMOST_MISSING_REL * mu`` (20 % of the normal mean), clipped to
  ``t12 / 3`` at most: "almost missing" uptake;
* ``t23 = (t12 + t34) / 2``: moderate and strong reduction split the reduced
  range above "almost missing" in two.

A region's level is the number of thresholds its SBR lies below: 0 normal,
1 borderline, 2 moderate reduction, 3 strong reduction, 4 almost missing.
The same thresholds, written as a calibration file, give the conventional
rating of new scans (:func:`level_for`). SBR is used as measured, not
age-corrected: in the simulated referral mix age correction (5 %/decade) made
the separation worse, since reduced scans come from older subjects; the
age-corrected view is the normal database's z-score, reported beside it.

The asymmetry rule
------------------
A loss on one side shows first in the putamen, and a putamen at 60 % of the
other still lies inside the normal SBR range of a subject who binds well: the
thresholds alone miss it. A putamen whose SBR is below
:data:`ASYMMETRY_REDUCED_RATIO` of the other putamen's (putamen asymmetry index
above about 25 %) is therefore rated at least level 2 (moderate reduction) by
the SBR method (:func:`sbr_levels`). A ratio needs no camera calibration to
first order. 0.78 is the cut that separated the simulated training normals
(148 scans, 3 below it) from the training one-sided cases whose noise-free
image shows 60 % or less (46 scans, 2 above it) best, chosen on the training
split of benchmark version 2 only (``models/template/README.md``).

Global score
------------
*Reduced* if any of the four regions is at level 2 or worse, else *normal*.
*Inconclusive* when a small measurement error could flip the call: a
*reduced* call is inconclusive when no region lies clearly below its ``t12``
threshold (the normal/reduced boundary), i.e. every region at level 2 or
worse is within :data:`INCONCLUSIVE_MARGIN_REL` of ``t12``; a *normal* call is
inconclusive when the worst level is 1 (borderline) or any region's SBR lies
within that margin above ``t12``. One clearly reduced region makes a reduced
call conclusive, whatever the other regions show. A putamen raised by the
asymmetry rule counts as clearly reduced when its ratio to the other putamen
is below the cut by more than the margin; a normal call is inconclusive also
when a putamen ratio lies within the margin above the cut.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.imaging.gmm import Mixture
from service.pipelines.dat_spect.provenance import SITE, provenance_of
from service.pipelines.dat_spect.result import GlobalScore, Level, Region

#: Smallest weight of a mixture component that may be the normal population.
MIN_NORMAL_WEIGHT = 0.1
#: Largest coefficient of variation (SD / mean) accepted for the normal component.
NORMAL_CV_MAX = 0.15
#: Normal-spread multiples below the normal mean for the level 0/1 and 1/2 thresholds.
Z_BORDERLINE = 1.5
Z_REDUCED = 2.0
#: "Almost missing": SBR below this fraction of the normal component's mean.
ALMOST_MISSING_REL = 0.2
#: Relative distance to the normal/reduced threshold that makes a call unsure.
INCONCLUSIVE_MARGIN_REL = 0.05
#: A putamen below this fraction of the other putamen's SBR is at least level 2 (SBR method).
ASYMMETRY_REDUCED_RATIO = 0.78
#: A putamen ratio below this is *clearly* below the asymmetry cut (by more than the margin).
CLEAR_ASYMMETRY_RATIO = (1.0 - INCONCLUSIVE_MARGIN_REL) * ASYMMETRY_REDUCED_RATIO
#: The pairs the asymmetry rule compares: (region rated, the other side).
ASYMMETRY_PAIRS = ((Region.PUTAMEN_LEFT, Region.PUTAMEN_RIGHT),
                   (Region.PUTAMEN_RIGHT, Region.PUTAMEN_LEFT))
STRUCTURES = ("caudate", "putamen")

GLOBAL_RULE = (
    "reduced if any region is level 2+ (SBR thresholds; a putamen below "
    f"{ASYMMETRY_REDUCED_RATIO:g} x the other putamen is level 2+); inconclusive if borderline "
    f"only, or if an SBR error of {INCONCLUSIVE_MARGIN_REL:.0%} could flip the call"
)


@dataclass(frozen=True)
class Thresholds:
    """Descending SBR thresholds ``(t01, t12, t23, t34)`` of one structure."""

    values: tuple[float, float, float, float]

    def __post_init__(self) -> None:
        v = self.values
        if len(v) != 4 or not all(a >= b for a, b in zip(v, v[1:], strict=False)):
            raise ValueError(f"thresholds must be 4 values, descending: {v}")

    def level(self, sbr: float) -> Level:
        """Number of thresholds ``sbr`` lies below, as a :class:`Level`."""
        return Level(sum(sbr < t for t in self.values))


@dataclass(frozen=True)
class Calibration:
    """Thresholds per structure, with where they came from.

    Attributes
    ----------
    caudate, putamen : Thresholds
    source : str
        Free text, e.g. ``"GMM labels of dataset sim-v1 (simulated)"``.
    provenance : str
        ``"simulated"`` or ``"site"`` (:mod:`.provenance`).
    """

    caudate: Thresholds
    putamen: Thresholds
    source: str
    provenance: str = SITE

    def for_region(self, region: Region) -> Thresholds:
        return self.caudate if region.structure == "caudate" else self.putamen

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "provenance": self.provenance,
            "reference_region": "occipital cortex",
            "thresholds": {s: list(getattr(self, s).values) for s in STRUCTURES},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Calibration:
        th = data["thresholds"]
        return cls(
            caudate=Thresholds(tuple(float(v) for v in th["caudate"])),  # type: ignore[arg-type]
            putamen=Thresholds(tuple(float(v) for v in th["putamen"])),  # type: ignore[arg-type]
            source=str(data.get("source", "")),
            provenance=provenance_of(data),
        )


def normal_component(mixture: Mixture) -> int:
    """Index of the normal component (highest mean with enough weight)."""
    eligible = [i for i, w in enumerate(mixture.weights) if w >= MIN_NORMAL_WEIGHT]
    return max(eligible or range(mixture.n_components), key=lambda i: mixture.means[i])


def normal_spread(mixture: Mixture, cv_max: float = NORMAL_CV_MAX) -> tuple[float, float]:
    """``(mu, s)``: mean of the normal component and its SD capped at ``cv_max * mu``."""
    n = normal_component(mixture)
    mean_n = mixture.means[n]
    return mean_n, min(mixture.sds[n], cv_max * max(mean_n, 0.0))


def thresholds_from_mixture(mixture: Mixture, cv_max: float = NORMAL_CV_MAX) -> Thresholds:
    """The four thresholds of the module rule for one fitted structure.

    Parameters
    ----------
    mixture : Mixture
        GMM of one structure's SBRs (SBR units, left and right pooled).
    cv_max : float
        Largest accepted SD / mean of the normal component.
    """
    n = normal_component(mixture)
    mean_n, spread = normal_spread(mixture, cv_max)
    t01 = max(mean_n - Z_BORDERLINE * spread, 0.0)
    t12 = max(mean_n - Z_REDUCED * spread, 0.0)
    lower = [i for i in range(mixture.n_components) if mixture.means[i] < mean_n]
    if lower:
        t12 = max(t12, _bayes_boundary(mixture, n, lower))
    t12 = min(t12, t01)
    t34 = min(ALMOST_MISSING_REL * mean_n, t12 / 3.0)
    return Thresholds((t01, t12, (t12 + t34) / 2.0, t34))


def _bayes_boundary(mixture: Mixture, n: int, lower: list[int]) -> float:
    """Highest SBR below the normal mean where P(normal) drops to 0.5."""
    grid = np.linspace(0.0, mixture.means[n], 2001)
    dens = mixture.component_pdf(grid)
    p_normal = dens[n] / np.maximum(dens[n] + dens[lower].sum(axis=0), 1e-300)
    below = np.nonzero(p_normal < 0.5)[0]
    if below.size == 0:
        return 0.0
    return float(grid[below[-1]])


def level_for(region: Region, sbr: float, calibration: Calibration) -> Level:
    """Conventional level of one region from the calibration thresholds alone."""
    return calibration.for_region(region).level(sbr)


def asymmetry_ratio(sbr: Mapping[Region, float], region: Region) -> float | None:
    """``sbr[region] / sbr[other putamen]`` for a putamen; None for a caudate or
    when the other putamen's SBR is not positive."""
    for rated, other in ASYMMETRY_PAIRS:
        if rated is region and other in sbr:
            return sbr[region] / sbr[other] if sbr[other] > 0 else None
    return None


def sbr_levels(sbr: Mapping[Region, float], calibration: Calibration) -> dict[Region, Level]:
    """The SBR method's levels: thresholds, then the asymmetry rule (module docstring)."""
    levels = {r: level_for(r, sbr[r], calibration) for r in sbr}
    for region, _ in ASYMMETRY_PAIRS:
        ratio = asymmetry_ratio(sbr, region) if region in sbr else None
        if ratio is not None and ratio < ASYMMETRY_REDUCED_RATIO:
            levels[region] = max(levels[region], Level.MODERATE_REDUCTION)
    return levels


def fit_truth_thresholds(sbr: np.ndarray, truth_levels: np.ndarray) -> Thresholds:
    """Thresholds that reproduce known levels best (simulated scans with their truth).

    For each level boundary ``k`` (1..4) the threshold minimising the number of
    regions on the wrong side (``sbr < t`` against ``truth >= k``), searched
    over the measured SBRs (the lowest on a tie); the four are then sorted into
    descending order. Used for the shipped simulated calibration
    (``models/template/``), where the truth is known; a site has no truth and
    labels its scans by GMM (:mod:`.labelling`).

    Parameters
    ----------
    sbr, truth_levels : (N,) arrays
        One structure's regions (both sides pooled).
    """
    x = np.asarray(sbr, np.float64)
    y = np.asarray(truth_levels, np.int64)
    if x.shape != y.shape or x.size == 0:
        raise ValueError("sbr and truth_levels must be non-empty and of one shape")
    candidates = np.unique(x)
    values = []
    for k in (1, 2, 3, 4):
        errors = [int(((x < t) != (y >= k)).sum()) for t in candidates]
        values.append(float(candidates[int(np.argmin(errors))]))
    return Thresholds(tuple(sorted(values, reverse=True)))  # type: ignore[arg-type]


def global_score(
    levels: Mapping[Region, Level],
    sbr: Mapping[Region, float],
    calibration: Calibration,
    method: str = "sbr",
) -> GlobalScore:
    """Binary score from the four levels (rule in the module docstring)."""
    worst = max(levels.values())
    reduced = worst >= Level.MODERATE_REDUCTION
    t12 = {r: calibration.for_region(r).values[1] for r in levels}
    ratios = [q for q in (asymmetry_ratio(sbr, r) for r in levels) if q is not None]
    if reduced:
        clearly_reduced = any(
            sbr[r] < (1.0 - INCONCLUSIVE_MARGIN_REL) * t12[r] for r in levels
        ) or any(q < CLEAR_ASYMMETRY_RATIO for q in ratios)
        inconclusive = not clearly_reduced
    else:
        near = any(sbr[r] <= (1.0 + INCONCLUSIVE_MARGIN_REL) * t12[r] for r in levels) or any(
            q <= (1.0 + INCONCLUSIVE_MARGIN_REL) * ASYMMETRY_REDUCED_RATIO for q in ratios)
        inconclusive = worst == Level.BORDERLINE or near
    return GlobalScore(
        reduced=reduced,
        inconclusive=inconclusive,
        rule=GLOBAL_RULE,
        method=method,
    )
