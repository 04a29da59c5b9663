"""Five-level regional ratings and the global binary score.

The rule (ours; the reference paper's exact thresholds are not published)
-------------------------------------------------------------------------
For one structure (caudate or putamen, both sides pooled) of one dataset a
Gaussian mixture is fitted to the SBR histogram (:mod:`service.imaging.gmm`,
number of components by BIC among 2..4: a referral dataset holds at least a
normal and a reduced population). The *normal* component N is the one with the
highest mean among those holding at least :data:`MIN_NORMAL_WEIGHT` of the
scans. Four thresholds then split the SBR axis, highest first:

* ``t01 = mean_N - 2 sd_N``: below it a region is no longer normal
  (about 2.3 % of the normal component lies below);
* ``t12``: where the posterior probability of N falls to 0.5 against all
  lower components (Bayes boundary), clipped to ``[0, t01]``; with a
  single component (all scans alike) ``mean_N - 3 sd_N``;
* ``t23 = 2/3 t12`` and ``t34 = 1/3 t12``: the reduced range ``[0, t12]``
  in equal thirds, so "almost missing" means an SBR under a third of the
  lowest non-normal-looking value.

A region's level is the number of thresholds its SBR lies below: 0 normal,
1 borderline, 2 moderate reduction, 3 strong reduction, 4 almost missing.
The same thresholds, written as a calibration file, give the conventional
rating of new scans (:func:`level_for`).

Global score
------------
*Reduced* if any of the four regions is at level 2 or worse, else *normal*.
*Inconclusive* if the worst level is 1 (borderline only), or any region's
SBR lies within :data:`INCONCLUSIVE_MARGIN_REL` of its ``t12`` threshold
(the normal/reduced boundary), where a small measurement error would flip
the call.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.imaging.gmm import Mixture
from service.result import GlobalScore, Level, Region

#: Smallest weight of a mixture component that may be the normal population.
MIN_NORMAL_WEIGHT = 0.1
#: Relative distance to the normal/reduced threshold that makes a call unsure.
INCONCLUSIVE_MARGIN_REL = 0.05
STRUCTURES = ("caudate", "putamen")

GLOBAL_RULE = (
    "reduced if any region is level 2+; inconclusive if the worst level is 1 or an "
    f"SBR is within {INCONCLUSIVE_MARGIN_REL:.0%} of the level 1/2 threshold"
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
    """

    caudate: Thresholds
    putamen: Thresholds
    source: str

    def for_region(self, region: Region) -> Thresholds:
        return self.caudate if region.structure == "caudate" else self.putamen

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
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
        )


def normal_component(mixture: Mixture) -> int:
    """Index of the normal component (highest mean with enough weight)."""
    eligible = [i for i, w in enumerate(mixture.weights) if w >= MIN_NORMAL_WEIGHT]
    return max(eligible or range(mixture.n_components), key=lambda i: mixture.means[i])


def thresholds_from_mixture(mixture: Mixture) -> Thresholds:
    """The four thresholds of the module rule for one fitted structure."""
    n = normal_component(mixture)
    mean_n, sd_n = mixture.means[n], mixture.sds[n]
    t01 = max(mean_n - 2.0 * sd_n, 0.0)
    lower = [i for i in range(mixture.n_components) if mixture.means[i] < mean_n]
    t12 = _bayes_boundary(mixture, n, lower, t01) if lower else max(mean_n - 3.0 * sd_n, 0.0)
    t12 = min(max(t12, 0.0), t01)
    return Thresholds((t01, t12, 2.0 * t12 / 3.0, t12 / 3.0))


def _bayes_boundary(mixture: Mixture, n: int, lower: list[int], upper_mm: float) -> float:
    """Highest SBR below the normal mean where P(normal) drops to 0.5."""
    grid = np.linspace(0.0, mixture.means[n], 2001)
    dens = mixture.component_pdf(grid)
    p_normal = dens[n] / np.maximum(dens[n] + dens[lower].sum(axis=0), 1e-300)
    below = np.nonzero(p_normal < 0.5)[0]
    if below.size == 0:
        return 0.0
    return float(grid[below[-1]])


def level_for(region: Region, sbr: float, calibration: Calibration) -> Level:
    """Conventional level of one region from the calibration thresholds."""
    return calibration.for_region(region).level(sbr)


def global_score(
    levels: Mapping[Region, Level],
    sbr: Mapping[Region, float],
    calibration: Calibration,
    method: str = "sbr",
) -> GlobalScore:
    """Binary score from the four levels (rule in the module docstring)."""
    worst = max(levels.values())
    near = any(
        abs(sbr[r] - calibration.for_region(r).values[1])
        <= INCONCLUSIVE_MARGIN_REL * calibration.for_region(r).values[1]
        for r in levels
    )
    return GlobalScore(
        reduced=worst >= Level.MODERATE_REDUCTION,
        inconclusive=worst == Level.BORDERLINE or near,
        rule=GLOBAL_RULE,
        method=method,
    )
