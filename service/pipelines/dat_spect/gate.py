"""Is this series a DaT SPECT ([123I]FP-CIT) reconstruction? Decide before analysing.

Rules, in order (the first that decides wins):

1. Modality must be ``NM`` and the SOP class NM Image Storage.
2. Image Type value 3 must be ``RECON TOMO`` (raw projections, gated or
   planar images are not volumes to rate).
3. Radiopharmaceutical Information Sequence (PS3.3 C.8.4.10, CID 25): a
   Radiopharmaceutical Code Sequence item with Ioflupane I-123, SCT 429296007
   or legacy SRT C-B07EC (designator SNM3 read as SRT), accepts; any other coded radiopharmaceutical
   refuses, whatever the description says. A coded radionuclide other than
   123-Iodine (SCT 21572004 / SRT C-114A4) refuses too.
4. Only when no radiopharmaceutical is coded: a configured keyword found in
   the Series Description (case-insensitive, spaces, hyphens and
   underscores ignored) accepts.

Everything else raises ``AnalysisError("not a DaT SPECT series: <why>",
code="not_dat")``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from pydicom.dataset import Dataset

from service.dicom import codes as dicom_codes
from service.dicom.header import radiopharmaceutical_codes
from service.errors import AnalysisError
from service.pipelines.dat_spect import codes

log = logging.getLogger(__name__)

#: Radionuclide codes accepted as 123-Iodine (SCT, and SRT for legacy senders).
_IODINE_123_CODES = frozenset({(codes.IODINE_123.value, "SCT"), ("C-114A4", "SRT")})


def _refuse(why: str) -> AnalysisError:
    return AnalysisError(f"not a DaT SPECT series: {why}", code="not_dat")



def _squash(text: str) -> str:
    return "".join(ch for ch in text.casefold() if ch not in " -_")


def _check_kind(ds: Dataset) -> None:
    modality = str(ds.get("Modality", "") or "")
    if modality != "NM":
        raise _refuse(f"modality is {modality or 'missing'}, not NM")
    if str(ds.get("SOPClassUID", "")) != dicom_codes.NM_IMAGE_STORAGE:
        raise _refuse("SOP class is not NM Image Storage")
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    if len(image_type) < 3 or image_type[2] != "RECON TOMO":
        value3 = image_type[2] if len(image_type) >= 3 else "missing"
        raise _refuse(f"image type is {value3}, not RECON TOMO")


def check_dat_series(ds: Dataset, fallback_keywords: Sequence[str] = ()) -> str:
    """Accept a DaT SPECT series or explain why not.

    Parameters
    ----------
    ds : pydicom.Dataset
        Any one instance of the series (headers only are read).
    fallback_keywords : sequence of str
        Series Description keywords (e.g. ``("DATSCAN", "FP-CIT")``) used only
        when the series codes no radiopharmaceutical.

    Returns
    -------
    str
        The rule that accepted it, e.g. ``"code SCT 429296007"`` or
        ``"series description keyword 'DATSCAN'"``.

    Raises
    ------
    service.errors.AnalysisError
        ``code="not_dat"``, reason ``"not a DaT SPECT series: <why>"``.
    """
    _check_kind(ds)
    nuclides = radiopharmaceutical_codes(ds, "RadionuclideCodeSequence")
    if nuclides and not any(c in _IODINE_123_CODES for c in nuclides):
        value, scheme = nuclides[0]
        raise _refuse(f"radionuclide is {scheme} {value}, not 123-Iodine")
    agents = radiopharmaceutical_codes(ds, "RadiopharmaceuticalCodeSequence")
    for value, scheme in agents:
        if (value, scheme) in codes.DAT_TRACER_CODES:
            return f"code {scheme} {value}"
    if agents:
        value, scheme = agents[0]
        raise _refuse(f"radiopharmaceutical is {scheme} {value}, not Ioflupane I-123")
    description = _squash(str(ds.get("SeriesDescription", "") or ""))
    for keyword in fallback_keywords:
        if keyword.strip() and _squash(keyword) in description:
            log.info("dat gate used description fallback",
                     extra={"fields": {"event": "dat_gate_fallback", "keyword": keyword}})
            return f"series description keyword '{keyword}'"
    if fallback_keywords:
        raise _refuse("no radiopharmaceutical code and no keyword in the series description")
    raise _refuse("no radiopharmaceutical code")
