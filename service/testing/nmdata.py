"""Small NM studies for tests: a volume with an asymmetric marker, in any variant.

Usage (``from service.testing.nmdata import ...``)::

    image = marker_image()                       # 64^3, 4 mm, axial LPS
    paths = write_marker_study(tmp_path, EncodingVariant.PER_SLICE)
    point = marker_lps_mm(image)                 # where the marker must land

The marker is a bright 3x3x3 voxel block at an off-centre, asymmetric index
(left, anterior, superior of centre), plus a dimmer block on the right, so any
flip of any axis moves the brightest voxel away from :func:`marker_lps_mm`.
Everything is deterministic: a seeded Poisson-like background, no files in the
repository.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from service.sim.nm_writer import (
    CameraHeader,
    EncodingVariant,
    SubjectHeader,
    write_nm_study,
)

#: Marker block centre, (x, y, z) voxel index; bright; and a dim one.
MARKER_INDEX_XYZ = (40, 22, 45)
DIM_INDEX_XYZ = (18, 30, 20)
MARKER_VALUE = 400.0
DIM_VALUE = 150.0

CAMERA = CameraHeader(
    manufacturer="SIEMENS",
    model_name="Symbia Intevo",
    collimator="LEHR",
    reconstruction_description="OSEM 4i10s AC SC",
    attenuation_corrected=True,
    scatter_corrected=True,
    energy_window_kev=(143.1, 174.9),
    counts_total=2_500_000,
)
SUBJECT = SubjectHeader(age_years=64, sex="F", injected_activity_mbq=185.0)


def rotation_lps(angles_deg: Sequence[float]) -> np.ndarray:
    """(3, 3) rotation matrix (x, then y, then z axis rotations, degrees)."""
    ax, ay, az = np.deg2rad(np.asarray(angles_deg, float))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def marker_image(
    shape_xyz: tuple[int, int, int] = (64, 64, 64),
    spacing_mm: tuple[float, float, float] = (4.0, 4.0, 4.0),
    direction: np.ndarray | None = None,
    origin_mm: tuple[float, float, float] | None = None,
    seed: int = 7,
) -> sitk.Image:
    """Float32 LPS image: noisy background (mean ~20) plus the two marker blocks.

    Parameters
    ----------
    shape_xyz : (3,) ints, SimpleITK order (columns, rows, slices).
    spacing_mm : (3,) floats, x (column), y (row), z (slice) spacing.
    direction : (3, 3) array, columns are the axis directions in LPS
        (identity = axial, x to patient left, y posterior, z superior).
    origin_mm : LPS centre of voxel (0, 0, 0); default centres the volume.
    """
    nx, ny, nz = shape_xyz
    rng = np.random.default_rng(seed)
    arr = rng.gamma(20.0, 1.0, size=(nz, ny, nx)).astype(np.float32)
    for (ix, iy, iz), value in ((MARKER_INDEX_XYZ, MARKER_VALUE), (DIM_INDEX_XYZ, DIM_VALUE)):
        ix, iy, iz = (int(round(i * n / 64)) for i, n in zip((ix, iy, iz), (nx, ny, nz), strict=True))
        arr[iz - 1 : iz + 2, iy - 1 : iy + 2, ix - 1 : ix + 2] = value
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(tuple(float(s) for s in spacing_mm))
    d = np.eye(3) if direction is None else np.asarray(direction, float)
    img.SetDirection(tuple(float(v) for v in d.ravel()))
    if origin_mm is None:
        half = (np.asarray(shape_xyz, float) - 1) / 2 * np.asarray(spacing_mm, float)
        origin = -(d @ half)
    else:
        origin = np.asarray(origin_mm, float)
    img.SetOrigin(tuple(float(v) for v in origin))
    return img


def marker_lps_mm(image: sitk.Image) -> np.ndarray:
    """(3,) LPS point (mm) of the bright marker's centre voxel in ``image``."""
    arr = sitk.GetArrayFromImage(image)
    iz, iy, ix = np.unravel_index(int(np.argmax(arr)), arr.shape)
    # block is 3 voxels wide: argmax returns its first voxel; use the centre
    block = arr == arr[iz, iy, ix]
    zz, yy, xx = np.nonzero(block)
    centre = (float(xx.mean()), float(yy.mean()), float(zz.mean()))
    return np.asarray(image.TransformContinuousIndexToPhysicalPoint(centre))


def write_marker_study(
    out_dir: Path,
    variant: EncodingVariant | str = EncodingVariant.MULTIFRAME,
    image: sitk.Image | None = None,
    uid_seed: str = "nmdata-marker",
    tracer: str = "dat",
    camera: CameraHeader = CAMERA,
    subject: SubjectHeader = SUBJECT,
) -> list[Path]:
    """Write the marker volume (or ``image``) as one NM series; returns the files."""
    img = marker_image() if image is None else image
    return write_nm_study(img, camera, subject, EncodingVariant(variant), Path(out_dir),
                          uid_seed, tracer=tracer)


def write_all_variants(
    out_dir: Path, image: sitk.Image | None = None, uid_seed: str = "nmdata-marker"
) -> dict[EncodingVariant, list[Path]]:
    """One series per :class:`EncodingVariant`, each in ``out_dir / <variant>``."""
    return {
        v: write_marker_study(Path(out_dir) / str(v), v, image=image, uid_seed=uid_seed)
        for v in EncodingVariant
    }
