"""EM against known mixtures, BIC choice, the level rule and the global score."""

from __future__ import annotations

import numpy as np
import pytest

from service.imaging.gmm import Mixture, fit_mixture, select_mixture
from service.pipelines.dat_spect.levels import (
    NORMAL_CV_MAX,
    Calibration,
    Thresholds,
    global_score,
    level_for,
    normal_spread,
    sbr_levels,
    thresholds_from_mixture,
)
from service.pipelines.dat_spect.result import REGIONS, Level, Region

pytestmark = pytest.mark.no_storage  # never opens the node's rows: not rerun on PostgreSQL


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
    mu, sd = m.means[1], m.sds[1]
    assert sd < NORMAL_CV_MAX * mu  # a clean normal population: no cap
    t = thresholds_from_mixture(m).values
    assert t[0] == pytest.approx(mu - 1.5 * sd) and t[0] == pytest.approx(1.7, abs=0.08)
    assert t[1] == pytest.approx(mu - 2.0 * sd)  # z = -2; Bayes boundary lies lower here
    assert t[3] == pytest.approx(0.2 * mu) and t[2] == pytest.approx((t[1] + t[3]) / 2)


def test_thresholds_single_population(rng: np.random.Generator) -> None:
    m = fit_mixture(rng.normal(3.0, 0.3, 300), 1, rng)
    t = thresholds_from_mixture(m).values
    assert t[0] == pytest.approx(2.55, abs=0.1) and t[1] == pytest.approx(2.4, abs=0.1)
    assert t[3] == pytest.approx(0.6, abs=0.03)


def test_wide_normal_component_is_capped(rng: np.random.Generator) -> None:
    """An upper component that absorbed mild disease does not drag the thresholds down."""
    x = np.concatenate([rng.normal(2.2, 0.22, 300), rng.normal(1.5, 0.2, 150),
                        rng.normal(0.5, 0.15, 100)])
    m = fit_mixture(x, 2, rng)
    mu, spread = normal_spread(m)
    assert m.sds[1] > 0.3 and spread == pytest.approx(NORMAL_CV_MAX * mu)
    t = thresholds_from_mixture(m).values
    uncapped_t12 = m.means[1] - 2.0 * m.sds[1]
    assert t[1] >= mu - 2.0 * spread > uncapped_t12 + 0.15
    mild = x[300:450]
    assert np.mean(mild < t[1]) > np.mean(mild < uncapped_t12) + 0.15


def test_bayes_boundary_raises_t12_but_not_above_t01() -> None:
    m = Mixture(weights=(0.5, 0.5), means=(1.6, 2.2), sds=(0.3, 0.2),
                log_likelihood=0.0, n_samples=100)
    t01, t12, _, _ = thresholds_from_mixture(m).values
    assert t01 == pytest.approx(2.2 - 1.5 * 0.2)
    assert t12 == pytest.approx(t01)  # Bayes boundary (about 1.95) is above t01, clipped
    far = Mixture(weights=(0.5, 0.5), means=(0.5, 2.2), sds=(0.2, 0.2),
                  log_likelihood=0.0, n_samples=100)
    assert thresholds_from_mixture(far).values[1] == pytest.approx(2.2 - 2.0 * 0.2)


CAL = Calibration(Thresholds((2.6, 2.2, 1.4, 0.7)), Thresholds((1.6, 1.3, 0.87, 0.43)), "test")


@pytest.mark.parametrize(
    ("sbr", "level"),
    [(1.7, Level.NORMAL), (1.6, Level.NORMAL), (1.5, Level.BORDERLINE),
     (1.0, Level.MODERATE_REDUCTION), (0.5, Level.STRONG_REDUCTION), (0.1, Level.ALMOST_MISSING)],
)
def test_level_for_putamen(sbr: float, level: Level) -> None:
    assert level_for(Region.PUTAMEN_LEFT, sbr, CAL) is level


def _score(sbr: dict[Region, float]):  # type: ignore[no-untyped-def]
    return global_score(sbr_levels(sbr, CAL), sbr, CAL)


def _putamina(normal: dict[Region, float], value: float) -> dict[Region, float]:
    """Both putamina at ``value`` (no asymmetry: the thresholds alone decide)."""
    return {**normal, Region.PUTAMEN_LEFT: value, Region.PUTAMEN_RIGHT: value}


def test_global_score_rule() -> None:
    normal = {Region.CAUDATE_LEFT: 3.0, Region.CAUDATE_RIGHT: 3.0,
              Region.PUTAMEN_LEFT: 2.0, Region.PUTAMEN_RIGHT: 2.0}
    s = _score(normal)
    assert not s.reduced and not s.inconclusive and s.method == "sbr"
    s = _score(_putamina(normal, 0.6))
    assert s.reduced and not s.inconclusive
    s = _score(_putamina(normal, 1.5))  # borderline only
    assert not s.reduced and s.inconclusive
    s = _score(_putamina(normal, 1.27))  # just under t12
    assert s.reduced and s.inconclusive
    # one clearly reduced region makes the reduced call conclusive
    s = _score({**normal, Region.PUTAMEN_LEFT: 0.6, Region.PUTAMEN_RIGHT: 1.27})
    assert s.reduced and not s.inconclusive
    s = _score(_putamina(normal, 1.33))  # level 0/1 but just above t12
    assert not s.reduced and s.inconclusive
    # one putamen at 0.6 of the other: normal by thresholds, reduced by the asymmetry rule
    high = {**normal, Region.PUTAMEN_LEFT: 2.4, Region.PUTAMEN_RIGHT: 2.4 * 0.6}
    assert all(level_for(r, v, CAL) <= Level.BORDERLINE for r, v in high.items())
    s = _score(high)
    assert s.reduced and not s.inconclusive


def test_calibration_round_trip_and_validation() -> None:
    again = Calibration.from_dict(CAL.to_dict())
    assert again == CAL
    with pytest.raises(ValueError, match="descending"):
        Thresholds((1.0, 2.0, 0.5, 0.1))
    bad = CAL.to_dict()
    bad["thresholds"]["putamen"] = [0.43, 0.87, 1.3, 1.6]  # ascending: a swapped file
    with pytest.raises(ValueError, match="descending"):
        Calibration.from_dict(bad)


def test_each_region_is_levelled_with_its_structures_thresholds() -> None:
    """Caudates use the caudate thresholds, putamina the putamen ones (they differ in CAL)."""
    assert {r: CAL.for_region(r) for r in REGIONS} == {
        Region.CAUDATE_LEFT: CAL.caudate, Region.CAUDATE_RIGHT: CAL.caudate,
        Region.PUTAMEN_LEFT: CAL.putamen, Region.PUTAMEN_RIGHT: CAL.putamen,
    }
    # the same SBR is borderline in a putamen and moderately reduced in a caudate
    assert level_for(Region.PUTAMEN_RIGHT, 1.5, CAL) is Level.BORDERLINE
    assert level_for(Region.CAUDATE_RIGHT, 1.5, CAL) is Level.MODERATE_REDUCTION


def test_label_dataset_separates_normal_and_reduced(rng: np.random.Generator) -> None:
    from service.pipelines.dat_spect.labelling import label_dataset

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
    called = np.array([w >= Level.MODERATE_REDUCTION for w in worst])
    truly = np.arange(120) % 3 == 0
    assert called[truly].all()  # every reduced scan found
    assert called[~truly].mean() <= 0.1  # z = -2 per region: a few normals' tails
    assert labels.calibration().putamen == labels.fits["putamen"].thresholds
