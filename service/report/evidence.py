"""The source instances as evidence for the result objects: checked header copies.

Both result objects inherit patient and study from the analysed series and
reference its instances. The pipeline hands over full datasets (pixel data
included); only the header attributes below are copied, so the builders never
hold or parse pixels, and nothing else of the source can leak into the output.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydicom.dataset import Dataset

from service.report.identity import SourceReference

#: Header attributes copied from the source into the evidence handed to
#: highdicom (patient, study, series, instance; never pixel data).
_EVIDENCE_KEYWORDS = (
    "SpecificCharacterSet",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "StudyInstanceUID",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "ReferringPhysicianName",
    "SeriesInstanceUID",
    "SOPClassUID",
    "SOPInstanceUID",
)
#: Type 2 attributes highdicom reads from the first evidence item.
_TYPE2_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "ReferringPhysicianName",
)


def evidence_headers(source: SourceReference, evidence: Sequence[Dataset]) -> list[Dataset]:
    """Header-only copies of the source instances, checked against ``source``.

    Raises
    ------
    ValueError
        When ``evidence`` is empty, is not the analysed series, or an
        instance lacks its SOP Class or SOP Instance UID.
    """
    if len(evidence) == 0:
        raise ValueError("evidence must hold at least one source instance")
    headers = []
    for ds in evidence:
        if ds.get("StudyInstanceUID") != source.study_instance_uid or (
            ds.get("SeriesInstanceUID") != source.series_instance_uid
        ):
            raise ValueError("evidence does not belong to the analysed source series")
        if not ds.get("SOPClassUID") or not ds.get("SOPInstanceUID"):
            raise ValueError("evidence instance lacks SOP Class or SOP Instance UID")
        header = Dataset()
        for keyword in _EVIDENCE_KEYWORDS:
            if keyword in ds:
                setattr(header, keyword, ds[keyword].value)
        for keyword in _TYPE2_KEYWORDS:
            if keyword not in header:
                setattr(header, keyword, None)
        headers.append(header)
    return headers
