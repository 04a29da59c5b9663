"""The DaT CNN's standing robustness set: appearance variants beyond the training ranges.

Issue 10: a CNN trained on one simulator's look missed a one-sided putamen
loss (a putamen at about 59 % of the other side) on images derived from real
patients. This set asks, per *variant* (a camera, a protocol or an anatomy
the training data never had, :data:`VARIANTS`), the questions a reader asks:

* is a **one-sided putamen loss** (the affected putamen's specific binding at
  45-58 % of the other side's as the noise-free image shows it, the early
  Parkinson pattern; left and right; :data:`IMAGE_BASIS`) called *reduced*,
  not inconclusive?
* is a **bilateral** putamen loss called reduced?
* is a **normal** scan called normal?

Each anatomy group is one subject scanned four times: normal, loss left, loss
right, bilateral (:data:`CASES`), so the cases differ only in the striatal
binding. Seeds are separate from every benchmark site's
(:data:`ROBUST_SEED`; group ``g`` of variant ``v`` draws from
``default_rng([ROBUST_SEED, v, g])``), the data are written like a benchmark
(``<out>/<variant>/<study>/series``, ``truth.json``, ``manifest.csv``) so
the training code's cache reads them, and nothing of it is committed:
``dopanode benchmark robustness OUT`` makes it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from service.sim.anatomy import STRIATAL_COMPONENTS
from service.sim.benchmark import (
    SCANS_PER_ANATOMY,
    TRUTH_FILE,
    _write_study,
    study_id,
    write_manifest,
)
from service.sim.disease import DiseaseState
from service.sim.sites import SiteSpec

if TYPE_CHECKING:
    from service.sim.groups import GroupPlan
    from service.sim.pose import PosedScan
    from service.sim.scan import AnatomyScanner

#: Seed of the robustness set (benchmark sites use 1001-1004 and 2001-2005).
ROBUST_SEED = 7001
#: The four scans of a group, in order.
CASES: tuple[str, ...] = ("normal", "loss_left", "loss_right", "bilateral")
#: Remaining fraction of the affected putamen (relative to the other side) in a one-sided case.
ONE_SIDED_FRACTION = (0.45, 0.58)
#: Remaining fraction of both putamina in a bilateral case.
BILATERAL_FRACTION = (0.25, 0.50)
#: Largest affected/other putamen binding ratio a one-sided case may have.
ONE_SIDED_MAX_RATIO = 0.60
#: ``RobustVariant.one_sided_basis``: the drawn ratio is what the noise-free image shows
#: (the affected putamen's SBR over the other's, measured with the phantom's ROIs), so a
#: one-sided case looks like the pattern a reader sees (ratio 0.6: asymmetry index 50 %).
IMAGE_BASIS = "image"
#: The drawn ratio is the volume-weighted binding concentration ratio (the first
#: definition: blur and spill from the caudate made it look like 0.7-0.8 on the image).
BINDING_BASIS = "binding"
#: Secant steps and tolerance of :func:`match_image_ratio`.
MATCH_STEPS = 4
MATCH_TOLERANCE = 0.01
#: Lowest binding fraction :func:`match_image_ratio` goes to.
MIN_FRACTION = 0.02
#: Seed of the site-calibration normals (:func:`normals_variant`), apart from every other.
NORMALS_SEED = 7201
#: Site-name suffix of a variant's site-calibration normals.
NORMALS_SUFFIX = "_normals"
_ENCODINGS = {"multiframe": 0.4, "per_slice": 0.2, "ge_negative_spacing": 0.2, "z_flipped": 0.2}


@dataclass(frozen=True)
class RobustVariant:
    """One appearance variant of the robustness set.

    Attributes
    ----------
    name : str
        Data-set name (study-folder prefix).
    description : str
        What lies beyond the training ranges.
    profile : str
        Base camera profile (:data:`service.sim.profiles.PROFILES`).
    camera : tuple of (str, object) pairs
        Fields of the :class:`~service.sim.profiles.CameraProfile` replaced.
    anatomy : tuple of (str, object) pairs
        Fields of the drawn :class:`~service.sim.appearance.Appearance` replaced.
    age_years : int or None
        Fixed age of the subjects (None: normal(62, 12) clipped to 25-90).
    one_sided : tuple of 2 float
        Range of the affected/other putamen ratio of the one-sided cases.
    one_sided_basis : str
        What that ratio is: :data:`IMAGE_BASIS` (what the noise-free image shows) or
        :data:`BINDING_BASIS` (the binding concentration).
    role : str
        Manifest role: ``"robustness"`` (test only) or ``"train_test"``
        (:data:`TRAINING_VARIANTS`).
    seed : int
    """

    name: str
    description: str
    profile: str
    camera: tuple[tuple[str, Any], ...] = ()
    anatomy: tuple[tuple[str, Any], ...] = ()
    age_years: int | None = None
    one_sided: tuple[float, float] = ONE_SIDED_FRACTION
    one_sided_basis: str = IMAGE_BASIS
    role: str = "robustness"
    seed: int = ROBUST_SEED


_OSEM_CHANG = (("recon", "osem"), ("attenuation_correction", "chang"),
               ("chang_mu_per_mm", 0.011), ("scatter_correction", False))
_FBP_NOAC = (("recon", "fbp"), ("attenuation_correction", "none"),
             ("scatter_correction", False), ("post_filter_fwhm_mm", 0.0))

VARIANTS: tuple[RobustVariant, ...] = (
    RobustVariant("siemens_osem_ctac", "site A camera, held-out subjects",
                  "siemens_lehr_osem_ctac"),
    RobustVariant("ge_fbp_chang", "site B camera, held-out subjects", "ge_lehr_fbp_chang"),
    RobustVariant("legacy_lowcount", "site C camera, held-out subjects", "legacy_legp_lowcount"),
    RobustVariant("fanbeam_unseen", "the unseen fan-beam HR camera", "fanbeam_hr_osem"),
    RobustVariant("aicha_striatum", "striatum from AICHA, a source held out of training",
                  "ge_lehr_fbp_chang", anatomy=(("striatal_source", "aicha"),)),
    RobustVariant("fwhm_18mm", "OSEM + Chang, 18 mm Gaussian post-filter (training 6-16 mm)",
                  "siemens_lehr_osem_ctac",
                  camera=(*_OSEM_CHANG, ("post_filter_fwhm_mm", 18.0),
                          ("osem_resolution_recovery", False))),
    RobustVariant("sharp_lowcount", "OSEM-RR + CT-AC, 5 mm filter at 0.35 Mcounts "
                  "(training >= 6 mm, >= 0.5 Mcounts)", "siemens_lehr_osem_ctac",
                  camera=(("post_filter_fwhm_mm", 5.0), ("counts_mcounts", (0.35, 0.35)))),
    RobustVariant("matrix64_5p5mm", "64 x 64 matrix, 5.5 mm voxels (training <= 5.2 mm)",
                  "legacy_legp_lowcount",
                  camera=(("matrix", 64), ("voxel_mm", 5.5), ("butterworth_cutoff_cycles_per_cm",
                                                              0.40))),
    RobustVariant("fbp_noac_legp", "FBP without AC, LEGP, 15 mm Butterworth, 0.6 Mcounts",
                  "legacy_legp_lowcount",
                  camera=(*_FBP_NOAC, ("butterworth_cutoff_cycles_per_cm", 0.40),
                          ("counts_mcounts", (0.6, 0.6)))),
    RobustVariant("extracerebral_strong", "scalp 1.2, glands 4, nasal 3, soft tissue 0.8 of GM "
                  "(training at most 0.8, 2.5, 2.0, 0.5)", "ge_lehr_fbp_chang",
                  anatomy=(("scalp", 1.2), ("salivary", 4.0), ("nasal", 3.0),
                           ("extracerebral", 0.8))),
    RobustVariant("atrophy_severe", "age 90, brain volume -27 %, ventricles x 8 "
                  "(training about -20 %, x 5)", "ge_lehr_fbp_chang",
                  anatomy=(("brain_scale", 0.90), ("ventricle_factor", 8.0)), age_years=90),
)
VARIANT_NAMES: tuple[str, ...] = tuple(v.name for v in VARIANTS)
#: Training data of the same four-case design, inside the training ranges: the broad
#: camera family and broad appearance (training striatal sources only), one-sided
#: cases over a wide range (levels 0-3 of the affected putamen), its own seed. The
#: benchmark's disease model rarely makes a one-sided loss with a normal other side
#: (its PD class reduces both putamina); this site adds that pattern to training.
TRAINING_VARIANTS: tuple[RobustVariant, ...] = (
    RobustVariant("train_cases_broad", "four-case groups for training", "broad",
                  one_sided=(0.30, 0.85), role="train_test", seed=7101),
    # the same design on each training site's camera (other subjects, own seeds): the
    # one-sided pattern was otherwise seen only through the broad cameras
    RobustVariant("train_cases_siemens", "four-case groups, site A camera",
                  "siemens_lehr_osem_ctac", one_sided=(0.30, 0.85), role="train_test",
                  seed=7102),
    RobustVariant("train_cases_ge", "four-case groups, site B camera", "ge_lehr_fbp_chang",
                  one_sided=(0.30, 0.85), role="train_test", seed=7103),
    RobustVariant("train_cases_legacy", "four-case groups, site C camera",
                  "legacy_legp_lowcount", one_sided=(0.30, 0.85), role="train_test",
                  seed=7104),
)
#: What ``dopanode benchmark robustness --training`` makes without ``--variants``.
DEFAULT_TRAINING_VARIANT = "train_cases_broad"


def normals_variant(variant: RobustVariant) -> RobustVariant:
    """The normal scans a site with ``variant``'s camera would calibrate from.

    Issue 10 point 4: SBR thresholds are camera-specific and a site builds its
    own from its normal scans (README, "Calibrate your camera"). These are
    other subjects of the same camera and anatomy rules (their own seed,
    :data:`NORMALS_SEED`), one normal scan each (the normal case of each group),
    role ``"calibration"``; ``dopanode robustness --site-normals`` builds each
    variant's thresholds from them and scores the SBR path and the verdict with
    them beside the shipped simulated calibration.
    """
    return replace(variant, name=variant.name + NORMALS_SUFFIX, seed=NORMALS_SEED,
                   role="calibration")


def variant_site(variant: RobustVariant, n_groups: int) -> SiteSpec:
    """The benchmark-style site of ``variant`` with ``n_groups`` anatomy groups."""
    return SiteSpec(variant.name, variant.profile, n_groups * SCANS_PER_ANATOMY, variant.seed,
                    variant.role, dict(_ENCODINGS), "broad")


def _loss_state(normal: DiseaseState, case: str, source: str, rng: np.random.Generator,
                one_sided: tuple[float, float] = ONE_SIDED_FRACTION) -> DiseaseState:
    """The case's state: the normal subject with putamen loss (posterior more than anterior).

    A one-sided case is scaled so that the affected putamen's volume-weighted
    binding (``source``'s volumes) is exactly a drawn fraction in
    ``one_sided`` of the other putamen's (:func:`one_sided_state`; with
    :data:`IMAGE_BASIS` the fraction is then moved so that the noise-free image
    shows that ratio, :func:`match_image_ratio`).
    """
    if case == "normal":
        return normal
    if case == "bilateral":
        remaining: dict[str, float] = dict.fromkeys(STRIATAL_COMPONENTS, 1.0)
        for side in ("left", "right"):
            f = float(rng.uniform(*BILATERAL_FRACTION))
            remaining[f"putamen_posterior_{side}"] = f - 0.08
            remaining[f"putamen_anterior_{side}"] = f + 0.08
        return _with_remaining(normal, remaining, "both")
    return one_sided_state(normal, case.removeprefix("loss_"), float(rng.uniform(*one_sided)),
                           source)


def one_sided_state(normal: DiseaseState, side: str, fraction: float,
                    source: str) -> DiseaseState:
    """``normal`` with the ``side`` putamen's volume-weighted binding at ``fraction`` of the
    other putamen's (posterior part 0.16 below the anterior before scaling, or at 0.16 of
    ``fraction`` below 0.095; ``fraction`` > 0)."""
    from service.sim.striatal_sources import region_binding

    other = _other(side)
    remaining: dict[str, float] = dict.fromkeys(STRIATAL_COMPONENTS, 1.0)
    remaining[f"putamen_posterior_{side}"] = max(fraction - 0.08, 0.16 * fraction)
    remaining[f"putamen_anterior_{side}"] = fraction + 0.08
    regions = region_binding({c: b * remaining[c] for c, b in normal.binding.items()}, source)
    scale = fraction * regions[f"putamen_{other}"] / regions[f"putamen_{side}"]
    for part in ("posterior", "anterior"):
        remaining[f"putamen_{part}_{side}"] *= scale
    return _with_remaining(normal, remaining, side)


def _with_remaining(normal: DiseaseState, remaining: Mapping[str, float],
                    side: str) -> DiseaseState:
    loss = {c: 1.0 - r for c, r in remaining.items()}
    binding = {c: b * remaining[c] for c, b in normal.binding.items()}
    return DiseaseState("pd", 0.5, side, normal.age_years, normal.sex, binding, loss)


def _other(side: str) -> str:
    return "right" if side == "left" else "left"


def noise_free_sbr(scanner: AnatomyScanner, state: DiseaseState) -> dict[str, float]:
    """SBR per striatal ROI of ``state``'s noise-free image, measured with the phantom's
    own ROIs (:meth:`AnatomyScanner.expected`, :func:`measure_sbr`)."""
    from service.sim.scan import measure_sbr

    return measure_sbr(scanner.expected(state), scanner.phantom.labels_zyx)


def _putamen_ratio(sbr: Mapping[str, float], side: str) -> float:
    return sbr[f"putamen_{side}"] / sbr[f"putamen_{_other(side)}"]


def match_image_ratio(scanner: AnatomyScanner, normal: DiseaseState,
                      normal_sbr: Mapping[str, float], side: str, target: float,
                      source: str) -> tuple[DiseaseState, float]:
    """The one-sided state whose noise-free image shows ``target`` (affected/other putamen
    SBR), and the ratio its image shows.

    ``normal_sbr``: :func:`noise_free_sbr` of ``normal`` (one reconstruction serves
    both sides of a group). The image ratio rises with the binding fraction almost
    linearly (blur and spill from the caudate keep it above the binding ratio);
    secant steps from the normal subject (fraction 1) and ``target`` as a binding
    fraction find the fraction, clipped at :data:`MIN_FRACTION` (almost no specific
    binding left) when the camera cannot show so low a ratio (the returned ratio is
    then above ``target``). At most :data:`MATCH_STEPS` + 1 noise-free reconstructions.
    """
    f0, r0 = 1.0, _putamen_ratio(normal_sbr, side)
    f1 = target
    state = one_sided_state(normal, side, f1, source)
    r1 = _putamen_ratio(noise_free_sbr(scanner, state), side)
    for _ in range(MATCH_STEPS):
        if abs(r1 - target) <= MATCH_TOLERANCE or r1 == r0:
            break
        f2 = float(np.clip(f1 + (target - r1) * (f1 - f0) / (r1 - r0), MIN_FRACTION, 1.0))
        if f2 == f1:
            break
        f0, r0, f1 = f1, r1, f2
        state = one_sided_state(normal, side, f1, source)
        r1 = _putamen_ratio(noise_free_sbr(scanner, state), side)
    return state, r1


def plan_variant_group(variant: RobustVariant, index: int, group: int) -> GroupPlan:
    """The :class:`~service.sim.groups.GroupPlan` of one group (four :data:`CASES`)."""
    from service.sim.anatomy import sample_transform
    from service.sim.appearance import sample_appearance
    from service.sim.broad_profiles import BROAD_PROFILE, sample_broad_profile
    from service.sim.disease import sample_state
    from service.sim.groups import GroupPlan
    from service.sim.profiles import get_profile

    rng = np.random.default_rng([variant.seed, index, group])
    transform = sample_transform(rng)
    age = variant.age_years or int(np.clip(round(rng.normal(62.0, 12.0)), 25, 90))
    sex = "F" if rng.random() < 0.45 else "M"
    appearance = replace(sample_appearance(rng, age), **dict(variant.anatomy))
    base = (sample_broad_profile(rng) if variant.profile == BROAD_PROFILE
            else get_profile(variant.profile))
    profile = replace(base, **dict(variant.camera))
    normal = sample_state(rng, "normal", age_years=age, sex=sex, br_young=appearance.br_young())
    states = [_loss_state(normal, case, appearance.striatal_source, rng, variant.one_sided)
              for case in CASES]  # one-sided ones re-matched to the image in generate_variant_group
    indices = range(group * SCANS_PER_ANATOMY, (group + 1) * SCANS_PER_ANATOMY)
    names, p = list(_ENCODINGS), np.array(list(_ENCODINGS.values()))
    encodings = [str(rng.choice(names, p=p / p.sum())) for _ in indices]
    activities = [float(rng.uniform(150.0, 190.0)) for _ in indices]
    seeds = [int(rng.integers(2**63)) for _ in indices]
    return GroupPlan(profile, transform, None, appearance, indices, states, encodings,
                     activities, seeds)


def generate_variant_group(variant: RobustVariant, group: int, out_dir: Path) -> int:
    """Simulate and write one group of ``variant`` (skips finished studies); studies written.

    A :func:`normals_variant` writes only the group's normal scan (one subject each).
    """
    from service.sim.broad_profiles import profile_fields
    from service.sim.groups import plan_scanner
    from service.sim.striatal_sources import region_binding

    site = variant_site(variant, group + 1)
    plan = plan_variant_group(variant, _variant_index(variant.name), group)
    cases = (0,) if variant.role == "calibration" else range(len(CASES))  # normals: one scan
    todo = [k for k, i in enumerate(plan.indices)
            if k in cases and not (out_dir / site.name / study_id(site, i) / TRUTH_FILE).exists()]
    if not todo:
        return 0
    scanner = plan_scanner(plan)
    normal_sbr: dict[str, float] | None = None
    for k in todo:
        t0 = time.process_time()
        state, image = plan.states[k], None
        if CASES[k].startswith("loss_") and variant.one_sided_basis == IMAGE_BASIS:
            side, source = CASES[k].removeprefix("loss_"), _source(plan)
            target = _putamen_ratio(region_binding(state.binding, source), side)
            if normal_sbr is None:
                normal_sbr = noise_free_sbr(scanner, plan.states[0])
            state, image = match_image_ratio(scanner, plan.states[0], normal_sbr, side, target,
                                             source)
            plan.states[k] = state
        scan = scanner.scan(state, np.random.default_rng(plan.noise_seeds[k]))
        row = _write_study(site, plan.indices[k], group, k, scan, plan, out_dir)
        # the image basis bounds what the image shows (the binding ratio follows from it)
        binding_max = 1.0 if image is not None else variant.one_sided[1]
        row.update(case_fields(row, CASES[k], binding_max))
        row["one_sided_basis"] = variant.one_sided_basis
        if image is not None:
            row["putamen_ratio_target"] = round(target, 4)
            row["putamen_ratio_image"] = round(image, 4)
        row.update(profile_fields(plan.profile))
        row["variant_description"] = variant.description
        row["cpu_s"] = round(time.process_time() - t0, 2)
        path = out_dir / site.name / study_id(site, plan.indices[k]) / TRUTH_FILE
        path.write_text(json.dumps(row, indent=1))
    return len(todo)


def _source(plan: GroupPlan) -> str:
    return plan.appearance.striatal_source if plan.appearance else "aal"


def case_fields(row: Mapping[str, object], case: str,
                max_ratio: float = ONE_SIDED_MAX_RATIO) -> dict[str, object]:
    """``case`` and the affected/other putamen binding ratio; checks the one-sided rule.

    Raises
    ------
    ValueError
        A one-sided case whose affected putamen is above :data:`ONE_SIDED_MAX_RATIO`
        of the other side's binding (cannot happen with the ranges above).
    """
    left, right = (float(str(row[f"true_br_putamen_{s}"])) for s in ("left", "right"))
    ratio = {"loss_left": left / right, "loss_right": right / left}.get(case, min(left, right)
                                                                       / max(left, right))
    if case.startswith("loss_") and ratio > max_ratio + 1e-6:
        raise ValueError(f"one-sided case at {ratio:.2f} of the other side")
    return {"case": case, "putamen_ratio": round(ratio, 4)}


def _run(task: tuple[RobustVariant, int, Path]) -> int:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same arithmetic in a pool and in process: same bytes
    try:
        return generate_variant_group(*task)
    finally:
        torch.set_num_threads(threads)


def generate_robustness(out_dir: Path, n_groups: int = 2,
                        variants: Sequence[RobustVariant] = VARIANTS, workers: int = 1,
                        first_group: int = 0) -> Path:
    """Generate (or finish) the robustness set under ``out_dir``; returns the manifest path.

    ``n_groups`` anatomy groups (four scans each) per variant; only groups
    ``first_group`` .. ``n_groups - 1`` are made (each group is drawn from its own
    seed, so a later batch of new subjects can go to a folder of its own, its
    manifest listing just those studies).
    """
    if not 0 <= first_group < n_groups:
        raise ValueError(f"need 0 <= first_group < n_groups, got {first_group} and {n_groups}")
    out_dir.mkdir(parents=True, exist_ok=True)
    tasks = [(v, g, out_dir) for v in variants for g in range(first_group, n_groups)]
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            list(pool.map(_run, tasks, chunksize=1))
    else:
        for task in tasks:
            _run(task)
    return write_manifest([variant_site(v, n_groups) for v in variants], out_dir)


def _variant_index(variant_name: str) -> int:
    """Position of a variant (or of its site-calibration normals, which draw with
    the same index and their own seed) in :data:`VARIANTS` + :data:`TRAINING_VARIANTS`."""
    names = [v.name for v in (*VARIANTS, *TRAINING_VARIANTS)]
    base_name = variant_name.removesuffix(NORMALS_SUFFIX)
    if base_name not in names:
        raise ValueError(f"unknown robustness variant {variant_name!r}")
    return names.index(base_name)


def variant_pose(variant_name: str, study_index: int) -> PosedScan:
    """The pose the simulator drew for study ``study_index`` of a variant (no scan).

    The truth against which a registration of a written robustness study
    is measured in mm (``bench/dat_registration_robustness.py``): the plan is
    redrawn from its seed (cheap; no projection), its ``image`` is empty.

    Parameters
    ----------
    variant_name : str
        A name of :data:`VARIANTS` or :data:`TRAINING_VARIANTS`, or of one's
        site-calibration normals (:func:`normals_variant`).
    study_index : int
        The number in the study id (``<variant>_<index:05d>``).
    """
    import SimpleITK as sitk

    from service.sim.pose import PosedScan
    from service.sim.scan import support_grid

    index = _variant_index(variant_name)
    variant = (*VARIANTS, *TRAINING_VARIANTS)[index]
    if variant_name != variant.name:  # a site-calibration normal (normals_variant)
        variant = normals_variant(variant)
    group, k = divmod(study_index, SCANS_PER_ANATOMY)
    plan = plan_variant_group(variant, index, group)
    brain_scale = plan.appearance.brain_scale if plan.appearance else 1.0
    return PosedScan(sitk.Image([1, 1, 1], sitk.sitkFloat32), plan.transform,
                     support_grid(plan.profile), brain_scale, plan.states[k].disease_class)
