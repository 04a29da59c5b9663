"""One FDOPA study end to end: subject, static/NAC/dynamic PET, truth, DICOM files.

Layout of a study folder::

    <study>/PT_STATIC/PT00001.dcm ...   attenuation-corrected static series (per slice, or one
                                        Legacy Converted Enhanced PET instance)
    <study>/PT_NAC/...                  non-attenuation-corrected companion
    <study>/CT_AC/CT00001.dcm ...       low-dose CT of PET/CT profiles (same frame of reference)
    <study>/PT_DYNAMIC/...              dynamic series (if planned)
    <study>/MR_FLAIR/MR00001.dcm ...    FLAIR in its own frame of reference (if planned; per
                                        slice, or one Legacy Converted Enhanced MR instance)
    <study>/truth_flair_seg.nii.gz      FLAIR truth on the FLAIR grid: 1 lesion, 2 oedema
    <study>/truth_seg.nii.gz            truth labels on the static output grid (LPS)
    <study>/truth.json                  truth values (written last: marks completion)

Truth labels: 1 lesion (not PET-active), 2 PET-active tumour (>= 1.6 x
background), 3 healthy-brain background crescent (all of it), 4 contralateral
striatum, 5 contralateral white-matter VOI outside the crescent's slab (its
voxels inside the crescent carry label 3).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from service.sim.fdopa.enhanced_pet import build_enhanced_pet
from service.sim.fdopa.kinetics import SCHEDULES, STATIC_WINDOWS_MIN, FrameSchedule
from service.sim.fdopa.pet_writer import (
    PetEncoding,
    PetSeriesInfo,
    build_legacy_enhanced,
    build_pet_series,
    write_series,
)
from service.sim.fdopa.profiles import PetProfile, get_pet_profile
from service.sim.fdopa.scanner import PetScanner, sim_grid, to_output
from service.sim.fdopa.subject import (
    SubjectMaps,
    SubjectSpec,
    activity_bqml,
    bqml_per_suv,
    build_maps,
    sample_subject,
)
from service.sim.fdopa.truth import dynamic_truth, lesion_suv, static_truth
from service.sim.transfer_syntax import encode_pixels

TRUTH_FILE = "truth.json"
TRUTH_LABELS = {"lesion": 1, "pet_active": 2, "background": 3, "striatum_contralateral": 4,
                "white_matter_contralateral": 5}


@dataclass(frozen=True)
class StudyPlan:
    """What to simulate for one study (all randomness derives from ``seed``)."""

    study_id: str
    profile: str
    tumour_class: str
    paediatric: bool
    seed: int
    static_window: str = "10-30"
    schedule: str | None = None
    encoding: PetEncoding = field(default_factory=PetEncoding)
    flair: str | None = None
    enhanced: bool = False
    flair_enhanced: bool = False
    enhanced_kind: str = "legacy"
    dynamic_enhanced: bool = False

    def __post_init__(self) -> None:
        if self.enhanced_kind not in ("legacy", "native"):
            raise ValueError(f"enhanced_kind must be legacy or native, got {self.enhanced_kind!r}")


def _series_info(plan: StudyPlan, spec: SubjectSpec, p: PetProfile, number: int,
                 description: str, ac: bool = True) -> PetSeriesInfo:
    return PetSeriesInfo(
        uid_seed=f"dopanode-fdopa:{plan.study_id}:{plan.seed}", weight_kg=spec.weight_kg,
        injected_mbq=spec.injected_mbq, age_years=spec.age_years, sex=spec.sex,
        manufacturer=p.manufacturer, model_name=p.model_name,
        reconstruction=p.reconstruction_description if ac else "OSEM NAC",
        series_number=number, description=description, attenuation_corrected=ac,
    )


def _measured(vol: np.ndarray, masks: dict[str, np.ndarray]) -> dict[str, object]:
    """Metrics of a reconstruction inside the truth masks (what an ideal segmentation gives)."""
    bg = float(vol[masks["background"]].mean())
    out: dict[str, object] = {"measured_background_bqml": bg}
    if masks["lesion"].any():
        top = float(vol[masks["lesion"]].max())
        out |= {"measured_tbrmax": top / bg,
                "measured_t_s": top / float(vol[masks["striatum_contralateral"]].max())}
    return out


def _label_image(masks: dict[str, np.ndarray]) -> np.ndarray:
    """Truth labels; label 3 is the whole crescent, label 5 the WM VOI outside it."""
    labels = np.zeros(masks["lesion"].shape, np.uint8)
    for name in ("white_matter_contralateral", "background", "striatum_contralateral",
                 "lesion", "pet_active"):
        labels[masks[name]] = TRUTH_LABELS[name]
    return labels


@dataclass(frozen=True, eq=False)
class _StaticAcquisition:
    spec: SubjectSpec
    profile: PetProfile
    maps: SubjectMaps
    scanner: PetScanner
    values: dict[str, object]
    masks: dict[str, np.ndarray]
    recons: list[np.ndarray]
    counts: int
    start_s: float
    duration_s: float
    noise_seeds: np.ndarray


def _static_acquisition(plan: StudyPlan, corrections: tuple[bool, ...]) -> _StaticAcquisition:
    """Subject, truth and the static frame reconstructed per ``corrections`` (True: AC).

    The random draws are those of :func:`simulate_study` whatever ``corrections``
    is (the non-AC reconstruction consumes no random numbers), so the AC image of
    :func:`simulate_static` is the one the benchmark writes.
    """
    st = plan_truth(plan)
    spec, p, sm, static, values, masks = st.spec, st.profile, st.maps, st.activity, \
        st.values, st.masks
    window = STATIC_WINDOWS_MIN[plan.static_window]
    scanner = PetScanner(p, sm)
    start_s, dur_s = 60.0 * window[0], 60.0 * (window[1] - window[0])
    recons, counts = scanner.frames(static, start_s, dur_s,
                                    np.random.default_rng(st.noise_seeds[0]), corrections)
    return _StaticAcquisition(spec, p, sm, scanner, values, masks, recons, counts, start_s,
                              dur_s, st.noise_seeds)


@dataclass(frozen=True, eq=False)
class PlanTruth:
    """The subject of a plan and its static truth, before any reconstruction.

    Attributes
    ----------
    spec, profile, maps
        Subject, scanner profile and maps on the simulation grid.
    activity : array
        Ideal static activity (Bq/mL) on the simulation grid.
    values, masks
        :func:`service.sim.fdopa.truth.static_truth` of it.
    noise_seeds : array
        The study's noise seeds (drawn right after the subject).
    """

    spec: SubjectSpec
    profile: PetProfile
    maps: SubjectMaps
    activity: np.ndarray
    values: dict[str, object]
    masks: dict[str, np.ndarray]
    noise_seeds: np.ndarray


def plan_truth(plan: StudyPlan) -> PlanTruth:
    """Subject and static truth of ``plan`` (the random draws of :func:`simulate_study`)."""
    rng = np.random.default_rng(plan.seed)
    spec = sample_subject(rng, plan.tumour_class, plan.paediatric)
    noise_seeds = rng.integers(2**63, size=4)
    p = get_pet_profile(plan.profile)
    sm = build_maps(spec, sim_grid(p))
    suv = spec.kinetics.static_suv(plan.static_window)
    static = activity_bqml(sm, spec, suv)
    values, masks = static_truth(sm, static, bqml_per_suv(spec),
                                 activity_bqml(sm, spec, lesion_suv(suv)))
    return PlanTruth(spec, p, sm, static, values, masks, noise_seeds)


def simulate_static(plan: StudyPlan) -> tuple[sitk.Image, sitk.Image, dict[str, object]]:
    """Only the attenuation-corrected static image and its truth labels (training data).

    Nothing is written: no NAC, CT, dynamic series, FLAIR or DICOM. The image
    is the one :func:`simulate_study` writes as ``PT_STATIC`` (Bq/mL, decay
    corrected to injection, before DICOM encoding), on the profile's output grid.

    Returns
    -------
    image : SimpleITK.Image
        float32 AC static PET on the output grid (LPS; origin, spacing and
        direction set).
    labels : SimpleITK.Image
        uint8 truth labels on the same grid (:data:`TRUTH_LABELS`).
    values : dict
        The truth values of the study (as in ``truth.json``, without plan fields).
    """
    st = _static_acquisition(plan, (True,))
    image = to_output(st.recons[0], st.maps.grid, st.profile)
    labels = to_output(_label_image(st.masks), st.maps.grid, st.profile, nearest=True)
    labels = sitk.Cast(labels, sitk.sitkUInt8)
    return image, labels, dict(st.values)


def simulate_study(
    plan: StudyPlan, out_dir: Path, extra: dict[str, object] | None = None
) -> dict[str, object]:
    """Simulate, write and return the truth row of ``plan`` under ``out_dir/plan.study_id``.

    ``extra`` fields (e.g. site and role) are added to the truth row. The
    truth file is written last and atomically: its presence marks the study
    as complete.
    """
    t0 = time.process_time()
    st = _static_acquisition(plan, (True, False))
    spec, p, sm, masks, scanner = st.spec, st.profile, st.maps, st.masks, st.scanner
    (ac, nac), counts = st.recons, st.counts
    start_s, dur_s, values, noise_seeds = st.start_s, st.duration_s, st.values, st.noise_seeds
    study_dir = out_dir / plan.study_id
    _write_static(plan, spec, p, sm, ac, nac, start_s, dur_s, study_dir)
    if p.attenuation_map == "ct":
        _write_ct(plan, spec, p, sm, study_dir)
    sitk.WriteImage(to_output(_label_image(masks), sm.grid, p, nearest=True),
                    str(study_dir / "truth_seg.nii.gz"))
    row: dict[str, object] = (extra or {}) | _plan_fields(plan, spec) | values
    row |= _measured(ac, masks)
    row["static_prompts"] = counts
    if plan.schedule:
        row |= _dynamic(plan, spec, p, sm, scanner, masks, noise_seeds[2], study_dir)
    if plan.flair:
        row |= _flair(plan, spec, p, sm, noise_seeds[3], study_dir)
    row["cpu_s"] = round(time.process_time() - t0, 2)
    tmp = study_dir / (TRUTH_FILE + ".tmp")
    tmp.write_text(json.dumps(row, indent=1, default=_json))
    os.replace(tmp, study_dir / TRUTH_FILE)
    return row


def _json(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(type(value).__name__)


def _write_static(plan: StudyPlan, spec: SubjectSpec, p: PetProfile, sm: SubjectMaps,
                  ac: np.ndarray, nac: np.ndarray, start_s: float, dur_s: float,
                  study_dir: Path) -> None:
    for vol, number, name, is_ac in ((ac, 2, "PT_STATIC", True), (nac, 3, "PT_NAC", False)):
        info = _series_info(plan, spec, p, number,
                            f"Brain FDOPA {plan.static_window} min {'AC' if is_ac else 'NAC'}",
                            is_ac)
        # the NAC companion: same radiopharmaceutical record, plain BQML
        enc = plan.encoding if is_ac else replace(plan.encoding, units="BQML",
                                                  series_time_after_scan_min=0.0)
        image = to_output(vol, sm.grid, p)
        if is_ac and plan.enhanced and plan.enhanced_kind == "native":
            datasets = [build_enhanced_pet([image], [start_s], [dur_s], info, enc, False)]
        elif is_ac and plan.enhanced:  # converted from the per-slice series, then encoded
            singles = build_pet_series([image], [start_s], [dur_s], info,
                                       replace(enc, transfer_syntax="explicit"), dynamic=False)
            datasets = [build_legacy_enhanced(singles, info)]
            encode_pixels(datasets[0], enc.transfer_syntax)
        else:
            datasets = build_pet_series([image], [start_s], [dur_s], info, enc, dynamic=False)
        write_series(datasets, study_dir / name)


def _write_ct(plan: StudyPlan, spec: SubjectSpec, p: PetProfile, sm: SubjectMaps,
              study_dir: Path) -> None:
    from service.sim.fdopa.ct_writer import build_ct_series, ct_reference, hounsfield
    from service.sim.fdopa.scanner import sim_image

    hu = hounsfield(sm.maps, np.random.default_rng(plan.seed % 2**32))
    axial_mm = sm.grid.shape_zyx[0] * sm.grid.voxel_mm
    image = sitk.Resample(sim_image(hu, sm.grid), ct_reference(sm.grid.centre_lps_mm, axial_mm),
                          sitk.Transform(), sitk.sitkLinear, -1000.0)
    info = _series_info(plan, spec, p, 1, "CT LowDose AC Brain")
    datasets = build_ct_series(image, info)
    for ds in datasets:  # a study is exported in one transfer syntax
        encode_pixels(ds, plan.encoding.transfer_syntax)
    write_series(datasets, study_dir / "CT_AC", "CT")


def _dynamic(plan: StudyPlan, spec: SubjectSpec, p: PetProfile, sm: SubjectMaps,
             scanner: PetScanner, masks: dict[str, np.ndarray], seed: int,
             study_dir: Path) -> dict[str, object]:
    assert plan.schedule is not None
    sched = SCHEDULES[plan.schedule]
    rng = np.random.default_rng(seed)
    ideal, ideal_lesion = ideal_frames(spec, sm, sched)
    images = []
    for act, start, dur in zip(ideal, sched.starts_s, sched.durations_s, strict=True):
        vol, _ = scanner.frame(act, float(start), float(dur), rng)
        images.append(to_output(vol, sm.grid, p))
    info = _series_info(plan, spec, p, 4, f"Brain FDOPA dynamic {sched.name}")
    enc = PetEncoding(plan.encoding.units if plan.encoding.units != "GML" else "BQML",
                      plan.encoding.decay_correction, p.frame_reference,
                      p.reversed_dynamic_order, plan.encoding.assay_minutes_before_injection,
                      signed_pixels=plan.encoding.signed_pixels,
                      transfer_syntax=plan.encoding.transfer_syntax)
    timing = (list(sched.starts_s), list(sched.durations_s))
    if plan.dynamic_enhanced:  # one native Enhanced PET with a temporal dimension
        datasets = [build_enhanced_pet(images, *timing, info, enc, dynamic=True)]
    else:
        datasets = build_pet_series(images, *timing, info, enc, dynamic=True)
    write_series(datasets, study_dir / "PT_DYNAMIC")
    return {f"dyn_{k}": v for k, v in dynamic_truth(ideal, masks, sched, ideal_lesion).items()}


def ideal_frames(spec: SubjectSpec, sm: SubjectMaps, sched: FrameSchedule
                 ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Ideal whole and lesion activity (:func:`.truth.lesion_suv`) of every frame, Bq/mL."""
    tacs = spec.kinetics.frame_tacs(sched)
    whole, lesion = [], []
    for i in range(len(sched.starts_s)):
        suv = {k: float(v[i]) for k, v in tacs.items()}
        whole.append(activity_bqml(sm, spec, suv))
        lesion.append(activity_bqml(sm, spec, lesion_suv(suv)))
    return whole, lesion


def _flair(plan: StudyPlan, spec: SubjectSpec, p: PetProfile, sm: SubjectMaps, seed: int,
           study_dir: Path) -> dict[str, object]:
    from service.sim.fdopa.enhanced_mr import build_enhanced_flair
    from service.sim.fdopa.flair import PROTOCOLS, synthesise_flair
    from service.sim.fdopa.mr_writer import build_flair_series, build_legacy_enhanced_mr

    assert plan.flair is not None
    protocol = PROTOCOLS[plan.flair]
    image = synthesise_flair(spec, sm.grid, sm.tumour, protocol, np.random.default_rng(seed))
    info = _series_info(plan, spec, p, 10, protocol.name)
    syntax = plan.encoding.transfer_syntax
    if plan.flair_enhanced and plan.enhanced_kind == "native":
        datasets = [build_enhanced_flair(image, protocol, info, syntax)]
    elif plan.flair_enhanced:
        datasets = [build_legacy_enhanced_mr(build_flair_series(image, protocol, info), info)]
        encode_pixels(datasets[0], syntax)
    else:
        datasets = build_flair_series(image, protocol, info, syntax)
    write_series(datasets, study_dir / "MR_FLAIR", "MR")
    seg = sitk.GetImageFromArray(image.truth_zyx)
    seg.SetOrigin(tuple(float(v) for v in image.origin_lps_mm))
    seg.SetSpacing(image.spacing_mm)
    sitk.WriteImage(seg, str(study_dir / "truth_flair_seg.nii.gz"))
    voxel_ml = float(np.prod(image.spacing_mm)) / 1000.0
    return {
        "flair_protocol": protocol.name, "flair_enhanced": plan.flair_enhanced,
        "flair_lesion_ml": float((image.truth_zyx == 1).sum()) * voxel_ml,
        "flair_oedema_ml": float((image.truth_zyx == 2).sum()) * voxel_ml,
        "mr_to_pet_angles_deg": [round(float(v), 4) for v in image.pose.angles_deg],
        "mr_to_pet_translation_mm": [round(float(v), 4) for v in image.pose.translation_mm],
    }


def _plan_fields(plan: StudyPlan, spec: SubjectSpec) -> dict[str, object]:
    from service.sim.fdopa.head import head_labels

    return {
        "study_id": plan.study_id, "profile": plan.profile, "seed": plan.seed,
        "tumour_class": plan.tumour_class, "paediatric": plan.paediatric,
        "location": spec.location, "n_lesions": len(spec.lesions),
        "age_years": spec.age_years, "sex": spec.sex, "weight_kg": spec.weight_kg,
        "injected_mbq": spec.injected_mbq, "carbidopa": spec.kinetics.carbidopa,
        "static_window": plan.static_window, "schedule": plan.schedule or "",
        "flair": plan.flair or "", "enhanced_pet": plan.enhanced,
        "units": plan.encoding.units, "decay_correction": plan.encoding.decay_correction,
        "assay_minutes_before_injection": plan.encoding.assay_minutes_before_injection,
        "atlas_labels": head_labels()[1],
    } | _variant_fields(plan)


def _variant_fields(plan: StudyPlan) -> dict[str, object]:
    """The encoding variants of ``plan`` that differ from the defaults (older truth rows lack
    them: a study without variants keeps its bytes)."""
    out: dict[str, object] = {}
    if plan.encoding.transfer_syntax != "explicit":
        out["transfer_syntax"] = plan.encoding.transfer_syntax
    if plan.enhanced_kind != "legacy":
        out["enhanced_kind"] = plan.enhanced_kind
    if plan.dynamic_enhanced:
        out["dynamic_enhanced"] = True
    return out
