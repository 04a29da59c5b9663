"""The pose the simulator drew, as a map from MNI brain points to scan points.

A simulated subject is the atlas under :class:`~service.sim.anatomy.SubjectTransform`
(scan point ``p`` to atlas point ``q = c_atlas + M (p - c_scan - t) + u(p)``,
with ``u`` a smooth displacement on a control grid spread over the scan grid)
and, for the broad phantom, a brain shrunk inside the skull by
``Appearance.brain_scale`` about the atlas brain centroid. The brain (the
striatum included) of the scan is therefore at

``p = inverse_subject(c_brain + brain_scale (x_mni - c_brain))``

for an MNI brain point ``x_mni``. :func:`true_scan_points` solves this for
any points (fixed-point iteration on ``u``, which is smooth and a few mm);
it is the truth against which a registration's template-to-scan transform is
measured in mm (``bench/dat_registration.py``).

Frames: LPS millimetres throughout; the scan grid is the simulator's
:class:`~service.sim.anatomy.ScanGrid` (identity direction), which
:func:`service.sim.scan.to_image` keeps.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from service.imaging.atlas import Atlas, load_atlas
from service.sim.anatomy import ScanGrid, SubjectTransform, atlas_centre_lps_mm

#: Fixed-point iterations of the inverse (the displacement is a few mm and smooth).
INVERSE_ITERATIONS = 12


def true_scan_points(
    points_mni_lps: np.ndarray,
    transform: SubjectTransform,
    grid: ScanGrid,
    atlas: Atlas,
    brain_scale: float = 1.0,
) -> np.ndarray:
    """Scan-space LPS positions (mm) of MNI brain points under the drawn pose.

    Parameters
    ----------
    points_mni_lps : (n, 3) float array
        Brain points in MNI space, LPS mm.
    transform : SubjectTransform
    grid : ScanGrid
        The grid the phantom was sampled on (its control points span it).
    atlas : Atlas
    brain_scale : float
        Linear brain size inside the skull (the broad phantom's atrophy; 1 for
        the classic phantom).

    Returns
    -------
    (n, 3) float array
        LPS mm in the scan's frame.
    """
    pts = np.atleast_2d(np.asarray(points_mni_lps, float))
    centre = atlas_centre_lps_mm(atlas)
    target = centre + brain_scale * (pts - centre)  # in the unshrunk atlas
    forward = np.linalg.inv(transform.linear())
    base = grid.centre_lps_mm + transform.translation_mm
    p = base + (target - centre) @ forward.T
    for _ in range(INVERSE_ITERATIONS):
        u = displacement_at(p, transform.control_displacement_mm, grid)
        p = base + (target - centre - u) @ forward.T
    return np.asarray(p)


def displacement_at(points_lps: np.ndarray, control_mm: np.ndarray, grid: ScanGrid) -> np.ndarray:
    """The smooth displacement ``u`` (mm, x y z) at scan points, as the phantom applies it.

    Same cubic-spline interpolation of the control grid as
    :func:`service.sim.anatomy._displacement`, at arbitrary points.
    """
    n = control_mm.shape[1]
    idx_xyz = (points_lps - grid.origin_lps_mm) / grid.voxel_mm
    shape_xyz = np.array(grid.shape_zyx[::-1], float)
    ctrl_xyz = idx_xyz * (n - 1) / (shape_xyz - 1)
    coords = ctrl_xyz[:, ::-1].T  # control arrays are [z, y, x]
    return np.stack(
        [ndimage.map_coordinates(c, coords, order=3, mode="nearest") for c in control_mm], axis=1
    )


def true_scale(transform: SubjectTransform, brain_scale: float = 1.0) -> float:
    """Geometric-mean linear size of the scanned brain relative to MNI (unitless)."""
    return float(np.prod(transform.scale) ** (1.0 / 3.0) * brain_scale)


@dataclass(frozen=True, eq=False)
class PosedScan:
    """A simulated scan with the pose it was drawn under.

    Attributes
    ----------
    image : SimpleITK.Image
        The reconstruction padded to the profile's matrix (LPS, identity direction).
    transform : SubjectTransform
    grid : ScanGrid
        The grid the phantom was sampled on.
    brain_scale : float
        The broad phantom's atrophy (1 for the classic phantom).
    disease_class : str
    """

    image: sitk.Image
    transform: SubjectTransform
    grid: ScanGrid
    brain_scale: float
    disease_class: str

    def scan_points(self, points_mni_lps: np.ndarray) -> np.ndarray:
        """:func:`true_scan_points` of this scan, (n, 3) LPS mm."""
        return true_scan_points(points_mni_lps, self.transform, self.grid, load_atlas(),
                                self.brain_scale)

    @property
    def size(self) -> float:
        """:func:`true_scale` of this scan."""
        return true_scale(self.transform, self.brain_scale)

    def best_affine(self, atlas: Atlas) -> sitk.AffineTransform:
        """Least-squares affine fit of the true mapping over the brain (every 97th voxel).

        A template-to-scan transform as ``SimpleITK.Resample`` expects. The
        simulator adds a smooth non-linear deformation (about 2.5 mm) and
        atrophy inside the skull, so no affine reaches zero error: this is the
        floor of any affine registration, and the truth-placed pose with which
        ``models/template/build_noac_template.py`` averages scans.
        """
        ref = atlas.reference_image()
        idx = np.argwhere(atlas.brain_zyx)[::97][:, ::-1].astype(float)
        dense = np.array([ref.TransformContinuousIndexToPhysicalPoint(i.tolist()) for i in idx])
        coeffs, *_ = np.linalg.lstsq(np.c_[dense, np.ones(len(dense))], self.scan_points(dense),
                                     rcond=None)
        tx = sitk.AffineTransform(3)
        tx.SetMatrix(coeffs[:3].T.ravel().tolist())
        tx.SetTranslation(coeffs[3].tolist())
        return tx


def simulate_posed(profile: str, seed: int, index: int,
                   changes: Mapping[str, object] | None = None,
                   appearance: str = "broad", *, scan: bool = True,
                   anatomy: Mapping[str, object] | None = None) -> PosedScan:
    """Simulate subject ``index`` of an ad-hoc site in memory (one scan of its group).

    Parameters
    ----------
    profile : str
        A camera profile name or ``"broad"`` (:mod:`service.sim.broad_profiles`).
    seed, index : int
        The site's seed and the group (subject) number: draws are deterministic.
    changes : mapping, optional
        Fields of the drawn :class:`~service.sim.profiles.CameraProfile` to
        replace (e.g. ``{"matrix": 64, "voxel_mm": 4.4}``).
    appearance : str
        ``"broad"`` or ``"classic"``.
    scan : bool
        False skips the projection and reconstruction (the pose only; ``image``
        is then an empty 1-voxel image), e.g. to measure a cached scan.
    anatomy : mapping, optional
        Fields of the drawn :class:`~service.sim.appearance.Appearance` to
        replace (broad appearance only; e.g. ``{"salivary": 4.0}``).
    """
    from service.sim.groups import plan_group, plan_scanner
    from service.sim.scan import support_grid, to_image
    from service.sim.sites import SiteSpec

    site = SiteSpec("posed", profile, 1_000_000, seed, "custom", {"multiframe": 1.0}, appearance)
    plan = plan_group(site, index, 1)
    if changes:
        plan = replace(plan, profile=replace(plan.profile, **changes))  # type: ignore[arg-type]
    if anatomy:
        if plan.appearance is None:
            raise ValueError("anatomy changes need the broad appearance")
        plan = replace(plan, appearance=replace(plan.appearance, **anatomy))  # type: ignore[arg-type]
    brain_scale = plan.appearance.brain_scale if plan.appearance else 1.0
    cls = plan.states[0].disease_class
    if not scan:
        return PosedScan(sitk.Image([1, 1, 1], sitk.sitkFloat32), plan.transform,
                         support_grid(plan.profile), brain_scale, cls)
    sim = plan_scanner(plan).scan(plan.states[0], np.random.default_rng(plan.noise_seeds[0]))
    image = to_image(sim.volume_zyx, sim.grid, plan.profile.matrix)
    return PosedScan(image, plan.transform, sim.grid, brain_scale, cls)
