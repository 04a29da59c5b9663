"""Simulated studies end to end: truth consistency, determinism, resume, CLI, dciodvfy."""

from __future__ import annotations

import csv
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch

from service.cli import main
from service.sim.anatomy import sample_transform
from service.sim.benchmark import generate, generate_group, truth_labels
from service.sim.disease import sample_background, sample_state
from service.sim.profiles import PROFILES, get_profile
from service.sim.scan import AnatomyScanner, measure_sbr, support_grid
from service.sim.sites import SITES, profile_site
from service.testing.peers import require_tool

pytestmark = [pytest.mark.slow, pytest.mark.no_storage]  # runs the simulator (torch)

FAST = "legacy_legp_lowcount"


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Generation runs torch single-threaded (as its workers do); restore afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def test_lower_true_binding_gives_lower_measured_sbr() -> None:
    rng = np.random.default_rng(7)
    scanner = AnatomyScanner(get_profile(FAST), sample_transform(rng), sample_background(rng))
    true, measured = [], []
    for cls in ("normal", "borderline", "pd", "pd", "atypical", "normal", "pd", "atypical"):
        state = sample_state(rng, cls)
        sbr = measure_sbr(scanner.scan(state, rng).volume_zyx, scanner.phantom.labels_zyx)
        for side in ("left", "right"):
            true.append(
                state.binding[f"putamen_posterior_{side}"]
                + state.binding[f"putamen_anterior_{side}"]
            )
            measured.append(sbr[f"putamen_{side}"])
    assert _spearman(np.array(true), np.array(measured)) > 0.8


def test_attenuation_and_scatter_correction_raise_sbr() -> None:
    rng = np.random.default_rng(5)
    transform, background = sample_transform(rng), sample_background(rng)
    state = sample_state(rng, "normal", age_years=55, sex="F")
    base = get_profile(FAST)
    sbr = {}
    for name, changes in {
        "none": {},
        "ac": {"attenuation_correction": "chang"},
        "ac_sc": {"attenuation_correction": "chang", "scatter_correction": True},
    }.items():
        scanner = AnatomyScanner(replace(base, **changes), transform, background)
        scan = scanner.scan(state, np.random.default_rng(99))
        values = measure_sbr(scan.volume_zyx, scan.labels_zyx)
        sbr[name] = values["putamen_left"] + values["putamen_right"]
    assert sbr["ac"] > 1.15 * sbr["none"]
    assert sbr["ac_sc"] > 1.05 * sbr["ac"]


def test_osem_ctac_sc_profile_orders_normal_above_pd() -> None:
    rng = np.random.default_rng(11)
    profile = get_profile("siemens_lehr_osem_ctac")
    scanner = AnatomyScanner(profile, sample_transform(rng), sample_background(rng))
    normal = sample_state(rng, "normal", age_years=60, sex="M")
    sick = sample_state(rng, "pd", age_years=60, sex="M")
    sbr_n = measure_sbr(scanner.scan(normal, rng).volume_zyx, scanner.phantom.labels_zyx)
    sbr_pd = measure_sbr(scanner.scan(sick, rng).volume_zyx, scanner.phantom.labels_zyx)
    side = sick.more_affected_side
    assert sbr_pd[f"putamen_{side}"] < 0.8 * sbr_n[f"putamen_{side}"]
    assert 1.2 < sbr_n[f"putamen_{side}"] < 3.0
    assert 2.5 < sbr_n[f"caudate_{side}"] < 5.0


def _pixel_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): pydicom.dcmread(p).PixelData for p in sorted(root.rglob("*.dcm"))
    }


def test_same_seed_same_pixels_and_rerun_resumes(tmp_path: Path) -> None:
    site = profile_site(FAST, n_studies=3, seed=42, variant="multiframe")
    a, b = tmp_path / "a", tmp_path / "b"
    generate([site], a, workers=1)
    generate([site], b, workers=2)  # the process pool gives the same bytes
    pixels = _pixel_bytes(a)
    assert len(pixels) == 3 and pixels == _pixel_bytes(b)
    other = profile_site(FAST, n_studies=1, seed=43, variant="multiframe")
    generate([other], tmp_path / "c", workers=1)
    assert next(iter(_pixel_bytes(tmp_path / "c").values())) != next(iter(pixels.values()))
    # resume: nothing left to do, files untouched
    mtimes = {p: p.stat().st_mtime_ns for p in a.rglob("*.dcm")}
    assert generate_group(site, 0, a) == []
    assert {p: p.stat().st_mtime_ns for p in a.rglob("*.dcm")} == mtimes


def test_cli_simulate_writes_studies_and_manifest(tmp_path: Path) -> None:
    out = tmp_path / "sim"
    rc = main(
        [
            "simulate",
            "--profile",
            FAST,
            "--n",
            "2",
            "--seed",
            "5",
            "--variant",
            "per_slice",
            "--workers",
            "1",
            str(out),
        ]
    )
    assert rc == 0
    rows = list(csv.DictReader((out / "manifest.csv").open()))
    assert [r["study_id"] for r in rows] == [f"{FAST}_00000", f"{FAST}_00001"]
    for key in (
        "true_br_putamen_posterior_left",
        "true_br_caudate_right",
        "disease_class",
        "age_years",
        "sex",
        "profile",
        "seed",
        "encoding_variant",
        "roi_sbr_putamen_left",
    ):
        assert rows[0][key] != ""
    files = sorted((out / FAST / rows[0]["study_id"] / "series").glob("*.dcm"))
    ds = pydicom.dcmread(files[0])
    assert ds.Modality == "NM" and ds.Manufacturer == PROFILES[FAST].manufacturer
    assert len(files) == support_grid(PROFILES[FAST]).shape_zyx[0]  # one file per slice
    assert int(ds.Rows) == PROFILES[FAST].matrix
    dciodvfy = require_tool("dciodvfy")
    res = subprocess.run([dciodvfy, str(files[0])], capture_output=True, text=True, timeout=60)
    errors = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.startswith("Error")]
    assert errors == []


def test_benchmark_definition_meets_the_issue() -> None:
    assert sum(s.n_studies for s in SITES.values()) >= 2000
    assert [s.role for s in SITES.values()].count("unseen") == 1
    assert len({s.profile for s in SITES.values()}) == 4
    assert len({s.seed for s in SITES.values()}) == 4
    voxels = [p.voxel_mm for p in PROFILES.values()]
    assert min(voxels) >= 2.2 and max(voxels) <= 4.8
    assert all(64 <= p.matrix <= 128 for p in PROFILES.values())


def test_truth_labels_match_the_written_volume(tmp_path: Path) -> None:
    site = profile_site(FAST, n_studies=1, seed=8, variant="multiframe")
    manifest = generate([site], tmp_path, workers=1)
    row = next(csv.DictReader(manifest.open()))
    ds = pydicom.dcmread(next((tmp_path / FAST).rglob("*.dcm")))
    labels = sitk.GetArrayFromImage(truth_labels(site, 0))
    volume = ds.pixel_array.astype(np.float64)
    assert volume.shape == labels.shape
    sbr = measure_sbr(volume, labels)
    for name, value in sbr.items():
        assert value == pytest.approx(float(row[f"roi_sbr_{name}"]), abs=0.01)
