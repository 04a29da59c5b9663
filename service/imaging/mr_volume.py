"""MR series (a FLAIR) to one volume: geometry from the header through highdicom.

The same conventions as :mod:`service.imaging.pet_volume`: a float32
``(z, y, x)`` array whose axis 0 runs along the slice normal (row cosine x
column cosine) and a (4, 4) affine from voxel index ``(z, y, x)`` to the LPS
centre of that voxel in mm. Pixel values are the stored values through the
modality LUT (MR has no physical unit; only their contrast matters).

Encodings: MR Image Storage (one instance per slice), Enhanced MR and Legacy
Converted Enhanced MR (one multi-frame instance). A series of several
stacks (e.g. three orientations, or several echoes) is refused: a FLAIR is one
regular stack.

Refusal codes (:class:`service.errors.AnalysisError`): ``no_instances``,
``mixed_series``, ``not_mr``, ``missing_geometry``, ``inconsistent_geometry``,
``missing_slices``, ``duplicate_slices``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from service.errors import AnalysisError
from service.imaging.slice_stack import check_series, check_stack, multiframe_volume, oriented

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"
LEGACY_CONVERTED_ENHANCED_MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4.4"
_MULTIFRAME = {ENHANCED_MR_IMAGE_STORAGE, LEGACY_CONVERTED_ENHANCED_MR_IMAGE_STORAGE}


@dataclass(frozen=True, eq=False)
class MrVolume:
    """One MR stack.

    Attributes
    ----------
    array_zyx : (z, y, x) float32 array
        Stored values through the modality LUT.
    affine : (4, 4) float array
        Voxel index ``(z, y, x)`` to LPS mm (voxel centre).
    series_uid, frame_of_reference_uid : str
    """

    array_zyx: np.ndarray
    affine: np.ndarray
    series_uid: str
    frame_of_reference_uid: str

    @property
    def spacing_zyx_mm(self) -> np.ndarray:
        """Voxel size along (z, y, x), mm."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)


def _per_slice(datasets: Sequence[Dataset]) -> tuple[np.ndarray, np.ndarray]:
    if not all(ds.get("ImagePositionPatient") and ds.get("ImageOrientationPatient")
               and ds.get("PixelSpacing") for ds in datasets):
        raise AnalysisError("missing geometry: no Image Position/Orientation or Pixel Spacing",
                            "missing_geometry")
    orientations = {tuple(round(float(v), 4) for v in ds.ImageOrientationPatient)
                    for ds in datasets}
    if len(orientations) != 1:
        raise AnalysisError("inconsistent geometry: slices of more than one orientation",
                            "inconsistent_geometry")
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in datasets])
    check_stack(positions, datasets[0].ImageOrientationPatient, None, "the MR series")
    try:
        volume = hd.get_volume_from_series(list(datasets), dtype=np.float32,
                                           orientation_tol=1e-4)
    except (ValueError, AttributeError) as exc:
        raise AnalysisError("inconsistent geometry: slices do not form one regular volume",
                            "inconsistent_geometry") from exc
    return oriented(volume)


def _multiframe(ds: Dataset) -> tuple[np.ndarray, np.ndarray]:
    try:
        image = hd.Image.from_dataset(ds, copy=False)
    except (ValueError, AttributeError, TypeError) as exc:
        raise AnalysisError("missing geometry: multi-frame MR header not readable",
                            "missing_geometry") from exc
    numbers = list(range(1, int(ds.NumberOfFrames) + 1))
    return multiframe_volume(image, ds, numbers, 0)


def mr_volume_from_datasets(datasets: Sequence[Dataset]) -> MrVolume:
    """Build the volume of one MR series (module docstring for conventions and refusals)."""
    series_uid = check_series(datasets, _MULTIFRAME | {MR_IMAGE_STORAGE}, "MR")
    if str(datasets[0].SOPClassUID) == MR_IMAGE_STORAGE:
        array, affine = _per_slice(datasets)
    elif len(datasets) != 1:
        raise AnalysisError("more than one multi-frame MR instance in the series",
                            "mixed_series")
    else:
        array, affine = _multiframe(datasets[0])
    return MrVolume(array, affine, series_uid, str(datasets[0].FrameOfReferenceUID))
