"""The benchmark's binary reference: normal vs reduced binding, from the simulated truth.

The paper's global score is compared with the visual read of the image
(normal vs reduced binding), not with the clinical diagnosis. A simulated
``pd`` scan of severity 0.1 has normal-looking binding, and a ``borderline``
one may not; so the reference is defined from the simulated binding itself.

Per region (caudate and putamen per side) the *remaining fraction* is the
true binding over the same subject's binding without disease
(``true_br / normal_br``: age, sex and subject factors cancel). Its level is
the number of :data:`LEVEL_FRACTIONS` it falls below (0 normal .. 4 almost
absent, as the five levels of the regional table). Then:

* ``reduced``: any putamen at level >= 2 (at most 65 % of its normal binding);
* ``normal``: every region at level 0 (at least 80 %);
* ``excluded``: anything else (borderline only: a level 1 somewhere, or a
  caudate-only reduction), left out of the binary figure.

Pure functions of a manifest row (strings or numbers).
"""

from __future__ import annotations

from collections.abc import Mapping

from service.sim.disease import AGE_DECLINE_PER_DECADE, BR_YOUNG, FEMALE_FACTOR

#: Remaining-fraction thresholds of levels 1..4.
LEVEL_FRACTIONS: tuple[float, ...] = (0.80, 0.65, 0.45, 0.25)
REGIONS: tuple[str, ...] = ("caudate_left", "caudate_right", "putamen_left", "putamen_right")
REFERENCE_VALUES: tuple[str, ...] = ("normal", "reduced", "excluded")
#: AAL putamen volume share of the anterior part (fallback for old manifests).
_AAL_ANTERIOR_SHARE = 0.5


def fraction_level(fraction: float) -> int:
    """Level 0..4 of a remaining fraction of normal binding."""
    return sum(fraction < t for t in LEVEL_FRACTIONS)


def region_levels(true: Mapping[str, float], normal: Mapping[str, float]) -> dict[str, int]:
    """Truth level per region from true and normal (no disease) region binding."""
    return {r: fraction_level(true[r] / normal[r]) for r in REGIONS}


def binary_from_levels(levels: Mapping[str, int]) -> str:
    """``reduced``, ``normal`` or ``excluded`` from the four regional truth levels."""
    if any(levels[r] >= 2 for r in REGIONS if r.startswith("putamen")):
        return "reduced"
    if all(levels[r] == 0 for r in REGIONS):
        return "normal"
    return "excluded"


def _expected_normal(row: Mapping[str, object], region: str) -> float:
    """Population binding without disease for the row's age and sex (old manifests)."""
    age = float(str(row["age_years"]))
    factor = (1.0 - AGE_DECLINE_PER_DECADE) ** ((age - 20.0) / 10.0)
    factor *= FEMALE_FACTOR if str(row.get("sex", "M")) == "F" else 1.0
    if region.startswith("caudate"):
        return BR_YOUNG["caudate"] * factor
    share = _AAL_ANTERIOR_SHARE
    young = share * BR_YOUNG["putamen_anterior"] + (1 - share) * BR_YOUNG["putamen_posterior"]
    return young * factor


def truth_levels(row: Mapping[str, object]) -> dict[str, int]:
    """Truth level per region of a manifest row.

    Uses ``normal_br_<region>`` when the manifest has it (exact); older
    manifests fall back to the population normal for age and sex, which
    ignores the subject's own factor (about 8 % SD).
    """
    out = {}
    for region in REGIONS:
        true = float(str(row[f"true_br_{region}"]))
        key = f"normal_br_{region}"
        normal = float(str(row[key])) if row.get(key) not in (None, "") else _expected_normal(
            row, region)
        out[region] = fraction_level(true / normal)
    return out


def binary_reference(row: Mapping[str, object]) -> str:
    """The row's binary reference (see module docstring)."""
    stored = row.get("binary_reference")
    if stored in REFERENCE_VALUES:
        return str(stored)
    return binary_from_levels(truth_levels(row))
