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

from collections.abc import Sequence

import highdicom as hd
from pydicom.dataset import Dataset

from service.pipelines.dat_spect.render import render_report_rgb
from service.pipelines.dat_spect.result import StudyResult
from service.report.evidence import evidence_headers
from service.report.identity import RESEARCH_USE_TEXT
from service.report.picture import PictureStyle, build_report_image

PICTURE_SERIES_NUMBER = 9902
PICTURE_SERIES_DESCRIPTION = "dopanode DaT report image - research use, not for diagnosis"
STYLE = PictureStyle(
    PICTURE_SERIES_NUMBER, PICTURE_SERIES_DESCRIPTION, RESEARCH_USE_TEXT,
    "dopanode DaT SPECT picture report: axial slab in MNI space, SBR chart, levels")


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
    return build_report_image(render_report_rgb(result), headers, job_key, result.algorithm,
                              STYLE, created_at)
