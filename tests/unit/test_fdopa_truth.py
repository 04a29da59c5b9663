"""FDOPA simulator truth (version 2): one lesion activity, the WM VOI, multifocal side.

The studies are benchmark plans whose version-1 truth was inconsistent
(``docs/fdopa_simulator.md``, "Truth"): faint lesions overlapping the
striatum (TBRmean > TBRmax; ``site_b_00095`` "measurable" while its maximum
was 1.49 x background), a white-matter reference whose maximum sat in
spill-over, and a bilateral multifocal tumour whose reference side was
chosen from its smaller focus. Only the truth is computed (no reconstruction),
except in the truth-only rewrite's test (``dopanode fdopa retruth``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from service.sim.fdopa.benchmark import SITES, plan_study
from service.sim.fdopa.head import LABELS
from service.sim.fdopa.retruth import is_current, rewrite_study
from service.sim.fdopa.study import (
    TRUTH_FILE,
    PlanTruth,
    StudyPlan,
    _label_image,
    plan_truth,
    simulate_study,
)
from service.sim.fdopa.truth import (
    ACTIVE_THRESHOLD,
    DEEP_GREY_MARGIN_MM,
    MARGIN_MM,
    TRUTH_VERSION,
    WM_EROSION_MM,
    contralateral,
    main_lesion,
)

pytestmark = pytest.mark.no_storage  # never opens the node's rows: not rerun on PostgreSQL


def _truth(study_id: str) -> PlanTruth:
    site, index = study_id.rsplit("_", 1)
    return plan_truth(plan_study(SITES[site], int(index)))


@pytest.mark.parametrize("study_id", ["site_a_00000", "site_b_00085", "site_b_00095"])
def test_tumour_indices_come_from_one_activity_on_lesions_touching_the_striatum(
        study_id: str) -> None:
    st = _truth(study_id)
    v, masks = st.values, st.masks
    assert v["truth_version"] == TRUTH_VERSION
    assert v["touches_striatum"] is True
    tbrmax = float(v["tbrmax"])  # type: ignore[arg-type]
    if v["tbrmean"] is not None:
        assert float(v["tbrmean"]) <= tbrmax + 1e-9  # type: ignore[arg-type]
        assert float(v["tbrmean"]) >= ACTIVE_THRESHOLD  # type: ignore[arg-type]
    if v["measurable"]:
        assert tbrmax >= ACTIVE_THRESHOLD
    assert not (masks["pet_active"] & ~masks["lesion"]).any()


def test_white_matter_reference_is_deep_and_away_from_the_deep_grey_matter() -> None:
    st = _truth("site_a_00010")  # a tumour next to the striatum
    sm, wm = st.maps, st.masks["white_matter_contralateral"]
    side = contralateral(sm.tumour.side if sm.tumour is not None else "midline")
    vox = sm.grid.voxel_mm
    label = sm.labels_zyx == LABELS[f"white_matter_{side}"]
    assert wm.any() and not (wm & ~label).any()
    depth = ndimage.distance_transform_edt(label, sampling=vox)
    assert depth[wm].min() > WM_EROSION_MM
    deep = np.isin(sm.labels_zyx, [LABELS[n] for n in (
        "striatum_left", "striatum_right", "thalamus_left", "thalamus_right")])
    assert ndimage.distance_transform_edt(~deep, sampling=vox)[wm].min() >= DEEP_GREY_MARGIN_MM
    # blurred like a scanner (5 mm FWHM), its maximum stays white matter, not spill-over
    blurred = ndimage.gaussian_filter(st.activity, 5.0 / 2.355 / vox)
    assert float(blurred[wm].max()) <= 1.25 * float(st.activity[wm].mean())


def test_multifocal_reference_side_is_opposite_the_largest_focus() -> None:
    st = _truth("site_d_unseen_00000")  # two foci, the larger (28 mL) on the left
    sm, masks = st.maps, st.masks
    assert sm.tumour is not None and sm.tumour.location == "multifocal"
    lesion = masks["lesion"]
    comps, n = ndimage.label(lesion, structure=np.ones((3, 3, 3), bool))
    assert n >= 2
    main = main_lesion(lesion)
    names = {v: k for k, v in LABELS.items()}
    sides = [names[int(v)].rsplit("_", 1)[-1] for v in sm.labels_zyx[main] if int(v) in names]
    ipsilateral = max(("left", "right"), key=sides.count)
    assert sm.tumour.side == ipsilateral
    contra = contralateral(sm.tumour.side)
    assert contra != ipsilateral
    far = ndimage.distance_transform_edt(~lesion, sampling=sm.grid.voxel_mm)
    for name in ("background", "white_matter_contralateral"):
        assert masks[name].any() and far[masks[name]].min() >= MARGIN_MM, name
    assert not (masks["striatum_contralateral"] & lesion).any()
    # label 3 of truth_seg is the whole crescent; label 5 the WM VOI outside it
    labels = _label_image(masks)
    assert np.array_equal(labels == 3, masks["background"])
    assert not ((labels == 5) & ~masks["white_matter_contralateral"]).any()
    # the crescent's slab is at the main focus's level
    z_bg = np.argwhere(masks["background"])[:, 0]
    z_main = float(np.argwhere(main)[:, 0].mean())
    assert z_bg.min() <= z_main <= z_bg.max()


@pytest.fixture
def small_profile(monkeypatch: pytest.MonkeyPatch) -> str:
    """A coarse, fast PET/CT profile (4.5 mm grid, 30 views), as in test_fdopa_phantom."""
    from dataclasses import replace

    from service.sim.fdopa.profiles import PET_PROFILES, get_pet_profile

    profile = replace(get_pet_profile("philips_vereos_like"), name="test_small",
                      sim_voxel_mm=4.5, n_views=30, iterations=2, subsets=5, matrix=64,
                      pixel_mm=3.6, slice_mm=3.6)
    monkeypatch.setitem(PET_PROFILES, "test_small", profile)
    return "test_small"


def test_retruth_rewrites_a_stale_truth_as_generation_would_and_keeps_the_images(
        tmp_path: Path, small_profile: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from service.sim.fdopa.kinetics import SCHEDULES, FrameSchedule

    monkeypatch.setitem(SCHEDULES, "test4", FrameSchedule("test4", (60.0, 60.0, 120.0, 300.0)))
    plan = StudyPlan("t_00001", small_profile, "hgg", False, seed=77, schedule="test4")
    simulate_study(plan, tmp_path / "a")
    src, dst = tmp_path / "a" / plan.study_id, tmp_path / "b" / plan.study_id
    generated = json.loads((src / TRUTH_FILE).read_text())
    stale = {k: v for k, v in generated.items() if k != "truth_version"}
    stale |= {"tbrmean": 99.0, "dyn_tumour_ttp_min_start": -1.0}  # a version-1 row
    (src / TRUTH_FILE).write_text(json.dumps(stale))
    assert not is_current(src)

    rewrite_study(plan, src, dst)
    assert is_current(dst)
    assert json.loads((dst / TRUTH_FILE).read_text()) == generated
    seg = [sitk.GetArrayFromImage(sitk.ReadImage(str(d / "truth_seg.nii.gz"))) for d in (src, dst)]
    assert np.array_equal(seg[0], seg[1])
    files = sorted(p.relative_to(src) for p in src.rglob("*.dcm"))
    assert len(files) > 80 and files == sorted(p.relative_to(dst) for p in dst.rglob("*.dcm"))
    assert all((src / f).read_bytes() == (dst / f).read_bytes() for f in files)

    other = StudyPlan("t_00001", small_profile, "hgg", False, seed=78, schedule="test4")
    with pytest.raises(ValueError, match="seed"):
        rewrite_study(other, src, tmp_path / "c" / plan.study_id)
