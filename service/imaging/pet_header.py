"""PET header reading shared by the volume reader, SUV and the FDOPA gate: dates, timing.

Pure functions over pydicom datasets; no pixel data is read. Date-times are
naive (scanner clock); a Timezone Offset From UTC is ignored, as every time
compared comes from the same scanner.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

from service.errors import AnalysisError


def _parse_dt(date: object, time: object) -> dt.datetime | None:
    text = f"{str(date or '').strip()}{str(time or '').strip()}"
    return parse_datetime(text) if date and time else None


def parse_datetime(text: str) -> dt.datetime | None:
    """A DICOM DT (``YYYYMMDDHHMMSS.FFFFFF``, offset ignored) or None."""
    text = str(text or "").strip().split("+")[0].split("-")[0]
    if len(text) < 12:
        return None
    main, _, frac = text.partition(".")
    main = main.ljust(14, "0")
    try:
        value = dt.datetime.strptime(main[:14], "%Y%m%d%H%M%S")
    except ValueError:
        return None
    return value + dt.timedelta(microseconds=int((frac + "000000")[:6])) if frac else value


def acquisition_datetime(ds: Dataset) -> dt.datetime | None:
    """Acquisition Date/Time of a single-frame instance (AcquisitionDateTime first)."""
    if ds.get("AcquisitionDateTime"):
        return parse_datetime(str(ds.AcquisitionDateTime))
    return _parse_dt(ds.get("AcquisitionDate") or ds.get("SeriesDate"), ds.get("AcquisitionTime"))


def series_attributes(ds: Dataset) -> Dataset:
    """The PET series-level attributes of an instance, whatever its encoding.

    A per-slice instance is returned as is. For a multi-frame instance, a
    shallow copy without pixel data and per-frame groups, with:

    * the attributes a Legacy Converted Enhanced PET keeps in the Unassigned
      Shared Converted Attributes Sequence (Units, Corrected Image, Decay
      Correction, the Radiopharmaceutical Information Sequence, ...) copied to
      the top level, unless already there;
    * for a true Enhanced PET, the classic equivalents of its own attributes
      (:func:`enhanced_pet_equivalents`), unless already there.
    """
    if "SharedFunctionalGroupsSequence" not in ds:
        return ds
    flat = Dataset()
    for element in ds:
        if element.keyword not in ("PixelData", "PerFrameFunctionalGroupsSequence"):
            flat.add(element)
    shared = ds.SharedFunctionalGroupsSequence[0]
    for item in shared.get("UnassignedSharedConvertedAttributesSequence") or []:
        for element in item:
            if element.tag not in flat:
                flat.add(element)
    for keyword, value in enhanced_pet_equivalents(ds).items():
        if keyword not in flat:
            setattr(flat, keyword, value)
    return flat


#: Enhanced PET Corrections Module flags (PS3.3 C.8.22.6, Table C.8.22-19) and the
#: Corrected Image (0028,0051) term each one stands for (the term is in its description).
CORRECTION_FLAGS = (
    ("DecayCorrected", "DECY"), ("AttenuationCorrected", "ATTN"), ("ScatterCorrected", "SCAT"),
    ("DeadTimeCorrected", "DTIM"), ("GantryMotionCorrected", "MOTN"),
    ("PatientMotionCorrected", "PMOT"), ("CountLossNormalizationCorrected", "CLN"),
    ("RandomsCorrected", "RAN"), ("NonUniformRadialSamplingCorrected", "RADL"),
    ("SensitivityCalibrated", "DCAL"), ("DetectorNormalizationCorrection", "NORM"),
)
#: Measurement Units (UCUM, CID 84 "PET Units") of the Real World Value Mapping, as the
#: classic Units (0054,1001) terms the SUV rules read; lower case.
UNITS_FROM_UCUM = {"bq/ml": "BQML", "{suvbw}g/ml": "GML", "g/ml{suvbw}": "GML",
                   "{counts}": "CNTS", "{counts}/s": "CPS", "{propcounts}": "PROPCNTS"}


def enhanced_pet_equivalents(ds: Dataset) -> dict[str, object]:
    """Classic PET Series attributes a true Enhanced PET instance implies.

    An Enhanced PET Image (SOP Class 1.2.840.10008.5.1.4.1.1.130) has no
    Corrected Image, Decay Correction, Units or Series Type. Its own
    attributes say the same:

    * ``CorrectedImage``: the terms of the Enhanced PET Corrections Module
      flags equal to ``YES`` (C.8.22.6);
    * ``DecayCorrection``: ``START`` when Decay Corrected is ``YES`` (the
      values are decay-corrected to one time, the Decay Correction DateTime
      (0018,9701), which :mod:`service.imaging.suv` then uses as the
      reference), ``NONE`` when it is ``NO``;
    * ``Units``: the Measurement Units Code Sequence of the Real World Value
      Mapping functional group (CID 84, UCUM; shared, else the first frame's),
      else a classic term in Rescale Type (Pixel Value Transformation);
    * ``SeriesType``: ``DYNAMIC`` when the frames have more than one Temporal
      Position Index or Frame Acquisition DateTime, else ``STATIC``.

    Returns an empty dict for anything that is not an Enhanced PET with
    these flags (a Legacy Converted instance keeps the classic attributes).
    """
    if "AttenuationCorrected" not in ds and "DecayCorrected" not in ds:
        return {}
    out: dict[str, object] = {
        "CorrectedImage": [term for keyword, term in CORRECTION_FLAGS
                           if str(ds.get(keyword, "") or "").upper() == "YES"]}
    decay = str(ds.get("DecayCorrected", "") or "").upper()
    if decay in ("YES", "NO"):
        out["DecayCorrection"] = "START" if decay == "YES" else "NONE"
    units = _enhanced_units(ds)
    if units:
        out["Units"] = units
    out["SeriesType"] = ["DYNAMIC" if _time_positions(ds) > 1 else "STATIC", "IMAGE"]
    return out


def _functional_group(ds: Dataset, keyword: str) -> Dataset | None:
    """First item of a functional group macro, shared or (else) of the first frame."""
    for groups in (ds.get("SharedFunctionalGroupsSequence"),
                   ds.get("PerFrameFunctionalGroupsSequence")):
        if groups and keyword in groups[0] and groups[0][keyword].value:
            return groups[0][keyword].value[0]
    return None


def _enhanced_units(ds: Dataset) -> str | None:
    mapping = _functional_group(ds, "RealWorldValueMappingSequence")
    if mapping is not None:
        for code in mapping.get("MeasurementUnitsCodeSequence") or []:
            found = UNITS_FROM_UCUM.get(str(code.get("CodeValue", "")).strip().lower())
            if found:
                return found
    transform = _functional_group(ds, "PixelValueTransformationSequence")
    rescale = str((transform or Dataset()).get("RescaleType", "") or "").upper()
    return rescale if rescale in ("BQML", "GML", "CNTS") else None


def _time_positions(ds: Dataset) -> int:
    """Number of distinct time positions among the frames (Frame Content Sequence)."""
    seen = set()
    for frame in ds.get("PerFrameFunctionalGroupsSequence") or []:
        for content in frame.get("FrameContentSequence") or []:
            seen.add((content.get("TemporalPositionIndex"),
                      str(content.get("FrameAcquisitionDateTime", ""))))
    return len(seen)


@dataclass(frozen=True)
class FrameTiming:
    acquired: dt.datetime | None
    duration_s: float
    reference_s: float | None


def instance_timing(ds: Dataset) -> FrameTiming:
    duration = ds.get("ActualFrameDuration")
    ref = ds.get("FrameReferenceTime")
    return FrameTiming(acquisition_datetime(ds),
                   float(duration) / 1000.0 if duration not in (None, "") else float("nan"),
                   float(ref) / 1000.0 if ref not in (None, "") else None)


def frame_times(timings: list[FrameTiming], warnings: list[str]
                 ) -> tuple[list[tuple[float, float]], dt.datetime | None]:
    """(start_s, duration_s) per frame, relative to the first frame, and its start."""
    if any(not np.isfinite(t.duration_s) or t.duration_s <= 0 for t in timings):
        raise AnalysisError("missing timing: no Actual Frame Duration", "missing_timing")
    if all(t.acquired is not None for t in timings):
        first = min(t.acquired for t in timings if t.acquired is not None)
        return [((t.acquired - first).total_seconds(), t.duration_s)  # type: ignore[operator]
                for t in timings], first
    if all(t.reference_s is not None for t in timings):
        warnings.append("frame starts from Frame Reference Time taken as mid-frame")
        starts = [t.reference_s - t.duration_s / 2 for t in timings]  # type: ignore[operator]
        return [(s - min(starts), t.duration_s) for s, t in zip(starts, timings, strict=True)], None
    raise AnalysisError("missing timing: no Acquisition Time or Frame Reference Time",
                        "missing_timing")
