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

from collections.abc import Sequence

import highdicom as hd
from pydicom.dataset import Dataset

from service.pipelines.fdopa_pet.render import render_report_rgb
from service.pipelines.fdopa_pet.result import FdopaResult
from service.pipelines.fdopa_pet.sr import research_statement
from service.report.evidence import evidence_headers
from service.report.picture import PictureStyle, build_report_image

PICTURE_SERIES_NUMBER = 9914
PICTURE_SERIES_DESCRIPTION = "dopanode FDOPA report image - research use, not for diagnosis"


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
    style = PictureStyle(
        PICTURE_SERIES_NUMBER, PICTURE_SERIES_DESCRIPTION, research_statement(result),
        "dopanode FDOPA PET picture report: three planes with outlines, indices, curves")
    return build_report_image(render_report_rgb(result), headers, job_key, result.algorithm,
                              style, created_at)
