"""Synthetic FLAIR MRI of a simulated subject, in its own pose and frame of reference.

Signal (inversion-recovery spin echo, magnitude; research note §4.2, MRTwin
synthetic-FLAIR recipe): ``S = PD |1 - 2 exp(-TI/T1) + exp(-TR/T1)| exp(-TE/T2)``
summed over the tissue fractions of a voxel (partial volume), times a smooth
multiplicative bias field, with Rician noise. Relaxation values are the
note's 3 T literature set (WM, GM, CSF) and its tumour/oedema/necrosis
multipliers [mem in the note]; TI nulls CSF.

The MR scanner frame differs from the PET frame by a known rigid motion
(:class:`MrPose`), so an analysis must register FLAIR to PET; the truth keeps
the motion for target-registration-error checks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from service.imaging.atlas import load_atlas
from service.sim.anatomy import ScanGrid, SubjectTransform, atlas_centre_lps_mm
from service.sim.fdopa.head import tissue_maps
from service.sim.fdopa.subject import SubjectSpec
from service.sim.fdopa.tumour import TumourMaps

#: (T1 ms, T2 ms, PD) per tissue at 3 T.
RELAXATION: dict[str, tuple[float, float, float]] = {
    "white_matter": (830.0, 80.0, 0.70),
    "grey_matter": (1330.0, 110.0, 0.80),
    "striatum": (1200.0, 95.0, 0.80),
    "csf": (4000.0, 2000.0, 1.00),
    "extracerebral": (380.0, 70.0, 0.90),
    "bone": (300.0, 1.0, 0.05),
    "lesion": (1200.0, 140.0, 0.85),
    "oedema": (1250.0, 200.0, 0.88),
    "necrosis": (2600.0, 900.0, 0.95),
}


@dataclass(frozen=True)
class FlairProtocol:
    """Acquisition of one FLAIR series.

    Attributes
    ----------
    name : str
    acquisition : "2D" or "3D"
    matrix : int
        Rows = columns.
    pixel_mm, slice_mm : float
        In-plane pixel and slice spacing, mm (2D: thick slices).
    n_slices : int
    tr_ms, te_ms, ti_ms : float
    field_t : float
    snr : float
        Mean white-matter signal / noise SD.
    """

    name: str
    acquisition: str
    matrix: int
    pixel_mm: float
    slice_mm: float
    n_slices: int
    tr_ms: float
    te_ms: float
    ti_ms: float
    field_t: float
    snr: float


PROTOCOLS: dict[str, FlairProtocol] = {
    p.name: p
    for p in (
        FlairProtocol("ax2d_3t", "2D", 256, 0.9, 5.0, 30, 9000.0, 120.0, 2500.0, 3.0, 25.0),
        FlairProtocol("ax2d_15t", "2D", 256, 0.9, 5.0, 28, 9000.0, 110.0, 2400.0, 1.5, 18.0),
        FlairProtocol("iso3d_3t", "3D", 192, 1.2, 1.2, 140, 5000.0, 125.0, 1800.0, 3.0, 30.0),
    )
}


@dataclass(frozen=True)
class MrPose:
    """Rigid motion from MR scanner coordinates to PET scanner coordinates (LPS mm).

    ``p_pet = rotation(angles) @ p_mr + translation_mm``.
    """

    angles_deg: np.ndarray
    translation_mm: np.ndarray

    def matrix(self) -> np.ndarray:
        ax, ay, az = np.deg2rad(self.angles_deg)
        rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
        ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
        rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
        return rx @ ry @ rz


def sample_pose(rng: np.random.Generator) -> MrPose:
    """Up to 10 degrees about each axis and 20 mm shift between the two scanners."""
    return MrPose(rng.uniform(-10.0, 10.0, 3), rng.uniform(-20.0, 20.0, 3))


def atlas_index_at(transform: SubjectTransform, pet_grid: ScanGrid,
                   pts_lps: np.ndarray) -> np.ndarray:
    """Continuous atlas indices (z, y, x) of PET-frame points ``(3, ...)`` (LPS mm).

    The same mapping as :func:`service.sim.anatomy.map_to_atlas_index` but at
    arbitrary points: the smooth displacement is interpolated at each point's
    continuous PET-grid index.
    """
    atlas = load_atlas()
    offsets = pts_lps - (pet_grid.centre_lps_mm + transform.translation_mm).reshape(
        (3,) + (1,) * (pts_lps.ndim - 1))
    q = np.einsum("ij,j...->i...", transform.linear(), offsets)
    q += atlas_centre_lps_mm(atlas).reshape((3,) + (1,) * (pts_lps.ndim - 1))
    idx_xyz = (pts_lps - pet_grid.origin_lps_mm.reshape((3,) + (1,) * (pts_lps.ndim - 1))) \
        / pet_grid.voxel_mm
    n = transform.control_displacement_mm.shape[1]
    ctrl = [idx_xyz[2 - a] * (n - 1) / (pet_grid.shape_zyx[a] - 1) for a in range(3)]
    for c in range(3):
        q[c] += ndimage.map_coordinates(transform.control_displacement_mm[c], ctrl, order=3,
                                        mode="nearest")
    rel = q - atlas.origin_lps_mm.reshape((3,) + (1,) * (pts_lps.ndim - 1))
    direction = atlas.direction.reshape(3, 3)
    out = np.einsum("ij,j...->i...", direction.T, rel) / atlas.spacing_mm.reshape(
        (3,) + (1,) * (pts_lps.ndim - 1))
    return out[::-1]


def mr_points(protocol: FlairProtocol) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """MR grid: (3, z, y, x) LPS points in the MR frame, origin (3,), spacing (x, y, z)."""
    spacing = (protocol.pixel_mm, protocol.pixel_mm, protocol.slice_mm)
    shape = (protocol.n_slices, protocol.matrix, protocol.matrix)
    half = (np.array(shape[::-1], float) - 1.0) / 2.0
    origin = -np.array(spacing) * half
    axes = [origin[i] + spacing[i] * np.arange(shape[2 - i]) for i in range(3)]
    z, y, x = np.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
    return np.stack([x, y, z]), origin, spacing


def _signal(t1: float, t2: float, pd: float, p: FlairProtocol) -> float:
    mz = 1.0 - 2.0 * np.exp(-p.ti_ms / t1) + np.exp(-p.tr_ms / t1)
    return float(pd * abs(mz) * np.exp(-p.te_ms / t2))


@dataclass(frozen=True, eq=False)
class FlairImage:
    """A synthetic FLAIR on its MR grid.

    Attributes
    ----------
    volume_zyx : (slices, rows, cols) float32 array, arbitrary units.
    truth_zyx : uint8 array: 1 lesion (incl. necrosis), 2 oedema.
    origin_lps_mm : (3,) array; spacing_mm : (x, y, z)
    pose : MrPose
    """

    volume_zyx: np.ndarray
    truth_zyx: np.ndarray
    origin_lps_mm: np.ndarray
    spacing_mm: tuple[float, ...]
    pose: MrPose


def synthesise_flair(spec: SubjectSpec, pet_grid: ScanGrid, tumour: TumourMaps | None,
                     protocol: FlairProtocol, rng: np.random.Generator) -> FlairImage:
    """FLAIR of ``spec`` under ``protocol`` (see module docstring)."""
    pose = sample_pose(rng)
    pts_mr, origin, spacing = mr_points(protocol)
    pts_pet = np.einsum("ij,j...->i...", pose.matrix(), pts_mr) + pose.translation_mm.reshape(
        3, 1, 1, 1)
    idx = atlas_index_at(spec.transform, pet_grid, pts_pet).astype(np.float32)
    maps = dict(tissue_maps())
    if tumour is not None:
        maps |= {"lesion": tumour.lesion_zyx, "oedema": tumour.oedema_zyx,
                 "necrosis": tumour.necrosis_zyx}

    def sample(m: np.ndarray) -> np.ndarray:
        return ndimage.map_coordinates(m, idx, order=1, mode="constant", cval=0.0)

    fr = {k: sample(v) for k, v in maps.items() if k in RELAXATION}
    abnormal = np.clip(fr.get("lesion", 0.0) + fr.get("oedema", 0.0), 0.0, 1.0)
    signal: np.ndarray = np.zeros(idx.shape[1:], np.float32)
    for name in ("white_matter", "grey_matter", "striatum", "csf"):
        signal += (1.0 - abnormal) * fr[name] * _signal(*RELAXATION[name], protocol)
    for name in ("extracerebral", "bone"):
        signal += fr[name] * _signal(*RELAXATION[name], protocol)
    if tumour is not None:
        solid = np.clip(fr["lesion"] - fr["necrosis"], 0.0, None)
        signal += solid * _signal(*RELAXATION["lesion"], protocol)
        signal += fr["oedema"] * _signal(*RELAXATION["oedema"], protocol)
        signal += fr["necrosis"] * _signal(*RELAXATION["necrosis"], protocol)
    bias = ndimage.zoom(rng.normal(0.0, 1.0, (4, 4, 4)), np.array(signal.shape) / 4.0, order=3)
    nz, ny, nx = signal.shape
    signal = signal * (1.0 + 0.12 * bias[:nz, :ny, :nx])
    wm_level = _signal(*RELAXATION["white_matter"], protocol)
    sigma = wm_level / protocol.snr
    noisy = np.hypot(signal + rng.normal(0, sigma, signal.shape),
                     rng.normal(0, sigma, signal.shape))
    truth = np.zeros(signal.shape, np.uint8)
    if tumour is not None:
        truth[fr["oedema"] > 0.5] = 2
        truth[fr["lesion"] > 0.5] = 1
    volume = (noisy * (1000.0 / wm_level)).astype(np.float32)
    return FlairImage(volume, truth, origin, spacing, pose)
