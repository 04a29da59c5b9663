"""Is this MR series a FLAIR? From its acquisition attributes first, its description second.

A T2-weighted FLAIR (fluid-attenuated inversion recovery) is an inversion
recovery sequence whose inversion time nulls the CSF: about 1,800-2,800 ms at
1.5 and 3 T (2D), 1,600-2,200 ms for 3D variable-flip-angle FLAIR. STIR
(inversion recovery with TI about 150-250 ms, fat-nulled) and T1-FLAIR (TI
about 750-1,000 ms) are inversion recovery too but not what the paediatric
route segments, so the inversion time must be at least :data:`MIN_FLAIR_TI_MS`.

Where the attributes are (PS3.3):

* MR Image (per slice): Scanning Sequence (0018,0020) contains ``IR``,
  Inversion Time (0018,0082);
* Enhanced MR: MR Pulse Sequence module Inversion Recovery (0018,9009)
  ``YES``, Inversion Times (0018,9079) in the MR Modifier Sequence
  (0018,9115) of the shared or first per-frame functional group;
* Legacy Converted Enhanced MR: the per-slice attributes, in the Unassigned
  Shared Converted Attributes Sequence.

Without those attributes (anonymisers and some exports strip them), a
configurable keyword in Series Description or Protocol Name (default
``FLAIR``) is the fallback, and the reason says so. Pure: a header in, a
decision out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset

from service.imaging.pet_header import series_attributes

#: The least inversion time of a fluid-attenuated (T2) FLAIR, ms.
MIN_FLAIR_TI_MS = 1500.0
#: Keywords of the fallback (upper case, searched in Series Description and Protocol Name).
DEFAULT_KEYWORDS = ("FLAIR",)


@dataclass(frozen=True)
class FlairDecision:
    """Whether one series is a FLAIR, and why (patient-free text)."""

    series_uid: str
    is_flair: bool
    reason: str


def _values(value: object) -> list[object]:
    """A DICOM value as a list (a multi-value, a single value, or nothing)."""
    if value is None or value == "":
        return []
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        return [value]
    return list(value)


def _enhanced_inversion(ds: Dataset) -> tuple[bool | None, float | None]:
    """(inversion recovery?, first inversion time) of an Enhanced MR instance."""
    flag = str(ds.get("InversionRecovery") or "").upper()
    recovery = {"YES": True, "NO": False}.get(flag)
    groups = list(ds.get("SharedFunctionalGroupsSequence") or [])
    groups += list((ds.get("PerFrameFunctionalGroupsSequence") or [])[:1])
    for group in groups:
        for item in group.get("MRModifierSequence") or []:
            if item.get("InversionRecovery") and recovery is None:
                recovery = str(item.InversionRecovery).upper() == "YES"
            times = _values(item.get("InversionTimes"))
            if times:
                return recovery, float(times[0])  # type: ignore[arg-type]
    return recovery, None


def _inversion(ds: Dataset) -> tuple[bool | None, float | None]:
    """(inversion recovery?, inversion time ms) from whichever encoding ``ds`` has."""
    flat = series_attributes(ds)
    if "ScanningSequence" in flat or "InversionTime" in flat:
        kinds = {str(v).upper() for v in _values(flat.get("ScanningSequence"))}
        ti = _values(flat.get("InversionTime"))
        return ("IR" in kinds) if kinds else None, float(ti[0]) if ti else None  # type: ignore[arg-type]
    return _enhanced_inversion(ds)


def _keyword(ds: Dataset, keywords: Sequence[str]) -> str | None:
    text = " ".join(str(ds.get(k) or "") for k in ("SeriesDescription", "ProtocolName")).upper()
    return next((k for k in keywords if k.upper() in text), None)


def classify_mr_series(ds: Dataset, keywords: Sequence[str] = DEFAULT_KEYWORDS) -> FlairDecision:
    """Decide from one instance's header whether its series is a (T2) FLAIR.

    Parameters
    ----------
    ds : pydicom.Dataset
        Any instance of the series (per-slice, Enhanced or Legacy Converted).
    keywords : sequence of str
        The fallback when the header carries no inversion attributes.
    """
    uid = str(ds.get("SeriesInstanceUID", ""))
    if str(ds.get("Modality") or "").upper() != "MR":
        return FlairDecision(uid, False, "not an MR series")
    recovery, ti = _inversion(ds)
    if recovery is False:
        return FlairDecision(uid, False, "not an inversion recovery sequence")
    if ti is not None:
        if ti >= MIN_FLAIR_TI_MS and recovery is not False:
            return FlairDecision(uid, True, f"inversion recovery, inversion time {ti:.0f} ms")
        return FlairDecision(uid, False, f"inversion time {ti:.0f} ms is not fluid-attenuating "
                                         f"(needs at least {MIN_FLAIR_TI_MS:.0f} ms)")
    found = _keyword(ds, keywords)
    if found is not None:
        return FlairDecision(uid, True, f"keyword '{found}' in the description (no inversion "
                                        "time in the header)")
    return FlairDecision(uid, False, "no inversion time and no FLAIR keyword in the description")
