"""TACs, TTP, slopes and slope ratio through DICOM against the simulator's kinetic truth.

A small phantom (tumour, contralateral striatum, background) takes its frame
values from the simulator's compartment model (``SubjectKinetics.frame_tacs``),
is written by the simulator's PET writer, read back by ``pet_volume`` and
analysed; the truth is the simulator's own ``truth.dynamic_truth`` on the
ideal frames.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from service.errors import AnalysisError
from service.imaging.pet_volume import volume_from_datasets
from service.imaging.suv import suv_scale
from service.pipelines.fdopa_pet.kinetics import (
    analyse_dynamic,
    genoa_fit_start_s,
    late_slope_per_s,
    time_activity_curves,
)
from service.sim.fdopa.kinetics import F18_HALF_LIFE_S, SCHEDULES, FrameSchedule
from service.sim.fdopa.pet_writer import PetEncoding, PetSeriesInfo, build_pet_series
from service.sim.fdopa.truth import dynamic_truth
from service.sim.fdopa.uptake import sample_subject_kinetics

pytestmark = pytest.mark.no_storage  # never opens the node's rows: not rerun on PostgreSQL

INFO = PetSeriesInfo("kin-seed", 64.0, 170.0, 12, "M", "GE", "Discovery ST", "OSEM", 4,
                     "Brain FDOPA dynamic")
SHAPE = (6, 16, 16)
NEWER = FrameSchedule("newer150", (25.0,) * 6 + (60.0,) * 2 + (300.0,) * 4)


def _masks() -> dict[str, np.ndarray]:
    tumour = np.zeros(SHAPE, bool)
    tumour[1:4, 3:7, 3:8] = True
    striatum = np.zeros(SHAPE, bool)
    striatum[2:5, 9:13, 8:12] = True
    return {"lesion": tumour, "pet_active": tumour, "striatum_contralateral": striatum,
            "background": ~(tumour | striatum)}


def _study(tumour_class: str, schedule: FrameSchedule, enc: PetEncoding, seed: int):
    kin = sample_subject_kinetics(np.random.default_rng(seed), tumour_class, 0.0)
    tacs_suv = kin.frame_tacs(schedule)
    masks = _masks()
    bqml_per_suv = INFO.injected_mbq * 1e6 / (INFO.weight_kg * 1000.0)
    ideal = []
    for f in range(len(schedule.durations_s)):
        act = np.full(SHAPE, tacs_suv["grey_matter"][f], np.float32)
        act[masks["lesion"]] = tacs_suv["tumour"][f]
        act[masks["striatum_contralateral"]] = tacs_suv["striatum"][f]
        ideal.append(act * np.float32(bqml_per_suv))
    images = []
    for act in ideal:
        img = sitk.GetImageFromArray(act)
        img.SetSpacing((2.0, 2.0, 2.0))
        images.append(img)
    datasets = build_pet_series(images, list(schedule.starts_s), list(schedule.durations_s),
                                INFO, enc, True)
    truth = dynamic_truth(ideal, masks, schedule)
    return datasets, masks, truth, bqml_per_suv


CASES = [
    ("hgg", "rennes20", PetEncoding()),
    ("lgg", "genoa25", PetEncoding("CNTS", "START", "start", True)),
    ("dmg", "nancy30", PetEncoding("BQML", "ADMIN", assay_minutes_before_injection=8.0)),
]


@pytest.mark.parametrize(("tumour_class", "schedule", "enc"), CASES)
def test_ttp_slopes_and_ratio_match_the_simulator_truth(tumour_class, schedule, enc) -> None:
    sched = SCHEDULES[schedule]
    datasets, masks, truth, bqml_per_suv = _study(tumour_class, sched, enc, seed=7)
    vol = volume_from_datasets(datasets)
    scale = suv_scale(datasets[0], vol.first_frame_start)
    voi = {"tumour": masks["pet_active"], "striatum": masks["striatum_contralateral"]}
    result = analyse_dynamic(vol, voi, scale)
    assert scale.bqml_per_unit is not None
    # Bq/mL values are decay-corrected to the header's reference time: the scan start
    # (= injection here) for START, the recorded (assay) time for ADMIN
    ref = 2.0 ** (60.0 * enc.assay_minutes_before_injection / F18_HALF_LIFE_S) \
        if enc.decay_correction == "ADMIN" else 1.0
    np.testing.assert_allclose(result.tacs["tumour"] * scale.bqml_per_unit,
                               np.asarray(truth["tumour_tac_bqml"]) * ref, rtol=2e-3)
    for region in ("tumour", "striatum"):
        for conv in ("start", "mid"):
            p = result.get(region, conv)
            assert p.fit_from_s == 120.0
            assert p.ttp_min == pytest.approx(truth[f"{region}_ttp_min_{conv}"], abs=1e-6)
            want = truth[f"{region}_slope_bqml_per_s_{conv}"]
            tac_scale = float(np.mean(truth[f"{region}_tac_bqml"])) / 3600.0
            assert p.slope_bqml_per_s is not None
            assert p.slope_bqml_per_s / ref == pytest.approx(want, rel=5e-3,
                                                             abs=1e-3 * tac_scale)
            assert p.slope_percent_per_min == pytest.approx(
                truth[f"{region}_slope_percent_per_min_{conv}"], rel=5e-3, abs=1e-3)
            # SUV/min = Bq/mL/s x 60 x weight / dose (values decay-corrected to injection)
            assert p.slope_suv_per_min == pytest.approx(60.0 * want / bqml_per_suv, rel=5e-3,
                                                        abs=60e-3 * tac_scale / bqml_per_suv)
    assert result.slope_ratios["start"] == pytest.approx(truth["dsr_start"], rel=1e-2)


def test_genoa_150_s_window_for_newer_scanners() -> None:
    datasets, masks, truth, _ = _study("hgg", NEWER, PetEncoding(), seed=3)
    vol = volume_from_datasets(datasets)
    assert genoa_fit_start_s(vol.starts_s) == 150.0
    result = analyse_dynamic(vol, {"tumour": masks["lesion"]}, None)
    p = result.get("tumour", "start")
    assert (p.fit_from_s, p.fit_frames) == (150.0, 6)
    assert p.slope_units_per_s == pytest.approx(  # BQML written, no scale given
        truth["tumour_slope_bqml_per_s_start_from150"], rel=5e-3)
    assert p.slope_bqml_per_s is None and p.slope_suv_per_min is None and result.slope_ratios == {}


def test_refusals() -> None:
    datasets, masks, _, _ = _study("hgg", SCHEDULES["rennes20"], PetEncoding(), seed=1)
    vol = volume_from_datasets(datasets)
    with pytest.raises(AnalysisError, match="VOI tumour is empty") as err:
        time_activity_curves(vol, {"tumour": np.zeros(SHAPE, bool)})
    assert err.value.code == "empty_voi"
    with pytest.raises(AnalysisError, match="not on the PET grid"):
        time_activity_curves(vol, {"tumour": np.ones((2, 2, 2), bool)})
    with pytest.raises(AnalysisError, match="fewer than two dynamic frames from 1800 s"):
        late_slope_per_s(np.ones(3), np.array([0.0, 60.0, 1900.0]), 1800.0)
