"""The source instances as evidence for the result objects: checked header copies.

Both result objects inherit patient and study from the analysed series and
reference its instances. The pipeline hands over full datasets (pixel data
included); only the header attributes below are copied, so the builders never
hold or parse pixels, and nothing else of the source can leak into the output.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.valuerep import validate_value

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


#: VRs whose values are parsed (highdicom turns DA/TM/DT into dates and
#: times): a malformed one is copied empty. Text VRs (PN, LO, SH, CS, UI) are
#: copied as sent, since the PACS files the result by them.
_PARSED_VRS = frozenset({"DA", "TM", "DT", "AS", "DS", "IS"})


def _valid_or_none(element: DataElement) -> object:
    """The element's value, or None (empty) when a parsed value does not conform.

    Senders write e.g. Patient's Birth Date as ``1959-01-01`` or ``17.08.1923``;
    highdicom refuses such a value and pydicom would echo it into the log. The
    result objects carry these Type 2 attributes empty instead, so the reader
    still gets the result. Nothing about the value is logged.
    """
    value = element.value
    if element.VR not in _PARSED_VRS or value in (None, ""):
        return value
    values = list(value) if element.VM > 1 else [value]
    try:
        for item in values:
            validate_value(element.VR, item, config.RAISE)
    except ValueError:
        return None
    return value


def evidence_headers(source: SourceReference, evidence: Sequence[Dataset]) -> list[Dataset]:
    """Header-only copies of the source instances, checked against ``source``.

    Raises
    ------
    ValueError
        When ``evidence`` is empty, is not the analysed series, or an
        instance lacks its SOP Class or SOP Instance UID.

    Notes
    -----
    A copied value that does not conform to its VR (a Patient's Birth Date of
    ``1959-01-01``) is copied empty: those attributes are Type 2 in the SR and
    the Secondary Capture.
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
                setattr(header, keyword, _valid_or_none(ds[keyword]))
        for keyword in _TYPE2_KEYWORDS:
            if keyword not in header:
                setattr(header, keyword, None)
        headers.append(header)
    return headers
