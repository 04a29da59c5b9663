"""Known truth of one study: masks, reference regions and the reference metrics.

Definitions (named as in the two reference works, research note fdopa.md §1);
truth version :data:`TRUTH_VERSION` (recorded in every ``truth.json``):

* **lesion**: simulated lesion occupancy > 0.5 on the simulation grid; the
  **main lesion** is its largest 26-connected component (a multifocal
  tumour's largest focus); the side is that of the largest lesion
  (:class:`service.sim.fdopa.tumour.TumourMaps.side`);
* **lesion activity** (every tumour index below uses this one activity):
  the whole activity of the voxel with the striatum's specific uptake
  replaced by grey matter's (:func:`lesion_suv`). The Nancy / PET RANO
  reference VOI is the 1.6 x background threshold on the image inside an
  expert box drawn around the tumour, which leaves physiological striatal
  uptake out (the Genoa code likewise removes the striatum from the tumour
  VOI); on the image the rim keeps its partial volume of normal brain, so the
  normal grey and white matter fractions of lesion voxels stay in;
* healthy-brain background ("crescent"): contralateral cortex and white
  matter in a 30 mm axial slab at the main lesion's level (at the striatum's
  level for infratentorial and midline lesions), at least 15 mm from every
  lesion voxel;
* Nancy / PET RANO: TBRmax = max(lesion activity in the lesion) /
  mean(background); PET-active tumour = lesion voxels whose lesion activity
  is >= 1.6 x mean(background); TBRmean = mean(lesion activity over the
  PET-active part) / mean(background); MTV = active volume (mL); measurable
  if MTV > 0.5 mL. Hence TBRmean <= TBRmax, and measurable implies
  TBRmax >= 1.6, by construction;
* Genoa (paediatric): T/S = max(lesion) / max(contralateral striatum, lesion
  voxels removed); T/N = max(lesion) / max(contralateral white-matter VOI).
  The white-matter VOI is the pipeline's
  (:mod:`service.pipelines.fdopa_pet.reference`; the Genoa code uses an
  eroded cerebral WM atlas label): contralateral cerebral white matter whose
  voxel centres lie more than :data:`WM_EROSION_MM` from the label's edge, at
  least :data:`DEEP_GREY_MARGIN_MM` from the striatum and thalamus of either
  side and at least 15 mm from every lesion voxel, so its maximum is white
  matter, not spill-over from the deep grey matter or cortex; TTP and slopes
  (linear regression from 120 s to the last frame) of the mean tumour
  (PET-active part, lesion activity) and striatum TACs, with frame start and
  mid-frame times (and from 150 s with frame starts, the Genoa code's
  newer-scanner window).

The contralateral side of a midline lesion is the left (the Genoa code's
default for infratentorial lesions). All values are computed on the ideal
(noise- and blur-free) activity on the simulation grid.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from service.sim.fdopa.head import LABELS
from service.sim.fdopa.kinetics import FrameSchedule, slope, time_to_peak_min
from service.sim.fdopa.subject import SubjectMaps

#: Version of the truth definitions (module docstring); 2: one lesion activity for every
#: tumour index, the pipeline's white-matter VOI, the main lesion for multifocal tumours.
TRUTH_VERSION = 2
ACTIVE_THRESHOLD = 1.6
MEASURABLE_ML = 0.5
SLAB_HALF_MM = 15.0
MARGIN_MM = 15.0
#: White-matter VOI: minimum depth inside the label, mm (the pipeline's ``WM_EROSION_MM``).
WM_EROSION_MM = 4.0
#: White-matter VOI: minimum distance from striatum and thalamus, mm (``DEEP_GREY_MARGIN_MM``).
DEEP_GREY_MARGIN_MM = 8.0
_FULL = np.ones((3, 3, 3), bool)


def contralateral(side: str) -> str:
    return "left" if side in ("right", "midline") else "right"


def lesion_suv(suv: dict[str, float]) -> dict[str, float]:
    """Tissue SUVs of the lesion activity: the striatum at grey matter's uptake."""
    return dict(suv) | {"striatum": suv["grey_matter"]}


def main_lesion(lesion: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of ``lesion`` (all False when empty)."""
    labels, n = ndimage.label(lesion, structure=_FULL)
    if n <= 1:
        return np.asarray(labels > 0)
    counts = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    return np.asarray(labels == 1 + int(np.argmax(counts)))


def white_matter_reference(labels_zyx: np.ndarray, side: str, voxel_mm: float) -> np.ndarray:
    """Cerebral WM of ``side`` deeper than WM_EROSION_MM and away from the deep grey matter."""
    wm = labels_zyx == LABELS[f"white_matter_{side}"]
    deep = np.isin(labels_zyx, [LABELS["striatum_left"], LABELS["striatum_right"],
                                LABELS["thalamus_left"], LABELS["thalamus_right"]])
    inside = ndimage.distance_transform_edt(wm, sampling=voxel_mm) > WM_EROSION_MM
    away = ndimage.distance_transform_edt(~deep, sampling=voxel_mm) >= DEEP_GREY_MARGIN_MM
    return np.asarray(inside & away)


def reference_masks(sm: SubjectMaps) -> dict[str, np.ndarray]:
    """Boolean ``[z, y, x]`` masks: lesion, crescent, contralateral striatum and WM VOI."""
    side = sm.tumour.side if sm.tumour is not None else "midline"
    contra = contralateral(side)
    lab = sm.labels_zyx
    lesion = sm.maps["lesion"] > 0.5
    striatum = (lab == LABELS[f"striatum_{contra}"]) & ~lesion
    hemisphere = np.isin(lab, [LABELS[f"cortex_{contra}"], LABELS[f"white_matter_{contra}"]])
    vox = sm.grid.voxel_mm
    z = np.arange(sm.grid.shape_zyx[0])
    supratentorial = sm.tumour is not None and sm.tumour.location in (
        "hemisphere", "multifocal", "striatum_adjacent")
    level = main_lesion(lesion) if supratentorial and lesion.any() else striatum
    z_centre = float(np.argwhere(level)[:, 0].mean()) if level.any() else z.mean()
    slab = (np.abs(z - z_centre) * vox <= SLAB_HALF_MM)[:, None, None]
    far = ndimage.distance_transform_edt(~lesion, sampling=vox) >= MARGIN_MM \
        if lesion.any() else np.ones_like(lesion)
    return {
        "lesion": lesion,
        "background": hemisphere & slab & far,
        "striatum_contralateral": striatum,
        "white_matter_contralateral": white_matter_reference(lab, contra, vox) & far,
    }


def static_truth(
    sm: SubjectMaps, activity_zyx: np.ndarray, bqml_per_suv: float,
    lesion_activity_zyx: np.ndarray | None = None,
) -> tuple[dict[str, object], dict[str, np.ndarray]]:
    """Static reference values and masks (adds ``pet_active``) from an activity volume.

    ``activity_zyx`` is the whole activity (background, striatum and white
    matter are measured on it); ``lesion_activity_zyx`` the lesion activity
    (module docstring; :func:`lesion_suv`), on which every tumour index is
    taken: SUVmax, TBRmax, the PET-active part, TBRmean, MTV, T/S and T/N.
    None: the whole activity. ``touches_striatum`` flags where a measured T/S
    on an image is not valid.
    """
    masks = reference_masks(sm)
    bg = float(activity_zyx[masks["background"]].mean())
    striatum_max = float(activity_zyx[masks["striatum_contralateral"]].max())
    wm_max = float(activity_zyx[masks["white_matter_contralateral"]].max())
    values: dict[str, object] = {
        "truth_version": TRUTH_VERSION,
        "background_suv_mean": bg / bqml_per_suv,
        "striatum_suvmax": striatum_max / bqml_per_suv,
        "striatum_suv_mean": float(activity_zyx[masks["striatum_contralateral"]].mean())
        / bqml_per_suv,
        "white_matter_suv_mean": float(activity_zyx[masks["white_matter_contralateral"]].mean())
        / bqml_per_suv,
    }
    lesion = masks["lesion"]
    own = activity_zyx if lesion_activity_zyx is None else lesion_activity_zyx
    masks["pet_active"] = lesion & (own >= ACTIVE_THRESHOLD * bg)
    if lesion.any():
        top = float(own[lesion].max())
        striatum_any = np.isin(sm.labels_zyx, [LABELS["striatum_left"], LABELS["striatum_right"]])
        active = masks["pet_active"]
        mtv = float(active.sum()) * sm.grid.voxel_mm**3 / 1000.0
        values |= {
            "lesion_ml": float(lesion.sum()) * sm.grid.voxel_mm**3 / 1000.0,
            "suvmax": top / bqml_per_suv,
            "tbrmax": top / bg,
            "tbrmean": float(own[active].mean()) / bg if active.any() else None,
            "mtv_ml": mtv,
            "measurable": mtv > MEASURABLE_ML,
            "t_s": top / striatum_max,
            "t_n": top / wm_max,
            "touches_striatum": bool((ndimage.binary_dilation(lesion) & striatum_any).any()),
        }
    return values, masks


def dynamic_truth(
    frames_zyx: list[np.ndarray], masks: dict[str, np.ndarray], schedule: FrameSchedule,
    lesion_frames_zyx: list[np.ndarray] | None = None,
) -> dict[str, object]:
    """TTP and slopes of the mean tumour and striatum TACs under both time conventions.

    The striatum TAC is taken on ``frames_zyx`` (whole activity), the tumour
    TAC on ``lesion_frames_zyx`` (lesion activity per frame; None: the whole
    activity) over the PET-active part (the lesion when none is active).
    """
    out: dict[str, object] = {"schedule": schedule.name}
    regions = {"striatum": (masks["striatum_contralateral"], frames_zyx)}
    if masks["lesion"].any():
        regions["tumour"] = (masks["pet_active"] if masks["pet_active"].any()
                             else masks["lesion"], lesion_frames_zyx or frames_zyx)
    for region, (mask, frames) in regions.items():
        tac = np.array([float(f[mask].mean()) for f in frames])
        out[f"{region}_tac_bqml"] = [round(v, 2) for v in tac]
        for conv, times in (("start", schedule.starts_s), ("mid", schedule.mids_s)):
            out[f"{region}_ttp_min_{conv}"] = time_to_peak_min(tac, times)
            per_s, pct = slope(tac, times, from_s=120.0)
            out[f"{region}_slope_bqml_per_s_{conv}"] = per_s
            out[f"{region}_slope_percent_per_min_{conv}"] = pct
        # Genoa's newer scanner starts the fit at 150 s (frame-start convention)
        if (schedule.starts_s >= 150.0 - 1e-6).sum() >= 2:
            out[f"{region}_slope_bqml_per_s_start_from150"] = slope(
                tac, schedule.starts_s, from_s=150.0)[0]
    if "tumour" in regions:
        out["dsr_start"] = float(out["tumour_slope_bqml_per_s_start"]) / float(  # type: ignore[arg-type]
            out["striatum_slope_bqml_per_s_start"])  # type: ignore[arg-type]
    return out
