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

    A per-slice instance is returned as is. For a multi-frame instance, the
    attributes a Legacy Converted Enhanced PET keeps in the Unassigned Shared
    Converted Attributes Sequence (Units, Corrected Image, Decay Correction,
    the Radiopharmaceutical Information Sequence, ...) are copied to the top
    level of a shallow copy without pixel data, unless already there.
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
    return flat


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
