"""The MR-guided route's evaluation (issue 13 point 6): its truth, its rows' helpers, its table.

:func:`flair_truth` on synthetic images with known answers (the PET-VOI
branch, the low-uptake fallback, the curves' TTP and slope), the simulator's
pose as a registration, the refusal categories and the report's populations
and verdicts on hand-made rows.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.imaging.pet_volume import PetFrame, PetVolume
from service.imaging.suv import SuvScale
from service.pipelines.fdopa_pet.evaluation_mr import (
    flair_dice,
    flair_truth,
    refusal,
    registration_shift,
    true_registration,
)
from service.pipelines.fdopa_pet.evaluation_mr_table import build_report, markdown
from service.sim.fdopa.flair import MrPose

SHAPE = (12, 16, 16)
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


def _labels() -> np.ndarray:
    labels = np.zeros(SHAPE, np.int16)
    labels[2:4, 2:5, 2:5] = 4  # contralateral striatum
    labels[8:10, 2:5, 2:5] = 5  # contralateral white-matter VOI
    labels[2:10, 10:14, 2:6] = 3  # crescent
    return labels


def _static(volume: np.ndarray) -> PetVolume:
    return PetVolume((PetFrame(0.0, 1200.0, 600.0, volume.astype(np.float32)),), AFFINE,
                     "1.2.3", "1.2.9", False, None)


def _lesion() -> np.ndarray:
    lesion = np.zeros(SHAPE, bool)
    lesion[4:8, 6:10, 8:12] = True
    return lesion


def test_truth_uses_the_pet_voi_above_the_white_matter_maximum() -> None:
    labels, lesion = _labels(), _lesion()
    volume = np.full(SHAPE, 1.0)
    volume[labels == 4], volume[labels == 5] = 2.0, 1.2
    volume[lesion] = 1.0  # most of the lesion below the WM max ...
    volume[5:7, 7:9, 9:11] = 3.0  # ... a hot core above it
    t = flair_truth(lesion, labels, _static(volume))
    assert t is not None and t.pet_voi
    assert t.voi_zyx.sum() == 8 and (t.voi_zyx <= lesion).all()
    assert t.ts_ratio == pytest.approx(1.5) and t.tn_ratio == pytest.approx(2.5)


def test_truth_falls_back_to_the_lesion_when_uptake_is_low() -> None:
    labels, lesion = _labels(), _lesion()
    volume = np.full(SHAPE, 1.0)
    volume[labels == 4], volume[labels == 5] = 2.0, 1.2
    volume[lesion] = 1.5  # above the WM max, below the striatum max: T/S 0.75 < 1
    t = flair_truth(lesion, labels, _static(volume))
    assert t is not None and not t.pet_voi and np.array_equal(t.voi_zyx, lesion)
    assert t.ts_ratio == pytest.approx(0.75) and t.tn_ratio == pytest.approx(1.25)
    assert flair_truth(np.zeros(SHAPE, bool), labels, _static(volume)) is None


def test_truth_curves_have_the_known_peak_and_slope() -> None:
    labels, lesion = _labels(), _lesion()
    starts = np.array([0.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1200.0, 1500.0])
    durations = np.diff(np.append(starts, 1800.0))
    frames = []
    for start, duration in zip(starts, durations, strict=True):
        v = np.full(SHAPE, 1000.0)
        v[labels == 4] = 2000.0 + start
        v[lesion] = 5000.0 - 2.0 * start if start >= 300 else 500.0 + 10.0 * start
        frames.append(PetFrame(start, duration, start + duration / 2, v.astype(np.float32)))
    dynamic = PetVolume(tuple(frames), AFFINE, "1.2.4", "1.2.9", True, None)
    static = _static(np.mean([f.volume_zyx for f in frames[4:]], axis=0))
    suv = SuvScale(1e-3, 1.0, 1e-3, "test")
    t = flair_truth(lesion, labels, static, dynamic, suv)
    assert t is not None and t.dynamic is not None and not t.pet_voi
    p = t.dynamic.get("tumour", "start")
    assert p.ttp_s == pytest.approx(300.0)  # frame start of the tumour's peak
    assert p.slope_bqml_per_s is not None
    times, tac = starts[2:], np.where(starts[2:] >= 300, 5000.0 - 2.0 * starts[2:],
                                      500.0 + 10.0 * starts[2:])
    assert p.slope_bqml_per_s == pytest.approx(np.polyfit(times, tac, 1)[0], rel=1e-6)
    assert t.dynamic.slope_ratios["start"] == pytest.approx(p.slope_bqml_per_s / 1.0, rel=1e-6)


def test_the_simulator_pose_maps_pet_points_back_to_the_flair() -> None:
    truth = {"mr_to_pet_angles_deg": [3.0, -7.0, 5.0], "mr_to_pet_translation_mm": [4, -9, 12]}
    pose = MrPose(np.array([3.0, -7.0, 5.0]), np.array([4.0, -9.0, 12.0]))
    p_mr = np.array([[10.0, -20.0, 30.0], [-5.0, 0.0, 7.0]])
    p_pet = p_mr @ pose.matrix().T + pose.translation_mm
    assert np.allclose(true_registration(truth).flair_point(p_pet), p_mr)


def test_refusal_categories_and_flair_dice() -> None:
    assert refusal("MR-guided route: FLAIR series 10 registered (quality 0.95)") is None
    assert refusal("PET-only route: FLAIR registration refused (quality 0.84 < 0.90)") \
        == "FLAIR registration refused"
    assert refusal("PET-only route: no lesion found on the FLAIR by the FLAIR U-Net x") \
        == "no lesion found on the FLAIR"
    assert refusal("PET-only route: something new") == "other"
    truth = _lesion()
    half = truth.copy()
    half[4:6] = False
    out = flair_dice(half, truth, 0.008)
    assert out["flair_dice"] == pytest.approx(2 * 32 / (32 + 64))
    assert flair_dice(None, truth, 0.008)["flair_dice"] == 0.0  # a missed lesion counts 0
    assert flair_dice(half, np.zeros(SHAPE, bool), 0.008)["flair_dice"] is None


def test_registration_shift_is_the_centroid_distance_in_mm() -> None:
    lesion = _lesion()
    moved = np.roll(lesion, 3, axis=2)  # 3 voxels along x at 2 mm: 6 mm
    out = registration_shift(lesion, moved, AFFINE)
    assert out["reg_lesion_shift_mm"] == pytest.approx(6.0)
    assert out["reg_lesion_dice"] == pytest.approx(0.25)
    oblique = np.array([[0.0, 0.0, 2.0, 5.0], [0.0, 3.0, 0.0, -7.0], [4.0, 0.0, 0.0, 1.0],
                        [0.0, 0.0, 0.0, 1.0]])  # z along L-R at 4 mm: 2 slices = 8 mm
    assert registration_shift(lesion, np.roll(lesion, 2, axis=0), oblique)[
        "reg_lesion_shift_mm"] == pytest.approx(8.0)
    assert registration_shift(lesion, lesion, AFFINE) == {"reg_lesion_shift_mm": 0.0,
                                                          "reg_lesion_dice": 1.0}
    assert registration_shift(lesion, np.zeros(SHAPE, bool), AFFINE)[
        "reg_lesion_shift_mm"] is None


def _row(i: int, **kw: Any) -> dict[str, Any]:
    row = {"study_id": f"site_a_{i:05d}", "site": "site_a", "paediatric": True,
           "status": "done", "route": "mr_guided", "tumour_class": "lgg", "dynamic": False,
           "flair_dice": 0.85 + 0.01 * (i % 5), "refusal": None,
           "pred_ts": 0.5 + 0.1 * i, "truth_ts": 0.5 + 0.1 * i + 0.01,
           "pred_tn": 1.0 + 0.2 * i, "truth_tn": 1.0 + 0.2 * i,
           "unrefined_ts": 0.5 + 0.1 * i, "unrefined_tn": 1.0 + 0.2 * i,
           "ideal_ts": 0.6 + 0.1 * i, "ideal_tn": 1.1 + 0.2 * i,
           "pred_fallback": i < 4, "truth_fallback": i < 3, "pet_only_on_truth": i >= 2,
           "pred_voi_ml": 5.0, "unrefined_voi_ml": 10.0, "registration_quality": 0.95,
           "reg_lesion_shift_mm": 0.5 + 0.1 * i}
    return row | kw


def test_report_populations_and_verdicts() -> None:
    rows = [_row(i) for i in range(10)]
    rows.append(_row(10, site="site_d_unseen", study_id="site_d_unseen_00010"))
    rows.append(_row(11, route="pet_only", refusal="FLAIR registration refused",
                     pred_ts=None, pred_tn=None, flair_dice=0.0))
    rows.append(_row(12, tumour_class="none", route="pet_only", flair_dice=None,
                     truth_ts=None, refusal="no lesion found on the FLAIR"))
    rows.append(_row(13, status="failed", paediatric=False))
    report = build_report(rows)
    a = report["groups"]["paediatric, sites a-c held out"]
    assert a["studies"] == 12 and a["failed"] == 0 and a["mr_guided"] == 10
    assert a["refusals"] == {"FLAIR registration refused": 1, "no lesion found on the FLAIR": 1}
    assert a["flair_dice"]["n"] == 11  # the refused study's lesion counts with Dice 0
    assert a["pred_ts"]["n"] == 10 and a["pred_ts"]["bias"] == pytest.approx(-0.01)
    assert a["pred_ts"]["icc_agreement"] > 0.99
    assert a["fallback_fired"] == (4, 10) and a["fallback_agrees"] == (9, 10)
    assert a["fallback_pet_only_found"] == (2, 4) and a["pet_only_misses"] == (2, 10)
    assert a["no_tumour_mr_guided"] == (0, 1)
    assert a["refined_volume_fraction"]["n"] == 6  # the PET-VOI studies (no fallback)
    assert a["refined_volume_fraction"]["median"] == pytest.approx(0.5)
    assert a["refinement_changed_ts"] == (0, 6)
    assert a["registration_quality"]["n"] == 12  # every study whose registration ran
    assert a["registration_shift_mm"]["n"] == 10  # the MR-guided ones
    assert a["registration_shift_max_mm"] == pytest.approx(1.4)
    assert report["groups"]["adults with a FLAIR, all sites"]["failed"] == 1
    verdicts = dict((g, v) for g, _, v in report["goals"])
    assert verdicts["FLAIR Dice >= 0.88 +- 0.08, paediatric, sites a-c held out"] == "not met"
    assert verdicts["T/S ICC(A,1) >= 0.95, paediatric, sites a-c held out"] == "met"
    assert math.isnan(report["groups"]["paediatric, site_d_unseen"]["pred_ts"]["icc_agreement"])
    text = markdown(report, ["# header"], {"summaries": [
        {"group": "test split", "method": "finetune", "n": 22, "dice_mean": 0.881,
         "dice_sd": 0.038, "dice_median": 0.89, "dice_q1": 0.85, "dice_q3": 0.905}]})
    assert "adult model fine-tuned | 22 | 0.881 +- 0.038" in text
    assert "0.82 +- 0.11" in text and ">= 0.95" in text
    assert ("paediatric, sites a-c held out: quality median 0.950 [0.950; 0.950] (n=12); "
            "lesion shift median 0.95 mm [0.72; 1.18], max 1.40 mm (n=10)") in text


def test_command_prints_the_table_from_cached_rows_into_the_card(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from service.cli import main
    from service.pipelines.fdopa_pet.evaluation_mr_run import MrEvaluator
    from service.pipelines.fdopa_pet.evaluation_run import append_rows
    from service.sim.fdopa.evaluate_mr import MR_BEGIN, MR_END

    bench = tmp_path / "bench" / "site_d_unseen"
    # the second has no FLAIR: not evaluated; the third is an adult: left out by
    # --paediatric-only
    for i, flair, child in ((0, "ax2d_3t", True), (1, "", True), (2, "iso3d_3t", False)):
        (bench / f"site_d_unseen_{i:05d}").mkdir(parents=True)
        (bench / f"site_d_unseen_{i:05d}" / "truth.json").write_text(
            json.dumps({"flair": flair, "paediatric": child}))
    out = tmp_path / "eval.json"
    fingerprint = MrEvaluator(["unet"]).fingerprint("unet")
    append_rows(out.with_suffix(".jsonl"), [_row(0, site="site_d_unseen", method="unet",
                                                 study_id="site_d_unseen_00000",
                                                 fingerprint=fingerprint)])
    card = tmp_path / "card.md"
    card.write_text(f"# card\n\n{MR_BEGIN}\nOLD\n{MR_END}\n\ntail\n")
    ablation = tmp_path / "ablation.json"
    ablation.write_text(json.dumps({"summaries": [{"group": "site_d", "method": "scratch",
                                                   "n": 7, "dice_mean": 0.868}]}))
    main(["fdopa", "evaluate-mr", str(tmp_path / "bench"), "--sites", "site_d_unseen",
          "--limit", "3", "--paediatric-only", "--json", str(out), "--card", str(card),
          "--ablation", str(ablation)])
    text = capsys.readouterr().out
    assert "Held-out studies with a FLAIR: 1 (1 paediatric, 0 adult)" in text
    assert "--limit 3 --workers 1 --paediatric-only" in text  # the command that reproduces it
    assert "| paediatric, site_d_unseen | 1 | 0 | 1 |" in text
    assert "from scratch, paediatric subset only | 7 | 0.868" in text
    updated = card.read_text()
    assert "OLD" not in updated and updated.count(MR_BEGIN) == 1 and "tail" in updated
    assert "| paediatric, site_d_unseen | 1 | 0 | 1 |" in updated
    assert json.loads(out.read_text())["groups"]["paediatric, site_d_unseen"]["studies"] == 1
