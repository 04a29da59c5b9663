"""A complete :class:`FdopaResult` from a small simulated study, for the output tests and docs.

The result is built from the simulator's truth, not from the analysis
stages, so the SEG, SR and picture report can be tested on their own: the
PET-active truth (label 2) split into connected components gives the
lesions, labels 3/4/5 the reference regions, and the measures are computed
here by plain numpy from their written definitions (:class:`LesionMeasures`).
A dynamic study goes through :func:`.kinetics.analyse_dynamic`.

``python -m service.testing.fdopa_result OUT.png [OUT_DIR]`` writes a picture
report of this truth-built result (and, with OUT_DIR, the static series with
its SEG, SR, picture and failure SR). The documentation's example
(``docs/img/fdopa_report_example.png``) is instead the picture the node itself
makes for the simulated study: ``python -m service.testing.fdopa_result
--analysed docs/img/fdopa_report_example.png`` (``dopanode analyze`` with the
shipped U-Net on :func:`.fdopa_study.analysed_small_study`). The MR-guided
route's example (``docs/img/fdopa_mr_guided_report_example.png``): ``python -m
service.testing.fdopa_result --mr-guided docs/img/fdopa_mr_guided_report_example.png``
(``dopanode analyze`` on the same study with its 2D axial FLAIR).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset
from scipy import ndimage

from service.imaging.pet_volume import PetVolume, volume_from_datasets
from service.imaging.suv import SuvScale, suv_scale
from service.pipelines.fdopa_pet.gate import StudySelection
from service.pipelines.fdopa_pet.kinetics import analyse_dynamic
from service.pipelines.fdopa_pet.result import (
    MEASURABLE_ML,
    TUMOUR_THRESHOLD_X_BACKGROUND,
    AtlasOnPet,
    FdopaResult,
    Lesion,
    LesionMeasures,
    ReferenceMeasures,
    ReferenceRegions,
    SegmentationInfo,
    Side,
    StaticMeasures,
)
from service.report.identity import AlgorithmInfo, SourceReference

ALGORITHM = AlgorithmInfo("dopanode-fdopa", "0.1.0-test", "fdopa_unet_test.onnx", "ab" * 32)
TRUTH_NAMES = {"lesion": 1, "pet_active": 2, "background": 3, "striatum_contralateral": 4,
               "white_matter_contralateral": 5}
#: Radius of the 1 mL SUVpeak sphere, mm.
PEAK_RADIUS_MM = (3.0 * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0)


@dataclass(frozen=True)
class SimulatedStudy:
    """A simulated study folder and what the outputs need of it."""

    folder: Path
    static: Sequence[Dataset]
    dynamic: Sequence[Dataset]
    labels_zyx: np.ndarray


@contextlib.contextmanager
def small_profiles() -> Iterator[None]:
    """Register the fast PET profile and a 4-frame schedule for the duration of the block."""
    from service.sim.fdopa.kinetics import SCHEDULES, FrameSchedule
    from service.sim.fdopa.profiles import PET_PROFILES, get_pet_profile

    profile = replace(get_pet_profile("philips_vereos_like"), name="test_small",
                      sim_voxel_mm=4.5, n_views=30, iterations=2, subsets=5, matrix=64,
                      pixel_mm=3.6, slice_mm=3.6)
    saved = dict(PET_PROFILES), dict(SCHEDULES)
    PET_PROFILES["test_small"] = profile
    SCHEDULES["test4"] = FrameSchedule("test4", (60.0, 60.0, 120.0, 300.0))
    try:
        yield
    finally:
        PET_PROFILES.clear()
        PET_PROFILES.update(saved[0])
        SCHEDULES.clear()
        SCHEDULES.update(saved[1])


def simulate_small_study(out_dir: Path, seed: int = 77, enhanced: bool = False,
                         dynamic: bool = True, tumour_class: str = "hgg") -> SimulatedStudy:
    """Simulate one small study (about 3 s) and read its series and truth labels."""
    from service.sim.fdopa.study import StudyPlan, simulate_study

    plan = StudyPlan(f"o_{seed:05d}", "test_small", tumour_class, False, seed=seed,
                     schedule="test4" if dynamic else None, enhanced=enhanced)
    with small_profiles():
        simulate_study(plan, out_dir)
    folder = out_dir / plan.study_id
    static = [pydicom.dcmread(p) for p in sorted((folder / "PT_STATIC").glob("*.dcm"))]
    frames = [pydicom.dcmread(p) for p in sorted((folder / "PT_DYNAMIC").glob("*.dcm"))]
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "truth_seg.nii.gz")))
    return SimulatedStudy(folder, static, frames, labels.astype(np.int16))


def _lesions(active_zyx: np.ndarray) -> tuple[Lesion, ...]:
    components, n = ndimage.label(active_zyx)
    masks = [components == i for i in range(1, n + 1)]
    masks.sort(key=lambda m: -int(m.sum()))
    return tuple(Lesion(i + 1, m) for i, m in enumerate(masks))


def _peak_map(values_zyx: np.ndarray, spacing_zyx_mm: np.ndarray) -> np.ndarray:
    half = np.ceil(PEAK_RADIUS_MM / spacing_zyx_mm).astype(int)
    grid = np.mgrid[tuple(slice(-h, h + 1) for h in half)]
    dist = np.sqrt(sum((g * s) ** 2 for g, s in zip(grid, spacing_zyx_mm, strict=True)))
    kernel = (dist <= PEAK_RADIUS_MM).astype(np.float64)
    return ndimage.convolve(values_zyx.astype(np.float64), kernel / kernel.sum(),
                            mode="nearest")


def _suv(value: float, suv: SuvScale) -> float | None:
    return None if suv.factor is None else value * suv.factor


def lesion_measures(index: int, mask: np.ndarray, volume: PetVolume, suv: SuvScale,
                    ref: ReferenceMeasures, striatum: np.ndarray) -> LesionMeasures:
    """The measures of one lesion (or of the union, ``index`` 0) by their definitions."""
    values = volume.frames[0].volume_zyx
    spacing = volume.spacing_zyx_mm
    voxels = int(mask.sum())
    ml = voxels * float(np.prod(spacing)) / 1000.0
    top, mean = float(values[mask].max()), float(values[mask].mean())
    peak = float(_peak_map(values, spacing)[mask].max())
    centroid = volume.affine @ np.append(np.argwhere(mask).mean(axis=0), 1.0)
    touches = bool((ndimage.binary_dilation(mask) & striatum).any())
    return LesionMeasures(
        index, voxels, ml, ml > MEASURABLE_ML, top, mean, peak, _suv(top, suv),
        _suv(mean, suv), _suv(peak, suv), top / ref.background_mean_units,
        mean / ref.background_mean_units, top / ref.striatum_max_units,
        top / ref.white_matter_max_units,
        (float(centroid[0]), float(centroid[1]), float(centroid[2])), touches, False)


def reference_measures(volume: PetVolume, regions: ReferenceRegions, suv: SuvScale
                       ) -> ReferenceMeasures:
    values = volume.frames[0].volume_zyx
    voxel_ml = float(np.prod(volume.spacing_zyx_mm)) / 1000.0
    bg = float(values[regions.background_zyx].mean())
    st = float(values[regions.striatum_zyx].max())
    wm = float(values[regions.white_matter_zyx].max())
    return ReferenceMeasures(
        bg, st, wm, _suv(bg, suv), _suv(st, suv), _suv(wm, suv),
        float(regions.background_zyx.sum()) * voxel_ml,
        float(regions.striatum_zyx.sum()) * voxel_ml,
        float(regions.white_matter_zyx.sum()) * voxel_ml)


def _atlas(labels: np.ndarray, affine: np.ndarray) -> AtlasOnPet:
    index = np.indices(labels.shape).reshape(3, -1)
    lateral = (affine[0, :3] @ index + affine[0, 3]).reshape(labels.shape)
    return AtlasOnPet(labels, TRUTH_NAMES, lateral.astype(np.float32), 0.91)


def _regions(atlas: AtlasOnPet, lesions: Sequence[Lesion]) -> ReferenceRegions:
    lateral = atlas.lateral_mm_zyx
    if lesions:
        x = float(lateral[lesions[0].mask_zyx].mean())
        side: Side = "left" if x < 0 else "right"
        rule = f"lesion centroid {abs(x):.0f} mm {'right' if x < 0 else 'left'} of the " \
               f"midline: contralateral {side}"
    else:
        side, rule = "left", "no lesion: left (default)"
    return ReferenceRegions(side, rule, atlas.mask("striatum_contralateral"),
                            atlas.mask("white_matter_contralateral"),
                            atlas.mask("background"))


def measures_of(volume: PetVolume, suv: SuvScale, lesions: Sequence[Lesion],
                regions: ReferenceRegions) -> StaticMeasures:
    """All static measures by the definitions of :class:`LesionMeasures`."""
    ref = reference_measures(volume, regions, suv)
    per = tuple(lesion_measures(les.index, les.mask_zyx, volume, suv, ref, regions.striatum_zyx)
                for les in lesions)
    tumour = None
    if lesions:
        union = np.logical_or.reduce([les.mask_zyx for les in lesions])
        tumour = lesion_measures(0, union, volume, suv, ref, regions.striatum_zyx)
    return StaticMeasures(per, tumour, ref,
                          TUMOUR_THRESHOLD_X_BACKGROUND * ref.background_mean_units)


def _flags(measures: StaticMeasures, suv: SuvScale, quality: float) -> tuple[str, ...]:
    flags = []
    if any(m.touches_striatum for m in measures.lesions):
        flags.append("lesion touches the striatum")
    if any(m.infratentorial for m in measures.lesions):
        flags.append("infratentorial lesion")
    if not suv.available:
        flags.append(f"SUV unavailable: {suv.reason}")
    flags.append(f"registration quality {quality:.2f}")
    return tuple(flags)


def result_from_study(study: SimulatedStudy, *, from_dynamic: bool = False,
                      method: str = "unet") -> FdopaResult:
    """The :class:`FdopaResult` of a simulated study, built from its truth labels.

    ``from_dynamic``: the static image is the last dynamic frame and the
    result's source is the dynamic series (the "summed from dynamic" case).
    """
    dyn_volume = volume_from_datasets(study.dynamic) if study.dynamic else None
    if from_dynamic:
        assert dyn_volume is not None
        source_sets = study.dynamic
        static = replace(dyn_volume, frames=(dyn_volume.frames[-1],), is_dynamic=False)
    else:
        source_sets = study.static
        static = volume_from_datasets(study.static)
    suv = suv_scale(source_sets[0], static.first_frame_start)
    if study.labels_zyx.shape != static.shape_zyx:
        raise ValueError("truth labels are not on the static grid")
    atlas = _atlas(study.labels_zyx, static.affine)
    lesions = _lesions(study.labels_zyx == TRUTH_NAMES["pet_active"])
    regions = _regions(atlas, lesions)
    measures = measures_of(static, suv, lesions, regions)
    dynamic, note = None, "no dynamic series"
    if dyn_volume is not None and lesions:
        masks = {"tumour": np.logical_or.reduce([les.mask_zyx for les in lesions]),
                 "striatum": regions.striatum_zyx, "background": regions.background_zyx}
        dynamic, note = analyse_dynamic(dyn_volume, masks, suv), ""
    dyn_ref = SourceReference.of(list(study.dynamic)) if study.dynamic else None
    info = (SegmentationInfo("unet", ALGORITHM.model_name, ALGORITHM.model_sha256)
            if method == "unet" else SegmentationInfo("threshold"))
    selection = StudySelection(None if from_dynamic else str(study.static[0].SeriesInstanceUID),
                               str(study.dynamic[0].SeriesInstanceUID) if study.dynamic else None,
                               from_dynamic, ())
    return FdopaResult(SourceReference.of(list(source_sets)), dyn_ref, selection, static, suv, atlas,
                       regions, lesions, measures, info, dynamic, note,
                       _flags(measures, suv, atlas.quality), ALGORITHM)


def without_lesions(result: FdopaResult) -> FdopaResult:
    """The same study with no lesion found (reference regions only)."""
    measures = measures_of(result.static, result.suv, (), result.reference)
    return replace(result, lesions=(), measures=measures, dynamic=None,
                   dynamic_note="no lesion: no tumour curve")


def without_suv(result: FdopaResult, reason: str = "patient weight missing") -> FdopaResult:
    """The same study as if SUV could not be computed (ratios only)."""
    suv = SuvScale(None, result.suv.bqml_per_unit, None, "", reason)
    measures = measures_of(result.static, suv, result.lesions, result.reference)
    dynamic = result.dynamic
    if dynamic is not None:
        params = tuple(replace(p, slope_suv_per_min=None) for p in dynamic.parameters)
        dynamic = replace(dynamic, parameters=params)
    return replace(result, suv=suv, measures=measures, dynamic=dynamic,
                   flags=_flags(measures, suv, result.atlas.quality))


def _analysed_picture(target: Path, flair: bool = False) -> int:
    """The node's own picture report of the simulated study (with its FLAIR), as a PNG."""
    import subprocess
    import tempfile

    from PIL import Image

    from service.testing.fdopa_study import analysed_small_study, small_study

    with tempfile.TemporaryDirectory() as tmp:
        if flair:  # ``dopanode analyze`` on the PET + FLAIR study: the MR-guided route
            folder, _ = small_study(Path(tmp) / "sim", "fine", flair="ax2d_3t")
            out = Path(tmp) / "analysis"
            subprocess.run([sys.executable, "-m", "service.cli", "analyze", "--out", str(out),
                            *(str(folder / n) for n in ("PT_STATIC", "PT_DYNAMIC", "MR_FLAIR"))],
                           check=True, stdout=subprocess.DEVNULL)
        else:
            _, out = analysed_small_study(Path(tmp))
        [picture] = out.glob("*/picture.dcm")
        Image.fromarray(pydicom.dcmread(picture).pixel_array).save(target)
    print(target)
    return 0


def main(argv: Sequence[str]) -> int:
    """Write the example picture report PNG (``argv[0]``) from seed 77.

    With a second argument, also write the study's static series and the
    SEG, SR, picture report and failure SR into that folder (e.g. to load
    them into a viewer).
    """
    import tempfile

    from service.pipelines.fdopa_pet.failure import build_failure_sr
    from service.pipelines.fdopa_pet.picture import build_picture_report
    from service.pipelines.fdopa_pet.render import render_report_png
    from service.pipelines.fdopa_pet.seg import build_seg
    from service.pipelines.fdopa_pet.sr import build_sr

    if argv and argv[0] == "--analysed":
        return _analysed_picture(Path(argv[1]) if len(argv) > 1
                                 else Path("docs/img/fdopa_report_example.png"))
    if argv and argv[0] == "--mr-guided":
        return _analysed_picture(Path(argv[1]) if len(argv) > 1
                                 else Path("docs/img/fdopa_mr_guided_report_example.png"), True)
    target = Path(argv[0]) if argv else Path("docs/img/fdopa_report_example.png")
    with tempfile.TemporaryDirectory() as tmp:
        study = simulate_small_study(Path(tmp))
        result = result_from_study(study)
        target.write_bytes(render_report_png(result))
        if len(argv) > 1:
            out = Path(argv[1])
            out.mkdir(parents=True, exist_ok=True)
            for i, ds in enumerate(study.static):
                ds.save_as(out / f"PT{i + 1:05d}.dcm", enforce_file_format=True)
            seg = build_seg(result, study.static, "example", 1.7e9)
            objects = {"seg": seg, "sr": build_sr(result, study.static, seg, "example", 1.7e9),
                       "picture": build_picture_report(result, study.static, "example", 1.7e9),
                       "failure_sr": build_failure_sr(study.static, "example reason", "example",
                                                      ALGORITHM, 1.7e9)}
            for name, ds in objects.items():
                ds.save_as(out / f"{name}.dcm", enforce_file_format=True)
    print(target)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
