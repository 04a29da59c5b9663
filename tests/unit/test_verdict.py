"""The verdict-consistency rule: the global score never contradicts the regional table silently."""

from __future__ import annotations

import io
from dataclasses import replace

import highdicom as hd
import numpy as np
import pydicom
import pytest
from highdicom.sr.utils import find_content_items

from service.pipelines.dat_spect import codes, render
from service.pipelines.dat_spect.example import example_evidence, example_result
from service.pipelines.dat_spect.picture import build_picture_report
from service.pipelines.dat_spect.putamen_estimator import X_CLEAR_RATIO
from service.pipelines.dat_spect.result import Level, Region, StudyResult, summary_dict
from service.pipelines.dat_spect.sr import build_sr
from service.pipelines.dat_spect.verdict import (
    ASYMMETRY_METHOD,
    apply_verdict,
    consistent_score,
    contradiction,
    method_disagreements,
    methods_call_differently,
)

pytestmark = pytest.mark.no_storage  # never opens the node's rows: not rerun on PostgreSQL


def normal_cnn_with_sbr_level(level_sbr: Level, region: Region = Region.PUTAMEN_RIGHT,
                              ) -> StudyResult:
    """A normal CNN call (all CNN levels 0) whose SBR thresholds rate ``region`` at ``level_sbr``."""
    base = example_result(reduced=False, with_cnn=True)
    regions = tuple(replace(r, level_sbr=level_sbr) if r.region is region else r
                    for r in base.regions)
    return replace(base, regions=regions)


def test_agreeing_methods_leave_the_score_alone() -> None:
    for result in (example_result(reduced=True), example_result(reduced=False)):
        assert method_disagreements(result.regions) == ()
        assert consistent_score(result.regions, result.global_score) == result.global_score
        assert contradiction(result.regions, result.global_score) == ""


def test_the_offline_tabulation_applies_the_same_rule_as_the_node() -> None:
    """models.training.robustness.verdict_calls (arrays) == the node's rule per scan."""
    from models.training.robustness import Calls, verdict_calls

    rng = np.random.default_rng(5)
    cnn_levels = rng.integers(0, 5, (200, 4)) * (rng.random((200, 4)) < 0.4)
    sbr_levels = rng.integers(0, 5, (200, 4)) * (rng.random((200, 4)) < 0.4)
    none = np.zeros(200, bool)
    calls = verdict_calls(Calls(none, none, cnn_levels), Calls(none, none, sbr_levels))
    base = example_result(reduced=False, with_cnn=True)
    expected = [methods_call_differently(tuple(
        replace(r, level_cnn=Level(int(c)), level_sbr=Level(int(s)))
        for r, c, s in zip(base.regions, cnn_row, sbr_row, strict=True)))
        for cnn_row, sbr_row in zip(cnn_levels, sbr_levels, strict=True)]
    assert calls.inconclusive.tolist() == expected
    assert 20 < sum(expected) < 180  # both outcomes occur


def one_sided_under_normal_cnn(ratio: float, x_ratio: float | None = None,
                               level_sbr: Level = Level.MODERATE_REDUCTION) -> StudyResult:
    """A normal CNN call (levels 0) whose right putamen's SBR is ``ratio`` x the left's
    (SBR level ``level_sbr``: 2, as the asymmetry rule rates a ratio below 0.78) and whose
    learnt estimator reads the right putamen at ``x_ratio`` (default ``ratio``) x the left."""
    result = normal_cnn_with_sbr_level(level_sbr)
    left = result.region(Region.PUTAMEN_LEFT).sbr
    estimate = {Region.PUTAMEN_LEFT: 2.0,
                Region.PUTAMEN_RIGHT: 2.0 * (ratio if x_ratio is None else x_ratio)}
    regions = tuple(replace(r, sbr=ratio * left if r.region is Region.PUTAMEN_RIGHT else r.sbr,
                            sbr_estimated=estimate.get(r.region))
                    for r in result.regions)
    return replace(result, regions=regions)


def test_clear_one_sided_loss_under_a_normal_cnn_is_reduced_by_default() -> None:
    result = one_sided_under_normal_cnn(0.62)
    off = consistent_score(result.regions, result.global_score, asymmetry_decides=False)
    assert off.inconclusive and not off.reduced  # without the option: a disagreement
    score = consistent_score(result.regions, result.global_score)  # the node's default
    assert score.reduced and not score.inconclusive and score.method == ASYMMETRY_METHOD
    assert ("putamen right: VOI SBR ratio 0.62, learnt estimator 0.62, CNN level 0"
            in score.rule)
    assert score.rule.startswith("reduced: one-sided putamen loss seen by both putamen "
                                 "measures, calibration-free")
    assert "both below 0.78 x the other putamen, the VOI below 0.741 or the estimator " \
           "below 0.66" in score.rule
    assert score.rule.endswith(result.global_score.rule)
    regions, applied = apply_verdict(result.regions, result.global_score)
    assert applied == score
    right = next(r for r in regions if r.region is Region.PUTAMEN_RIGHT)
    assert right.by_asymmetry and right.level == right.level_sbr == Level.MODERATE_REDUCTION
    assert right.level_cnn == Level.NORMAL  # the CNN's own level is kept
    assert [r.level for r in regions if r.region is not Region.PUTAMEN_RIGHT] == [
        Level.NORMAL] * 3
    fixed = replace(result, regions=regions, global_score=score)
    assert contradiction(fixed.regions, score) == ""
    assert render.headline(fixed)[0] == "REDUCED striatal DaT uptake (abnormal)"
    assert apply_verdict(result.regions, result.global_score, asymmetry_decides=False) == (
        result.regions, off)


def test_the_estimator_clearly_low_and_the_voi_moderately_low_decide() -> None:
    """VOI ratio 0.76 (SBR level 2, not clearly), X 0.60 on the same putamen: reduced."""
    result = one_sided_under_normal_cnn(0.76, x_ratio=0.6)
    assert consistent_score(result.regions, result.global_score,
                            asymmetry_decides=False).inconclusive  # today's disagreement
    regions, score = apply_verdict(result.regions, result.global_score)
    assert score.reduced and not score.inconclusive and score.method == ASYMMETRY_METHOD
    assert "putamen right: VOI SBR ratio 0.76, learnt estimator 0.60" in score.rule
    right = next(r for r in regions if r.region is Region.PUTAMEN_RIGHT)
    assert right.by_asymmetry and right.level == Level.MODERATE_REDUCTION
    fixed = replace(result, regions=regions, global_score=score)
    assert contradiction(regions, score) == ""
    assert render.headline(fixed)[0] == "REDUCED striatal DaT uptake (abnormal)"
    assert summary_dict(fixed)["regions"]["putamen_right"]["sbr_estimated"] == (
        pytest.approx(1.2))
    _, items = sr_round_trip(fixed)
    assert "learnt estimator 0.60" in items[codes.GLOBAL_SCORE_RULE.value].TextValue


@pytest.mark.parametrize(("voi", "x_ratio", "level_sbr", "why"), [
    (0.85, 0.60, Level.BORDERLINE, "the VOI does not see it (0.85)"),
    (0.60, 0.90, Level.MODERATE_REDUCTION, "X does not see it (0.90)"),
    (0.76, X_CLEAR_RATIO + 0.005, Level.MODERATE_REDUCTION, "neither clearly"),
    (0.70, 0.79, Level.MODERATE_REDUCTION, "X above 0.78"),
])
def test_one_measure_alone_does_not_override(voi: float, x_ratio: float, level_sbr: Level,
                                             why: str) -> None:
    """Without both measures below 0.78 and one clearly low, the CNN's call stands as
    without the option: normal above SBR level 1, inconclusive above SBR level 2."""
    result = one_sided_under_normal_cnn(voi, x_ratio=x_ratio, level_sbr=level_sbr)
    score = consistent_score(result.regions, result.global_score)
    assert score == consistent_score(result.regions, result.global_score,
                                     asymmetry_decides=False), why
    assert not score.reduced and score.method == "cnn"
    no_estimates = tuple(replace(r, sbr_estimated=None) for r in result.regions)
    assert consistent_score(no_estimates, result.global_score) == score  # no CNN crop: no X


def test_the_measures_must_point_to_the_same_putamen() -> None:
    """VOI: the right putamen at 0.70; X: the left at 0.60 of the right: no override."""
    result = one_sided_under_normal_cnn(0.70)
    regions = tuple(replace(r, sbr_estimated={Region.PUTAMEN_LEFT: 1.2,
                                              Region.PUTAMEN_RIGHT: 2.0}.get(r.region))
                    for r in result.regions)
    score = consistent_score(regions, result.global_score)
    assert score.inconclusive and not score.reduced and score.method == "cnn"
    from service.pipelines.dat_spect.verdict import one_sided_side

    assert one_sided_side(1.2, 2.0, 2.0, 1.4) is None  # X left low, VOI right low
    assert one_sided_side(1.2, 2.0, 1.4, 2.0) == 0 and one_sided_side(2.0, 1.2, 2.0, 1.4) == 1
    assert one_sided_side(-0.1, 2.0, 1.4, 2.0) == 0  # an estimate below nothing: clearly low
    assert one_sided_side(0.0, 0.0, 1.4, 2.0) is None  # no binding read: no decision


def test_the_override_leaves_reduced_cnn_calls_and_sbr_verdicts_alone() -> None:
    reduced = example_result(reduced=True, with_cnn=True)
    assert consistent_score(reduced.regions, reduced.global_score, asymmetry_decides=True) == (
        reduced.global_score)
    result = one_sided_under_normal_cnn(0.6)
    sbr_call = replace(result.global_score, method="sbr", reduced=True)
    assert consistent_score(result.regions, sbr_call, asymmetry_decides=True).method == "sbr"


def test_the_offline_override_applies_the_same_rule_as_the_node() -> None:
    """models.training.robustness.verdict_calls with estimated_asymmetry == the node per scan."""
    from models.training.robustness import Calls, estimated_asymmetry, side_agrees, verdict_calls
    from service.pipelines.dat_spect.result import REGIONS, GlobalScore

    rng = np.random.default_rng(7)
    n = 300
    sbr = rng.uniform(1.0, 2.2, (n, 4))
    cnn_levels = rng.integers(0, 5, (n, 4)) * (rng.random((n, 4)) < 0.3)
    sbr_levels = rng.integers(0, 5, (n, 4)) * (rng.random((n, 4)) < 0.3)
    estimates = sbr[:, 2:] * rng.uniform(0.6, 1.4, (n, 2))  # X near the VOI, not equal
    cnn_reduced = (cnn_levels >= 2).any(axis=1)
    none = np.zeros(n, bool)
    cnn, sbr_path = Calls(cnn_reduced, none, cnn_levels), Calls(none, none, sbr_levels)
    side = side_agrees(cnn, sbr, sbr_path)
    assert 5 < int(side.sum()) < n - 5  # the CNN-side rule applies to some, not all
    clear = estimated_asymmetry(estimates, sbr)
    calls = verdict_calls(cnn, sbr_path, clear, side)
    base = example_result(reduced=False, with_cnn=True)
    node = []
    for k in range(n):
        x = {Region.PUTAMEN_LEFT: float(estimates[k, 0]),
             Region.PUTAMEN_RIGHT: float(estimates[k, 1])}
        regions = tuple(replace(r, sbr=float(sbr[k, REGIONS.index(r.region)]),
                                level_cnn=Level(int(cnn_levels[k, REGIONS.index(r.region)])),
                                level_sbr=Level(int(sbr_levels[k, REGIONS.index(r.region)])),
                                sbr_estimated=x.get(r.region))
                        for r in base.regions)
        score = consistent_score(regions, GlobalScore(bool(cnn_reduced[k]), False, "r", "cnn"),
                                 asymmetry_decides=True)
        node.append((score.reduced, score.inconclusive and
                     score.rule.startswith("inconclusive: CNN and SBR")))
    assert [(bool(a), bool(b)) for a, b in zip(calls.reduced, calls.inconclusive,
                                               strict=True)] == node
    overridden = int((clear & ~cnn_reduced).sum())
    assert 10 < overridden < n - 10  # both outcomes occur


def test_borderline_sbr_under_a_normal_cnn_is_not_a_disagreement() -> None:
    result = normal_cnn_with_sbr_level(Level.BORDERLINE)
    assert consistent_score(result.regions, result.global_score) == result.global_score


def test_sbr_moderate_under_a_normal_cnn_makes_it_inconclusive_and_says_where() -> None:
    result = normal_cnn_with_sbr_level(Level.MODERATE_REDUCTION)
    score = consistent_score(result.regions, result.global_score)
    assert score.inconclusive and not score.reduced and score.method == "cnn"
    assert score.rule.startswith(
        "inconclusive: CNN and SBR thresholds disagree on putamen right (CNN 0, SBR 2)")
    assert score.rule.endswith(result.global_score.rule)


def test_both_reduced_but_different_regions_keeps_the_call_and_names_them() -> None:
    base = example_result(reduced=True, with_cnn=True)
    regions = tuple(replace(r, level_sbr=Level.NORMAL) if r.region is Region.PUTAMEN_LEFT
                    else r for r in base.regions)
    assert any(r.level_sbr >= Level.MODERATE_REDUCTION for r in regions)  # SBR: reduced too
    score = consistent_score(regions, base.global_score)
    assert not score.inconclusive and score.reduced
    assert score.rule.startswith("CNN and SBR thresholds differ on putamen left (CNN 3, SBR 0); "
                                 "both call the scan reduced")
    assert "putamen right" not in score.rule  # CNN 2, SBR 2: they agree
    assert contradiction(regions, score) == ""


def test_cnn_reduced_where_the_sbr_path_finds_nothing_is_inconclusive() -> None:
    base = example_result(reduced=True, with_cnn=True)
    regions = tuple(replace(r, level_sbr=min(r.level_sbr, Level.BORDERLINE))
                    for r in base.regions)
    score = consistent_score(regions, base.global_score)
    assert score.inconclusive and score.reduced
    assert score.rule.startswith("inconclusive: CNN and SBR thresholds disagree on putamen left")
    assert contradiction(regions, score) == "CNN and SBR disagree"


def test_a_normal_call_above_a_reported_level_two_is_inconclusive() -> None:
    base = example_result(reduced=True, with_cnn=True)
    normal_call = replace(base.global_score, reduced=False)
    # (the example's putamina differ clearly: without the option, not overridden)
    score = consistent_score(base.regions, normal_call, asymmetry_decides=False)
    assert score.inconclusive
    assert "the CNN call (normal) disagrees with the regional levels (putamen left level 3" in (
        score.rule)
    reduced_call = replace(example_result(reduced=False).global_score, reduced=True)
    score = consistent_score(example_result(reduced=False).regions, reduced_call)
    assert score.inconclusive and "no region at level 2 or worse" in score.rule


def test_headline_never_says_normal_above_a_level_two() -> None:
    result = normal_cnn_with_sbr_level(Level.MODERATE_REDUCTION)
    # Even a result built without the rule (flag not set) gets no NORMAL headline.
    text, colour = render.headline(result)
    assert text == "INCONCLUSIVE - CNN and SBR disagree" and colour == "#f9a825"
    fixed = replace(result, global_score=consistent_score(result.regions, result.global_score))
    assert render.headline(fixed)[0] == "INCONCLUSIVE - CNN and SBR disagree"
    sbr_only = example_result(reduced=True, with_cnn=False)
    wrong = replace(sbr_only, global_score=replace(sbr_only.global_score, reduced=False))
    assert render.headline(wrong)[0] == "INCONCLUSIVE - a region is at level 2+"


def sr_round_trip(result: StudyResult) -> tuple[hd.sr.ComprehensiveSR, dict]:
    """The result's SR written and read back; its qualitative evaluations by concept code."""
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, build_sr(result, example_evidence(result), "job-verdict"),
                     enforce_file_format=True)
    sr = hd.sr.srread(io.BytesIO(buffer.getvalue()))
    (container,) = find_content_items(sr.content[0], name=codes.QUALITATIVE_EVALUATIONS)
    return sr, {i.ConceptNameCodeSequence[0].CodeValue: i for i in container.ContentSequence}


@pytest.mark.parametrize("level_sbr", [Level.MODERATE_REDUCTION, Level.STRONG_REDUCTION])
def test_sr_carries_the_inconclusive_flag_and_the_rule(level_sbr: Level) -> None:
    result = normal_cnn_with_sbr_level(level_sbr)
    result = replace(result, global_score=consistent_score(result.regions, result.global_score))
    _, items = sr_round_trip(result)
    flag = items[codes.RESULT_INCONCLUSIVE.value].ConceptCodeSequence[0].CodeValue
    assert flag == codes.YES.value
    assert items[codes.FINDING.value].ConceptCodeSequence[0].CodeValue == codes.NORMAL.value
    rule = items[codes.GLOBAL_SCORE_RULE.value].TextValue
    assert f"putamen right (CNN 0, SBR {int(level_sbr)})" in rule


def test_picture_report_headline_is_amber_not_green() -> None:
    """Round trip: Secondary Capture written, read back, headline pixels amber, no green."""
    result = normal_cnn_with_sbr_level(Level.MODERATE_REDUCTION)
    result = replace(result, global_score=consistent_score(result.regions, result.global_score))
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, build_picture_report(result, example_evidence(result), "job-v"),
                     enforce_file_format=True)
    rgb = pydicom.dcmread(io.BytesIO(buffer.getvalue())).pixel_array.astype(int)
    top = rgb[: int(0.14 * render.HEIGHT_PX)]

    def count(hex_colour: str, tolerance: int = 12) -> int:
        target = np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)])
        return int((np.abs(top - target) <= tolerance).all(axis=-1).sum())

    assert count("#f9a825") > 3000
    assert count(render.LEVEL_COLOURS[0]) == 0


class _NormalCnn:
    """Stands in for a CnnSession that calls every scan normal (level 0 everywhere)."""

    name = "always-normal"
    sha256 = "ab" * 32

    def __init__(self) -> None:
        from service.imaging.atlas import load_atlas
        from service.pipelines.dat_spect.preprocess import contract_for_atlas

        self.contract = contract_for_atlas(load_atlas())


def test_pipeline_applies_the_rule_to_a_one_sided_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    """A phantom with the left putamen at a fifth of the right: SBR thresholds say level >= 2,
    a CNN that says 0 everywhere gets no NORMAL verdict, and the result says why; by default
    (asymmetry_decides) the clear one-sided loss makes it REDUCED."""
    from service.imaging.atlas import Atlas, load_atlas
    from service.pipelines.dat_spect import pipeline as dat_pipeline
    from service.pipelines.dat_spect.preprocess import cnn_input
    from service.pipelines.dat_spect.putamen_estimator import PutamenEstimator
    from service.pipelines.dat_spect.result import GlobalScore
    from service.sim.nm_writer import EncodingVariant, build_nm_datasets
    from service.testing.dat_phantom import make_phantom, random_pose
    from service.testing.nmdata import CAMERA, SUBJECT

    def rate_normal(cnn: _NormalCnn, volume: np.ndarray, atlas: Atlas, regions: tuple,
                    estimator: PutamenEstimator | None = None) -> tuple:
        """The node's crop and the shipped estimator; the CNN's levels all 0."""
        assert estimator is not None  # the pipeline passes the shipped one
        left, right = estimator.estimate(cnn_input(volume, atlas, cnn.contract))
        x = {Region.PUTAMEN_LEFT: left, Region.PUTAMEN_RIGHT: right}
        rated = tuple(replace(r, level_cnn=Level.NORMAL, sbr_estimated=x.get(r.region))
                      for r in regions)
        return rated, GlobalScore(False, False, "test rule", "cnn")

    monkeypatch.setattr(dat_pipeline, "rate_with_cnn", rate_normal)
    pipe = dat_pipeline.DatSpectPipeline(cnn=_NormalCnn(),  # type: ignore[arg-type]
                                         asymmetry_decides=False)
    rng = np.random.default_rng(11)
    true_sbr = {Region.CAUDATE_LEFT: 4.0, Region.CAUDATE_RIGHT: 4.0,
                Region.PUTAMEN_LEFT: 0.7, Region.PUTAMEN_RIGHT: 3.6}
    phantom = make_phantom(load_atlas(), true_sbr, random_pose(rng), rng)
    datasets = build_nm_datasets(phantom.image, CAMERA, SUBJECT, EncodingVariant.MULTIFRAME,
                                 "verdict-pipeline")
    result = pipe.analyse(datasets, {})
    putamen_left = result.region(Region.PUTAMEN_LEFT)
    assert putamen_left.level_sbr >= Level.MODERATE_REDUCTION
    assert putamen_left.level_cnn == Level.NORMAL
    score = result.global_score
    assert score.inconclusive and not score.reduced
    assert f"putamen left (CNN 0, SBR {int(putamen_left.level_sbr)})" in score.rule
    assert render.headline(result)[0] == "INCONCLUSIVE - CNN and SBR disagree"
    assert result.calibration is not None and result.calibration.indicative

    from service.pipelines.dat_spect.plugin import DatSpectSettings

    assert DatSpectSettings().asymmetry_decides  # the node's default
    pipe.asymmetry_decides = True
    decided = pipe.analyse(datasets, {})
    assert decided.global_score.reduced and not decided.global_score.inconclusive
    assert decided.global_score.method == "cnn+asymmetry"
    right = decided.region(Region.PUTAMEN_RIGHT).sbr_estimated
    left = decided.region(Region.PUTAMEN_LEFT).sbr_estimated
    assert left is not None and right is not None and left < X_CLEAR_RATIO * right
    assert decided.region(Region.CAUDATE_LEFT).sbr_estimated is None
    assert decided.region(Region.PUTAMEN_LEFT).level >= Level.MODERATE_REDUCTION
    assert render.headline(decided)[0] == "REDUCED striatal DaT uptake (abnormal)"
    decided_left = decided.region(Region.PUTAMEN_LEFT)
    assert decided_left.by_asymmetry and decided_left.level == putamen_left.level_sbr
    assert decided_left.level_cnn == Level.NORMAL


def test_sr_of_an_overridden_verdict_reports_the_sbr_level_and_the_method() -> None:
    """SR round trip: method "cnn+asymmetry", finding reduced, not inconclusive; the
    overridden putamen's reported level is its SBR level, its CNN level stays 0."""
    result = one_sided_under_normal_cnn(0.62)
    regions, score = apply_verdict(result.regions, result.global_score)
    result = replace(result, regions=regions, global_score=score)
    sr, items = sr_round_trip(result)
    assert items[codes.GLOBAL_SCORE_METHOD.value].TextValue == ASYMMETRY_METHOD
    assert items[codes.FINDING.value].ConceptCodeSequence[0].CodeValue != codes.NORMAL.value
    assert items[codes.RESULT_INCONCLUSIVE.value].ConceptCodeSequence[0].CodeValue != (
        codes.YES.value)
    assert "putamen right: VOI SBR ratio 0.62, learnt estimator 0.62" in (
        items[codes.GLOBAL_SCORE_RULE.value].TextValue)
    estimated = [(item.MeasuredValueSequence[0].NumericValue)
                 for item in find_content_items(sr.content[0], name=codes.ESTIMATED_SBR,
                                                recursive=True)]
    assert sorted(float(v) for v in estimated) == pytest.approx([1.24, 2.0])  # putamina only
    levels: dict[str, list[str]] = {}
    for item in find_content_items(sr.content[0], name=codes.UPTAKE_LEVEL_CONCEPT,
                                   recursive=True):
        levels.setdefault("reported", []).append(item.ConceptCodeSequence[0].CodeValue)
    for item in find_content_items(sr.content[0], name=codes.UPTAKE_LEVEL_CNN_CONCEPT,
                                   recursive=True):
        levels.setdefault("cnn", []).append(item.ConceptCodeSequence[0].CodeValue)
    moderate = codes.LEVEL_CODES[Level.MODERATE_REDUCTION].value
    assert levels["reported"].count(moderate) == 1  # the overridden putamen only
    assert moderate not in levels["cnn"]


def test_case_rows_say_per_scan_what_each_method_called(tmp_path) -> None:
    """``dopanode robustness --cases``: one row per scan; a row is right exactly when the
    call is conclusive and equals the reference; the rows add up to the table's counts."""
    import csv

    from models.training.robustness import Calls, case_rows, method_table, write_case_rows

    reference = np.array(["reduced", "reduced", "normal", "normal", "excluded"], dtype=object)
    one_sided = np.array([True, False, False, False, True])
    truth = np.array([[0, 0, 3, 0], [0, 0, 3, 3], [0] * 4, [0] * 4, [-1] * 4], np.int64)
    sbr = np.array([[2.0, 2.1, 1.0, 2.0], [2.0, 2.0, 1.0, 1.1], [2.0, 2.0, 2.0, 1.8],
                    [2.0, 2.0, 1.9, 2.0], [2.0, 2.0, 2.0, 2.0]])
    levels = np.array([[0, 0, 3, 0], [0, 0, 2, 2], [0] * 4, [0, 0, 0, 2], [0] * 4], np.int64)
    calls = Calls(np.array([True, True, False, True, False]),
                  np.array([False, True, False, False, False]), levels)
    rows = case_rows([f"s{k}" for k in range(5)], ["a", "a", "b", "b", "b"], reference,
                     one_sided, truth, sbr, {"m": calls}, np.array([[1.0, 2.0]] * 5))
    assert [r["m"] for r in rows] == ["reduced", "inconclusive (reduced)", "normal",
                                      "reduced", "normal"]
    assert [r["m right"] for r in rows] == ["yes", "no", "yes", "no", ""]
    assert rows[0]["putamen_ratio"] == "0.5000" and rows[0]["m levels"] == "0 0 3 0"
    assert rows[0]["x_putamen_ratio"] == "0.5000"
    assert rows[4]["truth_levels"] == "" and rows[1]["truth_levels"] == "0 0 3 3"
    table = method_table(np.array(["a", "a", "b", "b", "b"]), reference, one_sided, truth,
                         {"m": calls})["all"]["m"]
    right = sum(r["m right"] == "yes" for r in rows)
    assert right == table["tp"] + table["tn"] == 2
    write_case_rows(rows, tmp_path / "cases.csv")
    with (tmp_path / "cases.csv").open(newline="") as f:
        assert list(csv.DictReader(f)) == rows


def strong_one_sided_cnn(cnn_level: Level, ratio: float, sbr_level: Level = Level.NORMAL,
                         ) -> StudyResult:
    """A reduced CNN call rating only the right putamen ``cnn_level``; the right putamen's
    SBR is ``ratio`` x the left's and the SBR thresholds rate it ``sbr_level``."""
    from service.pipelines.dat_spect.result import GlobalScore

    base = example_result(reduced=False, with_cnn=True)
    left = base.region(Region.PUTAMEN_LEFT).sbr
    regions = tuple(replace(r, level_cnn=cnn_level, level_sbr=sbr_level, sbr=ratio * left)
                    if r.region is Region.PUTAMEN_RIGHT else r for r in base.regions)
    score = GlobalScore(reduced=True, inconclusive=False, rule="CNN rule", method="cnn")
    return replace(base, regions=regions, global_score=score)


def test_a_strong_one_sided_cnn_call_stands_where_the_asymmetry_points_to_it() -> None:
    """The CNN's side rule: CNN level 3+ on one putamen only, the SBR thresholds at level
    0-1, the putamen below 0.95 x the other: reduced and conclusive, the rule says why."""
    from service.pipelines.dat_spect.verdict import SIDE_AGREES_RATIO, SIDE_METHOD

    result = strong_one_sided_cnn(Level.STRONG_REDUCTION, 0.86)
    score = consistent_score(result.regions, result.global_score)
    assert (score.reduced, score.inconclusive, score.method) == (True, False, SIDE_METHOD)
    assert "putamen right level 3" in score.rule and "0.86 x" in score.rule
    assert "find no region at level 2" in score.rule and score.rule.endswith("CNN rule")
    off = consistent_score(result.regions, result.global_score, asymmetry_decides=False)
    assert off.inconclusive and off.rule.startswith("inconclusive: CNN and SBR thresholds")
    # each premise matters: the CNN's level 2 only, no asymmetry, the SBR path already at 2
    # (then the methods agree and the call stands as the CNN's), a second side at level 2
    for kept in (strong_one_sided_cnn(Level.MODERATE_REDUCTION, 0.86),
                 strong_one_sided_cnn(Level.STRONG_REDUCTION, SIDE_AGREES_RATIO),
                 strong_one_sided_cnn(Level.STRONG_REDUCTION, 1.10)):
        s = consistent_score(kept.regions, kept.global_score)
        assert s.inconclusive and s.method == "cnn", s.rule
    both = strong_one_sided_cnn(Level.STRONG_REDUCTION, 0.86)
    both = replace(both, regions=tuple(
        replace(r, level_cnn=Level.MODERATE_REDUCTION) if r.region is Region.CAUDATE_LEFT
        else r for r in both.regions))
    assert consistent_score(both.regions, both.global_score).inconclusive
    agree = strong_one_sided_cnn(Level.STRONG_REDUCTION, 0.86, Level.MODERATE_REDUCTION)
    s = consistent_score(agree.regions, agree.global_score)
    assert (s.reduced, s.inconclusive, s.method) == (True, False, "cnn")
    regions, final = apply_verdict(result.regions, result.global_score)
    assert final.method == SIDE_METHOD
    assert regions[3].level == Level.STRONG_REDUCTION  # the table reports the CNN's level
    # the picture's headline says what the SR says: REDUCED, not INCONCLUSIVE
    assert contradiction(regions, final) == ""
    text, _ = render.headline(replace(result, regions=regions, global_score=final))
    assert text.startswith("REDUCED")
