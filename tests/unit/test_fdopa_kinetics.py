"""FDOPA kinetics: the note's anchors, frame schedules, and the literature check."""

from __future__ import annotations

import numpy as np
import pytest

from service.sim.fdopa import literature
from service.sim.fdopa.kinetics import (
    SCHEDULES,
    Kinetics,
    PlasmaInput,
    frame_means,
    slope,
    time_grid_min,
    time_to_peak_min,
    tissue_curve,
    window_mean,
)
from service.sim.fdopa.uptake import TUMOUR_CLASSES, sample_subject_kinetics

pytestmark = pytest.mark.no_storage  # never opens the node's rows: not rerun on PostgreSQL

# research note fdopa_sim_and_product.md §2.5: (K1, k2, k3, vB) -> SUV 10-30, TTP, slope %/min
NOTE_TABLE = {
    "normal": ((0.108, 0.104, 0.0, 0.033), 1.20, 10.0, 0.30),
    "white_matter": ((0.084, 0.103, 0.0, 0.033), 0.95, 10.0, 0.30),
    "striatum": ((0.192, 0.114, 0.022, 0.030), 2.40, 25.0, 1.50),
    "hgg": ((0.35, 0.141, 0.0, 0.030), 2.90, 5.0, -0.72),
    "lgg": ((0.105, 0.044, 0.0, 0.077), 1.97, 25.0, 2.7),
}


def test_plasma_input_matches_the_note() -> None:
    cp = PlasmaInput().at(np.array([1.0, 2.0, 5.0, 10.0, 20.0, 30.0]))
    np.testing.assert_allclose(cp, [4.15, 2.53, 1.64, 1.30, 1.03, 0.82], atol=0.006)


@pytest.mark.parametrize("name", list(NOTE_TABLE))
def test_compartment_models_reproduce_the_note_table(name: str) -> None:
    params, suv, ttp, slope_pct = NOTE_TABLE[name]
    t = time_grid_min(30.0)
    curve = tissue_curve(Kinetics(*params), PlasmaInput(), t)
    sched = SCHEDULES["nancy30"]
    tac = frame_means(curve, t, sched)
    assert window_mean(curve, t, (10.0, 30.0)) == pytest.approx(suv, abs=0.02)
    assert time_to_peak_min(tac, sched.starts_s) == ttp
    assert slope(tac, sched.starts_s)[1] == pytest.approx(slope_pct, abs=0.05)


def test_one_tissue_curve_against_an_ode_reference() -> None:
    kin, plasma = Kinetics(0.2, 0.15, 0.0, 0.0), PlasmaInput()
    t = time_grid_min(20.0)
    cp = plasma.at(t)
    ode = np.zeros_like(t)
    for i in range(1, len(t)):  # explicit Euler on a fine grid
        dt = t[i] - t[i - 1]
        ode[i] = ode[i - 1] + dt * (kin.k1_ml_per_ml_min * cp[i - 1] - kin.k2_per_min * ode[i - 1])
    np.testing.assert_allclose(tissue_curve(kin, plasma, t)[600:], ode[600:], rtol=0.01)


def test_schedules_are_contiguous_and_as_published() -> None:
    nancy = SCHEDULES["nancy30"]
    assert nancy.durations_s[:12] == (15.0,) * 8 + (30.0,) * 2 + (60.0,) * 2
    assert nancy.end_s == 1800.0
    assert SCHEDULES["rennes20"].end_s == 1200.0
    assert SCHEDULES["genoa25"].end_s == pytest.approx(25.5 * 60)
    assert SCHEDULES["late90"].end_s == 5400.0
    for s in SCHEDULES.values():
        np.testing.assert_allclose(np.diff(s.starts_s), s.durations_s[:-1])
        np.testing.assert_allclose(s.mids_s - s.starts_s, np.asarray(s.durations_s) / 2)


def test_sampling_is_deterministic_and_checks_its_class() -> None:
    a = sample_subject_kinetics(np.random.default_rng(3), "hgg")
    b = sample_subject_kinetics(np.random.default_rng(3), "hgg")
    assert a == b
    assert "tumour" not in sample_subject_kinetics(np.random.default_rng(3), "none").tissues
    with pytest.raises(ValueError, match="unknown tumour class"):
        sample_subject_kinetics(np.random.default_rng(3), "meningioma")


def test_simulated_population_reproduces_the_literature() -> None:
    population = literature.simulate_population(seed=2026, n_per_class=60)
    assert set(population) == set(TUMOUR_CLASSES)
    rows = literature.check(literature.population_statistics(population))
    failed = [f"{t.name}={v:.3g} not in [{t.low}, {t.high}]" for t, v, ok in rows if not ok]
    assert not failed, failed


def test_literature_check_can_fail() -> None:
    population = literature.simulate_population(seed=1, n_per_class=20)
    for rows in population.values():  # swap the classes' dynamics: must be caught
        for r in rows:
            if "slope_percent_per_min" in r:
                r["slope_percent_per_min"] = -r["slope_percent_per_min"]
    rows = literature.check(literature.population_statistics(population))
    names = {t.name for t, _, ok in rows if not ok}
    assert {"hgg_slope_negative", "lgg_slope_positive"} <= names
