"""A site's normal scans scale the shipped SBR thresholds (cross-calibration; candidate V).

Measured, not adopted: on new data (robustness groups 20-27) it passed 4 more
normals than the shipped simulated calibration and caught as many one-sided
losses, but 4 fewer reduced scans, one more than its rule allowed
(``models/training/rules/dat30_site_scaled_shipped.md``). The node has no
command that writes it; ``dopanode robustness --site-normals NN --site-rule
scaled`` measures it.

What a camera changes first is how much striatal contrast it recovers
(resolution, post-filter, matrix, scatter): to first order one factor on every
SBR. Phantom-based camera calibration for the multicentre FP-CIT normal
database ENC-DAT rests on the same premise (Tossici-Bolt et al., Eur J Nucl
Med Mol Imaging 2011;38:1529-40: a striatal phantom gives each camera a
recovery factor). Here a site's normal scans measure that factor against the
shipped normal database of the same correction family, and the shipped
thresholds of that family, which were placed with the truth of labelled
simulated scans, are multiplied by it:

``f = median over the normals and both sides of SBR / expected(region, age)``

per structure (caudate, putamen), ``expected`` being the shipped normal
database's age-adjusted mean (the reference age where the age is unknown).
The median, because a site's normals can hold an unrecognised abnormal scan.
The asymmetry rule is a ratio between the two putamina and is not scaled.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from service.pipelines.dat_spect.levels import STRUCTURES, Calibration, Thresholds
from service.pipelines.dat_spect.normals import NormalDatabase
from service.pipelines.dat_spect.provenance import SITE
from service.pipelines.dat_spect.result import Region

#: Fewest normal scans a factor is measured from (two SBRs per structure each).
MIN_NORMALS = 8


def recovery_factors(sbr: Sequence[Mapping[Region, float]], ages: Sequence[float | None],
                     shipped_normals: NormalDatabase) -> dict[str, float]:
    """Per structure, the median of the normals' SBR over the shipped expectation.

    Parameters
    ----------
    sbr : sequence of mappings Region -> SBR
        One per normal scan of one camera and correction family.
    ages : sequence of float or None
        The scans' ages in years (None: unknown, the database's reference age).
    shipped_normals : NormalDatabase
        The shipped normal database of that correction family.

    Raises
    ------
    ValueError
        Fewer than :data:`MIN_NORMALS` scans, lengths that differ, or an
        expectation that is not positive.
    """
    if len(sbr) != len(ages):
        raise ValueError(f"{len(sbr)} SBR rows but {len(ages)} ages")
    if len(sbr) < MIN_NORMALS:
        raise ValueError(f"{len(sbr)} normal scans; a recovery factor needs at least "
                         f"{MIN_NORMALS}")
    factors: dict[str, float] = {}
    for structure in STRUCTURES:
        ratios = []
        for row, age in zip(sbr, ages, strict=True):
            for region in Region:
                if region.structure != structure:
                    continue
                expected, _ = shipped_normals.expected(region, age)
                if not expected > 0:
                    raise ValueError(f"shipped normal {region.value} SBR {expected:.3f} "
                                     f"at age {age} is not positive")
                ratios.append(row[region] / expected)
        factors[structure] = float(np.median(ratios))
    return factors


def scaled_calibration(shipped: Calibration, factors: Mapping[str, float],
                       description: str) -> Calibration:
    """``shipped``'s thresholds of each structure times its factor (site provenance).

    ``description`` says whose normals (e.g. ``"cam1: 24 normal scans"``); the
    source text names the shipped set and the factors as well.
    """
    def scaled(structure: str) -> Thresholds:
        f = factors[structure]
        if not f > 0:
            raise ValueError(f"{structure} recovery factor {f} is not positive")
        values = getattr(shipped, structure).values
        return Thresholds(tuple(f * v for v in values))

    text = ", ".join(f"{s} x{factors[s]:.3f}" for s in STRUCTURES)
    return Calibration(
        caudate=scaled("caudate"), putamen=scaled("putamen"),
        source=f"shipped thresholds ({shipped.source}) scaled by the recovery of "
               f"{description}: {text}",
        provenance=SITE,
    )
