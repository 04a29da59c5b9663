"""The picture report: an RGB Secondary Capture beside the SR.

Why Secondary Capture and not Encapsulated PDF: every PACS viewer shows an SC
image in the study's series list next to the SPECT, with no plug-in and no
download; many show an Encapsulated PDF only as an attachment. The page is a
single 8-bit RGB frame (:mod:`service.pipelines.dat_spect.render`), Explicit VR Little
Endian so that every destination accepts it without transcoding.

The page carries no patient identifiers in its pixels (Burned In Annotation
NO): the viewer shows the patient from the header, and the picture stays safe
to share when the header is de-identified.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import highdicom as hd
from pydicom.dataset import Dataset

from service import __version__
from service.pipelines.dat_spect.render import render_report_rgb
from service.pipelines.dat_spect.result import StudyResult
from service.report.evidence import evidence_headers
from service.report.identity import MANUFACTURER, RESEARCH_USE_TEXT, stamp_times
from service.report.uids import derive_uid

logger = logging.getLogger(__name__)

PICTURE_SERIES_NUMBER = 9902
PICTURE_SERIES_DESCRIPTION = "dopanode DaT report image - research use, not for diagnosis"


def _source_image_sequence(headers: Sequence[Dataset]) -> list[Dataset]:
    items = []
    for header in headers:
        item = Dataset()
        item.ReferencedSOPClassUID = header.SOPClassUID
        item.ReferencedSOPInstanceUID = header.SOPInstanceUID
        items.append(item)
    return items


def build_picture_report(
    result: StudyResult, evidence: Sequence[Dataset], job_key: str,
    created_at: float | None = None,
) -> hd.sc.SCImage:
    """Build the picture report of one analysis as a Secondary Capture.

    Parameters
    ----------
    result : StudyResult
        The analysis outcome; ``result.images`` is drawn when present.
    evidence : sequence of pydicom.Dataset
        The analysed source instances (headers suffice); the picture joins
        their patient and study and references them as source images.
    job_key : str
        Stable job identifier; the picture's UIDs are derived from it.
    created_at : float or None
        When the job was made: creation and content date/time derive from it.

    Returns
    -------
    highdicom.sc.SCImage
        Single-frame RGB (``render.HEIGHT_PX`` x ``render.WIDTH_PX``), own series.

    Raises
    ------
    ValueError
        Empty or foreign evidence.
    """
    headers = evidence_headers(result.source, evidence)
    first = headers[0]
    pixels_rgb = render_report_rgb(result)
    image = hd.sc.SCImage(
        pixel_array=pixels_rgb,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        study_instance_uid=first.StudyInstanceUID,
        series_instance_uid=derive_uid(job_key, result.algorithm, "picture-series"),
        series_number=PICTURE_SERIES_NUMBER,
        sop_instance_uid=derive_uid(job_key, result.algorithm, "picture-instance"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        patient_id=first.PatientID,
        patient_name=first.PatientName,
        patient_birth_date=first.PatientBirthDate,
        patient_sex=first.PatientSex,
        accession_number=first.AccessionNumber,
        study_id=first.StudyID,
        study_date=first.StudyDate,
        study_time=first.StudyTime,
        referring_physician_name=first.ReferringPhysicianName,
        patient_orientation=("L", "P"),
        series_description=PICTURE_SERIES_DESCRIPTION,
        manufacturer_model_name="dopanode",
        software_versions=__version__,
        specific_character_set=first.get("SpecificCharacterSet"),
    )
    # A report page has no single patient orientation (Type 2: present, empty).
    image.PatientOrientation = []
    # The brain is an unpaired body part, so Laterality (Type 2C) is absent.
    image.BodyPartExamined = "BRAIN"
    image.ConversionType = "WSD"
    image.BurnedInAnnotation = "NO"
    image.RecognizableVisualFeatures = "NO"
    image.ImageComments = RESEARCH_USE_TEXT
    image.DerivationDescription = (
        "dopanode DaT SPECT picture report: axial slab in MNI space, SBR chart, levels"
    )
    image.SourceImageSequence = _source_image_sequence(headers)
    if created_at is not None:
        stamp_times(image, created_at)
    logger.info(
        "built picture report",
        extra={
            "fields": {
                "event": "picture_built",
                "sop_instance_uid": str(image.SOPInstanceUID),
                "rows": int(image.Rows),
                "columns": int(image.Columns),
            }
        },
    )
    return image
