"""The CNN's robustness set: variants, cases and their truth (service/sim/robustness.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.sim import robustness
from service.sim.broad_profiles import COUNTS_MCOUNTS, FILTER_FWHM_MM, VOXEL_MM
from service.sim.reference import binary_from_levels, region_levels
from service.sim.sites import BENCHMARKS
from service.sim.striatal_sources import HELD_OUT_SOURCES, SOURCES, region_binding

pytestmark = pytest.mark.slow  # imports the simulator (torch)


def test_seeds_and_sources_are_apart_from_training() -> None:
    seeds = {s.seed for sites in BENCHMARKS.values() for s in sites.values()}
    assert robustness.ROBUST_SEED not in seeds
    assert not set(HELD_OUT_SOURCES) & set(SOURCES)
    assert len(set(robustness.VARIANT_NAMES)) == len(robustness.VARIANTS)


@pytest.mark.parametrize("variant", robustness.VARIANTS, ids=robustness.VARIANT_NAMES)
def test_cases_have_the_promised_binding(variant: robustness.RobustVariant) -> None:
    index = robustness.VARIANT_NAMES.index(variant.name)
    for group in range(2):
        plan = robustness.plan_variant_group(variant, index, group)
        assert plan.appearance is not None
        source = plan.appearance.striatal_source
        for k, case in enumerate(robustness.CASES):
            state = plan.states[k]
            true = region_binding(state.binding, source)
            normal = region_binding(state.normal_binding(), source)
            levels = region_levels(true, normal)
            expected = "normal" if case == "normal" else "reduced"
            assert binary_from_levels(levels) == expected, (case, levels)
            if case.startswith("loss_"):
                side = case.removeprefix("loss_")
                other = "right" if side == "left" else "left"
                ratio = true[f"putamen_{side}"] / true[f"putamen_{other}"]
                assert robustness.ONE_SIDED_FRACTION[0] - 1e-9 <= ratio
                assert ratio <= robustness.ONE_SIDED_FRACTION[1] + 1e-9
                assert ratio <= robustness.ONE_SIDED_MAX_RATIO
                assert levels[f"putamen_{other}"] == 0 and levels[f"caudate_{side}"] == 0
        # the four scans are one subject: same normal binding
        assert all(s.normal_binding() == pytest.approx(plan.states[0].normal_binding())
                   for s in plan.states)


def test_variants_lie_beyond_the_training_ranges() -> None:
    by_name = {v.name: v for v in robustness.VARIANTS}

    def plan(name: str):  # noqa: ANN202
        return robustness.plan_variant_group(by_name[name], robustness.VARIANT_NAMES.index(name), 0)

    assert plan("fwhm_18mm").profile.post_filter_fwhm_mm > FILTER_FWHM_MM[1]
    sharp = plan("sharp_lowcount").profile
    assert sharp.post_filter_fwhm_mm < FILTER_FWHM_MM[0]
    assert sharp.counts_mcounts[1] < COUNTS_MCOUNTS[0]
    assert plan("matrix64_5p5mm").profile.voxel_mm > VOXEL_MM[64][1]
    assert plan("aicha_striatum").appearance.striatal_source == "aicha"
    strong = plan("extracerebral_strong").appearance
    assert strong.scalp > 0.8 and strong.salivary > 2.5 and strong.nasal > 2.0
    assert plan("atrophy_severe").appearance.ventricle_factor == 8.0


def test_case_fields_refuse_a_mild_one_sided_case() -> None:
    row = {"true_br_putamen_left": 1.3, "true_br_putamen_right": 2.0}
    with pytest.raises(ValueError, match="one-sided"):
        robustness.case_fields(row, "loss_left")
    assert robustness.case_fields(row, "normal")["putamen_ratio"] == 0.65


def test_training_site_stays_inside_the_training_ranges() -> None:
    from service.sim.broad_profiles import BROAD_PROFILE

    variant = robustness.TRAINING_VARIANTS[0]
    assert variant.name == robustness.DEFAULT_TRAINING_VARIANT
    seeds = [v.seed for v in robustness.TRAINING_VARIANTS]
    assert len(set(seeds)) == len(seeds) and not set(seeds) & ({robustness.ROBUST_SEED} | {
        s.seed for sites in BENCHMARKS.values() for s in sites.values()})
    assert all(v.role == "train_test" for v in robustness.TRAINING_VARIANTS)
    # the per-camera groups use the training sites' cameras, never a robustness-only one
    training_profiles = {s.profile for s in BENCHMARKS[2].values() if s.role != "unseen"}
    assert {v.profile for v in robustness.TRAINING_VARIANTS[1:]} <= training_profiles
    assert variant.role == "train_test" and variant.profile == BROAD_PROFILE
    assert robustness.variant_site(variant, 2).role == "train_test"
    for group in range(3):
        plan = robustness.plan_variant_group(variant, len(robustness.VARIANTS), group)
        assert plan.appearance is not None and plan.appearance.striatal_source in SOURCES
        assert FILTER_FWHM_MM[0] <= plan.profile.post_filter_fwhm_mm <= FILTER_FWHM_MM[1] or (
            plan.profile.recon == "fbp")
        one_sided = plan.states[1]
        source = plan.appearance.striatal_source
        true = region_binding(one_sided.binding, source)
        ratio = true["putamen_left"] / true["putamen_right"]
        assert variant.one_sided[0] - 1e-9 <= ratio <= variant.one_sided[1] + 1e-9


@pytest.mark.parametrize("fraction", [robustness.MIN_FRACTION, 0.09, 0.3, 0.58])
def test_one_sided_state_has_the_fraction_and_keeps_the_subject(fraction: float) -> None:
    """The state the image matching moves through: the affected putamen at exactly
    ``fraction`` of the other (down to the matching's floor), everything else the subject's
    normal binding, and the subject's normal binding recoverable (no loss of 100 %)."""
    variant = robustness.VARIANTS[0]
    plan = robustness.plan_variant_group(variant, 0, 0)
    source = plan.appearance.striatal_source
    normal = plan.states[0]
    for side, other in (("left", "right"), ("right", "left")):
        state = robustness.one_sided_state(normal, side, fraction, source)
        true = region_binding(state.binding, source)
        assert true[f"putamen_{side}"] / true[f"putamen_{other}"] == pytest.approx(fraction)
        assert state.normal_binding() == pytest.approx(normal.binding)
        assert all(v > 0 for v in state.binding.values())
        unchanged = [c for c in normal.binding if not c.startswith("putamen") or other in c]
        assert {c: state.binding[c] for c in unchanged} == {c: normal.binding[c] for c in unchanged}


def test_every_set_draws_one_sided_cases_on_the_image() -> None:
    """Issue 10's pattern is what a reader sees (a putamen at about 59 % of the other side,
    asymmetry index about 50 %), so every variant and the training site match the image."""
    for variant in (*robustness.VARIANTS, *robustness.TRAINING_VARIANTS):
        assert variant.one_sided_basis == robustness.IMAGE_BASIS


def test_the_robustness_command_picks_the_variants(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    """`dopanode benchmark robustness`: every variant by default; with --training only
    train_cases_broad unless --variants names others; unknown names are refused."""
    from service import cli

    made: list[list[str]] = []
    firsts: list[int] = []

    def fake(out: Path, groups: int, variants: list[robustness.RobustVariant],
             workers: int, first_group: int) -> Path:
        made.append([v.name for v in variants])
        firsts.append(first_group)
        return out / "manifest.csv"

    monkeypatch.setattr(robustness, "generate_robustness", fake)
    base = ["benchmark", "robustness", str(tmp_path), "--groups", "2"]
    assert cli.main(base) == 0
    assert cli.main([*base, "--training"]) == 0
    assert cli.main([*base, "--training", "--variants", "train_cases_ge,train_cases_legacy"]) == 0
    assert made == [list(robustness.VARIANT_NAMES), ["train_cases_broad"],
                    ["train_cases_ge", "train_cases_legacy"]]
    with pytest.raises(SystemExit, match="unknown variant"):
        cli.main([*base, "--training", "--variants", "siemens_osem_ctac"])
    assert cli.main([*base, "--first-group", "1"]) == 0
    assert firsts == [0, 0, 0, 1]
    for bad in ("2", "-1"):
        with pytest.raises(SystemExit, match="--first-group"):
            cli.main([*base, "--first-group", bad])


def test_a_later_batch_makes_only_its_groups(monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    """``first_group``: groups before it are not made (a new batch of subjects)."""
    done: list[tuple[str, int]] = []
    monkeypatch.setattr(robustness, "_run", lambda task: done.append((task[0].name, task[1])))
    variant = robustness.VARIANTS[0]
    robustness.generate_robustness(tmp_path, 3, [variant], workers=1, first_group=1)
    assert done == [(variant.name, 1), (variant.name, 2)]
    with pytest.raises(ValueError, match="first_group"):
        robustness.generate_robustness(tmp_path, 3, [variant], workers=1, first_group=3)


def test_variant_pose_of_a_site_calibration_normal() -> None:
    """The calibration normals' poses are redrawn from their own seed, as generated."""
    variant = robustness.VARIANTS[0]
    index = robustness.VARIANT_NAMES.index(variant.name)
    normals = robustness.normals_variant(variant)
    pose = robustness.variant_pose(normals.name, 5 * robustness.SCANS_PER_ANATOMY)
    drawn = robustness.plan_variant_group(normals, index, 5).transform
    other = robustness.variant_pose(variant.name, 5 * robustness.SCANS_PER_ANATOMY).transform
    for field in ("scale", "rotation_deg", "translation_mm"):
        assert np.array_equal(getattr(pose.transform, field), getattr(drawn, field))
    assert not np.array_equal(pose.transform.translation_mm, other.translation_mm)
    assert pose.disease_class == "normal"
    with pytest.raises(ValueError, match="unknown robustness variant"):
        robustness.variant_pose("no_such" + robustness.NORMALS_SUFFIX, 0)
