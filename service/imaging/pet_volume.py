"""PET series to volume(s): geometry from the header through highdicom, frame timing per frame.

Encodings (PS3.3 C.8.9.1 PET Series, C.8.9.4 PET Image, C.8.22 Enhanced PET):

* PET Image Storage, one instance per slice, static (``STATIC\\IMAGE``) or
  dynamic (``DYNAMIC\\IMAGE``, Number of Slices x Number of Time Slices
  instances). Time frame of an instance: ``(Image Index - 1) // Number of
  Slices`` (C.8.9.4.1.9); without Image Index, instances are grouped by
  Acquisition Date/Time and Actual Frame Duration. Instance order in the
  files is irrelevant (Philips dynamic numbers instances backwards).
* Enhanced PET and Legacy Converted Enhanced PET (one multi-frame instance):
  time frames from the Frame Content Sequence (Frame Acquisition DateTime and
  Duration, else Temporal Position Index), per-frame Rescale Slope from the
  Pixel Value Transformation functional group.

Stacking and the modality LUT are highdicom's (``get_volume_from_series``,
``Image.get_volume``, ``Image.get_frames`` with ``spatial.get_volume_positions``).

Geometry: LPS mm; ``affine`` maps a voxel index ``(z, y, x)`` = (slice, row,
column) to the LPS position of the voxel *centre* (Image Position (Patient)
is the centre of the first pixel). Column 0 of the affine is the slice step,
oriented along the slice normal ``row cosine x column cosine`` (slices are
flipped if highdicom stacked them the other way); column 1 is ``column
cosine x Pixel Spacing[0]`` (row spacing), column 2 ``row cosine x Pixel
Spacing[1]`` (column spacing).

Timing: ``start_s`` of a frame is its Acquisition Date/Time (the real-world
start of accumulation, C.8.9.4.1.4) minus that of the first frame; when it is
missing, Frame Reference Time (ms from the series reference) minus half the
duration (the mid-frame convention of long-lived nuclides, C.8.9.4.1.5), with
a warning. ``mid_s = start_s + duration_s / 2``.

Refusals raise :class:`service.errors.AnalysisError` with a patient-free
reason and one of the codes ``no_instances``, ``mixed_series``,
``not_pet``, ``missing_geometry``, ``inconsistent_geometry``,
``missing_slices``, ``duplicate_slices``, ``mixed_frames``,
``missing_frames``, ``missing_timing``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset

from service.dicom import codes as dicom_codes
from service.errors import AnalysisError
from service.imaging.pet_header import (
    FrameTiming,
    frame_times,
    instance_timing,
    parse_datetime,
)
from service.imaging.slice_stack import check_series, check_stack, multiframe_volume, oriented

_PER_SLICE = {dicom_codes.PET_IMAGE_STORAGE}
_MULTIFRAME = {dicom_codes.ENHANCED_PET_IMAGE_STORAGE,
               dicom_codes.LEGACY_CONVERTED_ENHANCED_PET_IMAGE_STORAGE}


@dataclass(frozen=True, eq=False)
class PetFrame:
    """One time frame.

    Attributes
    ----------
    start_s, duration_s, mid_s : float
        Frame start (from the first frame's start), duration and middle, s.
    volume_zyx : (z, y, x) float32 array
        Values after the modality LUT (Rescale Slope/Intercept), in the
        series' Units (BQML: Bq/mL; CNTS: counts; GML: SUVbw g/mL).
    """

    start_s: float
    duration_s: float
    mid_s: float
    volume_zyx: np.ndarray


@dataclass(frozen=True, eq=False)
class PetVolume:
    """The frames of one PET series on one grid.

    Attributes
    ----------
    frames : tuple of PetFrame
        In time order; one for a static series.
    affine : (4, 4) float64 array
        Voxel index ``(z, y, x)`` to LPS mm of the voxel centre (module docstring).
    series_uid, frame_of_reference_uid : str
    is_dynamic : bool
    first_frame_start : datetime.datetime or None
        Acquisition Date/Time of the first frame (naive, scanner clock).
    warnings : tuple of str
        Patient-free notes on fallbacks used.
    """

    frames: tuple[PetFrame, ...]
    affine: np.ndarray
    series_uid: str
    frame_of_reference_uid: str
    is_dynamic: bool
    first_frame_start: dt.datetime | None
    warnings: tuple[str, ...] = ()

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        return tuple(int(v) for v in self.frames[0].volume_zyx.shape)  # type: ignore[return-value]

    @property
    def spacing_zyx_mm(self) -> np.ndarray:
        """(3,) voxel size along z (slice), y (row), x (column), mm."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    @property
    def starts_s(self) -> np.ndarray:
        return np.array([f.start_s for f in self.frames])

    @property
    def durations_s(self) -> np.ndarray:
        return np.array([f.duration_s for f in self.frames])

    @property
    def mids_s(self) -> np.ndarray:
        return np.array([f.mid_s for f in self.frames])

    def to_simpleitk(self, frame: int = 0) -> sitk.Image:
        """Frame ``frame`` as a SimpleITK image (LPS, origin = first voxel centre)."""
        image = sitk.GetImageFromArray(self.frames[frame].volume_zyx)
        spacing = self.spacing_zyx_mm
        image.SetSpacing((float(spacing[2]), float(spacing[1]), float(spacing[0])))
        image.SetOrigin(tuple(float(v) for v in self.affine[:3, 3]))
        cols = self.affine[:3, :3] / spacing  # unit columns for z, y, x
        image.SetDirection(tuple(float(v) for v in cols[:, ::-1].ravel()))
        return image


def _check_common(datasets: Sequence[Dataset]) -> str:
    return check_series(datasets, _PER_SLICE | _MULTIFRAME, "PET")


def _timing_key(ds: Dataset) -> tuple[dt.datetime | None, float | None]:
    t = instance_timing(ds)
    return t.acquired, (round(t.duration_s, 3) if np.isfinite(t.duration_s) else None)


def _group_per_slice(datasets: Sequence[Dataset], dynamic: bool) -> list[list[Dataset]]:
    n_slices = int(datasets[0].get("NumberOfSlices") or 0)
    if dynamic and n_slices and all(ds.get("ImageIndex") for ds in datasets):
        groups: dict[object, list[Dataset]] = {}
        for ds in datasets:
            groups.setdefault((int(ds.ImageIndex) - 1) // n_slices, []).append(ds)
    else:
        groups = {}
        for ds in datasets:
            groups.setdefault(_timing_key(ds), []).append(ds)
    ordered = [groups[k] for k in sorted(groups, key=lambda k: str(k) if not isinstance(
        k, int) else f"{k:09d}")]
    for group in ordered:  # every instance of one frame must carry that frame's timing
        if len({_timing_key(ds) for ds in group}) != 1:
            raise AnalysisError("mixed frames: one time frame has instances with different "
                                "acquisition times", "mixed_frames")
    return ordered


def _expected_frames(ds: Dataset, dynamic: bool, n_found: int) -> None:
    if not dynamic and n_found > 1:
        raise AnalysisError(f"mixed frames: a static series with {n_found} time frames",
                            "mixed_frames")
    expected = int(ds.get("NumberOfTimeSlices") or 0)
    if dynamic and expected and n_found != expected:
        raise AnalysisError(f"missing frames: {n_found} of {expected} time frames",
                            "missing_frames")


def _per_slice(datasets: Sequence[Dataset], series_uid: str) -> PetVolume:
    first = datasets[0]
    dynamic = str((first.get("SeriesType") or ["STATIC"])[0]).upper() == "DYNAMIC"
    groups = _group_per_slice(datasets, dynamic)
    _expected_frames(first, dynamic, len(groups))
    n_slices = int(first.get("NumberOfSlices") or 0) or None
    warnings: list[str] = []
    arrays, affine = [], None
    for f, group in enumerate(groups):
        if not all(ds.get("ImagePositionPatient") and ds.get("ImageOrientationPatient")
                   and ds.get("PixelSpacing") for ds in group):
            raise AnalysisError("missing geometry: no Image Position/Orientation or Pixel "
                                "Spacing", "missing_geometry")
        positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in group])
        check_stack(positions, first.ImageOrientationPatient, n_slices, f"frame {f + 1}")
        try:
            volume = hd.get_volume_from_series(group, dtype=np.float32, orientation_tol=1e-4)
        except (ValueError, AttributeError) as exc:
            raise AnalysisError(f"inconsistent geometry in frame {f + 1}: slices do not form "
                                "one regular volume", "inconsistent_geometry") from exc
        finally:
            _drop_decoded_pixels(group)
        array, frame_affine = oriented(volume)
        if affine is not None and (array.shape != arrays[0].shape
                                   or not np.allclose(frame_affine, affine, atol=1e-3)):
            raise AnalysisError("inconsistent geometry: time frames differ in geometry",
                                "inconsistent_geometry")
        affine = frame_affine
        arrays.append(array)
    times, first_start = frame_times([instance_timing(g[0]) for g in groups], warnings)
    return _assemble(arrays, times, affine, series_uid, first, dynamic, first_start, warnings)


def _drop_decoded_pixels(datasets: Sequence[Dataset]) -> None:
    """Forget the decoded pixel arrays pydicom cached on the input datasets.

    ``Dataset.pixel_array`` (which highdicom calls) keeps the decoded array on
    the dataset until the dataset dies, and the job holds its inputs until it
    ends: a 17-frame dynamic series of 1513 slices kept 48 MB of int16 copies
    of what the float32 volume already holds (bench/fdopa_analysis.py, serve's
    peak RSS). The encoded Pixel Data stays; a later ``pixel_array`` decodes
    again. ``_pixel_array``/``_pixel_id`` are pydicom 3's cache attributes,
    reset here as ``Dataset.convert_pixel_data`` would set them.
    """
    for ds in datasets:
        if getattr(ds, "_pixel_array", None) is not None:
            ds._pixel_array = None
            ds._pixel_id = {}


def _assemble(arrays: list[np.ndarray], times: list[tuple[float, float]],
              affine: np.ndarray | None, series_uid: str, ds: Dataset, dynamic: bool,
              first_start: dt.datetime | None, warnings: list[str]) -> PetVolume:
    assert affine is not None
    order = np.argsort([t[0] for t in times], kind="stable")
    frames = tuple(PetFrame(times[i][0], times[i][1], times[i][0] + times[i][1] / 2, arrays[i])
                   for i in order)
    return PetVolume(frames, affine, series_uid, str(ds.FrameOfReferenceUID), dynamic,
                     first_start, tuple(dict.fromkeys(warnings)))


def _frame_content(item: Dataset) -> tuple[object, FrameTiming]:
    """(grouping key, timing) of one per-frame functional group item."""
    content = (item.get("FrameContentSequence") or [Dataset()])[0]
    acquired = parse_datetime(str(content.get("FrameAcquisitionDateTime") or ""))
    duration = content.get("FrameAcquisitionDuration")
    timing = FrameTiming(acquired, float(duration) / 1000.0 if duration not in (None, "")
                     else float("nan"), None)
    if acquired is not None:
        return (acquired, timing.duration_s), timing
    return content.get("TemporalPositionIndex"), timing


def _multiframe(ds: Dataset, series_uid: str) -> PetVolume:
    try:
        image = hd.Image.from_dataset(ds, copy=False)
    except (ValueError, AttributeError, TypeError) as exc:
        raise AnalysisError("missing geometry: multi-frame PET header not readable",
                            "missing_geometry") from exc
    groups: dict[object, list[int]] = {}
    timing: dict[object, FrameTiming] = {}
    for i, item in enumerate(ds.get("PerFrameFunctionalGroupsSequence") or []):
        key, t = _frame_content(item)
        groups.setdefault(key, []).append(i + 1)
        timing.setdefault(key, t)
    dynamic = len(groups) > 1
    _expected_frames(ds, dynamic or str((ds.get("SeriesType") or ["STATIC"])[0]) == "DYNAMIC",
                     len(groups))
    warnings: list[str] = []
    arrays, affine = [], None
    for f, key in enumerate(groups):
        array, frame_affine = multiframe_volume(image, ds, groups[key], f)
        if affine is not None and (array.shape != arrays[0].shape
                                   or not np.allclose(frame_affine, affine, atol=1e-3)):
            raise AnalysisError("inconsistent geometry: time frames differ in geometry",
                                "inconsistent_geometry")
        affine = frame_affine
        arrays.append(array)
    times, first_start = frame_times([timing[k] for k in groups], warnings)
    return _assemble(arrays, times, affine, series_uid, ds, dynamic, first_start, warnings)


def volume_from_datasets(datasets: Sequence[Dataset]) -> PetVolume:
    """Build the frame volumes of one PET series.

    Parameters
    ----------
    datasets : sequence of pydicom.Dataset
        All instances of one series, any order: per-slice PET Image Storage,
        or one Enhanced / Legacy Converted Enhanced PET instance.

    Returns
    -------
    PetVolume
        Frames in time order on one grid (module docstring for conventions).

    Raises
    ------
    service.errors.AnalysisError
        With one of the codes listed in the module docstring.
    """
    series_uid = _check_common(datasets)
    if str(datasets[0].SOPClassUID) in _PER_SLICE:
        return _per_slice(datasets, series_uid)
    if len(datasets) != 1:
        raise AnalysisError("more than one multi-frame PET instance in the series",
                            "mixed_frames")
    return _multiframe(datasets[0], series_uid)


def static_window(volume: PetVolume, start_s: float, end_s: float) -> PetFrame:
    """A static image from the dynamic frames inside ``[start_s, end_s]``.

    The duration-weighted mean of the frames that lie wholly inside the
    window (frame values are decay-corrected to one reference time, so the
    mean is the static image of that window). Times as ``PetFrame.start_s``.

    Raises
    ------
    service.errors.AnalysisError
        ``code="missing_frames"`` when no frame lies inside the window.
    """
    inside = [f for f in volume.frames
              if f.start_s >= start_s - 1e-3 and f.start_s + f.duration_s <= end_s + 1e-3]
    if not inside:
        raise AnalysisError(f"missing frames: no dynamic frame within {start_s / 60:g}-"
                            f"{end_s / 60:g} min", "missing_frames")
    weights = np.array([f.duration_s for f in inside])
    summed = np.tensordot(weights / weights.sum(), np.stack([f.volume_zyx for f in inside]), 1)
    start, duration = inside[0].start_s, float(weights.sum())
    return PetFrame(start, duration, start + duration / 2, summed.astype(np.float32))
