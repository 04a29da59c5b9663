"""Is a DaT series complete enough to analyse? The incomplete-series rule.

A slow or interrupted sender must not produce a result from part of a scan
(measured before this rule: 72 of 80 slices gave a delivered result, and the
full series later a second one). Three checks, each refusing with
``AnalysisError(code="incomplete_series")`` (the worker then sends the
"analysis not possible" report, :mod:`.failure`):

* **announced count**: a per-slice NM series whose header announces its
  number of slices (Number of Slices or Images in Acquisition above 1, the
  rule of :func:`service.dicom.header.expected_count`) and holds fewer
  instances. Routing first waits for the rest
  (:meth:`DatSpectPipeline.inputs` returns ``wait_until`` = completion +
  ``incomplete_wait_s``); after that the job is made and refused here;
* **gaps**: a regular stack with slices missing (slice positions at whole
  multiples of the step), whether or not a count is announced (many cameras
  write Number of Slices 1 on every per-slice instance);
* **coverage**: a stack that does not cover the head: after registration,
  less than :data:`MIN_BRAIN_COVERAGE` of the atlas brain, or less than
  :data:`MIN_ROI_COVERAGE` of the striatum and the reference region, lies
  inside the slices.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset

from service.dicom import codes as dicom_codes
from service.dicom.header import InstanceHeader, expected_count
from service.errors import AnalysisError
from service.imaging.atlas import Atlas

INCOMPLETE = "incomplete_series"
#: Least fraction of the atlas brain (MNI) that must lie inside the scan's slices.
#: Measured: 13 complete simulated series (4 camera profiles, multi-frame and
#: per-slice, 173-179 mm axial field) 0.999-1.000; two per-slice series (46 x
#: 3.9 mm) with slices removed at the end where the brain is near the edge:
#: 2 slices 0.993-0.994, 4 slices 0.981-0.984, 5 slices 0.975-0.977 (refused),
#: 7 slices 0.955-0.960 (at the other end, in air, 9 slices still 0.98).
#: Posed 64^3, 4 mm phantoms (service/testing/dat_phantom.py): 16 slices (64 mm) cut
#: 0.963-1.000; 24 cut 0.88-0.91 or registration failed.
MIN_BRAIN_COVERAGE = 0.98
#: Least fraction of the striatum and the occipital reference inside the slices.
MIN_ROI_COVERAGE = 0.99


def _int_or_none(value: object) -> int | None:
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None


def announced_slices(ds: Dataset) -> int | None:
    """The number of per-slice instances the header announces, else None.

    None for a multi-frame instance (it is the whole volume), for a series
    that announces nothing or 1, and for anything but NM Image Storage.
    """
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class != dicom_codes.NM_IMAGE_STORAGE:
        return None
    header = InstanceHeader(sop_class, _int_or_none(ds.get("NumberOfFrames")),
                            _int_or_none(ds.get("NumberOfSlices")),
                            _int_or_none(ds.get("ImagesInAcquisition")))
    count = expected_count(header)
    return count if count is not None and count > 1 else None


def check_count(datasets: Sequence[Dataset]) -> None:
    """Refuse a per-slice series with fewer instances than its header announces.

    Raises
    ------
    AnalysisError
        ``incomplete_series``, e.g. "incomplete series: 72 of 80 announced slices".
    """
    announced = max((announced_slices(ds) or 0) for ds in datasets) if datasets else 0
    if announced and len(datasets) < announced:
        raise AnalysisError(
            f"incomplete series: {len(datasets)} of {announced} announced slices", INCOMPLETE
        )


def as_incomplete(exc: AnalysisError) -> AnalysisError:
    """A ``missing_slices`` refusal of the volume reader as an incomplete series."""
    if exc.code == "missing_slices":
        return AnalysisError(f"incomplete series: {exc.reason}", INCOMPLETE)
    return exc


def inside_fraction(moving: sitk.Image, transform: sitk.Transform, atlas: Atlas,
                    mask_zyx: np.ndarray) -> float:
    """Fraction of an atlas mask that maps inside the scan's voxel grid.

    Parameters
    ----------
    moving : SimpleITK.Image
        The scan (LPS), as registered.
    transform : SimpleITK.Transform
        Maps atlas (MNI) points to scan points.
    mask_zyx : (91, 109, 91) bool array
        On the atlas grid.
    """
    ones = sitk.Image(moving.GetSize(), sitk.sitkUInt8)
    ones.CopyInformation(moving)
    ones = ones + 1
    inside = sitk.Resample(ones, atlas.reference_image(), transform, sitk.sitkNearestNeighbor, 0)
    inside_zyx = sitk.GetArrayFromImage(inside) > 0
    total = int(mask_zyx.sum())
    return float(inside_zyx[mask_zyx].sum()) / total if total else 1.0


def check_coverage(moving: sitk.Image, transform: sitk.Transform, atlas: Atlas) -> float:
    """Refuse a stack that does not cover the head; returns the brain fraction covered.

    Raises
    ------
    AnalysisError
        ``incomplete_series`` naming the fraction of the brain, or of the
        striatum and reference, outside the slices.
    """
    brain = inside_fraction(moving, transform, atlas, atlas.brain_zyx)
    rois = ((atlas.labels_zyx >= 1) & (atlas.labels_zyx <= 4)) | atlas.mask("occipital")
    roi = inside_fraction(moving, transform, atlas, rois)
    if roi < MIN_ROI_COVERAGE:
        raise AnalysisError(
            f"incomplete series: the slices do not cover the head ({100 * (1 - roi):.0f} % of "
            "the striatum and reference region outside)", INCOMPLETE)
    if brain < MIN_BRAIN_COVERAGE:
        raise AnalysisError(
            f"incomplete series: the slices do not cover the head ({100 * (1 - brain):.0f} % of "
            "the brain outside)", INCOMPLETE)
    return brain

