"""EM against known mixtures, BIC choice, the level rule and the global score."""

from __future__ import annotations

import numpy as np
import pytest

from service.imaging.gmm import fit_mixture, select_mixture
from service.imaging.levels import (
    Calibration,
    Thresholds,
    global_score,
    level_for,
    thresholds_from_mixture,
)
from service.result import REGIONS, Level, Region


def _two_populations(rng: np.random.Generator) -> np.ndarray:
    return np.concatenate([rng.normal(2.0, 0.2, 300), rng.normal(0.8, 0.25, 200)])


def test_em_recovers_parameters(rng: np.random.Generator) -> None:
    m = fit_mixture(_two_populations(rng), 2, rng)
    assert m.means == pytest.approx((0.8, 2.0), abs=0.06)
    assert m.sds == pytest.approx((0.25, 0.2), abs=0.04)
    assert m.weights == pytest.approx((0.4, 0.6), abs=0.05)


def test_em_matches_reference_loglikelihood(rng: np.random.Generator) -> None:
    """Log-likelihood computed by the mixture equals a direct slow sum."""
    x = _two_populations(rng)
    m = fit_mixture(x, 2, rng)
    slow = 0.0
    for v in x:
        p = sum(
            w / (s * np.sqrt(2 * np.pi)) * np.exp(-0.5 * ((v - mu) / s) ** 2)
            for w, mu, s in zip(m.weights, m.means, m.sds, strict=True)
        )
        slow += np.log(p)
    assert m.log_likelihood == pytest.approx(slow, rel=1e-9)


def test_bic_selects_component_count(rng: np.random.Generator) -> None:
    assert select_mixture(rng.normal(2.0, 0.2, 400), 4, rng).n_components == 1
    assert select_mixture(_two_populations(rng), 4, rng).n_components == 2
    three = np.concatenate([rng.normal(m, 0.1, 200) for m in (0.3, 1.2, 2.2)])
    assert select_mixture(three, 4, rng).n_components == 3


def test_thresholds_from_two_populations(rng: np.random.Generator) -> None:
    m = fit_mixture(_two_populations(rng), 2, rng)
    t = thresholds_from_mixture(m).values
    assert t[0] == pytest.approx(2.0 - 2 * 0.2, abs=0.1)
    assert 1.0 < t[1] < t[0]  # Bayes boundary between the two populations
    assert t[2] == pytest.approx(2 * t[1] / 3) and t[3] == pytest.approx(t[1] / 3)


def test_thresholds_single_population(rng: np.random.Generator) -> None:
    m = fit_mixture(rng.normal(3.0, 0.3, 300), 1, rng)
    t = thresholds_from_mixture(m).values
    assert t[0] == pytest.approx(2.4, abs=0.1) and t[1] == pytest.approx(2.1, abs=0.1)


CAL = Calibration(Thresholds((2.6, 2.2, 1.4, 0.7)), Thresholds((1.6, 1.3, 0.87, 0.43)), "test")


@pytest.mark.parametrize(
    ("sbr", "level"),
    [(1.7, Level.NORMAL), (1.6, Level.NORMAL), (1.5, Level.BORDERLINE),
     (1.0, Level.MODERATE_REDUCTION), (0.5, Level.STRONG_REDUCTION), (0.1, Level.ALMOST_MISSING)],
)
def test_level_for_putamen(sbr: float, level: Level) -> None:
    assert level_for(Region.PUTAMEN_LEFT, sbr, CAL) is level


def _score(sbr: dict[Region, float]):  # type: ignore[no-untyped-def]
    levels = {r: level_for(r, v, CAL) for r, v in sbr.items()}
    return global_score(levels, sbr, CAL)


def test_global_score_rule() -> None:
    normal = {Region.CAUDATE_LEFT: 3.0, Region.CAUDATE_RIGHT: 3.0,
              Region.PUTAMEN_LEFT: 2.0, Region.PUTAMEN_RIGHT: 2.0}
    s = _score(normal)
    assert not s.reduced and not s.inconclusive and s.method == "sbr"
    s = _score({**normal, Region.PUTAMEN_RIGHT: 0.6})
    assert s.reduced and not s.inconclusive
    s = _score({**normal, Region.PUTAMEN_RIGHT: 1.5})  # borderline only
    assert not s.reduced and s.inconclusive
    s = _score({**normal, Region.PUTAMEN_RIGHT: 1.27})  # just under t12
    assert s.reduced and s.inconclusive


def test_calibration_round_trip_and_validation() -> None:
    again = Calibration.from_dict(CAL.to_dict())
    assert again == CAL
    with pytest.raises(ValueError, match="descending"):
        Thresholds((1.0, 2.0, 0.5, 0.1))
    assert set(REGIONS) == {r for r in Region}


def test_label_dataset_separates_normal_and_reduced(rng: np.random.Generator) -> None:
    from service.pipelines.labelling import label_dataset

    rows = []
    for i in range(120):
        reduced = i % 3 == 0
        put = rng.normal(0.7, 0.2, 2) if reduced else rng.normal(2.3, 0.25, 2)
        cau = rng.normal(2.0, 0.3, 2) if reduced else rng.normal(3.2, 0.3, 2)
        rows.append({Region.CAUDATE_LEFT: cau[0], Region.CAUDATE_RIGHT: cau[1],
                     Region.PUTAMEN_LEFT: put[0], Region.PUTAMEN_RIGHT: put[1]})
    labels = label_dataset("test", rows, rng)
    assert labels.fits["putamen"].mixture.n_components >= 2
    worst = [max(lv[Region.PUTAMEN_LEFT], lv[Region.PUTAMEN_RIGHT]) for lv in labels.levels]
    assert all((w >= Level.MODERATE_REDUCTION) == (i % 3 == 0) for i, w in enumerate(worst))
    assert labels.calibration().putamen == labels.fits["putamen"].thresholds
