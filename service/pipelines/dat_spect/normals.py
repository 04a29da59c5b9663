"""Normal database: age-expected SBR per region and z-scores.

For each region a straight line ``sbr = intercept + slope * (age - ref_age)``
is fitted by least squares to normal scans, and the residual SD is kept
(2 degrees of freedom
used with a slope, 1 without). SBR falls about 5 % per decade in healthy adults, which the
slope captures. Without ages (or with all ages equal) the slope is 0 and the
database is a plain mean and SD.

Pure: rows in, :class:`NormalDatabase` out; ``to_dict``/``from_dict`` give
the JSON form written by ``dopanode build-normals``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.pipelines.dat_spect.provenance import SITE, provenance_of
from service.pipelines.dat_spect.result import REGIONS, Region

#: Fewest normal scans a database may be built from.
MIN_NORMALS = 5


@dataclass(frozen=True)
class RegionNorm:
    """Age regression of one region's SBR.

    Attributes
    ----------
    intercept : float
        Expected SBR at ``ref_age_years``.
    slope_per_year : float
        Change of expected SBR per year of age.
    sd : float
        Residual standard deviation (SBR units).
    """

    intercept: float
    slope_per_year: float
    sd: float


@dataclass(frozen=True)
class NormalDatabase:
    """Per-region norms, the reference age and provenance.

    Attributes
    ----------
    norms : mapping of Region to RegionNorm
    ref_age_years : float
        Mean age of the normals; used when a scan's age is unknown.
    n_scans : int
    source : str
        Where the normals came from (e.g. ``"simulated normals, sim-v1"``).
    provenance : str
        ``"simulated"`` or ``"site"`` (:mod:`.provenance`).
    """

    norms: Mapping[Region, RegionNorm]
    ref_age_years: float
    n_scans: int
    source: str
    provenance: str = SITE

    def expected(self, region: Region, age_years: float | None) -> tuple[float, float]:
        """Age-expected normal SBR and SD; the reference age when ``age_years`` is None."""
        norm = self.norms[region]
        age = self.ref_age_years if age_years is None else age_years
        return norm.intercept + norm.slope_per_year * (age - self.ref_age_years), norm.sd

    def z_score(self, region: Region, sbr: float, age_years: float | None) -> float:
        """``(sbr - expected) / sd``."""
        mean, sd = self.expected(region, age_years)
        return (sbr - mean) / sd

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "provenance": self.provenance,
            "n_scans": self.n_scans,
            "ref_age_years": self.ref_age_years,
            "model": "sbr = intercept + slope_per_year * (age - ref_age_years)",
            "regions": {
                r.value: {
                    "intercept": n.intercept,
                    "slope_per_year": n.slope_per_year,
                    "sd": n.sd,
                }
                for r, n in self.norms.items()
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NormalDatabase:
        norms = {
            Region(name): RegionNorm(
                float(v["intercept"]), float(v["slope_per_year"]), float(v["sd"])
            )
            for name, v in data["regions"].items()
        }
        missing = set(REGIONS) - set(norms)
        if missing:
            raise ValueError(f"normal database lacks regions {sorted(missing)}")
        return cls(norms, float(data["ref_age_years"]), int(data["n_scans"]), str(data["source"]),
                   provenance_of(data))


def fit_normals(
    sbr_rows: Sequence[Mapping[Region, float]],
    ages_years: Sequence[float | None],
    source: str,
    provenance: str = SITE,
) -> NormalDatabase:
    """Fit the per-region age regression to normal scans.

    Parameters
    ----------
    sbr_rows : sequence of mappings Region -> SBR
        One mapping per normal scan.
    ages_years : sequence of float or None
        Age per scan; if any is None the slope is not fitted (0).
    source : str
        Provenance text stored in the database.
    provenance : str
        ``"site"`` (default) or ``"simulated"``.
    """
    if len(sbr_rows) != len(ages_years):
        raise ValueError("one age per scan is needed")
    if len(sbr_rows) < MIN_NORMALS:
        raise ValueError(f"need at least {MIN_NORMALS} normal scans, got {len(sbr_rows)}")
    have_ages = all(a is not None for a in ages_years)
    ages = np.array([a if a is not None else 0.0 for a in ages_years], float)
    ref_age = float(ages.mean()) if have_ages else float("nan")
    centred = ages - ref_age if have_ages else np.zeros_like(ages)
    fit_slope = have_ages and float(np.ptp(centred)) > 0
    norms = {}
    for region in REGIONS:
        y = np.array([row[region] for row in sbr_rows], float)
        slope = float(np.dot(centred, y - y.mean()) / np.dot(centred, centred)) if fit_slope else 0.0
        residual = y - y.mean() - slope * centred
        dof = y.size - (2 if fit_slope else 1)
        norms[region] = RegionNorm(float(y.mean()), slope, float(np.sqrt((residual**2).sum() / dof)))
    return NormalDatabase(norms, ref_age if have_ages else 0.0, len(sbr_rows), source,
                          provenance)
