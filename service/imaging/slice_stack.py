"""A stack of image planes to one volume: the checks and the orientation PET and MR share.

:func:`check_series` refuses a set of instances that is not one series of the
expected SOP classes; :func:`check_stack` refuses duplicate and missing
slices with their own reasons; :func:`oriented` turns a highdicom volume so
that axis 0 runs along the slice normal (row cosine x column cosine);
:func:`multiframe_volume` stacks frames of one multi-frame instance. The
geometry conventions (LPS mm, affine to the voxel centre) are those of
:mod:`service.imaging.pet_volume`. Refusals raise
:class:`service.errors.AnalysisError`.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from service.errors import AnalysisError


def check_series(datasets: Sequence[Dataset], sop_classes: set[str], kind: str) -> str:
    """The one Series Instance UID of ``datasets``, or a refusal.

    ``kind`` names the modality in the reason and the code (``"PET"``:
    ``not_pet``); codes ``no_instances``, ``mixed_series``, ``missing_geometry``.
    """
    if not datasets:
        raise AnalysisError("no instances to build a volume from", "no_instances")
    uids = {str(ds.get("SeriesInstanceUID", "")) for ds in datasets}
    if len(uids) != 1:
        raise AnalysisError("instances belong to more than one series", "mixed_series")
    classes = {str(ds.get("SOPClassUID", "")) for ds in datasets}
    if len(classes) != 1 or not classes <= sop_classes:
        raise AnalysisError(f"not a{'n' if kind[0] in 'AEIMO' else ''} {kind} image series "
                            "(SOP class)", f"not_{kind.lower()}")
    if not datasets[0].get("FrameOfReferenceUID"):
        raise AnalysisError("missing geometry: no Frame of Reference UID", "missing_geometry")
    return uids.pop()


def _normal(orientation: Sequence[float]) -> np.ndarray:
    iop = np.asarray([float(v) for v in orientation], float)
    return np.cross(iop[:3], iop[3:])


def check_stack(positions: np.ndarray, orientation: Sequence[float], expected: int | None,
                what: str) -> None:
    """Duplicates and gaps, refused with their own reason (highdicom only says 'irregular')."""
    along = np.sort(positions @ _normal(orientation))
    steps = np.diff(along)
    if len(steps) and steps.min() < 1e-3:
        raise AnalysisError(f"duplicate slices: two slices at one position in {what}",
                            "duplicate_slices")
    if expected is not None and len(positions) < expected:
        raise AnalysisError(f"missing slices: {len(positions)} of {expected} in {what}",
                            "missing_slices")
    if len(steps) and steps.max() > 1.5 * steps.min():
        raise AnalysisError(f"missing slices: gap in the stack of {what}", "missing_slices")


def oriented(volume: hd.Volume) -> tuple[np.ndarray, np.ndarray]:
    """(z, y, x) float32 array and affine with axis 0 along the slice normal."""
    array = np.asarray(volume.array, np.float32)
    affine = np.array(volume.affine, float)
    normal = np.cross(affine[:3, 2], affine[:3, 1])  # row cosine x column cosine
    if float(affine[:3, 0] @ normal) < 0:
        affine[:3, 3] = affine[:3, 3] + (array.shape[0] - 1) * affine[:3, 0]
        affine[:3, 0] = -affine[:3, 0]
        array = np.ascontiguousarray(array[::-1])
    return array, affine


def _plane(ds: Dataset, number: int, keyword: str, seq: str) -> list[float]:
    """A per-frame value (e.g. Image Position) from the per-frame or shared group."""
    for groups in (ds.PerFrameFunctionalGroupsSequence[number - 1],
                   (ds.get("SharedFunctionalGroupsSequence") or [Dataset()])[0]):
        if seq in groups:
            return [float(v) for v in groups[seq][0][keyword]]
    raise AnalysisError(f"missing geometry: no {keyword} for a frame", "missing_geometry")


def multiframe_volume(image: hd.Image, ds: Dataset, numbers: list[int], f: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Frames ``numbers`` (1-based) of the multi-frame ``image`` as one oriented volume.

    Orientation, pixel spacing and positions come from the per-frame or shared
    functional groups of ``ds``; ``f`` (time frame, 0-based) only names the
    frame in a refusal. Returns the (z, y, x) float32 array and (4, 4) affine
    of :func:`oriented`.
    """
    orientation = _plane(ds, numbers[0], "ImageOrientationPatient", "PlaneOrientationSequence")
    spacing = _plane(ds, numbers[0], "PixelSpacing", "PixelMeasuresSequence")
    positions = np.array([_plane(ds, n, "ImagePositionPatient", "PlanePositionSequence")
                          for n in numbers])
    expected = int(ds.get("NumberOfSlices") or 0) or None
    check_stack(positions, orientation, expected, f"frame {f + 1}")
    step, indices = hd.spatial.get_volume_positions(positions.tolist(), orientation)
    if step is None or indices is None:
        raise AnalysisError(f"inconsistent geometry in frame {f + 1}: frames do not form one "
                            "regular volume", "inconsistent_geometry")
    order = [numbers[indices.index(k)] for k in range(len(numbers))]
    pixels = image.get_frames(order, dtype=np.float32)
    volume = hd.Volume.from_attributes(
        array=np.asarray(pixels), image_position=positions[numbers.index(order[0])],
        image_orientation=orientation, pixel_spacing=spacing, spacing_between_slices=step,
        coordinate_system="PATIENT", frame_of_reference_uid=str(ds.FrameOfReferenceUID))
    return oriented(volume)
