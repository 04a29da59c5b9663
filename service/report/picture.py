"""The picture report's DICOM side, shared by every pipeline: an RGB Secondary Capture.

Why Secondary Capture and not Encapsulated PDF: every PACS viewer shows an SC
image in the study's series list next to the source images, with no plug-in
and no download; many show an Encapsulated PDF only as an attachment. The
page is a single 8-bit RGB frame, Explicit VR Little Endian, so that every
destination accepts it without transcoding. The pixels carry no patient
identifiers (Burned In Annotation NO): the viewer shows the patient from the
header, and the picture stays safe to share when the header is de-identified.

Each pipeline draws its own page (a matplotlib figure) and passes the pixels
here with its series number, description and texts.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from pydicom.dataset import Dataset

from service import __version__
from service.report.identity import MANUFACTURER, AlgorithmInfo, stamp_times
from service.report.uids import derive_uid

logger = logging.getLogger(__name__)


def figure_rgb(fig: Figure) -> np.ndarray:
    """Draw a matplotlib figure (Agg canvas) and return its pixels.

    Returns
    -------
    (height, width, 3) uint8 array
        RGB, row 0 at the top.
    """
    canvas = fig.canvas
    assert isinstance(canvas, FigureCanvasAgg)
    canvas.draw()
    return np.ascontiguousarray(np.asarray(canvas.buffer_rgba())[..., :3])


@dataclass(frozen=True)
class PictureStyle:
    """What differs between the pipelines' picture reports.

    Attributes
    ----------
    series_number : int
    series_description : str
    image_comments : str
        The research-use statement.
    derivation : str
        Derivation Description: what the page shows.
    """

    series_number: int
    series_description: str
    image_comments: str
    derivation: str


def _source_image_sequence(headers: Sequence[Dataset]) -> list[Dataset]:
    items = []
    for header in headers:
        item = Dataset()
        item.ReferencedSOPClassUID = header.SOPClassUID
        item.ReferencedSOPInstanceUID = header.SOPInstanceUID
        items.append(item)
    return items


def build_report_image(pixels_rgb: np.ndarray, headers: Sequence[Dataset], job_key: str,
                       algorithm: AlgorithmInfo, style: PictureStyle,
                       created_at: float | None) -> hd.sc.SCImage:
    """An RGB Secondary Capture of a report page in the study of ``headers``.

    Parameters
    ----------
    pixels_rgb : (rows, columns, 3) uint8 array
    headers : sequence of pydicom.Dataset
        The analysed instances (checked by the caller): the picture joins
        their patient and study and references them as source images.
    job_key : str
        Stable job identifier; the UIDs derive from it and ``algorithm``.
    algorithm : AlgorithmInfo
    style : PictureStyle
    created_at : float or None
        When the job was made: creation and content date/time derive from it.
    """
    first = headers[0]
    image = hd.sc.SCImage(
        pixel_array=pixels_rgb, photometric_interpretation="RGB", bits_allocated=8,
        coordinate_system="PATIENT", study_instance_uid=first.StudyInstanceUID,
        series_instance_uid=derive_uid(job_key, algorithm, "picture-series"),
        series_number=style.series_number,
        sop_instance_uid=derive_uid(job_key, algorithm, "picture-instance"),
        instance_number=1, manufacturer=MANUFACTURER, patient_id=first.PatientID,
        patient_name=first.PatientName, patient_birth_date=first.PatientBirthDate,
        patient_sex=first.PatientSex, accession_number=first.AccessionNumber,
        study_id=first.StudyID, study_date=first.StudyDate, study_time=first.StudyTime,
        referring_physician_name=first.ReferringPhysicianName, patient_orientation=("L", "P"),
        series_description=style.series_description, manufacturer_model_name="dopanode",
        software_versions=__version__,
        specific_character_set=first.get("SpecificCharacterSet"))
    # A report page has no single patient orientation (Type 2: present, empty).
    image.PatientOrientation = []
    # The brain is an unpaired body part, so Laterality (Type 2C) is absent.
    image.BodyPartExamined = "BRAIN"
    image.ConversionType = "WSD"
    image.BurnedInAnnotation = "NO"
    image.RecognizableVisualFeatures = "NO"
    image.ImageComments = style.image_comments
    image.DerivationDescription = style.derivation
    image.SourceImageSequence = _source_image_sequence(headers)
    if created_at is not None:
        stamp_times(image, created_at)
    logger.info("built picture report", extra={"fields": {
        "event": "picture_built", "sop_instance_uid": str(image.SOPInstanceUID),
        "rows": int(image.Rows), "columns": int(image.Columns)}})
    return image
