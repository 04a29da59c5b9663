"""Cross-calibration (candidate V, measured and not adopted): a site's normals scale the
shipped thresholds of their family (``dopanode robustness --site-rule scaled``)."""

from __future__ import annotations

import numpy as np
import pytest

from models.training.cross_calibration import (
    MIN_NORMALS,
    recovery_factors,
    scaled_calibration,
)
from service.pipelines.dat_spect.assets import load_dat_models
from service.pipelines.dat_spect.levels import Calibration
from service.pipelines.dat_spect.protocol import Family
from service.pipelines.dat_spect.provenance import SITE
from service.pipelines.dat_spect.result import Region

pytestmark = pytest.mark.no_storage

RECOVERY = {"caudate": 0.6, "putamen": 0.75}


def _site_normals(n: int, family: str = "attn", seed: int = 3
                  ) -> tuple[list[dict[Region, float]], list[float | None]]:
    """SBRs of ``n`` normals of a camera recovering RECOVERY of the shipped normals' SBR
    (age-expected), with 10 % noise; a third of the ages unknown."""
    normals = load_dat_models().normals
    assert normals is not None
    db = normals.select(Family(family))
    rng = np.random.default_rng(seed)
    ages: list[float | None] = [None if i % 3 == 0 else float(rng.uniform(40, 85))
                                for i in range(n)]
    rows = [{r: RECOVERY[r.structure] * db.expected(r, age)[0] * float(rng.normal(1, 0.1))
             for r in Region} for age in ages]
    return rows, ages


def test_factors_measure_the_cameras_recovery_against_the_shipped_normals() -> None:
    normals = load_dat_models().normals
    assert normals is not None
    rows, ages = _site_normals(40)
    factors = recovery_factors(rows, ages, normals.select(Family("attn")))
    assert set(factors) == {"caudate", "putamen"}
    for structure, f in factors.items():
        assert abs(f - RECOVERY[structure]) < 0.04, structure


def test_abnormal_scans_among_the_normals_barely_move_the_median() -> None:
    normals = load_dat_models().normals
    assert normals is not None
    db = normals.select(Family("attn"))
    rows, ages = _site_normals(20)
    clean = recovery_factors(rows, ages, db)
    for k in (0, 1):  # two unrecognised reduced scans
        rows[k] = {r: 0.1 * v for r, v in rows[k].items()}
    with_two = recovery_factors(rows, ages, db)
    assert abs(with_two["putamen"] - clean["putamen"]) < 0.03
    # a mean would have moved by about 4 x 0.9 x 0.75 / 40 = 0.07


def test_scaled_thresholds_are_the_shipped_ones_times_the_factor() -> None:
    calibration = load_dat_models().calibration
    assert calibration is not None
    shipped = calibration.select(Family("attn"))
    site = scaled_calibration(shipped, RECOVERY, "cam1: 40 normal scans")
    assert site.provenance == SITE
    for structure, f in RECOVERY.items():
        np.testing.assert_allclose(getattr(site, structure).values,
                                   f * np.array(getattr(shipped, structure).values))
    assert "cam1: 40 normal scans" in site.source and "putamen x0.750" in site.source
    assert "SIMULATED" in site.source  # what was scaled stays named
    assert Calibration.from_dict(site.to_dict()) == site


def test_too_few_normals_or_a_bad_factor_are_refused() -> None:
    normals = load_dat_models().normals
    calibration = load_dat_models().calibration
    assert normals is not None and calibration is not None
    rows, ages = _site_normals(MIN_NORMALS - 1)
    with pytest.raises(ValueError, match=f"at least {MIN_NORMALS}"):
        recovery_factors(rows, ages, normals.select(Family("attn")))
    with pytest.raises(ValueError, match="ages"):
        recovery_factors(rows, ages[:-1], normals.select(Family("attn")))
    with pytest.raises(ValueError, match="not positive"):
        scaled_calibration(calibration.select(Family("attn")),
                           {"caudate": 1.0, "putamen": 0.0}, "cam1")
