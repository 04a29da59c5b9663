"""Synthetic DaT SPECT volumes with a known pose and known true SBR.

The activity map comes from the atlas (:func:`service.imaging.template.activity_map`),
is smoothed to SPECT resolution on the 2 mm grid, then resampled through a
random rigid+scale pose onto a 64^3, 4 mm LPS grid and given Poisson noise.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from service.imaging.atlas import Atlas
from service.pipelines.dat_spect.result import Region
from service.pipelines.dat_spect.template import activity_map, smooth


@dataclass(frozen=True, eq=False)
class Phantom:
    """A posed synthetic scan.

    Attributes
    ----------
    image : SimpleITK.Image
        64^3 float32 volume, 4 mm voxels, LPS.
    pose : SimpleITK.Transform
        Maps scan points to MNI points (the inverse of what registration finds).
    reference_zyx : (91, 109, 91) float32 array
        The same smoothed activity in MNI space, unposed and noise-free.
    """

    image: sitk.Image
    pose: sitk.Transform
    reference_zyx: np.ndarray


def random_pose(
    rng: np.random.Generator, max_deg: float = 10.0, max_mm: float = 15.0, max_scale: float = 0.08
) -> sitk.AffineTransform:
    """Rotation about each axis, shift along each axis and per-axis scale, uniform."""
    euler = sitk.Euler3DTransform()
    euler.SetRotation(*np.deg2rad(rng.uniform(-max_deg, max_deg, 3)).tolist())
    matrix = np.asarray(euler.GetMatrix()).reshape(3, 3) @ np.diag(
        1.0 + rng.uniform(-max_scale, max_scale, 3)
    )
    pose = sitk.AffineTransform(3)
    pose.SetCenter((0.0, 18.0, 18.0))  # about the middle of the MNI head (LPS)
    pose.SetMatrix(matrix.ravel().tolist())
    pose.SetTranslation(rng.uniform(-max_mm, max_mm, 3).tolist())
    return pose


def make_phantom(
    atlas: Atlas,
    true_sbr: Mapping[Region, float],
    pose: sitk.Transform,
    rng: np.random.Generator,
    fwhm_mm: float = 12.0,
    peak_counts: float = 400.0,
) -> Phantom:
    """Pose, resample to 4 mm and add Poisson noise (``peak_counts`` at the max)."""
    smoothed = smooth(activity_map(atlas, true_sbr), fwhm_mm, float(atlas.spacing_mm[0]))
    src = atlas.reference_image(smoothed)
    grid = sitk.Image([64, 64, 64], sitk.sitkFloat32)
    grid.SetSpacing((4.0, 4.0, 4.0))
    grid.SetOrigin((-126.0, -110.0, -110.0))  # LPS: covers the head with a margin
    posed = sitk.Resample(src, grid, pose, sitk.sitkLinear, 0.0)
    arr = sitk.GetArrayFromImage(posed)
    arr = arr / max(float(arr.max()), 1e-6) * peak_counts
    noisy = rng.poisson(np.clip(arr, 0, None)).astype(np.float32)
    image = sitk.GetImageFromArray(noisy)
    image.CopyInformation(grid)
    return Phantom(image=image, pose=pose, reference_zyx=smoothed)


def normal_sbr(factor: float = 1.0) -> dict[Region, float]:
    """True SBRs of a healthy striatum times ``factor`` (0 = no specific uptake)."""
    return {
        Region.CAUDATE_LEFT: 4.0 * factor,
        Region.CAUDATE_RIGHT: 4.0 * factor,
        Region.PUTAMEN_LEFT: 3.6 * factor,
        Region.PUTAMEN_RIGHT: 3.6 * factor,
    }


#: Striatal regions whose AAL centroids :func:`mni_points` lists first.
POSE_REGIONS = ("caudate_left", "caudate_right", "putamen_left", "putamen_right")
#: MNI RAS mm: AC, frontal pole, occipital pole, vertex, lateral temporal L/R.
LANDMARKS_RAS = ((0.0, 2.0, -4.0), (0.0, 62.0, 4.0), (0.0, -96.0, 6.0), (0.0, -20.0, 70.0),
                 (-62.0, -22.0, -4.0), (62.0, -22.0, -4.0))


def mni_points(atlas: Atlas) -> np.ndarray:
    """LPS mm of the four AAL striatal centroids, then of :data:`LANDMARKS_RAS`, (10, 3)."""
    ref = atlas.reference_image()
    pts = [ref.TransformContinuousIndexToPhysicalPoint(
        np.argwhere(atlas.mask(r)).mean(axis=0)[::-1].tolist()) for r in POSE_REGIONS]
    return np.array(pts + [(-x, -y, z) for x, y, z in LANDMARKS_RAS], float)


def pose_errors_mm(transform: sitk.Transform, truth: np.ndarray, mni: np.ndarray) -> np.ndarray:
    """Distance (mm) of each MNI point mapped by a template-to-scan ``transform`` to its truth."""
    fitted = np.array([transform.TransformPoint(p.tolist()) for p in mni])
    return np.linalg.norm(fitted - truth, axis=1)


def scaled_head_phantom(atlas: Atlas, scale: float, seed: int = 3) -> sitk.Image:
    """A normal phantom of a head ``scale`` x the MNI size, centred (about the head's middle)."""
    pose = sitk.AffineTransform(3)  # scan to MNI
    pose.SetCenter((0.0, 18.0, 18.0))
    pose.SetMatrix(np.diag([1.0 / scale] * 3).ravel().tolist())
    return make_phantom(atlas, normal_sbr(), pose, np.random.default_rng(seed)).image
