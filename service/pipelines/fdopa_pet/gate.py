"""Is this an [18F]FDOPA PET series, and which series of a study are analysed?

Tracer rules, in order (the first that decides wins; like the DaT gate):

1. Modality ``PT`` and a PET image SOP class (PET Image Storage, Enhanced PET,
   Legacy Converted Enhanced PET).
2. A coded radionuclide other than fluorine-18 refuses.
3. Radiopharmaceutical Code Sequence: a code of
   :data:`~service.pipelines.fdopa_pet.codes.FDOPA_TRACER_CODES` accepts; any
   other coded radiopharmaceutical refuses, whatever the text says.
4. Only when none is coded: a configured keyword in the Radiopharmaceutical
   (0018,0031) text or the Series Description (case-insensitive; spaces,
   hyphens, underscores and brackets ignored) accepts.

Series roles in a study (issue 12, point 1), from the header of each series:

* attenuation-corrected (Corrected Image contains ``ATTN``) ``STATIC`` (or
  ``WHOLE BODY``) series: the static series analysed;
* attenuation-corrected ``DYNAMIC`` series: gives the time-activity curves
  and, when the study has no static series, the static window summed from
  its frames (:func:`service.imaging.pet_volume.static_window`);
* FDOPA PET without ``ATTN``: ignored, with its reason;
* anything else (other modality, other tracer, gated series): declined with
  its reason.

With several candidates of one role the lowest Series Number is taken and the
others are ignored with the reason. Pure functions over header datasets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pydicom.dataset import Dataset

from service.dicom import codes as dicom_codes
from service.dicom.header import radiopharmaceutical_codes
from service.errors import AnalysisError
from service.imaging.pet_header import series_attributes
from service.pipelines.fdopa_pet import codes

_PET_CLASSES = frozenset({dicom_codes.PET_IMAGE_STORAGE, dicom_codes.ENHANCED_PET_IMAGE_STORAGE,
                          dicom_codes.LEGACY_CONVERTED_ENHANCED_PET_IMAGE_STORAGE})
Role = Literal["static", "dynamic", "ignored", "declined"]


def _refuse(why: str) -> AnalysisError:
    return AnalysisError(f"not an FDOPA PET series: {why}", code="not_fdopa")



def _squash(text: str) -> str:
    return "".join(ch for ch in text.casefold() if ch not in " -_[]()^")


def check_fdopa_series(ds: Dataset, fallback_keywords: Sequence[str] = ()) -> str:
    """Accept an [18F]FDOPA PET series or explain why not.

    Parameters
    ----------
    ds : pydicom.Dataset
        Any one instance (header only) of the series.
    fallback_keywords : sequence of str
        Keywords (e.g. :data:`~service.pipelines.fdopa_pet.codes.DEFAULT_KEYWORDS`)
        used only when no radiopharmaceutical is coded.

    Returns
    -------
    str
        The rule that accepted it, e.g. ``"code SCT 5811000122108"``.

    Raises
    ------
    service.errors.AnalysisError
        ``code="not_fdopa"``, reason ``"not an FDOPA PET series: <why>"``.
    """
    modality = str(ds.get("Modality", "") or "")
    if modality != "PT":
        raise _refuse(f"modality is {modality or 'missing'}, not PT")
    if str(ds.get("SOPClassUID", "")) not in _PET_CLASSES:
        raise _refuse("SOP class is not a PET image storage class")
    ds = series_attributes(ds)
    nuclides = radiopharmaceutical_codes(ds, "RadionuclideCodeSequence")
    if nuclides and not any(c in codes.FLUORINE_18_CODES for c in nuclides):
        raise _refuse(f"radionuclide is {nuclides[0][1]} {nuclides[0][0]}, not 18-Fluorine")
    agents = radiopharmaceutical_codes(ds, "RadiopharmaceuticalCodeSequence")
    for value, scheme in agents:
        if (value, scheme) in codes.FDOPA_TRACER_CODES:
            return f"code {scheme} {value}"
    if agents:
        raise _refuse(f"radiopharmaceutical is {agents[0][1]} {agents[0][0]}, not Fluoro-L-dopa")
    texts = [str(item.get("Radiopharmaceutical", "") or "")
             for item in ds.get("RadiopharmaceuticalInformationSequence") or []]
    texts.append(str(ds.get("SeriesDescription", "") or ""))
    squashed = [_squash(t) for t in texts]
    for keyword in fallback_keywords:
        if keyword.strip() and any(_squash(keyword) in t for t in squashed):
            return f"keyword '{keyword}' (no radiopharmaceutical code)"
    if fallback_keywords:
        raise _refuse("no radiopharmaceutical code and no keyword in the description")
    raise _refuse("no radiopharmaceutical code")


@dataclass(frozen=True)
class SeriesDecision:
    """What the study selection does with one series.

    Attributes
    ----------
    series_uid : str
    role : {"static", "dynamic", "ignored", "declined"}
    reason : str
        Patient-free, e.g. ``"not attenuation-corrected (Corrected Image lacks ATTN)"``.
    """

    series_uid: str
    role: Role
    reason: str


def classify_series(ds: Dataset, fallback_keywords: Sequence[str] = ()) -> SeriesDecision:
    """The role of one series (module docstring) from one of its headers."""
    uid = str(ds.get("SeriesInstanceUID", ""))
    try:
        tracer = check_fdopa_series(ds, fallback_keywords)
    except AnalysisError as exc:
        return SeriesDecision(uid, "declined", exc.reason)
    attrs = series_attributes(ds)
    corrected = {str(v).upper() for v in (attrs.get("CorrectedImage") or [])}
    if "ATTN" not in corrected:
        return SeriesDecision(uid, "ignored",
                              "not attenuation-corrected (Corrected Image lacks ATTN)")
    kind = str((attrs.get("SeriesType") or [""])[0]).upper()
    if kind == "DYNAMIC":
        return SeriesDecision(uid, "dynamic", f"attenuation-corrected dynamic; {tracer}")
    if kind in ("STATIC", "WHOLE BODY"):
        return SeriesDecision(uid, "static", f"attenuation-corrected static; {tracer}")
    return SeriesDecision(uid, "declined", f"series type {kind or 'missing'} is not analysed")


@dataclass(frozen=True)
class StudySelection:
    """The series of one study the analysis reads.

    Attributes
    ----------
    static_series_uid : str or None
        The static series analysed; None when it comes from the dynamic one.
    dynamic_series_uid : str or None
        The series the curves come from.
    static_from_dynamic : bool
        True when the static image is the window summed from the dynamic frames.
    decisions : tuple of SeriesDecision
        Every series with its final role and reason (ignored ones included).
    """

    static_series_uid: str | None
    dynamic_series_uid: str | None
    static_from_dynamic: bool
    decisions: tuple[SeriesDecision, ...]


def _number(ds: Dataset) -> int:
    try:
        return int(ds.get("SeriesNumber"))
    except (TypeError, ValueError):
        return 2**31


def select_series(headers: Sequence[Dataset],
                  fallback_keywords: Sequence[str] = ()) -> StudySelection:
    """Choose the static and dynamic series of a study (one header per series).

    Raises
    ------
    service.errors.AnalysisError
        ``code="no_fdopa_series"`` when no series can be analysed; the reason
        lists why each series was not taken.
    """
    ordered = sorted(headers, key=_number)
    decisions = [classify_series(ds, fallback_keywords) for ds in ordered]
    chosen: dict[str, str] = {}
    final = []
    for d in decisions:
        if d.role in ("static", "dynamic") and d.role in chosen:
            d = SeriesDecision(d.series_uid, "ignored", f"another {d.role} series was chosen "
                               "(lowest Series Number)")
        elif d.role in ("static", "dynamic"):
            chosen[d.role] = d.series_uid
        final.append(d)
    if not chosen:
        why = "; ".join(sorted({d.reason for d in final})) or "no series"
        raise AnalysisError(f"no analysable FDOPA PET series: {why}"[:300], "no_fdopa_series")
    return StudySelection(chosen.get("static"), chosen.get("dynamic"),
                          "static" not in chosen, tuple(final))
