"""Header reading without pixels: what completion and routing need to know.

Two readers, both header-only:

* :func:`read_header` is what the SCP reads for every received instance
  (UIDs, SOP class, modality and the counts that say how many instances a
  series holds); cheap, a fixed tag list.
* :func:`read_series_header` is what routing reads once per completed
  series: the whole header of one instance (no pixel data), handed to each
  pipeline's ``select``.

No values are logged or put in error messages: a message names the
attribute, never its value.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any, BinaryIO

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException, InvalidDicomError

from service.dicom import codes
from service.dicom.uids import validated_uid
from service.errors import AnalysisError

#: What pydicom raises on a file it cannot parse (besides ValueError).
PARSE_ERRORS: tuple[type[Exception], ...] = (
    InvalidDicomError, EOFError, OSError, KeyError, TypeError, AttributeError, struct.error,
    NotImplementedError,
)
#: Everything a header read may raise for a bad file (ValueError: a bad UID or count).
READ_ERRORS: tuple[type[Exception], ...] = (ValueError, *PARSE_ERRORS)


@dataclass(frozen=True)
class InstanceHeader:
    """The header values completion needs (read without pixel data).

    Attributes
    ----------
    sop_class_uid : str
    number_of_frames : int or None
        Number of Frames (0028,0008), None when absent.
    number_of_slices : int or None
        Number of Slices (0054,0081), None when absent.
    images_in_acquisition : int or None
        Images in Acquisition (0020,1002), None when absent.
    number_of_time_slices : int or None
        Number of Time Slices (0054,0101), dynamic PET/NM; None when absent.
    series_type : str
        PET Series Type (0054,1000) value 1 (``STATIC``, ``DYNAMIC``, ``GATED``,
        ``WHOLE BODY``), upper case; empty when absent.
    number_of_time_slots : int or None
        Number of Time Slots (0054,0071), gated series.
    """

    sop_class_uid: str
    number_of_frames: int | None
    number_of_slices: int | None
    images_in_acquisition: int | None = None
    number_of_time_slices: int | None = None
    series_type: str = ""
    number_of_time_slots: int | None = None


_HEADER_TAGS = ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID",
                "NumberOfFrames", "NumberOfSlices", "ImagesInAcquisition", "NumberOfTimeSlices",
                "SeriesType", "NumberOfTimeSlots", "PatientID", "AccessionNumber"]


@dataclass(frozen=True)
class ParsedHeader:
    """UIDs (validated) and completion counts of one Part-10 instance.

    ``patient_id`` and ``accession`` (as found, may be empty) are for the
    audit trail only (:mod:`service.audit`): never log them.
    """

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    info: InstanceHeader
    patient_id: str = field(default="", repr=False)
    accession: str = field(default="", repr=False)
    #: SOP Class UID (0008,0016) of the data set itself, stripped ("" when absent);
    #: ``info.sop_class_uid`` is the class the sender declared, when given
    dataset_sop_class_uid: str = ""


def read_header(source: str | Path | BinaryIO, sop_class_uid: str | None = None) -> ParsedHeader:
    """Read the header of a Part-10 file, pixel data left unread.

    Parameters
    ----------
    source : path or binary file
    sop_class_uid : str, optional
        The class the sender declared; default the file's own.

    Raises
    ------
    ValueError
        A UID is missing or invalid or a count is not a number (the message
        names the attribute, never its value).
    InvalidDicomError, EOFError, ...
        See :data:`PARSE_ERRORS`: the file cannot be parsed.
    """
    ds = dcmread(source, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
    sop_class = sop_class_uid or validated_uid(str(ds.get("SOPClassUID", "")), "SOPClassUID")
    series_type = ds.get("SeriesType") or ""
    first_type = str(series_type if isinstance(series_type, str) else
                     (series_type[0] if len(series_type) else ""))
    return ParsedHeader(
        study_uid=validated_uid(str(ds.get("StudyInstanceUID", "")), "StudyInstanceUID"),
        series_uid=validated_uid(str(ds.get("SeriesInstanceUID", "")), "SeriesInstanceUID"),
        sop_instance_uid=str(ds.get("SOPInstanceUID", "")).rstrip("\x00 "),
        transfer_syntax=str(ds.file_meta.get("TransferSyntaxUID", "")),
        info=InstanceHeader(
            sop_class, _count(ds, "NumberOfFrames"), _count(ds, "NumberOfSlices"),
            _count(ds, "ImagesInAcquisition"), _count(ds, "NumberOfTimeSlices"),
            first_type.strip().upper(), _count(ds, "NumberOfTimeSlots"),
        ),
        patient_id=str(ds.get("PatientID", "") or "").strip(),
        accession=str(ds.get("AccessionNumber", "") or "").strip(),
        dataset_sop_class_uid=str(ds.get("SOPClassUID", "")).rstrip("\x00 "),
    )


def _count(ds: Any, keyword: str) -> int | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{keyword} is not a number") from None


def _above_one(*counts: int | None) -> int | None:
    for count in counts:
        if count is not None and count > 1:
            return count
    return None


def expected_count(header: InstanceHeader) -> int | None:
    """How many instances the series should hold, from one instance's header.

    * multi-frame NM instance: 1 (it is the whole volume);
    * single-frame NM instance: Number of Slices, else Images in
      Acquisition, when it is above 1 (a per-slice instance that says
      "1 slice" describes itself, not its series);
    * classic PET (PS3.3 C.8.9.1): Number of Slices per frame times Number
      of Time Slices for a ``DYNAMIC`` series, times Number of Time Slots
      for a ``GATED`` one;
    * Enhanced and Legacy Converted multi-frame objects: 1;
    * anything else (CT, MR, SR, ...): None, completion by quiet time.
    """
    sop_class = header.sop_class_uid
    if sop_class in codes.ENHANCED_IMAGE_SOP_CLASSES:
        return 1
    if sop_class == codes.NM_IMAGE_STORAGE:
        if header.number_of_frames is not None and header.number_of_frames > 1:
            return 1
        return _above_one(header.number_of_slices, header.images_in_acquisition)
    if sop_class == codes.PET_IMAGE_STORAGE:
        slices = header.number_of_slices
        if slices is None or slices < 1:
            return None
        if header.series_type == "DYNAMIC":
            frames = header.number_of_time_slices
            return slices * frames if frames is not None and frames >= 1 else None
        if header.series_type == "GATED":
            slots = header.number_of_time_slots
            return slices * slots if slots is not None and slots >= 1 else None
        return slices
    return None


def read_series_header(path: Path) -> Dataset:
    """The whole header of one instance (no pixel data), for routing.

    Raises
    ------
    See :data:`READ_ERRORS`.
    """
    return dcmread(path, stop_before_pixels=True)


#: Tags that end a header (pydicom's ``stop_before_pixels``): Pixel, Float and Double Float Pixel Data.
_PIXEL_TAGS = frozenset({(0x7FE0, 0x0010), (0x7FE0, 0x0008), (0x7FE0, 0x0009)})


def read_header_prefix(data: bytes) -> Dataset | None:
    """The header from the first bytes of a Part-10 file; None when they end before it does.

    ``data`` must reach the pixel data element's tag: pydicom reads a
    truncated stream without complaint (the last value cut short), so a
    header is returned only when reading stopped at a pixel data tag, never
    at the end of ``data``. A data set without pixel data (an SR) always
    gives None: read the whole file then.

    Raises
    ------
    See :data:`READ_ERRORS` (a prefix that is not DICOM at all).
    """
    stream = BytesIO(data)
    header = dcmread(stream, stop_before_pixels=True)
    position = stream.tell()
    if len(data) - position < 8:
        return None  # stopped at the end of the prefix
    little = header.file_meta.get("TransferSyntaxUID") != "1.2.840.10008.1.2.2"
    group, element = struct.unpack("<HH" if little else ">HH", data[position:position + 4])
    return header if (group, element) in _PIXEL_TAGS else None


#: What a damaged data set raises while it is read and its elements are parsed.
DAMAGED_DATA_ERRORS: tuple[type[Exception], ...] = (
    InvalidDicomError, EOFError, KeyError, TypeError, AttributeError, struct.error,
    NotImplementedError, ValueError, RecursionError, IndexError, BytesLengthException,
    OverflowError,
)  # not OSError: a file that cannot be opened now may be readable on the next attempt


def read_series(paths: Sequence[Path]) -> tuple[Dataset, ...]:
    """Read an input series' Part-10 files, every element parsed now (pixel data stays encoded).

    pydicom parses elements lazily; a damaged element would otherwise raise
    deep inside an analysis as an unexpected error. Parsing them here turns
    damaged input into one clear refusal.

    Raises
    ------
    AnalysisError
        ``not_dicom`` for a file that cannot be read or parsed as DICOM (the
        reason names the error class, never a value), ``no_instances`` for
        an empty series.
    """
    datasets: list[Dataset] = []
    for path in paths:
        try:
            ds = dcmread(path)
            for _ in ds.iterall():  # parse every element, sequences included
                pass
        except DAMAGED_DATA_ERRORS as exc:
            raise AnalysisError(f"a file of the series is not readable DICOM "
                                f"({type(exc).__name__})", "not_dicom") from exc
        datasets.append(ds)
    if not datasets:
        raise AnalysisError("no instances", "no_instances")
    return tuple(datasets)


#: Older senders write SNOMED-RT codes with the designator "SNM3" (PS3.16 8.2).
_SCHEME_ALIASES = {"SNM3": "SRT"}


def radiopharmaceutical_codes(ds: Dataset, keyword: str) -> list[tuple[str, str]]:
    """(code value, scheme) of every ``keyword`` item (``RadiopharmaceuticalCodeSequence``,
    ``RadionuclideCodeSequence``) in every Radiopharmaceutical Information item; SNM3 read as SRT."""
    found = []
    for item in ds.get("RadiopharmaceuticalInformationSequence") or []:
        for code in item.get(keyword) or []:
            value = str(code.get("CodeValue", "")).strip()
            scheme = str(code.get("CodingSchemeDesignator", "")).strip().upper()
            if value:
                found.append((value, _SCHEME_ALIASES.get(scheme, scheme)))
    return found
