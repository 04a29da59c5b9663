"""Per-study FDOPA evaluation against the simulator's truth (issue 12, point 8).

Each study folder of a generated benchmark (``dopanode fdopa generate``:
DICOM series folders, ``truth.json``, ``truth_seg.nii.gz`` on the static PET
grid with labels 1 lesion not PET-active, 2 PET-active tumour, 3 healthy
background crescent, 4 contralateral striatum, 5 contralateral eroded WM) is
analysed as the node analyses it (:mod:`.evaluation_run`): the series
chosen by the node's gate (:func:`.commands.find_studies`), read by the
node's reader, then :func:`.analysis.analyse_study` with the shipped
template and, for ``"unet"``, the shipped model through
:class:`.segment.TumourSegmenter` (``"threshold"``: the classical baseline,
segmenter None). SEG, SR and picture are not built: they do not change a
number. This module compares one analysed study with its truth.

One row per study and method (plain JSON), compared with two references:

* ``img_*`` (**primary**): the indices measured *on the analysed static
  image with the truth masks*, as the papers compare the automatic VOI with
  the reference VOI on the same images: background = mean of label 3; lesion
  = labels 1 and 2; TBRmax = lesion max / background; PET-active reference
  = lesion voxels >= 1.6 x background (the Nancy ground-truth rule on the
  image), MTV = its volume, TBRmean = its mean / background; T/S = lesion
  max / max of label 4; T/N = lesion max / max of label 5.
* ``ideal_*``: the simulator's values on the ideal, noise- and blur-free
  activity (``truth.json``: ``tbrmax``, ``tbrmean``, ``mtv_ml``, ``t_s``, ``t_n``).

Dice: truth label 2 against the union of the pipeline's lesions, for studies
with a PET-active truth tumour (``dice``); and the same lesions against the
image's PET-active reference (``dice_img``: truth lesion at >= 1.6 x the
image's crescent mean, the PET RANO reference rule applied on the image).
The **ceiling of the 1.6 x rule** (``dice_ceiling``): a segmentation that
keeps only voxels at >= 1.6 x the background (PET RANO's definition, which
the pipeline applies, point 4 of issue 12) cannot reach truth voxels below
that on the reconstructed image, so the best Dice it can have against label
2 is that of label 2 intersected with the image's >= 1.6 x region (the
background: mean of label 3, as ``img_*``). It describes the image, not a
method; the pipeline's own background estimate differs slightly from the
truth crescent's, so it is a ceiling up to that difference. (Detection has
its counterpart in the table: a tumour whose image holds less than a
method's minimum lesion volume at >= 1.6 x, ``img_mtv_ml``, cannot be
reported by that method.)
Detection of measurable lesions: a study whose truth is measurable
(``truth.json`` ``measurable``: ideal MTV > 0.5 mL) is found when a pipeline
lesion overlaps the truth lesion (labels 1, 2; ``overlaps_truth``). Also
kept, per component: each 26-connected component of label 2 larger than 0.5
mL on the PET grid (``measurable_lesions``) and how many a pipeline lesion
overlaps (``measurable_found``). A pipeline lesion that overlaps no truth
lesion (labels 1, 2) is a false-positive lesion. A study where the pipeline
finds no lesion has ``pred_mtv_ml = 0`` and no ratios (counted, never dropped).
A study the analysis refuses (``AnalysisError``) is a ``failed`` row with
its code and reason; its measurable lesions count as missed.

Dynamic (studies with a dynamic series in the truth): tumour TTP (frame-start
convention, s from injection), tumour slope (%/min, frame starts, fit from
the pipeline's Genoa window start against the truth's 120 s) and the
tumour/striatum slope ratio, against the ideal-activity truth (the
simulator keeps no image-measured TAC).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from service.pipelines.fdopa_pet.evaluation_stats import dice
from service.pipelines.fdopa_pet.lesions import FULL_26
from service.pipelines.fdopa_pet.result import (
    MEASURABLE_ML,
    TUMOUR_THRESHOLD_X_BACKGROUND,
    FdopaResult,
)

#: Truth label values in ``truth_seg.nii.gz``.
LESION, ACTIVE, BACKGROUND, STRIATUM, WHITE_MATTER = 1, 2, 3, 4, 5
#: The segmentations the evaluation knows.
METHODS = ("unet", "threshold")
#: The indices compared, as (row key suffix, ideal key in truth.json).
INDICES = (("tbr_max", "tbrmax"), ("tbr_mean", "tbrmean"), ("mtv_ml", "mtv_ml"),
           ("ts", "t_s"), ("tn", "t_n"))


def min_lesion_ml(method: str) -> float:
    """The smallest lesion (mL) ``method`` of :data:`METHODS` reports (:mod:`.lesions`)."""
    from service.pipelines.fdopa_pet.lesions import MIN_LESION_ML, UNET_MIN_LESION_ML

    return UNET_MIN_LESION_ML if method == "unet" else MIN_LESION_ML


@dataclass(frozen=True)
class StudyRef:
    """One benchmark study: its site, its id (the folder name) and its folder."""

    site: str
    study_id: str
    folder: Path


def _num(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def truth_labels_on(path: Path, shape_zyx: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """The truth labels resampled (nearest neighbour, by LPS position) onto a PET grid.

    Exact when the grids coincide (the benchmark writes the labels on the
    static grid); 0 outside the truth's field of view.
    """
    from service.pipelines.fdopa_pet.segment import image_from_zyx

    truth = sitk.ReadImage(str(path))
    reference = image_from_zyx(np.zeros(shape_zyx, np.float32), affine)
    out = sitk.Resample(truth, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    return sitk.GetArrayFromImage(out).astype(np.int16)


def measurable_components(labels_zyx: np.ndarray, voxel_ml: float) -> list[np.ndarray]:
    """Masks of the 26-connected components of label 2 larger than 0.5 mL."""
    comps, n = ndimage.label(labels_zyx == ACTIVE, structure=FULL_26)
    counts = np.bincount(comps.ravel(), minlength=n + 1)
    return [comps == k for k in range(1, n + 1) if counts[k] * voxel_ml > MEASURABLE_ML]


def image_active(volume_zyx: np.ndarray, labels_zyx: np.ndarray) -> tuple[float, np.ndarray]:
    """(background mean on the image, the image's PET-active reference mask) from the truth masks.

    The PET-active reference is the truth lesion (labels 1, 2) at >= 1.6 x
    the image mean in the truth crescent (label 3); NaN and an empty mask
    without a crescent.
    """
    vol = np.asarray(volume_zyx, float)
    crescent = labels_zyx == BACKGROUND
    if not crescent.any():
        return math.nan, np.zeros(vol.shape, bool)
    bg = float(vol[crescent].mean())
    lesion = np.isin(labels_zyx, (LESION, ACTIVE))
    return bg, lesion & (vol >= TUMOUR_THRESHOLD_X_BACKGROUND * bg)


def rule_ceiling(volume_zyx: np.ndarray, labels_zyx: np.ndarray) -> dict[str, float | None]:
    """The ceiling of the 1.6 x rule on this image (module docstring), ``dice_ceiling``.

    None without a PET-active truth (label 2) or a crescent (label 3).
    """
    vol = np.asarray(volume_zyx, float)
    crescent = labels_zyx == BACKGROUND
    active = labels_zyx == ACTIVE
    if not crescent.any() or not active.any():
        return {"dice_ceiling": None}
    hot = vol >= TUMOUR_THRESHOLD_X_BACKGROUND * float(vol[crescent].mean())
    return {"dice_ceiling": dice(active & hot, active)}


def image_reference(volume_zyx: np.ndarray, labels_zyx: np.ndarray,
                    voxel_ml: float) -> dict[str, float | None]:
    """The indices measured on the image with the truth masks (module docstring), ``img_*``."""
    vol = np.asarray(volume_zyx, float)
    lesion = np.isin(labels_zyx, (LESION, ACTIVE))
    bg, active = image_active(vol, labels_zyx)
    if not lesion.any() or not math.isfinite(bg):
        return {f"img_{k}": None for k, _ in INDICES}
    top = float(vol[lesion].max())
    striatum, wm = labels_zyx == STRIATUM, labels_zyx == WHITE_MATTER
    return {
        "img_tbr_max": top / bg,
        "img_tbr_mean": float(vol[active].mean()) / bg if active.any() else None,
        "img_mtv_ml": float(active.sum()) * voxel_ml,
        "img_ts": top / float(vol[striatum].max()) if striatum.any() else None,
        "img_tn": top / float(vol[wm].max()) if wm.any() else None,
    }


def predicted(result: FdopaResult) -> dict[str, float | None]:
    """The pipeline's tumour indices, ``pred_*``; no lesion: MTV 0 and no ratios."""
    t = result.measures.tumour
    if t is None:
        return {"pred_tbr_max": None, "pred_tbr_mean": None, "pred_mtv_ml": 0.0,
                "pred_ts": None, "pred_tn": None}
    return {"pred_tbr_max": _num(t.tbr_max), "pred_tbr_mean": _num(t.tbr_mean),
            "pred_mtv_ml": _num(t.volume_ml), "pred_ts": _num(t.ts_ratio),
            "pred_tn": _num(t.tn_ratio)}


def dynamic_pairs(result: FdopaResult | None, truth: Mapping[str, Any]) -> dict[str, Any]:
    """Tumour TTP (s), slope (%/min) and slope ratio, pipeline and ideal truth (frame starts)."""
    if not truth.get("schedule") or "dyn_tumour_ttp_min_start" not in truth:
        return {"dynamic": False}
    ideal_ttp = _num(truth["dyn_tumour_ttp_min_start"])
    row: dict[str, Any] = {
        "dynamic": True, "pred_ttp_s": None, "pred_slope_pct_min": None,
        "pred_slope_ratio": None,
        "ideal_ttp_s": None if ideal_ttp is None else 60.0 * ideal_ttp,
        "ideal_slope_pct_min": _num(truth.get("dyn_tumour_slope_percent_per_min_start")),
        "ideal_slope_ratio": _num(truth.get("dyn_dsr_start"))}
    dyn = None if result is None else result.dynamic
    if dyn is not None and "tumour" in dyn.tacs:
        p = dyn.get("tumour", "start")
        row |= {"pred_ttp_s": _num(p.ttp_s), "pred_slope_pct_min": _num(p.slope_percent_per_min),
                "pred_slope_ratio": _num(dyn.slope_ratios.get("start"))}
    return row


def compare(result: FdopaResult, labels_zyx: np.ndarray) -> dict[str, Any]:
    """Dice, lesion-level detection and the image reference of one analysed study."""
    static = result.static
    voxel_ml = float(np.prod(static.spacing_zyx_mm)) / 1000.0
    pred = np.zeros(static.shape_zyx, bool)
    for lesion in result.lesions:
        pred |= lesion.mask_zyx
    truth_active = labels_zyx == ACTIVE
    truth_lesion = np.isin(labels_zyx, (LESION, ACTIVE))
    comps = measurable_components(labels_zyx, voxel_ml)
    _, img_active = image_active(static.frames[0].volume_zyx, labels_zyx)
    row: dict[str, Any] = {
        "truth_active_ml": float(truth_active.sum()) * voxel_ml,
        "dice": dice(pred, truth_active) if truth_active.any() else None,
        "dice_img": dice(pred, img_active) if truth_active.any() else None,
        "overlaps_truth": bool((pred & truth_lesion).any()),
        "measurable_lesions": len(comps),
        "measurable_found": sum(bool((c & pred).any()) for c in comps),
        "pred_lesions": len(result.lesions),
        "fp_lesions": sum(not (les.mask_zyx & truth_lesion).any() for les in result.lesions),
    }
    image = static.frames[0].volume_zyx
    return (row | rule_ceiling(image, labels_zyx) | predicted(result)
            | image_reference(image, labels_zyx, voxel_ml))


def truth_row(ref: StudyRef, truth: Mapping[str, Any], method: str) -> dict[str, Any]:
    """The row's identity and the ideal-activity truth (``ideal_*``)."""
    row: dict[str, Any] = {
        "study_id": ref.study_id, "site": ref.site, "method": method,
        "tumour_class": truth.get("tumour_class"), "paediatric": bool(truth.get("paediatric")),
        "location": truth.get("location"), "truth_measurable": bool(truth.get("measurable")),
        "truth_version": int(truth.get("truth_version", 1)),
    }
    for key, ideal in INDICES:
        row[f"ideal_{key}"] = _num(truth.get(ideal))
    return row


def failed_measurable(folder: Path) -> int:
    """Measurable truth lesions of a study (on the truth's own grid), for a failed analysis."""
    image = sitk.ReadImage(str(folder / "truth_seg.nii.gz"))
    voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
    return len(measurable_components(sitk.GetArrayFromImage(image), voxel_ml))
