"""The DaT registration gate: appearance-independent checks of a fitted normalisation.

One correlation threshold with a simulated template refused correctly aligned
scans that looked different (issue 10: 0.55-0.59 for images derived from real
patients, gate 0.7). The gate now asks questions whose answers do not depend
on the camera's filter, reconstruction, counts or the subject's striatal
shape, measured after resampling onto the atlas grid (the scan smoothed,
divided by its head median and clipped, as the engine compares it):

1. **head size**: the similarity's free isotropic scale is not far outside an
   adult head's (:data:`NOT_A_HEAD_OUTSIDE`; the engine itself never fits
   past :data:`service.imaging.register.HEAD_SCALE_RANGE`);
2. **head outline**: the scan's head outline overlaps the template's (Dice
   within the scan's field of view, at least :data:`MIN_HEAD_DICE`);
3. **striatal hot spot**: the hottest :data:`HOT_SPOT_ML` of the brain; where
   it is clearly hot (mean at least :data:`HOT_X_BRAIN_MEDIAN` times the
   brain median: a striatum with uptake), at least :data:`MIN_HOT_IN_STRIATUM`
   of it lies in the atlas striatum dilated by :data:`STRIATUM_MARGIN_MM`; a
   scan without a hot spot (no striatal uptake) is not judged by this check;
4. **similarity**: the correlation of the processed scan with the processed
   template outside the striatum is at least :data:`MIN_QUALITY` (a loose
   floor against noise and wrong anatomy, not an appearance gate).

The first failed check is the refusal, ``<check>, <value>``, patient-free.
Thresholds are measured by ``bench/dat_registration.py`` (docs/dat_registration.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from service.imaging import register
from service.imaging.atlas import Atlas

#: A free similarity scale outside this is not an adult head (wrong anatomy, a
#: child, a phantom of another size): refused. Between it and the engine's
#: bound (0.85-1.15) the scan is fitted at the bound.
NOT_A_HEAD_OUTSIDE = (0.75, 1.33)
#: Least Dice of the head outlines (inside the scan's field of view).
MIN_HEAD_DICE = 0.80
#: The hot spot: the hottest this many ml of the brain (inside the field of view).
HOT_SPOT_ML = 8.0
#: The hot-spot check applies when the hot spot's mean is at least this x the
#: brain median (a visible striatum; a scan without striatal uptake is not judged).
HOT_X_BRAIN_MEDIAN = 1.8
#: Least fraction of the hot voxels inside the dilated atlas striatum.
MIN_HOT_IN_STRIATUM = 0.5
#: Dilation of the atlas striatum for the hot-spot check, mm.
STRIATUM_MARGIN_MM = 4.0
#: Floor of the processed correlation outside the striatum.
MIN_QUALITY = 0.55


@dataclass(frozen=True)
class Checks:
    """Measurements of the gate (see module docstring).

    Attributes
    ----------
    head_size : float
        Isotropic scale of the similarity stage (scan mm per MNI mm).
    head_dice : float
        Dice of the head outlines inside the field of view, 0..1.
    hot_contrast : float
        Mean of the hot spot over the brain median.
    hot_in_striatum : float
        Fraction of them in the dilated atlas striatum (nan if none).
    quality : float
        Processed correlation outside the striatum, -1..1.
    failure : str or None
        ``"<check>, <value>"`` of the first failed check, else None.
    """

    head_size: float
    head_dice: float
    hot_contrast: float
    hot_in_striatum: float
    quality: float
    failure: str | None


def run_checks(processed_zyx: np.ndarray, fov_zyx: np.ndarray, template_head_zyx: np.ndarray,
               atlas: Atlas, fitted: register.Fit, quality: float) -> Checks:
    """Measure and judge a registration (arrays on the atlas grid).

    Parameters
    ----------
    processed_zyx : (91, 109, 91) float32 array
        The resampled scan, smoothed, in units of its head median, clipped.
    fov_zyx : (91, 109, 91) bool array
        Where the scan has data (its grid mapped onto the atlas).
    template_head_zyx : (91, 109, 91) bool array
        The template's head outline.
    atlas : Atlas
    fitted : service.imaging.register.Fit
    quality : float

    Returns
    -------
    Checks
    """
    head = register.head_mask(processed_zyx)
    template_head = template_head_zyx & fov_zyx
    overlap = float((head & template_head).sum())
    denom = float(head.sum() + template_head.sum())
    dice = 2.0 * overlap / denom if denom > 0 else 0.0
    hot, contrast = _hot_spot(processed_zyx, atlas.brain_zyx & fov_zyx)
    n_hot = int(hot.sum())
    grow = max(1, int(round(STRIATUM_MARGIN_MM / float(atlas.spacing_mm[0]))))
    striatum = ndimage.binary_dilation((atlas.labels_zyx >= 1) & (atlas.labels_zyx <= 4),
                                       iterations=grow)
    in_striatum = float((hot & striatum).sum() / n_hot) if n_hot else float("nan")
    lo, hi = NOT_A_HEAD_OUTSIDE
    failure = None
    if not lo <= fitted.similarity_scale <= hi:
        failure = f"head size x{fitted.similarity_scale:.2f} outside {lo:.2f}-{hi:.2f}"
    elif dice < MIN_HEAD_DICE:
        failure = f"head outline overlap {dice:.2f} < {MIN_HEAD_DICE:.2f}"
    elif contrast >= HOT_X_BRAIN_MEDIAN and in_striatum < MIN_HOT_IN_STRIATUM:
        failure = (f"striatal hot spot {100 * in_striatum:.0f} % inside the striatum "
                   f"< {100 * MIN_HOT_IN_STRIATUM:.0f} %")
    elif not quality >= MIN_QUALITY:
        failure = f"quality {quality:.2f} < {MIN_QUALITY:.2f}"
    return Checks(fitted.similarity_scale, dice, contrast, in_striatum, quality, failure)



def _hot_spot(processed_zyx: np.ndarray, brain_zyx: np.ndarray) -> tuple[np.ndarray, float]:
    """The hottest :data:`HOT_SPOT_ML` of ``brain_zyx`` (2 mm voxels) and its contrast."""
    values = processed_zyx[brain_zyx]
    if values.size == 0:
        return np.zeros(processed_zyx.shape, bool), 0.0
    n = max(1, min(values.size, int(round(HOT_SPOT_ML * 1000.0 / 8.0))))
    level = float(np.partition(values, values.size - n)[values.size - n])
    hot = brain_zyx & (processed_zyx >= level)
    median = float(np.median(values))
    return hot, float(processed_zyx[hot].mean() / median) if median > 0 else 0.0
