"""FP-CIT templates on the MNI 2 mm grid of :mod:`service.imaging.atlas`.

Two ways to make the registration target:

* :func:`model_template`: a model-based initial template from the atlas
  (striatum at a normal specific binding, grey and white matter, skull and
  scalp at non-specific levels), smoothed to SPECT resolution. Needs no scans.
* :func:`average_template`: the voxel-wise mean of normal scans that were
  already normalised to MNI space, each scaled to its occipital reference.
  Iterating (normalise to the current template, average, repeat) is done by
  the ``dopanode build-template`` command; this module stays pure.

All arrays are ``[z, y, x]`` float32 on the atlas grid, in units of the
reference (occipital grey matter) concentration, so a template voxel value of
``1 + SBR`` is the striatal concentration.

:func:`activity_map` is also what the unit tests use to make phantoms whose
true SBR is known.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from service.imaging.atlas import LABELS, Atlas
from service.pipelines.dat_spect.result import Region

#: FWHM = 2 sqrt(2 ln 2) sigma.
FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))

#: True (concentration-ratio) SBR of a healthy middle-aged striatum used by the
#: model template. Measured SBRs are lower because of partial volume.
NORMAL_TRUE_SBR: dict[Region, float] = {
    Region.CAUDATE_LEFT: 4.0,
    Region.CAUDATE_RIGHT: 4.0,
    Region.PUTAMEN_LEFT: 3.6,
    Region.PUTAMEN_RIGHT: 3.6,
}


@dataclass(frozen=True)
class TissueUptake:
    """Non-specific uptake per tissue, relative to grey matter (unitless).

    Attributes
    ----------
    grey, white : float
        Brain grey and white matter (grey is the reference, 1.0).
    skull, scalp : float
        Bone and soft tissue outside the brain.
    """

    grey: float = 1.0
    white: float = 0.55
    skull: float = 0.25
    scalp: float = 0.45


def activity_map(
    atlas: Atlas,
    true_sbr: Mapping[Region, float],
    uptake: TissueUptake = TissueUptake(),
) -> np.ndarray:
    """Unsmoothed activity concentration on the atlas grid.

    Parameters
    ----------
    atlas : Atlas
    true_sbr : mapping of Region to float
        Striatal concentration over grey-matter concentration, minus one.
    uptake : TissueUptake

    Returns
    -------
    (91, 109, 91) float32 array
        Concentration, grey matter = 1. Striatal voxels hold ``1 + true_sbr``.
    """
    act = uptake.grey * atlas.gm_zyx + uptake.white * atlas.wm_zyx
    act = np.where(atlas.brain_zyx, act, 0.0)
    act = np.where(atlas.skull_zyx, uptake.skull, act)
    act = np.where(atlas.scalp_zyx, uptake.scalp, act)
    for region in Region:
        act = np.where(atlas.labels_zyx == LABELS[region.value], 1.0 + true_sbr[region], act)
    return act.astype(np.float32)


def smooth(volume_zyx: np.ndarray, fwhm_mm: float, spacing_mm: float) -> np.ndarray:
    """Isotropic Gaussian smoothing.

    Parameters
    ----------
    volume_zyx : (Z, Y, X) array
    fwhm_mm : float
        Full width at half maximum of the kernel, millimetres.
    spacing_mm : float
        Isotropic voxel size, millimetres.

    Returns
    -------
    (Z, Y, X) float32 array
    """
    sigma_vox = fwhm_mm / FWHM_PER_SIGMA / spacing_mm
    return ndimage.gaussian_filter(volume_zyx.astype(np.float32), sigma_vox, mode="constant")


def model_template(atlas: Atlas, fwhm_mm: float = 12.0) -> np.ndarray:
    """Model-based FP-CIT template: a normal activity map at SPECT resolution.

    Parameters
    ----------
    atlas : Atlas
    fwhm_mm : float
        Resolution of the target SPECT, millimetres (10-14 mm is typical for
        [123I]FP-CIT with LEHR/fan-beam collimators).

    Returns
    -------
    (91, 109, 91) float32 array
        Scaled so the occipital reference mean is 1.
    """
    act = smooth(activity_map(atlas, NORMAL_TRUE_SBR), fwhm_mm, float(atlas.spacing_mm[0]))
    return scale_to_reference(act, atlas)


def scale_to_reference(volume_zyx: np.ndarray, atlas: Atlas) -> np.ndarray:
    """Divide a normalised volume by its occipital reference mean.

    Raises
    ------
    ValueError
        If the reference mean is not positive.
    """
    ref = float(volume_zyx[atlas.mask("occipital")].mean())
    if not ref > 0:
        raise ValueError("occipital reference mean is not positive")
    return (volume_zyx / ref).astype(np.float32)


def average_template(normalised_zyx: Sequence[np.ndarray], atlas: Atlas) -> np.ndarray:
    """Mean of normal scans already normalised to the atlas grid.

    Parameters
    ----------
    normalised_zyx : sequence of (91, 109, 91) arrays
        At least one; each is scaled to its own occipital reference first.
    atlas : Atlas

    Returns
    -------
    (91, 109, 91) float32 array
        Occipital reference mean 1.
    """
    if not normalised_zyx:
        raise ValueError("average_template needs at least one scan")
    total = np.zeros(atlas.shape_zyx, np.float64)
    for vol in normalised_zyx:
        if vol.shape != atlas.shape_zyx:
            raise ValueError(f"scan shape {vol.shape} is not the atlas grid {atlas.shape_zyx}")
        total += scale_to_reference(vol, atlas)
    return scale_to_reference((total / len(normalised_zyx)).astype(np.float32), atlas)


def save_template(path: Path, template_zyx: np.ndarray, source: str) -> None:
    """Write a template as ``.npz`` (``template`` float32 array, ``source`` text)."""
    np.savez_compressed(path, template=template_zyx.astype(np.float32), source=np.array(source))


def load_template(path: Path, atlas: Atlas) -> np.ndarray:
    """Read a template written by :func:`save_template`, checking its grid.

    Raises
    ------
    ValueError
        If the array is not on the atlas grid.
    """
    with np.load(path) as npz:
        template = npz["template"].astype(np.float32)
    if template.shape != atlas.shape_zyx:
        raise ValueError(f"template {path.name} has shape {template.shape}, not the atlas grid")
    template.setflags(write=False)
    return template
