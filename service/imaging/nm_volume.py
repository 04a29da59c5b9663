"""A SPECT volume from NM Image Storage instances, geometry from the header.

Frame: LPS, millimetres. Positions are voxel *centres*: Image Position
(Patient) is the centre of the first transmitted pixel (row 0, column 0).
Image Orientation (Patient) holds the row direction cosine (direction in
which the column index increases, the image x axis) followed by the column
direction cosine (direction in which the row index increases, y). Pixel
Spacing is ``[row spacing, column spacing]``: the first value is the distance
between adjacent *rows* (along y), the second between adjacent *columns*
(along x); SimpleITK's spacing is ``(column spacing, row spacing, slice)``.

Geometry sources, in the order they are trusted (PS3.3 C.8.4.8, C.8.4.10,
C.8.4.11): Image Orientation/Position (Patient) from the first item of the
Detector Information Sequence (top-level attributes only if it has none,
with a warning); frame ``i`` lies at ``IPP + (SliceVector[i] - 1) *
SpacingBetweenSlices * (row x column)``, i.e. IPP is taken as the position
of slice 1 (frames in Slice Vector order need not be in file order); Spacing
Between Slices may be negative (GE). A single-frame instance (per-slice
export) is placed by its own IPP; its Slice Vector and spacing are not used. Slices are then sorted along ``row x column``, so the
returned direction is right-handed and the spacing positive.

Reasons raised as :class:`service.errors.AnalysisError` (``code``):
``no_instances``, ``mixed_series``, ``absurd_size``, ``missing_geometry``,
``inconsistent_slices``, ``duplicate_slices``, ``missing_slices``,
``pixel_decode_failed``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset

from service.errors import AnalysisError

MIN_MATRIX = 16
MAX_MATRIX = 1024
MIN_SLICES = 8
MIN_VOXEL_MM = 0.5
MAX_VOXEL_MM = 20.0
#: Tolerances: direction cosines, and positions as a fraction of the step.
_COS_TOL = 1e-4
_POS_FRAC_TOL = 0.05


@dataclass(frozen=True, eq=False)
class NmVolume:
    """A reconstructed NM volume.

    Attributes
    ----------
    image : SimpleITK.Image
        float32, 3-D, LPS; origin is the centre of voxel (0, 0, 0) in mm;
        spacing ``(column, row, slice)`` mm, all positive; direction columns
        are row cosine, column cosine and their cross product.
        ``GetArrayFromImage`` gives ``[slice, row, column]``, values after
        Rescale Slope/Intercept.
    series_instance_uid : str
    n_instances : int
        Instances the volume was built from (duplicates included).
    warnings : tuple of str
        Patient-free notes (fallbacks used, duplicates dropped).
    """

    image: sitk.Image
    series_instance_uid: str
    n_instances: int
    warnings: tuple[str, ...]


@dataclass(frozen=True, eq=False)
class _Slice:
    """One 2-D frame: ``pixels_yx`` (rows, cols) float64, ``position_mm`` (3,) LPS."""

    pixels_yx: np.ndarray
    position_mm: np.ndarray


def _floats(value: object, n: int, what: str) -> np.ndarray:
    try:
        arr = np.asarray([float(v) for v in value], dtype=np.float64)  # type: ignore[attr-defined]
    except (TypeError, ValueError) as exc:
        raise AnalysisError(f"missing geometry: unreadable {what}", "missing_geometry") from exc
    if arr.shape != (n,) or not np.all(np.isfinite(arr)):
        raise AnalysisError(f"missing geometry: {what} needs {n} values", "missing_geometry")
    return arr


def _orientation_position(ds: Dataset, warnings: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(6,) IOP and (3,) IPP: Detector Information Sequence first, else top level."""
    det = ds.get("DetectorInformationSequence")
    item = det[0] if det else None
    if item is not None and item.get("ImageOrientationPatient") and item.get(
        "ImagePositionPatient"
    ):
        iop, ipp = item.ImageOrientationPatient, item.ImagePositionPatient
    elif ds.get("ImageOrientationPatient") and ds.get("ImagePositionPatient"):
        warnings.append("geometry from top-level IOP/IPP, not the Detector Information Sequence")
        iop, ipp = ds.ImageOrientationPatient, ds.ImagePositionPatient
    else:
        raise AnalysisError(
            "missing geometry: no Image Orientation/Position (Patient)", "missing_geometry"
        )
    iop_arr = _floats(iop, 6, "Image Orientation (Patient)")
    row, col = iop_arr[:3], iop_arr[3:]
    if (
        abs(np.linalg.norm(row) - 1) > 1e-3
        or abs(np.linalg.norm(col) - 1) > 1e-3
        or abs(row @ col) > 1e-3
    ):
        raise AnalysisError(
            "missing geometry: Image Orientation (Patient) is not orthonormal",
            "missing_geometry",
        )
    # DS values carry few digits: make the cosines exactly orthonormal
    row = row / np.linalg.norm(row)
    col = col - (col @ row) * row
    col = col / np.linalg.norm(col)
    return np.concatenate([row, col]), _floats(ipp, 3, "Image Position (Patient)")


def _pixel_spacing(ds: Dataset) -> np.ndarray:
    """(2,) ``[row spacing, column spacing]`` mm, checked for plausibility."""
    if not ds.get("PixelSpacing"):
        raise AnalysisError("missing geometry: no Pixel Spacing", "missing_geometry")
    spacing = _floats(ds.PixelSpacing, 2, "Pixel Spacing")
    if np.any(spacing < MIN_VOXEL_MM) or np.any(spacing > MAX_VOXEL_MM):
        raise AnalysisError(
            f"absurd size: pixel spacing {spacing[0]:g} x {spacing[1]:g} mm", "absurd_size"
        )
    return spacing


def _slice_spacing(ds: Dataset, warnings: list[str]) -> float:
    """Signed Spacing Between Slices (mm) of a multi-frame instance."""
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        raw = ds.get(keyword)
        if raw not in (None, ""):
            value = float(raw)
            if keyword == "SliceThickness":
                warnings.append("slice spacing from Slice Thickness (no Spacing Between Slices)")
            if not MIN_VOXEL_MM <= abs(value) <= MAX_VOXEL_MM:
                raise AnalysisError(f"absurd size: slice spacing {value:g} mm", "absurd_size")
            return value
    raise AnalysisError(
        "missing geometry: multi-frame instance without Spacing Between Slices",
        "missing_geometry",
    )


def _slice_vector(ds: Dataset, n_frames: int, warnings: list[str]) -> list[int]:
    """1-based slice index of each frame (Slice Vector, PS3.3 C.8.4.8)."""
    raw = ds.get("SliceVector")
    if raw is None or raw == "" or (not isinstance(raw, int) and len(raw) == 0):
        warnings.append("no Slice Vector: frames taken in file order")
        return list(range(1, n_frames + 1))
    vector = [int(raw)] if isinstance(raw, int) else [int(v) for v in raw]
    if len(vector) != n_frames or sorted(vector) != list(range(1, n_frames + 1)):
        raise AnalysisError(
            f"inconsistent slices: Slice Vector does not number {n_frames} frames 1..n",
            "inconsistent_slices",
        )
    return vector


def _frames(ds: Dataset, n_frames: int) -> np.ndarray:
    """(n_frames, rows, cols) float64 values after Rescale Slope/Intercept."""
    try:
        arr = np.asarray(ds.pixel_array, dtype=np.float64)
    except Exception as exc:  # noqa: BLE001 - any decoder failure is bad input
        raise AnalysisError("pixel data could not be decoded", "pixel_decode_failed") from exc
    if arr.size != n_frames * int(ds.Rows) * int(ds.Columns):
        raise AnalysisError(
            "inconsistent slices: pixel data does not match Number of Frames",
            "inconsistent_slices",
        )
    arr = arr.reshape(n_frames, int(ds.Rows), int(ds.Columns))
    # A DS of "0" is a value, not an absence: never read it as the default 1.
    slope_value, intercept_value = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    slope = 1.0 if slope_value in (None, "") else float(slope_value)
    intercept = 0.0 if intercept_value in (None, "") else float(intercept_value)
    if slope == 0.0:
        raise AnalysisError("inconsistent slices: Rescale Slope is 0", "inconsistent_slices")
    return arr * slope + intercept


def _check_matrix(ds: Dataset) -> None:
    rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    if not (MIN_MATRIX <= rows <= MAX_MATRIX and MIN_MATRIX <= cols <= MAX_MATRIX):
        raise AnalysisError(f"absurd size: {rows}x{cols} pixels", "absurd_size")


def _instance_slices(
    ds: Dataset, iop: np.ndarray, warnings: list[str]
) -> list[_Slice]:
    """All frames of one instance with their LPS centre positions."""
    _check_matrix(ds)
    n_frames = int(ds.get("NumberOfFrames") or 1)
    own_iop, ipp = _orientation_position(ds, warnings)
    if np.max(np.abs(own_iop - iop)) > _COS_TOL:
        raise AnalysisError(
            "inconsistent slices: instances differ in orientation", "inconsistent_slices"
        )
    normal = np.cross(iop[:3], iop[3:])
    frames = _frames(ds, n_frames)
    if n_frames == 1:  # the instance's own IPP places its only frame
        return [_Slice(frames[0], ipp)]
    step = _slice_spacing(ds, warnings)
    vector = _slice_vector(ds, n_frames, warnings)
    return [
        _Slice(frames[i], ipp + (vector[i] - 1) * step * normal)
        for i in range(n_frames)
    ]


def _drop_duplicates(
    slices: list[_Slice], normal: np.ndarray, tol_mm: float, warnings: list[str]
) -> list[_Slice]:
    """Sorted along ``normal``; identical duplicates dropped, conflicting ones refused."""
    ordered = sorted(slices, key=lambda s: float(s.position_mm @ normal))
    kept = [ordered[0]]
    for s in ordered[1:]:
        if np.linalg.norm(s.position_mm - kept[-1].position_mm) > tol_mm:
            kept.append(s)
        elif np.array_equal(s.pixels_yx, kept[-1].pixels_yx):
            warnings.append("identical duplicate slice dropped")
        else:
            raise AnalysisError(
                "duplicate slices: two different slices at the same position",
                "duplicate_slices",
            )
    return kept


def _regular_step(slices: list[_Slice], normal: np.ndarray) -> float:
    """The common slice step (mm, positive); refuses gaps and irregular or sheared stacks."""
    pos = np.asarray([s.position_mm for s in slices])
    along = pos @ normal
    steps = np.diff(along)
    step = float(np.min(steps))
    tol = _POS_FRAC_TOL * step
    if step < MIN_VOXEL_MM:
        raise AnalysisError(
            f"inconsistent slices: slices only {step:.2g} mm apart", "inconsistent_slices"
        )
    if step > MAX_VOXEL_MM:
        raise AnalysisError(f"absurd size: slice spacing {step:g} mm", "absurd_size")
    in_plane = pos - np.outer(along, normal)
    if np.max(np.linalg.norm(in_plane - in_plane[0], axis=1)) > tol:
        raise AnalysisError(
            "inconsistent slices: slice positions are not on one line along the normal",
            "inconsistent_slices",
        )
    ratio = steps / step
    if np.all(np.abs(ratio - 1) <= _POS_FRAC_TOL):
        return step
    if np.all(np.abs(ratio - np.rint(ratio)) <= _POS_FRAC_TOL):
        n_missing = int(np.sum(np.rint(ratio) - 1))
        raise AnalysisError(f"missing slices: {n_missing} gap(s) in the stack", "missing_slices")
    raise AnalysisError("inconsistent slices: irregular slice spacing", "inconsistent_slices")


def _check_series(datasets: Sequence[Dataset]) -> str:
    if not datasets:
        raise AnalysisError("no instances to build a volume from", "no_instances")
    uids = {str(ds.get("SeriesInstanceUID", "")) for ds in datasets}
    if len(uids) != 1:
        raise AnalysisError("instances belong to more than one series", "mixed_series")
    shapes = {(ds.get("Rows"), ds.get("Columns")) for ds in datasets}
    if len(shapes) != 1:
        raise AnalysisError("inconsistent slices: matrix sizes differ", "inconsistent_slices")
    return uids.pop()


def volume_from_datasets(datasets: Sequence[Dataset]) -> NmVolume:
    """Build the LPS volume of one NM series from its instances.

    Parameters
    ----------
    datasets : sequence of pydicom.Dataset
        All instances of one series: a multi-frame RECON TOMO instance, or one
        instance per slice (any order).

    Returns
    -------
    NmVolume
        See the module docstring for the geometry rules.

    Raises
    ------
    service.errors.AnalysisError
        With one of the codes listed in the module docstring.
    """
    series_uid = _check_series(datasets)
    warnings: list[str] = []
    iop, _ = _orientation_position(datasets[0], warnings)
    spacing_yx = _pixel_spacing(datasets[0])
    if any(np.max(np.abs(_pixel_spacing(ds) - spacing_yx)) > 1e-4 for ds in datasets):
        raise AnalysisError("inconsistent slices: pixel spacing differs", "inconsistent_slices")
    slices = [s for ds in datasets for s in _instance_slices(ds, iop, warnings)]
    normal = np.cross(iop[:3], iop[3:])
    slices = _drop_duplicates(slices, normal, 0.01 * float(min(spacing_yx)), warnings)
    if len(slices) < MIN_SLICES:
        raise AnalysisError(f"absurd size: only {len(slices)} slice(s)", "absurd_size")
    step = _regular_step(slices, normal)
    volume = np.stack([s.pixels_yx for s in slices]).astype(np.float32)
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing((float(spacing_yx[1]), float(spacing_yx[0]), step))
    image.SetOrigin(tuple(float(v) for v in slices[0].position_mm))
    direction = np.column_stack([iop[:3], iop[3:], normal])
    image.SetDirection(tuple(float(v) for v in direction.ravel()))
    return NmVolume(image, series_uid, len(datasets), tuple(dict.fromkeys(warnings)))
