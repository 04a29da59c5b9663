"""Digital brain for the DaT SPECT simulator: atlas components and subject variability.

The phantom is built from :func:`service.imaging.atlas.load_atlas` (MNI 2 mm,
LPS). It is a sum of *components*, each a non-negative map of unit activity
concentration, so that a subject's activity is ``sum_c a_c * map_c`` with the
amplitudes ``a_c`` given by :mod:`service.sim.disease`:

* six striatal subregions (caudate, anterior and posterior putamen per side);
* grey and white matter non-specific uptake (striatum excluded);
* extracerebral soft tissue (scalp, face and neck) at low level;
* salivary glands (synthetic ellipsoids: parotid and submandibular).

A subject is the atlas under a random affine (scale, rotation, translation)
and a smooth random deformation. :class:`SubjectTransform` maps scan-space
points (LPS mm) to atlas points, so any atlas map, including the ROI labels
used for validation, can be sampled on the scan grid.

Pure numerics: arrays and frozen dataclasses in and out, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage

from service.imaging.atlas import Atlas, load_atlas

#: Striatal subregions with their own true binding, in manifest order.
STRIATAL_COMPONENTS: tuple[str, ...] = (
    "caudate_left",
    "caudate_right",
    "putamen_anterior_left",
    "putamen_anterior_right",
    "putamen_posterior_left",
    "putamen_posterior_right",
)
#: Non-specific components.
BACKGROUND_COMPONENTS: tuple[str, ...] = (
    "grey_matter",
    "white_matter",
    "extracerebral",
    "salivary",
)
COMPONENTS: tuple[str, ...] = STRIATAL_COMPONENTS + BACKGROUND_COMPONENTS

#: Linear attenuation coefficients at 159 keV (narrow beam), 1/mm.
MU_SOFT_TISSUE_PER_MM = 0.0150
MU_BONE_PER_MM = 0.0250

#: Salivary glands as (centre MNI RAS mm, semi-axes mm) ellipsoids.
_GLANDS_MNI: tuple[tuple[tuple[float, float, float], tuple[float, float, float]], ...] = (
    ((52.0, -12.0, -45.0), (11.0, 16.0, 20.0)),  # right parotid
    ((-52.0, -12.0, -45.0), (11.0, 16.0, 20.0)),  # left parotid
    ((30.0, 15.0, -68.0), (9.0, 12.0, 8.0)),  # right submandibular
    ((-30.0, 15.0, -68.0), (9.0, 12.0, 8.0)),  # left submandibular
)
#: Face and neck soft tissue below the brain: centre (MNI mm) and semi-axes (mm).
_LOWER_HEAD_MNI = ((0.0, 0.0, -62.0), (68.0, 92.0, 40.0))


@dataclass(frozen=True)
class SubjectTransform:
    """Scan-space to atlas-space mapping of one simulated subject.

    ``q_atlas = centre_atlas + M @ (p_scan - centre_scan - translation) + u(p)``
    where ``M`` is the inverse of ``rotation @ diag(scale)`` and ``u`` a smooth
    displacement field given on a coarse control grid spanning the scan grid.

    Attributes
    ----------
    scale : (3,) float array
        Subject size relative to the atlas along LPS x, y, z (about 0.92..1.08).
    rotation_deg : (3,) float array
        Rotations about LPS x, y, z (applied z, y, x), degrees.
    translation_mm : (3,) float array
        Head offset from the scan centre (centre of rotation), LPS mm.
    control_displacement_mm : (3, n, n, n) float array
        Displacement (x, y, z components, mm) at the control points, which are
        spread evenly over the scan grid's bounding box.
    """

    scale: np.ndarray
    rotation_deg: np.ndarray
    translation_mm: np.ndarray
    control_displacement_mm: np.ndarray

    def linear(self) -> np.ndarray:
        """(3, 3) matrix from scan offsets to atlas offsets (LPS)."""
        ax, ay, az = np.deg2rad(self.rotation_deg)
        rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
        ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
        rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
        forward = rx @ ry @ rz @ np.diag(self.scale)
        return np.linalg.inv(forward)


def sample_transform(
    rng: np.random.Generator,
    *,
    max_scale: float = 0.08,
    max_rotation_deg: float = 10.0,
    max_translation_mm: float = 15.0,
    deformation_mm: float = 2.5,
    control_points: int = 5,
) -> SubjectTransform:
    """Draw one subject's anatomy transform (uniform affine, Gaussian deformation)."""
    return SubjectTransform(
        scale=1.0 + rng.uniform(-max_scale, max_scale, 3),
        rotation_deg=rng.uniform(-max_rotation_deg, max_rotation_deg, 3),
        translation_mm=rng.uniform(-max_translation_mm, max_translation_mm, 3),
        control_displacement_mm=rng.normal(0.0, deformation_mm, (3,) + (control_points,) * 3),
    )


@dataclass(frozen=True, eq=False)
class ScanGrid:
    """Isotropic simulation grid centred on the camera's centre of rotation.

    Attributes
    ----------
    shape_zyx : tuple of int
        Number of slices, rows, columns.
    voxel_mm : float
        Isotropic voxel size, mm.
    centre_lps_mm : (3,) float array
        LPS position of the grid centre (the centre of rotation), mm.

    Notes
    -----
    Identity direction: column index runs to patient left (+x), row index to
    posterior (+y), slice index to superior (+z); voxel centres at
    ``centre + voxel_mm * (index - (n - 1) / 2)``.
    """

    shape_zyx: tuple[int, int, int]
    voxel_mm: float
    centre_lps_mm: np.ndarray

    @property
    def origin_lps_mm(self) -> np.ndarray:
        half = (np.array(self.shape_zyx[::-1], float) - 1.0) / 2.0
        return self.centre_lps_mm - self.voxel_mm * half

    def points_lps_mm(self) -> np.ndarray:
        """(3, z, y, x) LPS coordinates (x, y, z components) of all voxel centres."""
        axes = [
            self.origin_lps_mm[i] + self.voxel_mm * np.arange(n)
            for i, n in enumerate(self.shape_zyx[::-1])
        ]
        z, y, x = np.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
        return np.stack([x, y, z])


def atlas_centre_lps_mm(atlas: Atlas) -> np.ndarray:
    """LPS centroid of the atlas brain mask, mm (the head's pivot point)."""
    idx = np.argwhere(atlas.brain_zyx).mean(axis=0)[::-1]
    return atlas.origin_lps_mm + atlas.direction.reshape(3, 3) @ (atlas.spacing_mm * idx)


def map_to_atlas_index(transform: SubjectTransform, grid: ScanGrid, atlas: Atlas) -> np.ndarray:
    """Continuous atlas voxel indices ``(3, z, y, x)`` (index order z, y, x) of scan voxels."""
    pts = grid.points_lps_mm()
    offsets = pts - (grid.centre_lps_mm + transform.translation_mm)[:, None, None, None]
    q = np.einsum("ij,jzyx->izyx", transform.linear(), offsets)
    q += atlas_centre_lps_mm(atlas)[:, None, None, None]
    q += _displacement(transform.control_displacement_mm, grid.shape_zyx)
    direction = atlas.direction.reshape(3, 3)
    rel = q - atlas.origin_lps_mm[:, None, None, None]
    idx_xyz = np.einsum("ij,jzyx->izyx", direction.T, rel) / atlas.spacing_mm[:, None, None, None]
    return idx_xyz[::-1]


def _displacement(control_mm: np.ndarray, shape_zyx: tuple[int, int, int]) -> np.ndarray:
    """Cubic-spline upsampling of control displacements to the grid, (3, z, y, x) mm."""
    n = control_mm.shape[1]
    coords = np.meshgrid(*[np.linspace(0, n - 1, s) for s in shape_zyx], indexing="ij")
    # control arrays are indexed like the grid: [comp, z, y, x]
    return np.stack(
        [ndimage.map_coordinates(c, coords, order=3, mode="nearest") for c in control_mm]
    )


@lru_cache(maxsize=2)
def component_maps(voxel_mm: float) -> dict[str, np.ndarray]:
    """Atlas-space component maps, pre-smoothed for sampling at ``voxel_mm``.

    Returns
    -------
    dict of str to (91, 109, 91) float32 array
        One map per name of :data:`COMPONENTS` plus ``"mu"`` (1/mm), unit
        peak activity concentration; smoothed with a Gaussian whose FWHM makes
        the 2 mm maps behave like ``voxel_mm`` voxel averages (partial volume).
    """
    atlas = load_atlas()
    maps = _raw_component_maps(atlas)
    fwhm_mm = np.sqrt(max(voxel_mm**2 - float(atlas.spacing_mm[0]) ** 2, 0.0))
    sigma_vox = fwhm_mm / 2.3548 / float(atlas.spacing_mm[0])
    out = {}
    for name, m in maps.items():
        sm = ndimage.gaussian_filter(m, sigma_vox) if sigma_vox > 0.1 else m
        sm = sm.astype(np.float32)
        sm.setflags(write=False)
        out[name] = sm
    return out


def _raw_component_maps(atlas: Atlas) -> dict[str, np.ndarray]:
    striatum = np.isin(atlas.labels_zyx, [1, 2, 3, 4])
    maps: dict[str, np.ndarray] = {
        "caudate_left": atlas.mask("caudate_left"),
        "caudate_right": atlas.mask("caudate_right"),
    }
    for part in ("anterior", "posterior"):
        for side in ("left", "right"):
            maps[f"putamen_{part}_{side}"] = atlas.putamen_part(side, part)
    maps = {k: v.astype(np.float32) for k, v in maps.items()}
    maps["grey_matter"] = np.where(striatum, 0.0, atlas.gm_zyx).astype(np.float32)
    maps["white_matter"] = np.where(striatum, 0.0, atlas.wm_zyx).astype(np.float32)
    head = _head_mask(atlas)
    soft = head & ~atlas.brain_zyx & ~atlas.skull_zyx
    glands = _ellipsoids(atlas, _GLANDS_MNI)
    maps["extracerebral"] = (soft & ~glands).astype(np.float32)
    maps["salivary"] = (glands & head).astype(np.float32)
    mu = np.where(head, MU_SOFT_TISSUE_PER_MM, 0.0)
    mu = np.where(atlas.skull_zyx, MU_BONE_PER_MM, mu)
    maps["mu"] = mu.astype(np.float32)
    return maps


def _head_mask(atlas: Atlas) -> np.ndarray:
    """Whole head: brain, skull and scalp with holes filled, plus face and neck."""
    shell = atlas.brain_zyx | atlas.skull_zyx | atlas.scalp_zyx
    filled = np.stack([ndimage.binary_fill_holes(s) for s in shell])
    return filled | _ellipsoids(atlas, (_LOWER_HEAD_MNI,))


def _ellipsoids(
    atlas: Atlas,
    specs: tuple[tuple[tuple[float, float, float], tuple[float, float, float]], ...],
) -> np.ndarray:
    """Union of ellipsoids given in MNI (RAS) mm, as a ``[z, y, x]`` mask."""
    nz, ny, nx = atlas.shape_zyx
    k, j, i = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    lps = [
        atlas.origin_lps_mm[a] + atlas.direction[4 * a] * atlas.spacing_mm[a] * v
        for a, v in enumerate((i, j, k))
    ]
    ras = (-lps[0], -lps[1], lps[2])
    out = np.zeros(atlas.shape_zyx, bool)
    for centre, axes in specs:
        r2 = sum(((ras[a] - centre[a]) / axes[a]) ** 2 for a in range(3))
        out |= r2 <= 1.0
    return out


@dataclass(frozen=True, eq=False)
class SubjectPhantom:
    """One subject's components and maps on a scan grid.

    Attributes
    ----------
    grid : ScanGrid
    components_czyx : (len(COMPONENTS), z, y, x) float32 array
        Unit-concentration component maps on the scan grid.
    mu_zyx : (z, y, x) float32 array
        Attenuation map at 159 keV, 1/mm.
    labels_zyx : (z, y, x) uint8 array
        Atlas ROI labels (:data:`service.imaging.atlas.LABELS`) mapped through the
        known transform (nearest neighbour): the truth ROIs for validation.
    """

    grid: ScanGrid
    components_czyx: np.ndarray
    mu_zyx: np.ndarray
    labels_zyx: np.ndarray


def build_phantom(transform: SubjectTransform, grid: ScanGrid) -> SubjectPhantom:
    """Sample the atlas components, attenuation map and ROI labels on ``grid``."""
    atlas = load_atlas()
    maps = component_maps(float(grid.voxel_mm))
    idx = map_to_atlas_index(transform, grid, atlas)
    comps = np.stack(
        [
            ndimage.map_coordinates(maps[c], idx, order=1, mode="constant", cval=0.0)
            for c in COMPONENTS
        ]
    ).astype(np.float32)
    mu = ndimage.map_coordinates(maps["mu"], idx, order=1, mode="constant", cval=0.0)
    labels = ndimage.map_coordinates(atlas.labels_zyx, idx, order=0, mode="constant", cval=0)
    return SubjectPhantom(
        grid=grid,
        components_czyx=np.clip(comps, 0.0, None),
        mu_zyx=mu.astype(np.float32),
        labels_zyx=labels.astype(np.uint8),
    )
