"""One FDOPA study from loaded datasets to :class:`FdopaResult`: the stages in the agreed order.

Stages (wall time of each in ``durations_s``): ``gate`` (tracer and roles of
the input series), ``volume`` (PET volumes; the static image summed from the
dynamic frames when the study has no static series), ``suv`` (QIBA SUVbw,
or the reason it is missing), ``register`` (FDOPA template onto the static
grid; refused below the minimum quality), ``segment`` (U-Net probability or
the threshold-only baseline), ``reference`` (contralateral regions and their
values), ``lesions`` (PET RANO: candidates at >= 1.6 x the background mean,
one lesion per component), ``measure`` (static measures), ``route`` (with a
FLAIR: reading, registering and segmenting it, :mod:`.mr_route`),
``flair_measures`` (the paediatric FLAIR-guided measures), ``dynamic`` and
``flair_dynamic`` (curves, when there is a dynamic series). The PET-only measures are always
made; the MR-guided route adds its own, named apart.

Static image from a dynamic series: the duration-weighted mean of the frames
lying wholly inside ``static_window_s`` (default 600-1800 s, i.e. 10-30 min
after the dynamic acquisition start, which is taken as the injection, as in
the reference protocols; :func:`service.imaging.pet_volume.static_window`).

A dynamic series that cannot give curves (unreadable, another frame of
reference, too few frames) leaves the static result intact; the result's
``dynamic_note`` says why there are no curves. Pure: datasets in, result out.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
from pydicom.dataset import Dataset

from service.errors import AnalysisError
from service.imaging.pet_volume import PetVolume, static_window, volume_from_datasets
from service.imaging.suv import SuvScale, suv_scale
from service.pipelines.fdopa_pet.curves import injection_datetime
from service.pipelines.fdopa_pet.gate import StudySelection, select_series
from service.pipelines.fdopa_pet.kinetics import DynamicResult
from service.pipelines.fdopa_pet.lesions import method_lesions
from service.pipelines.fdopa_pet.measures import (
    analyse_study_dynamic,
    baseline_candidates,
    measure_reference,
    measure_static,
)
from service.pipelines.fdopa_pet.reference import (
    FdopaTemplate,
    reference_regions,
    register_to_template,
)
from service.pipelines.fdopa_pet.result import (
    NO_FLAIR,
    TUMOUR_THRESHOLD_X_BACKGROUND,
    AtlasOnPet,
    FdopaResult,
    FlairGuidedMeasures,
    Lesion,
    ReferenceRegions,
    RouteInfo,
    SegmentationInfo,
    StaticMeasures,
)
from service.pipelines.fdopa_pet.timing import stage
from service.report.identity import AlgorithmInfo, SourceReference

if TYPE_CHECKING:
    from service.pipelines.fdopa_pet.flair_lesion import FlairLesionSegmenter
    from service.pipelines.fdopa_pet.segment import TumourSegmenter


@dataclass(frozen=True)
class AnalysisOptions:
    """The settings the analysis itself needs (:class:`.plugin.FdopaPetSettings`)."""

    fallback_keywords: tuple[str, ...] = ()
    min_registration_quality: float = 0.6
    warn_registration_quality: float = 0.75
    static_window_s: tuple[float, float] = (600.0, 1800.0)
    min_flair_registration_quality: float = 0.9
    flair_keywords: tuple[str, ...] = ("FLAIR",)


def selection_of(primary: Sequence[Dataset], dynamic: Sequence[Dataset] | None,
                 keywords: Sequence[str]) -> StudySelection:
    """Gate the job's input series again (from their pixels' headers) and check their roles.

    Raises
    ------
    AnalysisError
        ``no_fdopa_series`` (not FDOPA, not attenuation-corrected, ...) or
        ``unexpected_inputs`` when the roles do not match the plan.
    """
    headers = [primary[0]] + ([dynamic[0]] if dynamic else [])
    selection = select_series(headers, keywords)
    primary_uid = str(primary[0].SeriesInstanceUID)
    chosen = selection.static_series_uid or selection.dynamic_series_uid
    if chosen != primary_uid or (dynamic and selection.dynamic_series_uid is None):
        raise AnalysisError("input series do not have the roles routing gave them",
                            "unexpected_inputs")
    return selection


def static_from_dynamic(volume: PetVolume, window_s: tuple[float, float]) -> PetVolume:
    """The static image summed from the frames inside ``window_s`` (module docstring)."""
    frame = static_window(volume, *window_s)
    note = (f"static image: dynamic frames from {frame.start_s / 60:g} to "
            f"{(frame.start_s + frame.duration_s) / 60:g} min summed")
    return PetVolume((frame,), volume.affine, volume.series_uid, volume.frame_of_reference_uid,
                     False, volume.first_frame_start, (*volume.warnings, note))


@dataclass(frozen=True, eq=False)
class Volumes:
    """The loaded PET of one job."""

    static: PetVolume
    suv: SuvScale
    dynamic: PetVolume | None
    dynamic_suv: SuvScale | None
    dynamic_source: SourceReference | None
    dynamic_note: str
    injection: dt.datetime | None = None


def load_volumes(primary: Sequence[Dataset], dynamic: Sequence[Dataset] | None,
                 window_s: tuple[float, float], durations_s: dict[str, float]) -> Volumes:
    """PET volumes and SUV scales; a dynamic companion that fails leaves a note, not an error."""
    return with_dynamic(load_static(primary, window_s, durations_s), dynamic, durations_s)


def load_static(primary: Sequence[Dataset], window_s: tuple[float, float],
                durations_s: dict[str, float]) -> Volumes:
    """The primary series' volume and SUV scale (a dynamic primary also gives the curves)."""
    with stage(durations_s, "volume"):
        first = volume_from_datasets(primary)
        static = static_from_dynamic(first, window_s) if first.is_dynamic else first
    with stage(durations_s, "suv"):
        suv = suv_scale(primary[0], first.first_frame_start)
    if first.is_dynamic:
        return Volumes(static, suv, first, suv, SourceReference.of(list(primary)), "",
                       injection_datetime(primary[0]))
    return Volumes(static, suv, None, None, None, "no dynamic series in the study")


def with_dynamic(volumes: Volumes, dynamic: Sequence[Dataset] | None,
                 durations_s: dict[str, float]) -> Volumes:
    """``volumes`` with the dynamic companion series of a static primary, or why not.

    Called after the segmentation (:func:`analyse_study`), so that the 4-D
    dynamic volume (about 100 MB for 17 frames of 128 x 128 x 89) and the
    U-Net's activations are not in memory at the same time
    (bench/fdopa_analysis.py, serve's peak RSS).
    """
    if volumes.dynamic is not None or not dynamic:
        return volumes
    static = volumes.static
    try:
        with stage(durations_s, "volume"):
            dyn = volume_from_datasets(dynamic)
    except AnalysisError as exc:
        return replace(volumes, dynamic_note=f"dynamic series not used: {exc.reason}")
    if dyn.frame_of_reference_uid != static.frame_of_reference_uid:
        return replace(volumes, dynamic_note="dynamic series not used: another frame of "
                                             "reference than the static")
    with stage(durations_s, "suv"):
        dyn_suv = suv_scale(dynamic[0], dyn.first_frame_start)
    return Volumes(static, volumes.suv, dyn, dyn_suv, SourceReference.of(list(dynamic)), "",
                   injection_datetime(dynamic[0]))


def segment_and_measure(static: PetVolume, suv: SuvScale, template: FdopaTemplate,
                        segmenter: TumourSegmenter | None, options: AnalysisOptions,
                        durations_s: dict[str, float]
                        ) -> tuple[AtlasOnPet, SegmentationInfo, ReferenceRegions,
                                   tuple[Lesion, ...], StaticMeasures]:
    """Register, find candidates, reference regions, lesions and the static measures.

    Raises
    ------
    AnalysisError
        ``registration_failed`` (from the registration) or
        ``registration_quality`` when the quality is below the minimum.
    """
    volume_zyx, affine = static.frames[0].volume_zyx, static.affine
    spacing = static.spacing_zyx_mm
    with stage(durations_s, "register"):
        atlas = register_to_template(volume_zyx, affine, template)
    if not atlas.quality >= options.min_registration_quality:
        raise AnalysisError(
            f"registration to the FDOPA template failed its quality check ({atlas.quality:.2f} "
            f"< {options.min_registration_quality:.2f})", "registration_quality")
    with stage(durations_s, "segment"):
        if segmenter is None:
            candidates: np.ndarray = baseline_candidates(volume_zyx, atlas, spacing)
            info = SegmentationInfo("threshold")
        else:
            candidates = segmenter.segment(volume_zyx, affine)
            info = segmenter.info
    with stage(durations_s, "reference"):
        reference = reference_regions(atlas, candidates, affine)
        ref_values = measure_reference(volume_zyx, reference, spacing, suv)
    with stage(durations_s, "lesions"):
        threshold = TUMOUR_THRESHOLD_X_BACKGROUND * ref_values.background_mean_units
        lesions = method_lesions(candidates, volume_zyx, threshold, spacing)
    with stage(durations_s, "measure"):
        measures = measure_static(volume_zyx, affine, suv, lesions, reference, atlas)
    return atlas, info, reference, lesions, measures


def study_flags(suv: SuvScale, atlas: AtlasOnPet, reference: ReferenceRegions,
                measures: StaticMeasures, info: SegmentationInfo,
                warn_quality: float) -> tuple[str, ...]:
    """Quality flags for the reader (issue 12, point 5), in a fixed order."""
    flags = []
    if any(m.touches_striatum for m in measures.lesions):
        flags.append("lesion touches the striatum: T/S and striatal curves may be biased")
    if any(m.infratentorial for m in measures.lesions):
        flags.append("infratentorial lesion")
    if reference.midline or reference.infratentorial:
        flags.append(f"reference side chosen by rule: {reference.rule}")
    if not suv.available:
        flags.append(f"SUV unavailable: {suv.reason}")
    if atlas.quality < warn_quality:
        flags.append(f"registration quality {atlas.quality:.2f} (below {warn_quality:.2f})")
    if info.method == "threshold":
        flags.append("segmentation by the classical threshold-only baseline, not the U-Net")
    return tuple(flags)


def curves(volumes: Volumes, lesions: Sequence[Lesion], reference: ReferenceRegions,
           durations_s: dict[str, float]) -> tuple[DynamicResult | None, str]:
    """The dynamic result, or None and why."""
    if volumes.dynamic is None or volumes.dynamic_suv is None:
        return None, volumes.dynamic_note
    try:
        with stage(durations_s, "dynamic"):
            return analyse_study_dynamic(volumes.dynamic, volumes.static, lesions, reference,
                                         volumes.dynamic_suv, injection=volumes.injection), ""
    except AnalysisError as exc:
        return None, f"no curves: {exc.reason}"


def split_note(note: str) -> tuple[str, str]:
    """The routing note's PET part (the dynamic series) and its route part ("PET-only route: ...")."""
    parts = [n for n in note.split("; ") if n]
    route = [n for n in parts if n.startswith("PET-only route: ")]
    return "; ".join(n for n in parts if n not in route), "; ".join(route)


def mr_guided(flair: Sequence[Dataset] | None, volumes: Volumes, atlas: AtlasOnPet,
              segmenter: FlairLesionSegmenter | None, options: AnalysisOptions, note: str,
              durations_s: dict[str, float]) -> tuple[RouteInfo, FlairGuidedMeasures | None]:
    """The route of the study and, on the MR-guided route, its static measures."""
    from service.pipelines.fdopa_pet.flair_lesion import THRESHOLD_SEGMENTER
    from service.pipelines.fdopa_pet.mr_route import flair_guided_measures, flair_route

    if not flair:
        why = split_note(note)[1]
        return (RouteInfo("pet_only", why) if why else NO_FLAIR), None
    with stage(durations_s, "route"):
        route, found = flair_route(
            flair, volumes.static, segmenter or THRESHOLD_SEGMENTER,
            options.min_flair_registration_quality, options.flair_keywords)
    if found is None:
        return route, None
    image, lesion = found
    with stage(durations_s, "flair_measures"):
        measures = flair_guided_measures(volumes.static, volumes.suv, atlas, lesion)
    return route, replace(measures, flair=image)


def guided_curves(guided: FlairGuidedMeasures | None, volumes: Volumes, dynamic_note: str,
                  durations_s: dict[str, float], atlas: AtlasOnPet | None = None
                  ) -> FlairGuidedMeasures | None:
    """The MR-guided route's measures with the curves of its VOI (None stays None).

    With ``atlas`` a dynamic series first refines the VOI by sinus removal
    (:func:`.mr_route.with_sinus_removal`).
    """
    if guided is None:
        return None
    from service.pipelines.fdopa_pet.mr_route import flair_guided_dynamic

    with stage(durations_s, "flair_dynamic"):
        return flair_guided_dynamic(guided, volumes.dynamic, volumes.static,
                                    volumes.dynamic_suv, volumes.injection, dynamic_note,
                                    atlas, volumes.suv)


def analyse_study(primary: Sequence[Dataset], dynamic: Sequence[Dataset] | None,
                  template: FdopaTemplate, segmenter: TumourSegmenter | None,
                  algorithm: AlgorithmInfo, options: AnalysisOptions,
                  durations_s: dict[str, float], note: str = "",
                  flair: Sequence[Dataset] | None = None,
                  flair_segmenter: FlairLesionSegmenter | None = None) -> FdopaResult:
    """Analyse one study (module docstring).

    Parameters
    ----------
    primary : sequence of pydicom.Dataset
        The static series, or the dynamic series when the study has none.
    dynamic : sequence of pydicom.Dataset or None
        The dynamic series beside a static primary.
    algorithm : AlgorithmInfo
        What made the result (:func:`.pipeline.algorithm_info`).
    note : str
        The routing note (e.g. why the dynamic series was left out).
    flair : sequence of pydicom.Dataset or None
        The FLAIR series (plan role ``"flair"``): the MR-guided route.
    flair_segmenter : FlairLesionSegmenter or None
        Its lesion segmenter (None: the classical threshold).

    Raises
    ------
    AnalysisError
        From the gate, the volume reader, the registration and its quality gate.
    """
    with stage(durations_s, "gate"):
        selection = selection_of(primary, dynamic, options.fallback_keywords)
    volumes = load_static(primary, options.static_window_s, durations_s)
    atlas, info, reference, lesions, measures = segment_and_measure(
        volumes.static, volumes.suv, template, segmenter, options, durations_s)
    route, guided = mr_guided(flair, volumes, atlas, flair_segmenter, options, note,
                              durations_s)
    volumes = with_dynamic(volumes, dynamic, durations_s)
    dynamic_result, dynamic_note = curves(volumes, lesions, reference, durations_s)
    pet_note = split_note(note)[0]  # the route part is the route's reason
    if volumes.dynamic is None and not dynamic and pet_note:
        dynamic_note = pet_note  # routing left the dynamic series out, and said why
    guided = guided_curves(guided, volumes, dynamic_note, durations_s, atlas)
    warnings = (*((pet_note,) if pet_note else ()), *volumes.static.warnings, *atlas.warnings,
                *(dynamic_result.warnings if dynamic_result is not None else ()))
    return FdopaResult(
        source=SourceReference.of(list(primary)),
        dynamic_source=volumes.dynamic_source,
        selection=selection,
        static=volumes.static,
        suv=volumes.suv,
        atlas=atlas,
        reference=reference,
        lesions=lesions,
        measures=measures,
        segmentation=info,
        dynamic=dynamic_result,
        dynamic_note=dynamic_note,
        flags=study_flags(volumes.suv, atlas, reference, measures, info,
                          options.warn_registration_quality),
        algorithm=algorithm,
        warnings=tuple(dict.fromkeys(warnings)),
        route=route,
        flair_guided=guided,
    )
