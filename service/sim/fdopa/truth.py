"""Known truth of one study: masks, reference regions and the reference metrics.

Definitions (named as in the two reference works, research note fdopa.md §1):

* healthy-brain background ("crescent"): contralateral cortex and white
  matter in a 30 mm axial slab at the lesion's level (at the striatum's level
  for infratentorial and midline lesions), at least 15 mm from the lesion;
* Nancy / PET RANO: TBRmax = max(lesion) / mean(background); PET-active
  tumour = lesion voxels above 1.6 x mean(background); TBRmean = mean(active)
  / mean(background); MTV = active volume (mL); measurable if MTV > 0.5 mL;
* Genoa (paediatric): T/S = max(lesion) / max(contralateral striatum);
  T/N = max(lesion) / max(eroded contralateral cerebral white matter); TTP
  and slopes (linear regression from 120 s to the last frame) of the mean
  tumour and striatum TACs, with frame start and mid-frame times (and from
  150 s with frame starts, the Genoa code's newer-scanner window).

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

ACTIVE_THRESHOLD = 1.6
MEASURABLE_ML = 0.5
SLAB_HALF_MM = 15.0
MARGIN_MM = 15.0


def contralateral(side: str) -> str:
    return "left" if side in ("right", "midline") else "right"


def reference_masks(sm: SubjectMaps) -> dict[str, np.ndarray]:
    """Boolean ``[z, y, x]`` masks: lesion, crescent, contralateral striatum and eroded WM."""
    side = sm.tumour.side if sm.tumour is not None else "midline"
    contra = contralateral(side)
    lab = sm.labels_zyx
    lesion = sm.maps["lesion"] > 0.5
    striatum = lab == LABELS[f"striatum_{contra}"]
    hemisphere = np.isin(lab, [LABELS[f"cortex_{contra}"], LABELS[f"white_matter_{contra}"]])
    vox = sm.grid.voxel_mm
    z = np.arange(sm.grid.shape_zyx[0])
    supratentorial = sm.tumour is not None and sm.tumour.location in (
        "hemisphere", "multifocal", "striatum_adjacent")
    level = lesion if supratentorial and lesion.any() else striatum
    z_centre = float(np.argwhere(level)[:, 0].mean()) if level.any() else z.mean()
    slab = (np.abs(z - z_centre) * vox <= SLAB_HALF_MM)[:, None, None]
    far = ~ndimage.binary_dilation(lesion, iterations=max(1, round(MARGIN_MM / vox))) \
        if lesion.any() else np.ones_like(lesion)
    wm = ndimage.binary_erosion(lab == LABELS[f"white_matter_{contra}"], iterations=1)
    return {
        "lesion": lesion,
        "background": hemisphere & slab & far,
        "striatum_contralateral": striatum,
        "white_matter_contralateral": wm,
    }


def static_truth(
    sm: SubjectMaps, activity_zyx: np.ndarray, bqml_per_suv: float,
    tumour_activity_zyx: np.ndarray | None = None,
) -> tuple[dict[str, object], dict[str, np.ndarray]]:
    """Static reference values and masks (adds ``pet_active``) from an activity volume.

    ``tumour_activity_zyx`` is the tumour's own activity (its component alone):
    maxima (SUVmax, TBRmax, T/S, T/N) are taken from it so that striatal or
    cortical activity sharing a boundary voxel with the lesion does not count
    as tumour; ``touches_striatum`` flags where a measured T/S is not valid.
    The PET-active part (1.6 x background) uses the whole activity, as the
    Nancy ground truth does on images.
    """
    masks = reference_masks(sm)
    bg = float(activity_zyx[masks["background"]].mean())
    values: dict[str, object] = {
        "background_suv_mean": bg / bqml_per_suv,
        "striatum_suvmax": float(activity_zyx[masks["striatum_contralateral"]].max())
        / bqml_per_suv,
        "striatum_suv_mean": float(activity_zyx[masks["striatum_contralateral"]].mean())
        / bqml_per_suv,
        "white_matter_suv_mean": float(activity_zyx[masks["white_matter_contralateral"]].mean())
        / bqml_per_suv,
    }
    lesion = masks["lesion"]
    masks["pet_active"] = lesion & (activity_zyx > ACTIVE_THRESHOLD * bg)
    if lesion.any():
        own = activity_zyx if tumour_activity_zyx is None else tumour_activity_zyx
        top = float(own[lesion].max())
        striatum_any = np.isin(sm.labels_zyx, [LABELS["striatum_left"], LABELS["striatum_right"]])
        active = masks["pet_active"]
        voxel_ml = sm.grid.voxel_mm**3 / 1000.0
        mtv = float(active.sum()) * voxel_ml
        values |= {
            "lesion_ml": float(lesion.sum()) * voxel_ml,
            "suvmax": top / bqml_per_suv,
            "tbrmax": top / bg,
            "tbrmean": float(activity_zyx[active].mean()) / bg if active.any() else None,
            "mtv_ml": mtv,
            "measurable": mtv > MEASURABLE_ML,
            "t_s": top / float(activity_zyx[masks["striatum_contralateral"]].max()),
            "t_n": top / float(activity_zyx[masks["white_matter_contralateral"]].max()),
            "touches_striatum": bool((ndimage.binary_dilation(lesion) & striatum_any).any()),
        }
    return values, masks


def dynamic_truth(
    frames_zyx: list[np.ndarray], masks: dict[str, np.ndarray], schedule: FrameSchedule
) -> dict[str, object]:
    """TTP and slopes of the mean tumour and striatum TACs under both time conventions."""
    out: dict[str, object] = {"schedule": schedule.name}
    regions = {"striatum": masks["striatum_contralateral"]}
    if masks["lesion"].any():
        regions["tumour"] = masks["pet_active"] if masks["pet_active"].any() else masks["lesion"]
    for region, mask in regions.items():
        tac = np.array([float(f[mask].mean()) for f in frames_zyx])
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
