"""The DICOM Segmentation of one FDOPA analysis: lesions and reference regions (highdicom).

BINARY segmentation (PS3.3 A.51, SOP Class 1.2.840.10008.5.1.4.1.1.66.4; BINARY
rather than LABELMAP because viewers support it, research note fdopa.md §4b)
on the native grid of the analysed static PET (:attr:`FdopaResult.static`):
one frame per slice and segment, empty frames omitted, Per-Frame Plane
Position and shared Plane Orientation / Pixel Measures equal to the PET's.

Segments, in this order (numbers are 1-based):

1..n   one per lesion (``Lesion.index`` order, by decreasing volume): category
       (49755003, SCT, "Morphologically Abnormal Structure"), type (108369006,
       SCT, "Tumor"), anatomic region brain; algorithm = the U-Net (family
       "Artificial Intelligence", the model name and sha256 as parameters) or
       the threshold-only baseline (family "Morphological Operations").
n+1    healthy-brain background crescent (PET RANO TBR denominator): category
       (91723000, SCT, "Anatomical Structure"), type (12738006, SCT, "Brain")
       with the laterality of the reference side as Segmented Property Type
       Modifier.
n+2    contralateral striatum (T/S denominator): type (31428008, SCT,
       "Corpus striatum") + laterality.
n+3    contralateral eroded white matter (T/N denominator): type (68523003,
       SCT, "Cerebral White Matter") + laterality.
n+4    on the MR-guided route only: the paediatric FLAIR-guided PET tumour VOI
       ("Paediatric FLAIR-guided PET VOI", tracking identifier "Tumour VOI
       (paediatric FLAIR-guided)", the SR group's name; never "Tumour lesion"):
       category "Morphologically Abnormal Structure", type "Tumor"; algorithm
       "dopanode FDOPA paediatric FLAIR-guided route" (family "Artificial
       Intelligence" with the FLAIR U-Net, else "Morphological Operations")
       with the FLAIR segmenter and the VOI rule as parameters. The FLAIR
       lesion itself is in a second SEG on the FLAIR's grid (:mod:`.seg_flair`).

A study without lesions gets only the three reference segments (a SEG needs
at least one segment, and the reader sees where the reference was taken).

References to the source (Derivation Image / Source Image Sequence per
frame, matched by position to 1e-3 mm by highdicom):

* per-slice PET Image Storage: the slice at each position;
* Legacy Converted Enhanced / Enhanced PET: the frame(s) at each position;
* static image summed from a dynamic per-slice series: the instances of the
  first time frame (lowest Image Index, else earliest acquisition), which
  share the summed image's geometry; for a multi-frame dynamic instance,
  every time frame at that position.

UIDs derive from the job key (kinds ``seg-series``, ``seg-instance``), dates
from the job's time; the Series Description says "research use, not for
diagnosis".
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as dcm_codes

from service import __version__
from service.pipelines.fdopa_pet import report_codes as rc
from service.pipelines.fdopa_pet.result import FdopaResult
from service.report.evidence import evidence_headers
from service.report.identity import MANUFACTURER, stamp_times
from service.report.uids import derive_uid

logger = logging.getLogger(__name__)

SEG_SERIES_NUMBER = 9911
SEG_SERIES_DESCRIPTION = "dopanode FDOPA SEG - research use, not for diagnosis"
#: Segment labels of the reference regions, in segment order after the lesions.
REFERENCE_LABELS = ("Background crescent", "Contralateral striatum",
                    "Contralateral white matter")
#: The reference regions' names in UIDs and the SR (same order).
REFERENCE_KINDS = ("background", "striatum", "white-matter")
#: Largest distance (mm) between a SEG plane and its source slice.
POSITION_TOL_MM = 1e-3
_SIDE = {"left": rc.LEFT, "right": rc.RIGHT}
#: Recommended display colours (sRGB; written as CIELab) for viewers.
_LESION_RGB = (230, 40, 40)
_REFERENCE_RGB = ((60, 200, 60), (40, 170, 240), (240, 240, 240))


def _lesion_algorithm(result: FdopaResult) -> hd.AlgorithmIdentificationSequence:
    info, algorithm = result.segmentation, result.algorithm
    if info.method == "unet":
        parameters = {"method": "PET-only 3D U-Net + PET RANO post-processing "
                                "(>= 1.6 x background mean)",
                      "model": str(info.model_name), "model sha256": str(info.model_sha256)}
        family = dcm_codes.cid7162.ArtificialIntelligence
    else:
        parameters = {"method": "threshold-only baseline (>= 1.6 x background mean)"}
        family = dcm_codes.cid7162.MorphologicalOperations
    return hd.AlgorithmIdentificationSequence(
        name=algorithm.name, family=family, version=algorithm.version, parameters=parameters)


def _reference_algorithm(result: FdopaResult) -> hd.AlgorithmIdentificationSequence:
    return hd.AlgorithmIdentificationSequence(
        name=result.algorithm.name, family=dcm_codes.cid7162.MorphologicalOperations,
        version=result.algorithm.version,
        parameters={"method": "FDOPA template atlas, contralateral to the lesion",
                    "side rule": result.reference.rule[:64]})


#: Label and tracking identifier of the FLAIR-guided PET VOI segment (MR-guided route).
VOI_LABEL = "Paediatric FLAIR-guided PET VOI"
VOI_TRACKING_ID = "Tumour VOI (paediatric FLAIR-guided)"
ROUTE_ALGORITHM = "dopanode FDOPA paediatric FLAIR-guided route"
_VOI_RGB = (230, 60, 230)


def route_algorithm(result: FdopaResult, parameters: dict[str, str]
                    ) -> hd.AlgorithmIdentificationSequence:
    """Algorithm identification of the MR-guided route's segments.

    ``parameters`` (besides the FLAIR segmenter) say what the route made; no
    commas in them (highdicom joins the parameters with commas).
    """
    flair = result.flair_guided.flair if result.flair_guided is not None else None
    family = (dcm_codes.cid7162.ArtificialIntelligence
              if flair is not None and flair.method == "unet"
              else dcm_codes.cid7162.MorphologicalOperations)
    return hd.AlgorithmIdentificationSequence(
        name=ROUTE_ALGORITHM, family=family, version=result.algorithm.version,
        parameters={k: v.replace(",", ";")[:64] for k, v in (
            {"FLAIR lesion": result.route.flair_method, **parameters}).items()})


def voi_description(result: FdopaResult, job_key: str, number: int
                    ) -> hd.seg.SegmentDescription:
    """The FLAIR-guided PET VOI segment (module docstring, segment n+4)."""
    assert result.flair_guided is not None
    algorithm = route_algorithm(result, {
        "PET VOI": "FLAIR lesion voxels above the contralateral WM max",
        "VOI rule": result.flair_guided.voi_rule})
    return hd.seg.SegmentDescription(
        segment_number=number, segment_label=VOI_LABEL,
        segmented_property_category=rc.MORPHOLOGICALLY_ABNORMAL,
        segmented_property_type=rc.TUMOUR, algorithm_type="AUTOMATIC",
        algorithm_identification=algorithm, anatomic_regions=[rc.BRAIN],
        tracking_id=VOI_TRACKING_ID,
        tracking_uid=derive_uid(job_key, result.algorithm, "tracking-flair-guided-voi"),
        display_color=hd.color.CIELabColor.from_rgb(*_VOI_RGB))


def segment_descriptions(result: FdopaResult, job_key: str) -> list[hd.seg.SegmentDescription]:
    """Descriptions of the segments, in the order of :func:`segment_masks`."""
    lesion_alg = _lesion_algorithm(result)
    out = [hd.seg.SegmentDescription(
        segment_number=number, segment_label=f"Tumour lesion {lesion.index}",
        segmented_property_category=rc.MORPHOLOGICALLY_ABNORMAL,
        segmented_property_type=rc.TUMOUR, algorithm_type="AUTOMATIC",
        algorithm_identification=lesion_alg, anatomic_regions=[rc.BRAIN],
        tracking_id=f"Lesion {lesion.index}",
        tracking_uid=derive_uid(job_key, result.algorithm, f"tracking-lesion-{lesion.index}"),
        display_color=hd.color.CIELabColor.from_rgb(*_LESION_RGB))
        for number, lesion in enumerate(result.lesions, start=1)]
    ref_alg = _reference_algorithm(result)
    side = hd.sr.CodedConcept.from_code(_SIDE[result.reference.side])
    properties = (rc.BRAIN, rc.CORPUS_STRIATUM, rc.CEREBRAL_WHITE_MATTER)
    for label, prop, rgb, kind in zip(REFERENCE_LABELS, properties, _REFERENCE_RGB,
                                      REFERENCE_KINDS, strict=True):
        desc = hd.seg.SegmentDescription(
            segment_number=len(out) + 1, segment_label=f"{label} {result.reference.side}",
            segmented_property_category=rc.ANATOMICAL_STRUCTURE,
            segmented_property_type=prop, algorithm_type="AUTOMATIC",
            algorithm_identification=ref_alg, tracking_id=label,
            tracking_uid=derive_uid(job_key, result.algorithm, f"tracking-{kind}"),
            display_color=hd.color.CIELabColor.from_rgb(*rgb))
        # Laterality of the reference side: Segmented Property Type Modifier
        # (CID 244), nested in the property type item (PS3.3 C.8.20.2).
        desc.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
            side]
        out.append(desc)
    if result.flair_guided is not None:
        out.append(voi_description(result, job_key, len(out) + 1))
    return out


def segment_masks(result: FdopaResult) -> np.ndarray:
    """(z, y, x, n_segments) uint8 stack of the masks, in segment order."""
    ref = result.reference
    masks = [les.mask_zyx for les in result.lesions]
    masks += [ref.background_zyx, ref.striatum_zyx, ref.white_matter_zyx]
    if result.flair_guided is not None:
        masks.append(result.flair_guided.voi_zyx)
    shape = result.static.shape_zyx
    for mask in masks:
        if mask.shape != shape:
            raise ValueError("a segment mask is not on the static PET grid")
    return np.stack([np.asarray(m, bool) for m in masks], axis=-1).astype(np.uint8)


def header_copy(ds: Dataset) -> Dataset:
    """The dataset without its pixel data (highdicom reads geometry only)."""
    copy = Dataset()
    for element in ds:
        if element.keyword not in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
            copy.add(element)
    return copy


def _first_time_frame(datasets: Sequence[Dataset]) -> list[Dataset]:
    """Per-slice instances: of a dynamic series only those of the first time frame."""
    if len(datasets) <= 1 or str((datasets[0].get("SeriesType") or ["STATIC"])[0]) != "DYNAMIC":
        return list(datasets)

    def order(ds: Dataset) -> tuple[int, str]:
        index = ds.get("ImageIndex")
        return (int(index) if index else 0,
                f"{ds.get('AcquisitionDate', '')}{ds.get('AcquisitionTime', '')}")

    by_position: dict[tuple[float, ...], Dataset] = {}
    for ds in sorted(datasets, key=order):
        key = tuple(round(float(v), 2) for v in ds.ImagePositionPatient)
        by_position.setdefault(key, ds)
    return list(by_position.values())


def source_images(result: FdopaResult, datasets: Sequence[Dataset]) -> list[Dataset]:
    """Header copies of the instances the SEG references (module docstring).

    Raises
    ------
    ValueError
        Empty or foreign datasets.
    """
    evidence_headers(result.source, datasets)  # the same checks as the SR's evidence
    return [header_copy(ds) for ds in _first_time_frame(datasets)]


def plane_geometry(affine: np.ndarray, n_slices: int) -> tuple[
        list[hd.PlanePositionSequence], hd.PlaneOrientationSequence, hd.PixelMeasuresSequence]:
    """Plane positions, orientation and pixel measures of a ``(z, y, x)`` grid.

    ``affine`` maps ``(z, y, x)`` to LPS mm of the voxel centre: column 2 is
    the row direction times the column spacing (PixelSpacing[1]), column 1
    the column direction times the row spacing (PixelSpacing[0]).
    """
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    row_cos, col_cos = affine[:3, 2] / spacing[2], affine[:3, 1] / spacing[1]
    positions = [hd.PlanePositionSequence(
        "PATIENT", [float(v) for v in affine[:3, :3] @ (z, 0, 0) + affine[:3, 3]])
        for z in range(n_slices)]
    orientation = hd.PlaneOrientationSequence(
        "PATIENT", [float(v) for v in (*row_cos, *col_cos)])
    measures = hd.PixelMeasuresSequence(
        pixel_spacing=(float(spacing[1]), float(spacing[2])),
        slice_thickness=float(spacing[0]), spacing_between_slices=float(spacing[0]))
    return positions, orientation, measures


def _source_positions(sources: Sequence[Dataset]) -> np.ndarray:
    """(n, 3) Image Position (Patient) of every source slice or frame, LPS mm."""
    if "PerFrameFunctionalGroupsSequence" in sources[0]:
        return np.array([[float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
                         for item in sources[0].PerFrameFunctionalGroupsSequence])
    return np.array([[float(v) for v in ds.ImagePositionPatient] for ds in sources])


def snap_positions(sources: Sequence[Dataset], positions: Sequence[hd.PlanePositionSequence]
                   ) -> list[hd.PlanePositionSequence]:
    """The source's own position of every plane (so highdicom matches it exactly).

    Raises
    ------
    ValueError
        When a plane lies farther than :data:`POSITION_TOL_MM` from every
        source slice: the mask grid is not the source's.
    """
    found = _source_positions(sources)
    out = []
    for plane in positions:
        wanted = np.array([float(v) for v in plane[0].ImagePositionPatient])
        distance = np.linalg.norm(found - wanted, axis=1)
        if float(distance.min()) > POSITION_TOL_MM:
            raise ValueError("the static grid does not match the source instances' positions")
        out.append(hd.PlanePositionSequence("PATIENT", found[int(distance.argmin())].tolist()))
    return out


def fix_dimension_organization(seg: Dataset, uid: str) -> None:
    """Replace highdicom's random Dimension Organization UID: a retried job writes the same bytes."""
    for item in (*seg.DimensionOrganizationSequence, *seg.DimensionIndexSequence):
        item.DimensionOrganizationUID = uid


def build_seg(result: FdopaResult, datasets: Sequence[Dataset], job_key: str,
              created_at: float) -> hd.seg.Segmentation:
    """Build the DICOM SEG of one analysis (module docstring for its content).

    Parameters
    ----------
    result : FdopaResult
        Masks on the grid of ``result.static``.
    datasets : sequence of pydicom.Dataset
        The instances of ``result.source`` (per-slice, or one multi-frame
        instance); pixel data is not read.
    job_key : str
        Stable job identifier; the UIDs derive from it.
    created_at : float
        When the job was made (seconds since the epoch).

    Returns
    -------
    highdicom.seg.Segmentation
        BINARY, Explicit VR Little Endian, in the source study.

    Raises
    ------
    ValueError
        Empty or foreign datasets, masks off the static grid, or a grid
        that does not lie on the source instances' slices.
    """
    sources = source_images(result, datasets)
    stack = segment_masks(result)
    positions, orientation, measures = plane_geometry(result.static.affine, stack.shape[0])
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=stack, segmentation_type="BINARY",
        segment_descriptions=segment_descriptions(result, job_key),
        series_instance_uid=derive_uid(job_key, result.algorithm, "seg-series"),
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=derive_uid(job_key, result.algorithm, "seg-instance"),
        instance_number=1, manufacturer=MANUFACTURER, manufacturer_model_name="dopanode",
        software_versions=__version__, device_serial_number="none",
        content_description=("FDOPA tumour lesions and reference regions"
                             + (", FLAIR-guided VOI" if result.flair_guided else "")),
        content_label="FDOPA_SEG", series_description=SEG_SERIES_DESCRIPTION,
        plane_positions=snap_positions(sources, positions), plane_orientation=orientation,
        pixel_measures=measures, omit_empty_frames=True)
    fix_dimension_organization(seg, derive_uid(job_key, result.algorithm, "seg-dimension-org"))
    stamp_times(seg, created_at)
    logger.info("built SEG", extra={"fields": {
        "event": "seg_built", "sop_instance_uid": str(seg.SOPInstanceUID),
        "segments": int(stack.shape[-1]), "frames": int(seg.NumberOfFrames)}})
    return seg
