"""The FDOPA picture report: an RGB Secondary Capture beside the SEG and the SR.

Secondary Capture rather than Encapsulated PDF for the reason of the DaT
report (:mod:`service.pipelines.dat_spect.picture`): every PACS viewer shows
an SC image in the study's series list with no plug-in. One 8-bit RGB frame
(:mod:`.render`, 1280 x 960), Explicit VR Little Endian, no patient
identifiers in the pixels (Burned In Annotation NO), "research use, not for
diagnosis - derived from simulated data" in the pixels, the Series
Description and Image Comments.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import highdicom as hd
from pydicom.dataset import Dataset

from service import __version__
from service.pipelines.fdopa_pet.render import render_report_rgb
from service.pipelines.fdopa_pet.result import FdopaResult
from service.pipelines.fdopa_pet.sr import research_statement
from service.report.evidence import evidence_headers
from service.report.identity import MANUFACTURER, stamp_times
from service.report.uids import derive_uid

logger = logging.getLogger(__name__)

PICTURE_SERIES_NUMBER = 9914
PICTURE_SERIES_DESCRIPTION = "dopanode FDOPA report image - research use, not for diagnosis"


def _source_image_sequence(headers: Sequence[Dataset]) -> list[Dataset]:
    items = []
    for header in headers:
        item = Dataset()
        item.ReferencedSOPClassUID = header.SOPClassUID
        item.ReferencedSOPInstanceUID = header.SOPInstanceUID
        items.append(item)
    return items


def build_picture_report(result: FdopaResult, datasets: Sequence[Dataset], job_key: str,
                         created_at: float) -> hd.sc.SCImage:
    """Build the picture report of one FDOPA analysis as a Secondary Capture.

    Parameters
    ----------
    result : FdopaResult
    datasets : sequence of pydicom.Dataset
        The instances of ``result.source`` (headers suffice): the picture
        joins their patient and study and references them as source images.
    job_key : str
        Stable job identifier; the UIDs derive from it.
    created_at : float
        When the job was made (seconds since the epoch).

    Returns
    -------
    highdicom.sc.SCImage
        Single-frame RGB, ``render.HEIGHT_PX`` x ``render.WIDTH_PX``, own series.

    Raises
    ------
    ValueError
        Empty or foreign datasets.
    """
    headers = evidence_headers(result.source, datasets)
    first = headers[0]
    image = hd.sc.SCImage(
        pixel_array=render_report_rgb(result), photometric_interpretation="RGB",
        bits_allocated=8, coordinate_system="PATIENT",
        study_instance_uid=first.StudyInstanceUID,
        series_instance_uid=derive_uid(job_key, result.algorithm, "picture-series"),
        series_number=PICTURE_SERIES_NUMBER,
        sop_instance_uid=derive_uid(job_key, result.algorithm, "picture-instance"),
        instance_number=1, manufacturer=MANUFACTURER, patient_id=first.PatientID,
        patient_name=first.PatientName, patient_birth_date=first.PatientBirthDate,
        patient_sex=first.PatientSex, accession_number=first.AccessionNumber,
        study_id=first.StudyID, study_date=first.StudyDate, study_time=first.StudyTime,
        referring_physician_name=first.ReferringPhysicianName, patient_orientation=("L", "P"),
        series_description=PICTURE_SERIES_DESCRIPTION, manufacturer_model_name="dopanode",
        software_versions=__version__,
        specific_character_set=first.get("SpecificCharacterSet"))
    # A report page has no single patient orientation (Type 2: present, empty).
    image.PatientOrientation = []
    image.BodyPartExamined = "BRAIN"
    image.ConversionType = "WSD"
    image.BurnedInAnnotation = "NO"
    image.RecognizableVisualFeatures = "NO"
    image.ImageComments = research_statement(result)
    image.DerivationDescription = (
        "dopanode FDOPA PET picture report: three planes with outlines, indices, curves")
    image.SourceImageSequence = _source_image_sequence(headers)
    stamp_times(image, created_at)
    logger.info("built picture report", extra={"fields": {
        "event": "picture_built", "sop_instance_uid": str(image.SOPInstanceUID),
        "rows": int(image.Rows), "columns": int(image.Columns)}})
    return image
