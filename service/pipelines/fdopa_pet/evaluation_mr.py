"""The MR-guided FDOPA route against the simulator's truth (issue 13, point 6).

The truth of the FLAIR-guided measures (:func:`flair_truth`, one function)
is the paper's rule applied to the TRUE inputs on the SAME reconstructed
image the route measures, as :mod:`.evaluation` defines the ``img_*``
reference of the PET-only route:

* the true FLAIR lesion: the whole tumour (labels 1 and 2 of
  ``truth_flair_seg.nii.gz``: tumour and oedema) carried onto the static PET
  grid through the simulator's known MR-to-PET pose (``truth.json``
  ``mr_to_pet_angles_deg``, ``mr_to_pet_translation_mm``: ``p_pet = R p_mr +
  t``), with the route's own resampling (:func:`.flair_registration.lesion_on_pet`);
* the true reference regions: contralateral striatum (truth label 4) and
  contralateral white-matter VOI (truth label 5; truth v2 is the pipeline's
  definition: eroded 4 mm, 8 mm from the deep grey matter);
* the VOI: :func:`.measures.genoa_tumour_voi` (lesion voxels above the
  white-matter maximum, low-uptake fallback to the whole lesion) WITHOUT the
  reference code's refinements (:mod:`.voi_refine`): the truth lesion needs
  no cleaning, and the truth stays independent of the pipeline's atlas;
* T/S = VOI max / striatum max, T/N = VOI max / white-matter max on the
  static image; with a dynamic series the VOI's and the striatum's mean TACs
  on the reconstructed frames, TTP at frame start, slopes from 120 s (150 s)
  to the last frame and their ratio, by the pipeline's own kinetics
  (:func:`.curves.analyse_study_dynamic`).

So the comparison measures what the route's automatic parts add: FLAIR
segmentation, FLAIR-to-PET registration, the atlas's reference regions and
the refinements. The ideal-activity values of ``truth.json`` (``t_s``,
``t_n``: the PET-active tumour on the noise-free activity) are kept as
information; their lesion is not the FLAIR lesion.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from service.errors import AnalysisError
from service.imaging.mr_volume import MrVolume
from service.imaging.pet_volume import PetVolume
from service.imaging.suv import SuvScale
from service.pipelines.fdopa_pet.evaluation import BACKGROUND, STRIATUM, WHITE_MATTER
from service.pipelines.fdopa_pet.evaluation_stats import dice
from service.pipelines.fdopa_pet.flair_registration import FlairRegistration
from service.pipelines.fdopa_pet.kinetics import DynamicResult
from service.pipelines.fdopa_pet.measures import genoa_tumour_voi
from service.pipelines.fdopa_pet.result import FdopaResult, FlairGuidedMeasures, Lesion

#: Route reasons' prefixes to the refusal categories counted in the table.
REFUSALS = (("registration refused", "FLAIR registration refused"),
            ("no lesion found", "no lesion found on the FLAIR"),
            ("not a FLAIR", "series is not a FLAIR"),
            ("not a usable volume", "FLAIR not a usable volume"),
            ("outside the PET field of view", "FLAIR lesion outside the PET field of view"),
            ("not segmented", "FLAIR lesion not segmented"),
            ("no FLAIR", "no FLAIR in the study"))


@dataclass(frozen=True, eq=False)
class FlairTruth:
    """The paper's VOI and ratios on the true inputs (module docstring).

    Attributes
    ----------
    voi_zyx : (z, y, x) bool array
    pet_voi : bool
        False: the low-uptake fallback fired on the true lesion.
    ts_ratio, tn_ratio : float
    dynamic : DynamicResult or None
    """

    voi_zyx: np.ndarray
    pet_voi: bool
    ts_ratio: float
    tn_ratio: float
    dynamic: DynamicResult | None = None


def true_registration(truth: Mapping[str, Any]) -> FlairRegistration:
    """The simulator's known pose as the route's registration (PET point to FLAIR point)."""
    from service.sim.fdopa.flair import MrPose

    pose = MrPose(np.asarray(truth["mr_to_pet_angles_deg"], float),
                  np.asarray(truth["mr_to_pet_translation_mm"], float))
    r = pose.matrix()
    return FlairRegistration(r.T, -r.T @ pose.translation_mm, 1.0, 0.0)


def true_flair_lesion(folder: Path, mr: MrVolume) -> np.ndarray:
    """The whole-tumour truth (labels 1, 2) on the FLAIR's native grid, bool."""
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "truth_flair_seg.nii.gz")))
    if labels.shape != mr.array_zyx.shape:
        raise ValueError("FLAIR truth is not on the FLAIR grid")
    return np.asarray(labels > 0)


def flair_truth(lesion_pet_zyx: np.ndarray, labels_zyx: np.ndarray, static: PetVolume,
                dynamic: PetVolume | None = None, suv: SuvScale | None = None,
                injection: dt.datetime | None = None) -> FlairTruth | None:
    """The truth of the FLAIR-guided measures (module docstring); None without a true lesion.

    Parameters
    ----------
    lesion_pet_zyx : (z, y, x) bool array
        The true FLAIR lesion on the static PET grid.
    labels_zyx : (z, y, x) int array
        The PET truth labels on the same grid (3 crescent, 4 contralateral
        striatum, 5 contralateral white-matter VOI).
    static : PetVolume
        The reconstructed static image the route measured.
    dynamic : PetVolume, optional
        The reconstructed dynamic series (the curves), with ``suv`` its SUV
        scale and ``injection`` as the route has them.
    """
    lesion = np.asarray(lesion_pet_zyx, bool)
    striatum, wm = labels_zyx == STRIATUM, labels_zyx == WHITE_MATTER
    if not (lesion.any() and striatum.any() and wm.any()):
        return None
    volume = static.frames[0].volume_zyx
    st_max, wm_max = float(volume[striatum].max()), float(volume[wm].max())
    voi = genoa_tumour_voi(lesion, volume, wm_max, st_max)
    top = float(volume[voi.mask_zyx].max())
    curves = None
    if dynamic is not None and suv is not None:
        from service.pipelines.fdopa_pet.curves import analyse_study_dynamic
        from service.pipelines.fdopa_pet.result import ReferenceRegions

        reference = ReferenceRegions("left", "truth labels", striatum, wm,
                                     labels_zyx == BACKGROUND)
        try:
            curves = analyse_study_dynamic(dynamic, static, (Lesion(1, voi.mask_zyx),),
                                           reference, suv, injection=injection)
        except AnalysisError:
            curves = None
    return FlairTruth(voi.mask_zyx, voi.pet_voi, top / st_max, top / wm_max, curves)


def _num(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def refusal(reason: str) -> str | None:
    """The refusal category of a PET-only route reason (None on the MR-guided route)."""
    if not reason.startswith("PET-only route"):
        return None
    return next((name for key, name in REFUSALS if key in reason), "other")


def dynamic_numbers(prefix: str, dyn: DynamicResult | None) -> dict[str, float | None]:
    """TTP (s), tumour slope (Bq/mL/s) and slope ratio at frame start, keyed ``<prefix>_*``."""
    out: dict[str, float | None] = {f"{prefix}_ttp_s": None, f"{prefix}_slope_bqml_s": None,
                                    f"{prefix}_slope_ratio": None}
    if dyn is None or "tumour" not in dyn.tacs:
        return out
    p = dyn.get("tumour", "start")
    return {f"{prefix}_ttp_s": _num(p.ttp_s), f"{prefix}_slope_bqml_s": _num(p.slope_bqml_per_s),
            f"{prefix}_slope_ratio": _num(dyn.slope_ratios.get("start"))}


def guided_numbers(prefix: str, g: FlairGuidedMeasures | None) -> dict[str, Any]:
    """T/S, T/N, fallback, VOI volume and curves of one variant, keyed ``<prefix>_*``."""
    if g is None:
        return {f"{prefix}_ts": None, f"{prefix}_tn": None, f"{prefix}_fallback": None,
                f"{prefix}_voi_ml": None} | dynamic_numbers(prefix, None)
    return {f"{prefix}_ts": _num(g.ts_ratio), f"{prefix}_tn": _num(g.tn_ratio),
            f"{prefix}_fallback": not g.pet_voi, f"{prefix}_voi_ml": _num(g.voi_ml),
            f"{prefix}_refinements": list(g.voi_refinements)} | dynamic_numbers(prefix, g.dynamic)


def truth_numbers(t: FlairTruth | None, voxel_ml: float) -> dict[str, Any]:
    """The truth's T/S, T/N, fallback and curves, keyed ``truth_*``."""
    if t is None:
        return {"truth_ts": None, "truth_tn": None, "truth_fallback": None,
                "truth_voi_ml": None} | dynamic_numbers("truth", None)
    return {"truth_ts": _num(t.ts_ratio), "truth_tn": _num(t.tn_ratio),
            "truth_fallback": not t.pet_voi,
            "truth_voi_ml": float(t.voi_zyx.sum()) * voxel_ml} | dynamic_numbers("truth",
                                                                                  t.dynamic)


def pet_only_numbers(result: FdopaResult, labels_zyx: np.ndarray) -> dict[str, Any]:
    """Whether the PET-only route found a lesion, and one on the true lesion (labels 1, 2)."""
    truth_lesion = np.isin(labels_zyx, (1, 2))
    return {"pet_only_lesions": len(result.lesions),
            "pet_only_on_truth": any(bool((les.mask_zyx & truth_lesion).any())
                                     for les in result.lesions)}


def flair_dice(pred_zyx: np.ndarray | None, truth_zyx: np.ndarray, voxel_ml: float
               ) -> dict[str, Any]:
    """Dice of the FLAIR lesion on its native grid (None without a true lesion), volumes mL."""
    pred = np.zeros(truth_zyx.shape, bool) if pred_zyx is None else np.asarray(pred_zyx, bool)
    return {"flair_dice": dice(pred, truth_zyx) if truth_zyx.any() else None,
            "flair_truth_ml": float(truth_zyx.sum()) * voxel_ml,
            "flair_pred_ml": float(pred.sum()) * voxel_ml}


def registration_shift(route_lesion_zyx: np.ndarray, true_pose_lesion_zyx: np.ndarray,
                       pet_affine: np.ndarray) -> dict[str, float | None]:
    """The registration's error at the lesion: the same FLAIR lesion carried two ways.

    Parameters
    ----------
    route_lesion_zyx : (z, y, x) bool array
        The segmented FLAIR lesion on the static PET grid through the route's
        registration (:attr:`.result.FlairGuidedMeasures.flair_lesion_zyx`).
    true_pose_lesion_zyx : (z, y, x) bool array
        The same segmented lesion through the simulator's known pose.
    pet_affine : (4, 4) float array
        PET voxel index ``(z, y, x)`` to LPS mm (voxel centre).

    Returns
    -------
    dict
        ``reg_lesion_shift_mm``: distance (mm) between the two masks'
        centroids, so segmentation errors cancel and only the registration
        remains; ``reg_lesion_dice``: their overlap. None when either is empty.
    """
    a, b = np.asarray(route_lesion_zyx, bool), np.asarray(true_pose_lesion_zyx, bool)
    if not (a.any() and b.any()):
        return {"reg_lesion_shift_mm": None, "reg_lesion_dice": None}
    affine = np.asarray(pet_affine, float)

    def centroid_mm(mask: np.ndarray) -> np.ndarray:
        return np.asarray(affine[:3, :3] @ np.argwhere(mask).mean(axis=0) + affine[:3, 3])

    shift = float(np.linalg.norm(centroid_mm(a) - centroid_mm(b)))
    return {"reg_lesion_shift_mm": shift, "reg_lesion_dice": dice(a, b)}
