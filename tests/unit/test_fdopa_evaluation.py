"""FDOPA evaluation: statistics by hand, the image reference, the cache, the table."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.pipelines.fdopa_pet.evaluation import (
    StudyRef,
    image_reference,
    measurable_components,
    rule_ceiling,
)
from service.pipelines.fdopa_pet.evaluation_run import append_rows, read_cache, run_evaluation
from service.pipelines.fdopa_pet.evaluation_stats import (
    agreement,
    dice,
    fraction,
    icc,
    paired_difference,
    summarise,
)
from service.pipelines.fdopa_pet.evaluation_table import build_report, goals, markdown
from service.sim.fdopa.evaluate import CARD_BEGIN, CARD_END, failures_lines, update_card

# Shrout and Fleiss (1979), Table 2: 6 targets rated by 4 judges; published
# ICC(2,1) = 0.29 and ICC(3,1) = 0.71.
SHROUT_FLEISS = np.array([[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8],
                          [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]], float)


def test_icc_matches_shrout_fleiss_table() -> None:
    assert icc(SHROUT_FLEISS, "agreement") == pytest.approx(0.29, abs=0.005)
    assert icc(SHROUT_FLEISS, "consistency") == pytest.approx(0.71, abs=0.005)


def test_icc_of_a_constant_shift_by_hand() -> None:
    # pred = ref + 1 on (1, 2, 3): MSR = 2, MSC = 1.5, MSE = 0 (worked in the docstring terms)
    table = np.array([[2.0, 1.0], [3.0, 2.0], [4.0, 3.0]])
    assert icc(table, "consistency") == pytest.approx(1.0)
    assert icc(table, "agreement") == pytest.approx(2.0 / (2.0 + 2.0 * 1.5 / 3.0))
    assert math.isnan(icc(table[:1], "agreement"))
    with pytest.raises(ValueError):
        icc(table, "absolute")  # type: ignore[arg-type]


def test_bland_altman_by_hand_and_missing_pairs_dropped() -> None:
    a = agreement([1.0, 2.0, 3.0, 5.0, None, float("nan")], [1.0, 1.0, 2.0, 3.0, 4.0, 1.0])
    sd = math.sqrt(2.0 / 3.0)  # differences 0, 1, 1, 2
    assert a.n == 4
    assert a.bias == pytest.approx(1.0)
    assert a.sd == pytest.approx(sd)
    assert (a.loa_low, a.loa_high) == pytest.approx((1.0 - 1.96 * sd, 1.0 + 1.96 * sd))
    assert agreement([], []).n == 0


def test_summary_quartiles_by_hand() -> None:
    s = summarise([4.0, 1.0, None, 3.0, 2.0])
    assert (s.n, s.q1, s.median, s.q3, s.mean) == pytest.approx((4, 1.75, 2.5, 3.25, 2.5))
    assert s.sd == pytest.approx(math.sqrt(5.0 / 3.0))
    assert summarise([]).n == 0


def test_dice_and_fraction() -> None:
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[:2] = True  # 8 voxels
    b[1:3] = True  # 8 voxels, 4 shared
    assert dice(a, b) == pytest.approx(0.5)
    assert dice(np.zeros(3, bool), np.zeros(3, bool)) == 1.0
    assert fraction([True, False, True, True]) == (3, 4, 0.75)
    assert math.isnan(fraction([])[2])


def test_image_reference_by_hand() -> None:
    labels = np.zeros((1, 1, 10), np.int16)
    vol = np.zeros((1, 1, 10))
    labels[0, 0, :4] = 3  # crescent, mean 10
    vol[0, 0, :4] = [9, 11, 10, 10]
    labels[0, 0, 4:7] = [2, 2, 1]  # lesion: 30, 20, 12 -> active (>= 16): 30, 20
    vol[0, 0, 4:7] = [30, 20, 12]
    labels[0, 0, 7:9] = 4  # striatum max 25
    vol[0, 0, 7:9] = [25, 24]
    labels[0, 0, 9] = 5  # white matter max 8
    vol[0, 0, 9] = 8
    ref = image_reference(vol, labels, voxel_ml=0.5)
    assert ref == pytest.approx({"img_tbr_max": 3.0, "img_tbr_mean": 2.5, "img_mtv_ml": 1.0,
                                 "img_ts": 30 / 25, "img_tn": 30 / 8})
    assert len(measurable_components(labels, voxel_ml=0.5)) == 1  # 2 voxels = 1 mL > 0.5
    assert measurable_components(labels, voxel_ml=0.2) == []


def test_rule_ceiling_by_hand() -> None:
    labels = np.zeros((1, 1, 10), np.int16)
    vol = np.zeros((1, 1, 10))
    labels[0, 0, :4] = 3  # crescent, mean 10: the rule keeps >= 16
    vol[0, 0, :4] = [9, 11, 10, 10]
    labels[0, 0, 4:9] = [2, 2, 2, 2, 1]  # label 2: 30, 20, 15, 12 -> 2 of 4 reach 16
    vol[0, 0, 4:9] = [30, 20, 15, 12, 40]
    assert rule_ceiling(vol, labels)["dice_ceiling"] == pytest.approx(2 * 2 / (2 + 4))
    # the blurred tumour: no PET-active voxel reaches 1.6 x the background
    vol[0, 0, 4:9] = [15, 14, 13, 12, 40]
    assert rule_ceiling(vol, labels) == {"dice_ceiling": 0.0}
    # nothing to measure against: no crescent, or no PET-active tumour
    assert rule_ceiling(vol, np.where(labels == 3, 0, labels)) == {"dice_ceiling": None}
    assert rule_ceiling(vol, np.where(labels == 2, 1, labels)) == {"dice_ceiling": None}


@pytest.fixture(scope="module")
def fingerprints() -> dict[str, str]:
    """The shipped model's and template's fingerprints, as cached rows carry them."""
    from service.pipelines.fdopa_pet.evaluation_run import Evaluator

    evaluator = Evaluator(["unet", "threshold"])
    return {m: evaluator.fingerprint(m) for m in ("unet", "threshold")}


def _row(study: str, method: str, **kw: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "study_id": study, "site": "site_d_unseen", "method": method, "status": "done",
        "tumour_class": "hgg", "paediatric": False, "truth_measurable": True,
        "dice": 0.9, "dice_img": 0.95, "overlaps_truth": True, "pred_lesions": 1,
        "fp_lesions": 0, "dynamic": False, "dice_ceiling": 0.8}
    for key in ("tbr_max", "tbr_mean", "mtv_ml", "ts", "tn"):
        row |= {f"pred_{key}": 2.0, f"img_{key}": 2.0, f"ideal_{key}": 2.1}
    return row | kw


def test_cache_appends_reads_back_and_survives_a_torn_line(tmp_path: Path) -> None:
    cache = tmp_path / "e.jsonl"
    append_rows(cache, [_row("s1", "unet")])
    with cache.open("a") as f:
        f.write('{"study_id": "s2", "meth')  # a crash in the middle of an append
    append_rows(cache, [_row("s3", "unet")])
    rows = read_cache(cache)
    assert set(rows) == {("s1", "unet"), ("s3", "unet")}


def test_cache_ignores_rows_of_another_model(tmp_path: Path) -> None:
    cache = tmp_path / "e.jsonl"
    append_rows(cache, [_row("s1", "unet", fingerprint="model:old"),
                        _row("s2", "unet", fingerprint="model:new"),
                        _row("s2", "threshold", fingerprint="template:t")])
    rows = read_cache(cache, {"unet": "model:new", "threshold": "template:t"})
    assert set(rows) == {("s2", "unet"), ("s2", "threshold")}


def test_run_evaluation_skips_cached_studies(tmp_path: Path,
                                            fingerprints: dict[str, str]) -> None:
    cache = tmp_path / "e.jsonl"
    append_rows(cache, [_row("s1", m, fingerprint=fingerprints[m]) for m in fingerprints])
    # the folder does not exist: any attempt to analyse it would fail loudly
    refs = [StudyRef("site_d_unseen", "s1", tmp_path / "missing")]
    seen: list[Any] = []
    rows = run_evaluation(refs, ["unet", "threshold"], cache, progress=seen.append)
    assert [r["method"] for r in rows] == ["unet", "threshold"] and seen == []


def _report_rows() -> list[dict[str, Any]]:
    rows = []
    for i, (p, r) in enumerate([(2.0, 2.0), (3.1, 3.0), (1.9, 2.0), (2.6, 2.5)]):
        for method in ("unet", "threshold"):
            rows.append(_row(f"s{i}", method, pred_tbr_max=p, img_tbr_max=r,
                             pred_mtv_ml=10.0 + i, img_mtv_ml=9.0 + 2 * i))
    rows.append(_row("s9", "unet", status="failed", code="registration_quality",
                     reason="registration to the FDOPA template failed its quality check",
                     dice=None, overlaps_truth=False, pred_lesions=0, pred_mtv_ml=None,
                     img_mtv_ml=None, dice_ceiling=None))
    rows.append(_row("c1", "unet", tumour_class="none", truth_measurable=False, dice=None,
                     pred_lesions=1, fp_lesions=1, img_mtv_ml=None))
    rows.append(_row("p1", "unet", truth_measurable=True, img_mtv_ml=0.2, dice=0.0,
                     dice_ceiling=0.1,
                     overlaps_truth=False, pred_lesions=0, pred_mtv_ml=0.0,
                     **{f"pred_{k}": None for k in ("tbr_max", "tbr_mean", "ts", "tn")}))
    # p1: measurable in the ideal activity, blurred below 0.5 mL on the image
    return rows


def test_report_counts_failures_and_false_positives() -> None:
    report = build_report(_report_rows(), ["unet", "threshold"])
    unet = report["groups"]["unseen scanner (site_d_unseen)"]["unet"]
    assert (unet["studies"], unet["failed"], unet["with_tumour"]) == (7, 1, 5)
    assert unet["measurable_found"] == (4, 6, pytest.approx(4 / 6))  # failed counts as missed
    assert unet["measurable_found_img"] == (4, 4, 1.0)
    # the ceiling of the 1.6 x rule: over the Dice rows that carry it; p1's 0.2 mL on the
    # image is below the U-Net's 0.25 mL minimum, the failed row has no image reference
    assert unet["dice_ceiling"]["n"] == 5 and unet["dice_ceiling"]["median"] == pytest.approx(0.8)
    assert unet["measurable_reportable"] == (4, 5, pytest.approx(0.8))  # the failed row: None
    assert unet["fp_studies"] == (1, 1, 1.0)
    assert unet["tbr_max"]["bias"] == pytest.approx(0.025)
    verdicts = dict((g, v) for g, _, v in goals(unet))
    assert verdicts["median Dice >= 0.88"] == "met"
    assert verdicts["|TBRmax bias| <= 0.05"] == "met"
    assert verdicts["measurable lesions found >= 98 %"] == "not met by (% points) 31.333"
    assert unet["no_lesion"] == 1 and unet["tbr_max"]["n"] == 4 and unet["mtv_ml"]["n"] == 5
    assert verdicts["|MTV bias| <= 1 cm3"] == "met"  # differences 1, 0, -1, -2, -0.2
    ceiling = [v for g, v in verdicts.items() if g.startswith("(information) the ceiling")]
    assert ceiling == ["not met by 0.080", "not met by (% points) 18.000"]
    assert goals(None) == [("unseen scanner", "no studies", "not evaluated")]


def test_markdown_names_simulated_data_and_lists_the_failed_study(tmp_path: Path) -> None:
    rows = _report_rows()
    report = build_report(rows, ["unet", "threshold"])
    text = markdown(report, ["unet", "threshold"], ["simulated data, not patients"])
    assert "simulated data, not patients" in text
    assert "| unseen scanner (site_d_unseen) | unet |" in text
    assert "0.851 [0.733; 0.911]" in text  # the paper's figure beside ours
    failed = "\n".join(failures_lines(rows))
    assert "| s9 | unet | hgg | registration_quality |" in failed
    json.dumps(report)  # plain JSON
    card = tmp_path / "card.md"
    card.write_text(f"# card\n\n{CARD_BEGIN}\nOLD-SECTION\n{CARD_END}\n\ntail\n")
    update_card(card, text)
    updated = card.read_text()
    assert "OLD-SECTION" not in updated and "tail" in updated and "| s9 |" not in updated
    assert updated.count(CARD_BEGIN) == 1


def test_command_prints_the_table_from_cached_rows(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str],
                                                   fingerprints: dict[str, str]) -> None:
    from service.cli import main

    study = tmp_path / "bench" / "site_d_unseen" / "site_d_unseen_00000"
    study.mkdir(parents=True)
    (study / "truth.json").write_text("{}")  # generated: the rows below are its cached results
    out = tmp_path / "eval.json"
    append_rows(out.with_suffix(".jsonl"),
                [_row("site_d_unseen_00000", m, fingerprint=fingerprints[m]) for m in fingerprints])
    card = tmp_path / "card.md"
    card.write_text("# card\n")
    main(["fdopa", "evaluate", str(tmp_path / "bench"), "--sites", "site_d_unseen",
          "--limit", "2", "--json", str(out), "--card", str(card)])
    text = capsys.readouterr().out
    assert "simulated data, not patients" in text and "PARTIAL run" in text
    assert "site_d_unseen: 1 (+1 not generated)" in text
    assert "| median Dice >= 0.88 | 0.900 | met |" in text
    report = json.loads(out.read_text())
    assert report["missing"] == {"site_d_unseen": 1}
    assert CARD_BEGIN in card.read_text() and "| median Dice >= 0.88 |" in card.read_text()


def test_dynamic_agreement_and_slope_sign() -> None:
    rows = [_row(f"d{i}", "unet", dynamic=True, pred_ttp_s=p, ideal_ttp_s=t,
                 pred_slope_pct_min=ps, ideal_slope_pct_min=ts, pred_slope_ratio=None,
                 ideal_slope_ratio=0.5)
            for i, (p, t, ps, ts) in enumerate([(600.0, 600.0, -1.0, -0.5),
                                                (300.0, 600.0, 0.2, -0.1),
                                                (900.0, 600.0, 1.0, 2.0)])]
    m = build_report(rows, ["unet"])["groups"]["all"]["unet"]
    assert m["dynamic_studies"] == 3
    assert m["ttp_s"]["bias"] == pytest.approx(0.0) and m["ttp_s"]["n"] == 3
    assert m["slope_sign"] == (2, 3, pytest.approx(2 / 3))
    assert m["slope_ratio"]["n"] == 0  # missing pipeline ratios are not pairs


def test_paired_difference_by_hand() -> None:
    x = [0.5, 0.6, 0.7, 0.8]
    same = paired_difference(x, x)
    assert (same.n, same.mean, same.mean_low, same.mean_high, same.median) == (4, 0, 0, 0, 0)
    shifted = paired_difference([v + 0.1 for v in x], x, draws=500, seed=3)
    # a constant shift: every bootstrap draw differs by exactly 0.1
    assert shifted.mean == pytest.approx(0.1)
    assert (shifted.mean_low, shifted.mean_high) == pytest.approx((0.1, 0.1))
    assert (shifted.median, shifted.median_low, shifted.median_high) == pytest.approx((0.1,) * 3)
    mixed = paired_difference([1.0, 0.0, 1.0, 0.0], [0.0] * 4, draws=2000, seed=0)
    assert mixed.mean == pytest.approx(0.5)
    assert 0.0 <= mixed.mean_low < 0.5 < mixed.mean_high <= 1.0
    assert paired_difference([1.0, 0.0, 1.0, 0.0], [0.0] * 4, draws=2000, seed=0) == mixed
    for bad in (([], []), ([1.0], [1.0, 2.0]), ([math.nan], [1.0])):
        with pytest.raises(ValueError):
            paired_difference(*bad)
    with pytest.raises(ValueError):
        paired_difference([1.0], [0.0], draws=0)


def test_compare_command_pairs_measurable_studies(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from service.cli import main

    def row(sid: str, site: str, dice_value: float | None, measurable: bool,
            method: str = "unet") -> dict[str, Any]:
        return {"study_id": sid, "site": site, "method": method, "dice": dice_value,
                "dice_img": dice_value, "truth_measurable": measurable,
                "measurable_found": int(bool(dice_value))}

    old = [row("a1", "site_a", 0.5, True), row("a2", "site_a", 0.0, True),
           row("d1", "site_d_unseen", 0.6, True), row("c1", "site_a", None, False),
           row("a1", "site_a", 0.9, True, method="threshold")]
    new = [row("a1", "site_a", 0.7, True), row("a2", "site_a", 0.4, True),
           row("d1", "site_d_unseen", 0.6, True), row("c1", "site_a", None, False)]
    append_rows(tmp_path / "old.jsonl", old)
    append_rows(tmp_path / "new.jsonl", new)
    assert main(["fdopa", "compare", str(tmp_path / "old.jsonl"), str(tmp_path / "new.jsonl"),
                 "--draws", "200"]) == 0
    out = capsys.readouterr().out
    assert "3 studies with a measurable truth tumour" in out
    assert "Dice vs truth: mean +0.200" in out  # (0.2 + 0.4 + 0) / 3
    assert "measurable found: old 2/3, new 3/3" in out
    main(["fdopa", "compare", str(tmp_path / "old.jsonl"), str(tmp_path / "new.jsonl"),
          "--sites", "site_d_unseen", "--draws", "200"])
    out = capsys.readouterr().out
    assert "1 studies" in out and "mean +0.000 [+0.000; +0.000]" in out
    with pytest.raises(SystemExit):
        main(["fdopa", "compare", str(tmp_path / "old.jsonl"), str(tmp_path / "new.jsonl"),
              "--method", "threshold"])
