"""The second DICOM SEG of the MR-guided route: the FLAIR lesion on the FLAIR's own grid.

One SEG per source image series: a Segmentation has one Frame of Reference
and one plane geometry (PS3.3 C.7.6.16 Multi-frame Functional Groups, the
Derivation Image references of every frame), and the FLAIR's (its own
scanner, its own frame of reference, thinner or thicker slices, another
orientation) is not the PET's. Resampling the lesion onto the PET would lose
the segmenter's own output and point the reader at PET slices for an MR
finding. So the MR-guided route writes:

* the PET SEG (:mod:`.seg`), whose last segment is the FLAIR-guided PET VOI
  (the paper's PET tumour VOI) on the PET grid;
* this FLAIR SEG: BINARY, one segment "FLAIR lesion (paediatric route)"
  (category "Morphologically Abnormal Structure" 49755003 SCT, type
  "Lesion" 52988006 SCT: a FLAIR hyperintensity is tumour, oedema and
  necrosis together; anatomic region brain; tracking identifier "FLAIR
  lesion (paediatric FLAIR-guided)"), the FLAIR segmenter as algorithm
  (family "Artificial Intelligence" for the FLAIR U-Net, "Morphological
  Operations" for the classical threshold), on the FLAIR's planes, every
  frame referencing the MR instance (or Legacy Converted / Enhanced MR
  frame) at its position; Series Number :data:`FLAIR_SEG_SERIES_NUMBER`.

UIDs derive from the job key (kinds ``seg-flair-series``,
``seg-flair-instance``); the Series Description says "research use, not for
diagnosis". The SR references segment 1 of this SEG in its "FLAIR lesion"
group (:mod:`.sr_route`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from service import __version__
from service.pipelines.fdopa_pet import report_codes as rc
from service.pipelines.fdopa_pet.result import FdopaResult, FlairImage
from service.pipelines.fdopa_pet.seg import (
    fix_dimension_organization,
    header_copy,
    plane_geometry,
    route_algorithm,
    snap_positions,
)
from service.report.identity import MANUFACTURER, stamp_times
from service.report.uids import derive_uid

logger = logging.getLogger(__name__)

FLAIR_SEG_SERIES_NUMBER = 9915
FLAIR_SEG_SERIES_DESCRIPTION = "dopanode FDOPA FLAIR SEG - research use, not for diagnosis"
FLAIR_LESION_LABEL = "FLAIR lesion (paediatric route)"
FLAIR_LESION_TRACKING_ID = "FLAIR lesion (paediatric FLAIR-guided)"
_FLAIR_RGB = (255, 214, 0)


def flair_sources(result: FdopaResult, flair: Sequence[Dataset]) -> list[Dataset]:
    """Header copies of the FLAIR instances the SEG references.

    Raises
    ------
    ValueError
        No FLAIR on the result, no instances, or instances of another series
        or study than the route's FLAIR.
    """
    if result.flair_guided is None or result.flair_guided.flair is None:
        raise ValueError("the result has no FLAIR lesion (not the MR-guided route)")
    if not flair:
        raise ValueError("no FLAIR instances")
    series = {str(ds.get("SeriesInstanceUID", "")) for ds in flair}
    studies = {str(ds.get("StudyInstanceUID", "")) for ds in flair}
    if series != {result.flair_guided.flair.series_uid} or studies != {
            result.source.study_instance_uid}:
        raise ValueError("the FLAIR instances are not the route's FLAIR series of this study")
    return [header_copy(ds) for ds in flair]


def flair_description(result: FdopaResult, image: FlairImage, job_key: str
                      ) -> hd.seg.SegmentDescription:
    """The FLAIR lesion segment (module docstring)."""
    return hd.seg.SegmentDescription(
        segment_number=1, segment_label=FLAIR_LESION_LABEL,
        segmented_property_category=rc.MORPHOLOGICALLY_ABNORMAL,
        segmented_property_type=rc.LESION, algorithm_type="AUTOMATIC",
        algorithm_identification=route_algorithm(result, {
            "segment": f"FLAIR lesion ({image.method})"}),
        anatomic_regions=[rc.BRAIN], tracking_id=FLAIR_LESION_TRACKING_ID,
        tracking_uid=derive_uid(job_key, result.algorithm, "tracking-flair-lesion"),
        display_color=hd.color.CIELabColor.from_rgb(*_FLAIR_RGB))


def build_flair_seg(result: FdopaResult, flair: Sequence[Dataset], job_key: str,
                    created_at: float) -> hd.seg.Segmentation:
    """Build the FLAIR lesion SEG of an MR-guided analysis (module docstring).

    Parameters
    ----------
    result : FdopaResult
        Of the MR-guided route (``result.flair_guided.flair`` set).
    flair : sequence of pydicom.Dataset
        The FLAIR series' instances (per-slice, or one multi-frame
        instance); pixel data is not read.
    job_key : str
        Stable job identifier; the UIDs derive from it.
    created_at : float
        When the job was made (seconds since the epoch).

    Returns
    -------
    highdicom.seg.Segmentation
        BINARY, one segment, in the study of the FLAIR, referencing the
        FLAIR's instances.

    Raises
    ------
    ValueError
        Not the MR-guided route, foreign instances, or a FLAIR grid that
        does not lie on the instances' planes.
    """
    sources = flair_sources(result, flair)
    assert result.flair_guided is not None and result.flair_guided.flair is not None
    image = result.flair_guided.flair
    stack = np.asarray(image.lesion_zyx, np.uint8)[..., np.newaxis]
    positions, orientation, measures = plane_geometry(image.affine, stack.shape[0])
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=stack, segmentation_type="BINARY",
        segment_descriptions=[flair_description(result, image, job_key)],
        series_instance_uid=derive_uid(job_key, result.algorithm, "seg-flair-series"),
        series_number=FLAIR_SEG_SERIES_NUMBER,
        sop_instance_uid=derive_uid(job_key, result.algorithm, "seg-flair-instance"),
        instance_number=1, manufacturer=MANUFACTURER, manufacturer_model_name="dopanode",
        software_versions=__version__, device_serial_number="none",
        content_description="FLAIR lesion of the paediatric FDOPA route",
        content_label="FDOPA_FLAIR_SEG", series_description=FLAIR_SEG_SERIES_DESCRIPTION,
        plane_positions=snap_positions(sources, positions), plane_orientation=orientation,
        pixel_measures=measures, omit_empty_frames=True)
    fix_dimension_organization(seg, derive_uid(job_key, result.algorithm,
                                               "seg-flair-dimension-org"))
    stamp_times(seg, created_at)
    logger.info("built FLAIR SEG", extra={"fields": {
        "event": "flair_seg_built", "sop_instance_uid": str(seg.SOPInstanceUID),
        "frames": int(seg.NumberOfFrames)}})
    return seg
