"""Dynamic FDOPA glue: the study's VOIs onto the dynamic grid, the time origin, then kinetics.

VOIs (the regions of :mod:`.kinetics`): ``"tumour"`` = the union of the
lesions (absent when there is none, so no slope ratio), ``"striatum"`` = the
contralateral striatum, ``"background"`` = the healthy-brain crescent, all
from the static analysis.

Grid: when the dynamic series has the static image's grid (same shape and
affine within 1e-3 mm; always so when the static image was summed from the
dynamic frames), the masks are used as they are. Otherwise each mask is
resampled by nearest neighbour in LPS (SimpleITK, voxel centres) onto the
dynamic grid and a warning says so. Both series must share one Frame of
Reference: masks are not carried across frames of reference.

Time origin: :mod:`.kinetics` takes frame times from injection. The frame
times of a :class:`~service.imaging.pet_volume.PetVolume` run from its first
frame's start, so the offset is the first frame's Acquisition Date/Time
minus the injection time (the Radiopharmaceutical Start Date/Time of the
header, :func:`injection_datetime`), with these rules:

* unknown injection or first-frame time: 0 (the acquisition is taken to start
  at injection, as in the reference protocols: Genoa, Nancy and Rennes all
  start the dynamic acquisition with the bolus), with a warning;
* injection after the first frame start: 0, with a warning;
* gap within the first frame's duration: the gap;
* longer gap while the first frame still holds the tracer's arrival (mean of
  background + striatum in the first frame under :data:`BOLUS_FRACTION` of
  its highest frame value): 0, with a warning. The recorded start time is
  then most likely the dose-assay time (Siemens practice; SUV is unaffected,
  :mod:`service.imaging.suv`), and frame times from it would shift TTP by
  the assay delay;
* longer gap without the arrival (a late-start acquisition): the gap, with a
  warning.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset

from service.errors import AnalysisError
from service.imaging.pet_header import series_attributes
from service.imaging.pet_volume import PetVolume
from service.imaging.suv import SuvScale, administration_datetime
from service.pipelines.fdopa_pet.kinetics import (
    DynamicResult,
    analyse_dynamic,
    time_activity_curves,
)
from service.pipelines.fdopa_pet.result import Lesion, ReferenceRegions

#: First-frame brain value under this share of its maximum: the bolus arrives in frame 1.
BOLUS_FRACTION = 0.25
_GRID_TOL_MM = 1e-3


def injection_datetime(header: Dataset) -> dt.datetime | None:
    """Radiopharmaceutical Start Date/Time (else Series Date + Start Time) of a PET header."""
    header = series_attributes(header)
    items = header.get("RadiopharmaceuticalInformationSequence") or []
    if not items:
        return None
    return administration_datetime(items[0], header)


def same_grid(a: PetVolume, b: PetVolume) -> bool:
    """Same shape and affine (within 1e-3 mm)."""
    return a.shape_zyx == b.shape_zyx and bool(
        np.allclose(a.affine, b.affine, rtol=0.0, atol=_GRID_TOL_MM))


def _image(array_zyx: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """``array_zyx`` as a SimpleITK image on the grid of ``affine`` (LPS, voxel centres)."""
    image = sitk.GetImageFromArray(array_zyx)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    image.SetSpacing((float(spacing[2]), float(spacing[1]), float(spacing[0])))
    image.SetOrigin(tuple(float(v) for v in affine[:3, 3]))
    cols = affine[:3, :3] / spacing
    image.SetDirection(tuple(float(v) for v in cols[:, ::-1].ravel()))
    return image


def resample_mask(mask_zyx: np.ndarray, source_affine: np.ndarray, target: PetVolume
                  ) -> np.ndarray:
    """Nearest-neighbour resampling of a bool mask from one grid onto ``target``'s grid.

    Parameters
    ----------
    mask_zyx : (z, y, x) bool array
        On the grid of ``source_affine`` (index to LPS mm of voxel centres).
    source_affine : (4, 4) array
    target : PetVolume

    Returns
    -------
    bool array of ``target.shape_zyx``
        Outside the source grid: False.
    """
    source = _image(np.asarray(mask_zyx, np.uint8), np.asarray(source_affine, float))
    reference = _image(np.zeros(target.shape_zyx, np.uint8), np.asarray(target.affine, float))
    out = sitk.Resample(source, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                        sitk.sitkUInt8)
    return sitk.GetArrayFromImage(out) > 0


def injection_offset_s(dynamic: PetVolume, injection: dt.datetime | None,
                       brain_tac: np.ndarray) -> tuple[float, tuple[str, ...]]:
    """Seconds from injection to the first frame's start, and warnings (module docstring).

    Parameters
    ----------
    dynamic : PetVolume
    injection : datetime.datetime or None
        Radiopharmaceutical start (same clock as the acquisition times).
    brain_tac : (n_frames,) array
        Mean of background + striatum per frame (bolus-arrival test).
    """
    if injection is None or dynamic.first_frame_start is None:
        return 0.0, ("dynamic frame times: injection time unknown, "
                     "taken as the first frame start",)
    gap = (dynamic.first_frame_start - injection).total_seconds()
    if gap < 0:
        return 0.0, ("dynamic frame times: recorded injection after the first frame start, "
                     "injection taken as the first frame start",)
    if gap <= float(dynamic.frames[0].duration_s):
        return gap, ()
    top = float(np.max(brain_tac))
    if top > 0 and float(brain_tac[0]) < BOLUS_FRACTION * top:
        return 0.0, (f"dynamic frame times: tracer arrives in the first frame although it starts "
                     f"{gap:.0f} s after the recorded start time (a dose-assay time?); "
                     "injection taken as the first frame start",)
    return gap, (f"dynamic frame times: acquisition starts {gap:.0f} s after injection",)


def analyse_study_dynamic(dynamic: PetVolume, static: PetVolume, lesions: Sequence[Lesion],
                          reference: ReferenceRegions, suv: SuvScale, *,
                          injection: dt.datetime | None = None) -> DynamicResult:
    """TACs, TTP and slopes of the tumour, striatum and background VOIs (module docstring).

    Parameters
    ----------
    dynamic : PetVolume
        The dynamic series.
    static : PetVolume
        The analysed static image, whose grid the masks are on.
    lesions : sequence of Lesion
        Their union is the ``"tumour"`` VOI (none: no tumour curve).
    reference : ReferenceRegions
    suv : SuvScale
        Of the **dynamic** series (its own Units and decay reference), for
        the SUV-per-minute slopes.
    injection : datetime.datetime, optional
        :func:`injection_datetime` of a dynamic instance.

    Raises
    ------
    service.errors.AnalysisError
        ``code="dynamic_frame_of_reference"`` when the series do not share a
        Frame of Reference; those of :func:`.kinetics.analyse_dynamic`
        (``too_few_frames``, ``empty_voi`` e.g. a VOI outside the dynamic
        field of view).
    """
    if dynamic.frame_of_reference_uid != static.frame_of_reference_uid:
        raise AnalysisError("dynamic and static series are in different frames of reference",
                            "dynamic_frame_of_reference")
    masks = {"striatum": reference.striatum_zyx, "background": reference.background_zyx}
    if lesions:
        masks = {"tumour": np.logical_or.reduce([les.mask_zyx for les in lesions])} | masks
    warnings: list[str] = []
    if not same_grid(dynamic, static):
        masks = {k: resample_mask(v, static.affine, dynamic) for k, v in masks.items()}
        warnings.append("VOIs resampled (nearest neighbour) onto the dynamic series' grid")
    brain = time_activity_curves(dynamic, {"brain": masks["striatum"] | masks["background"]})
    offset, notes = injection_offset_s(dynamic, injection, brain["brain"])
    result = analyse_dynamic(dynamic, masks, suv, offset_s=offset)
    return replace(result, warnings=(*warnings, *notes))
