"""Per-protocol SBR calibration, the asymmetry rule and the truth-fitted thresholds."""

from __future__ import annotations

import json

import numpy as np
import pytest

from service.errors import AnalysisError
from service.paths import default_models_dir
from service.pipelines.dat_spect.levels import (
    ASYMMETRY_REDUCED_RATIO,
    INCONCLUSIVE_MARGIN_REL,
    Calibration,
    Thresholds,
    asymmetry_ratio,
    fit_truth_thresholds,
    global_score,
    sbr_levels,
)
from service.pipelines.dat_spect.normals import NormalDatabase
from service.pipelines.dat_spect.protocol import (
    FAMILIES,
    UNSTATED_FAMILY,
    Family,
    correction_family,
    read_by_protocol,
)
from service.pipelines.dat_spect.provenance import SIMULATED, SITE, CalibrationInfo
from service.pipelines.dat_spect.result import Level, Region

pytestmark = pytest.mark.no_storage

CAL = Calibration(Thresholds((2.0, 1.6, 1.0, 0.4)), Thresholds((1.6, 1.2, 0.8, 0.3)), "test")


def _sbr(putamen_left: float, putamen_right: float) -> dict[Region, float]:
    return {Region.CAUDATE_LEFT: 2.5, Region.CAUDATE_RIGHT: 2.5,
            Region.PUTAMEN_LEFT: putamen_left, Region.PUTAMEN_RIGHT: putamen_right}


@pytest.mark.parametrize(("value", "family", "stated"), [
    (["ATTN", "SCAT", "DECY"], "attn_scat", True),
    (["DECY", "ATTN"], "attn", True),
    ("ATTN", "attn", True),
    (["attn ", "scat"], "attn_scat", True),
    (["DECY"], "none", True),
    ([], "none", True),
    (None, UNSTATED_FAMILY, False),
    ("", UNSTATED_FAMILY, False),
])
def test_correction_family_from_corrected_image(value: object, family: str, stated: bool) -> None:
    assert correction_family(value) == Family(family, stated)


def test_a_file_without_protocols_applies_to_every_series() -> None:
    common = read_by_protocol(CAL.to_dict(), Calibration.from_dict)
    assert not common.per_protocol
    assert all(common.select(Family(f)) == CAL for f in FAMILIES)


def test_a_per_protocol_file_selects_by_family_and_refuses_a_missing_one() -> None:
    data = {"source": "sim", "provenance": SIMULATED,
            "protocols": {"attn": CAL.to_dict(), "none": {**CAL.to_dict(), "source": "no AC"}}}
    by = read_by_protocol(data, Calibration.from_dict)
    assert by.per_protocol and by.provenance == SIMULATED
    assert by.select(Family("none")).source == "no AC"
    assert by.select(Family("attn")).provenance == SIMULATED  # the file's, not the entry's
    with pytest.raises(ValueError, match="attn_scat"):
        by.select(Family("attn_scat"))
    with pytest.raises(ValueError, match="protocols"):
        read_by_protocol({**data, "protocols": {"ct": CAL.to_dict()}}, Calibration.from_dict)
    with pytest.raises(ValueError, match="protocols"):
        read_by_protocol({**data, "protocols": {}}, Calibration.from_dict)


def test_shipped_files_have_a_set_per_family_that_rates_normal_putamina_normal() -> None:
    models = default_models_dir() / "template"
    cal = read_by_protocol(json.loads((models / "calibration.json").read_text()),
                           Calibration.from_dict)
    normals = read_by_protocol(json.loads((models / "normals.json").read_text()),
                               NormalDatabase.from_dict)
    for family in FAMILIES:
        c, n = cal.select(Family(family)), normals.select(Family(family))
        mean, _ = n.expected(Region.PUTAMEN_LEFT, None)
        assert c.putamen.level(mean) == Level.NORMAL, family
        assert c.putamen.values[1] < mean


def test_the_statement_names_the_set_and_fits_the_picture_line() -> None:
    for family in FAMILIES:
        for stated in (True, False):
            text = Family(family, stated).describe()
            line = f"* {CalibrationInfo(SIMULATED, SIMULATED, text).statement()}."
            assert FAMILIES[family] in line and len(line) <= 150
            assert ("assumed" in line) is not stated
    assert "set for" not in CalibrationInfo(SITE, SITE).statement()


def test_asymmetry_rule_raises_the_lower_putamen_only() -> None:
    ratio = ASYMMETRY_REDUCED_RATIO - 0.05
    levels = sbr_levels(_sbr(2.4 * ratio, 2.4), CAL)
    assert CAL.putamen.level(2.4 * ratio) == Level.NORMAL  # the thresholds alone miss it
    assert levels[Region.PUTAMEN_LEFT] == Level.MODERATE_REDUCTION
    assert levels[Region.PUTAMEN_RIGHT] == Level.NORMAL
    assert asymmetry_ratio(_sbr(1.0, 2.0), Region.PUTAMEN_LEFT) == pytest.approx(0.5)
    assert asymmetry_ratio(_sbr(1.0, 2.0), Region.CAUDATE_LEFT) is None
    same = sbr_levels(_sbr(2.4 * (ASYMMETRY_REDUCED_RATIO + 0.05), 2.4), CAL)
    assert set(same.values()) == {Level.NORMAL}
    # a putamen already below the thresholds keeps its (worse) level
    deep = sbr_levels(_sbr(0.2, 2.4), CAL)
    assert deep[Region.PUTAMEN_LEFT] == Level.ALMOST_MISSING


def test_global_score_margin_applies_to_the_asymmetry_rule() -> None:
    def score(ratio: float) -> tuple[bool, bool]:
        sbr = _sbr(2.4 * ratio, 2.4)
        s = global_score(sbr_levels(sbr, CAL), sbr, CAL)
        return s.reduced, s.inconclusive

    cut = ASYMMETRY_REDUCED_RATIO
    assert score(0.5) == (True, False)
    assert score(cut * (1 - INCONCLUSIVE_MARGIN_REL / 2)) == (True, True)
    assert score(cut * (1 + INCONCLUSIVE_MARGIN_REL / 2)) == (False, True)
    assert score(0.97) == (False, False)


def test_fit_truth_thresholds_recovers_the_cut_points() -> None:
    rng = np.random.default_rng(3)
    sbr = rng.uniform(0.0, 3.0, 4000)
    cuts = (2.0, 1.5, 1.0, 0.5)
    truth = sum((sbr < c).astype(int) for c in cuts)
    fitted = fit_truth_thresholds(sbr, truth)
    assert np.allclose(fitted.values, cuts, atol=0.01)
    assert list(fitted.values) == sorted(fitted.values, reverse=True)
    with pytest.raises(ValueError):
        fit_truth_thresholds(sbr, truth[:-1])


def test_pipeline_scores_with_the_series_family_and_says_which() -> None:
    from service.pipelines.dat_spect.pipeline import DatSpectPipeline

    pipeline = DatSpectPipeline()
    _, _, stated = pipeline.calibration_for(Family("none"))
    assert stated.protocol == FAMILIES["none"] and stated.indicative
    cal_unstated, _, unstated = pipeline.calibration_for(correction_family(None))
    assert "assumed" in (unstated.protocol or "")
    assert cal_unstated == pipeline.calibration_for(Family(UNSTATED_FAMILY))[0]
    pipeline.calibrations = read_by_protocol(
        {"provenance": SITE, "protocols": {"attn": CAL.to_dict()}}, Calibration.from_dict)
    with pytest.raises(AnalysisError) as err:
        pipeline.calibration_for(Family("none"))
    assert err.value.code == "calibration" and "none" in err.value.reason
