"""SUVbw from PET headers: the QIBA vendor-neutral algorithm, with a reason when impossible.

Follows the QIBA "SUV vendor-neutral pseudo-code" (QIBA FDG-PET/CT Technical
Committee, as implemented by ``cornerstonejs/calculate-suv``
``calculateSUVScalingFactors.ts`` / ``calculateScanTimes.ts`` and
``oncoray/mirp`` ``_data_import/suv.py``; research note
``fdopa_sim_and_product.md`` §3.4-3.5):

1. Corrected Image (0028,0051) must contain ``ATTN`` and ``DECY``.
2. Units (0054,1001):

   * ``GML``: the values already are SUVbw (g/mL), factor 1;
   * ``BQML``: ``SUVbw = value x weight_g / decayed_dose_Bq``;
   * ``CNTS`` (Philips): the SUV Scale Factor (7053,1000) of the private
     creator ``Philips PET Private Group``; if absent, the Activity
     Concentration Scale Factor (7053,1009) (counts to Bq/mL) times the
     BQML factor;
   * anything else: no SUV.

3. Decay Correction (0054,1102):

   * ``ADMIN``: values are decay-corrected to the Radiopharmaceutical Start
     Date/Time, so ``decayed_dose = dose``;
   * ``START``: values are decay-corrected to the scan start, so
     ``decayed_dose = dose x 2^(-(scan - administration) / T1/2)``. Scan
     start = Series Date/Time, unless it is later than the earliest
     Acquisition Date/Time of the series (a post-processed series): then the
     GE private scan date-time (0009,100D) of ``GEMS_PETD_01`` if present,
     else for Siemens the acquisition time + T_ave - Frame Reference Time
     (:func:`siemens_scan_start`), else the earliest Acquisition Date/Time.
     A true Enhanced PET gives its decay reference itself: Decay Correction
     DateTime (0018,9701) (:func:`.pet_header.enhanced_pet_equivalents`);
   * ``NONE``: no SUV (values are not decay-corrected to one time).

4. Weight = Patient's Weight (kg) x 1000 (g); dose = Radionuclide Total Dose
   (Bq); T1/2 = Radionuclide Half Life (s) from the Radiopharmaceutical
   Information Sequence; administration = Radiopharmaceutical Start DateTime,
   else Series Date + Radiopharmaceutical Start Time.

A dose-assay time recorded as the Radiopharmaceutical Start Time (Siemens
practice) gives the same SUV as long as the Total Dose is the assayed
activity at that time, which is what the decay arithmetic assumes; a header
that pairs an assay time with the injected activity cannot be detected.

Nothing here raises for missing data: ratios need no SUV, so the result
carries a patient-free ``reason`` instead (style.md: the SR says why SUV is
missing).
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

from pydicom.dataset import Dataset

from service.imaging.pet_header import acquisition_datetime, parse_datetime, series_attributes

PHILIPS_CREATOR = "Philips PET Private Group"
GE_CREATOR = "GEMS_PETD_01"


@dataclass(frozen=True)
class SuvScale:
    """How to turn the series' values into SUVbw.

    Attributes
    ----------
    factor : float or None
        Multiply values (after Rescale Slope/Intercept, in the series' Units)
        by it to get SUVbw in g/mL; the same for every frame, as every image
        of a series is decay-corrected to one time (PS3.3 C.8.9.1.1.5).
        None when SUV cannot be computed.
    bqml_per_unit : float or None
        Multiply values by it to get Bq/mL (1 for BQML; the Philips activity
        factor for CNTS; None for GML or when unknown).
    suv_per_bqml : float or None
        ``weight_g / decayed_dose_Bq``: SUVbw per Bq/mL (g/mL per Bq/mL).
    method : str
        The QIBA branch used, e.g. ``"BQML, START, series time"``.
    reason : str
        Empty when ``factor`` is set; else why SUV is not available.
    """

    factor: float | None
    bqml_per_unit: float | None
    suv_per_bqml: float | None
    method: str
    reason: str = ""

    @property
    def available(self) -> bool:
        return self.factor is not None


def _no_suv(reason: str, method: str = "", bqml: float | None = None) -> SuvScale:
    return SuvScale(None, bqml, None, method, reason)


def _positive(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None


def _private(ds: Dataset, group: int, creator: str, element: int) -> object:
    """Value of private ``(group, xx<element>)`` reserved by ``creator`` (PS3.5 7.8.1), or None."""
    for slot in range(0x10, 0x100):
        owner = ds.get((group, slot))
        if owner is not None and str(owner.value).strip() == creator:
            found = ds.get((group, (slot << 8) | element))
            return None if found is None else found.value
    return None


def scan_start(header: Dataset, earliest_acquisition: dt.datetime | None
               ) -> tuple[dt.datetime | None, str]:
    """QIBA scan start date-time and which source gave it (step 3, START)."""
    series = parse_datetime(f"{header.get('SeriesDate', '')}{header.get('SeriesTime', '')}")
    acquired = earliest_acquisition or acquisition_datetime(header)
    if series is not None and (acquired is None or series <= acquired):
        return series, "series time"
    ge = _private(header, 0x0009, GE_CREATOR, 0x0D)
    if ge:
        return parse_datetime(str(ge)), "GE private scan time (post-processed series)"
    siemens = siemens_scan_start(header)
    if siemens is not None and (acquired is None or siemens <= acquired):
        return siemens, "Siemens T_ave back-computation (post-processed series)"
    return acquired, "acquisition time (post-processed series)"


def count_average_time_s(duration_s: float, half_life_s: float) -> float:
    """T_ave: seconds after a frame's start at which the count rate equals its average.

    For activity decaying as exp(-lambda t) over a frame of length T, the rate
    equals its frame mean at ``(1/lambda) ln(lambda T / (1 - exp(-lambda T)))``
    (a little before mid-frame). This is the time Siemens writes as Frame
    Reference Time (0054,1300) from the scan start (MIRP ``suv.py``, research
    note ``fdopa_sim_and_product.md`` §3.5).
    """
    lam = math.log(2.0) / half_life_s
    x = lam * duration_s
    return math.log(x / -math.expm1(-x)) / lam


def siemens_scan_start(header: Dataset) -> dt.datetime | None:
    """Scan start of a Siemens series from its own frame: acquisition + T_ave - Frame Reference Time.

    The decay reference of a START series whose Series Time was overwritten by
    post-processing (a static window reconstructed later from a list-mode scan
    that started at injection, say). None unless the manufacturer is Siemens
    and Acquisition Date/Time, Actual Frame Duration, Frame Reference Time and
    the half-life are all there: other vendors write Frame Reference Time as
    mid-frame or frame start, where this would be wrong by up to half a frame.
    """
    if "SIEMENS" not in str(header.get("Manufacturer", "") or "").upper():
        return None
    acquired = acquisition_datetime(header)
    duration_s = _positive(header.get("ActualFrameDuration"))
    reference = header.get("FrameReferenceTime")
    items = header.get("RadiopharmaceuticalInformationSequence") or []
    half_life = _positive(items[0].get("RadionuclideHalfLife")) if items else None
    if acquired is None or duration_s is None or reference in (None, "") or half_life is None:
        return None
    t_ave_s = count_average_time_s(duration_s / 1000.0, half_life)
    return acquired + dt.timedelta(seconds=t_ave_s - float(reference) / 1000.0)


def administration_datetime(item: Dataset, header: Dataset) -> dt.datetime | None:
    """Radiopharmaceutical Start DateTime of ``item``, else Series Date + Radiopharmaceutical Start Time."""
    if item.get("RadiopharmaceuticalStartDateTime"):
        return parse_datetime(str(item.RadiopharmaceuticalStartDateTime))
    time = item.get("RadiopharmaceuticalStartTime")
    return parse_datetime(f"{header.get('SeriesDate', '')}{time}") if time else None


def _decayed_dose(header: Dataset, earliest: dt.datetime | None) -> tuple[float | None, str]:
    """(dose decayed to the values' reference time in Bq, branch) or (None, reason)."""
    items = header.get("RadiopharmaceuticalInformationSequence") or []
    if not items:
        return None, "no Radiopharmaceutical Information Sequence"
    item = items[0]
    dose = _positive(item.get("RadionuclideTotalDose"))
    if dose is None:
        return None, "no Radionuclide Total Dose"
    correction = str(header.get("DecayCorrection", "") or "").upper()
    if correction == "ADMIN":
        return dose, "ADMIN"
    if correction != "START":
        return None, f"Decay Correction is {correction or 'missing'}, not START or ADMIN"
    half_life = _positive(item.get("RadionuclideHalfLife"))
    if half_life is None:
        return None, "no Radionuclide Half Life"
    administered = administration_datetime(item, header)
    if administered is None:
        return None, "no Radiopharmaceutical Start Time"
    start: dt.datetime | None = parse_datetime(str(header.get("DecayCorrectionDateTime", "")))
    source = "Decay Correction DateTime (Enhanced PET)"
    if start is None:
        start, source = scan_start(header, earliest)
    if start is None:
        return None, "no Series or Acquisition Time"
    elapsed = (start - administered).total_seconds()
    if elapsed < 0:
        return None, "scan starts before the radiopharmaceutical start time"
    return dose * 2.0 ** (-elapsed / half_life), f"START, {source}"


def suv_scale(header: Dataset, earliest_acquisition: dt.datetime | None = None) -> SuvScale:
    """SUVbw scale of one PET series by the QIBA vendor-neutral rules.

    Parameters
    ----------
    header : pydicom.Dataset
        One instance of the series (a per-slice instance, or the multi-frame
        one); series-level attributes are read.
    earliest_acquisition : datetime.datetime, optional
        Earliest Acquisition Date/Time of the series
        (``PetVolume.first_frame_start``); else the header's own.

    Returns
    -------
    SuvScale
        ``factor`` None with a ``reason`` when SUV cannot be computed.
    """
    header = series_attributes(header)
    units = str(header.get("Units", "") or "").upper()
    corrected = {str(v).upper() for v in (header.get("CorrectedImage") or [])}
    bqml: float | None = None
    if units == "BQML":
        bqml = 1.0
    elif units == "CNTS":
        bqml = _positive(_private(header, 0x7053, PHILIPS_CREATOR, 0x09))
    missing = sorted({"ATTN", "DECY"} - corrected)
    if missing:
        return _no_suv(f"no SUV: image not corrected for {' and '.join(missing)}",
                       bqml=bqml)
    if units == "GML":
        return SuvScale(1.0, None, None, "GML (values are SUVbw)")
    if units not in ("BQML", "CNTS"):
        return _no_suv(f"no SUV: Units {units or 'missing'} not BQML, CNTS or GML")
    if units == "CNTS":
        philips = _positive(_private(header, 0x7053, PHILIPS_CREATOR, 0x00))
        if philips is not None:
            return SuvScale(philips, bqml, philips / bqml if bqml else None,
                            "CNTS, Philips SUV scale factor (7053,1000)")
        if bqml is None:
            return _no_suv("no SUV: CNTS without the Philips scale factors")
    weight = _positive(header.get("PatientWeight"))
    if weight is None:
        return _no_suv("no SUV: no patient weight", bqml=bqml)
    dose, branch = _decayed_dose(header, earliest_acquisition)
    if dose is None:
        return _no_suv(f"no SUV: {branch}", bqml=bqml)
    per_bqml = weight * 1000.0 / dose
    assert bqml is not None
    return SuvScale(per_bqml * bqml, bqml, per_bqml, f"{units}, {branch}")
