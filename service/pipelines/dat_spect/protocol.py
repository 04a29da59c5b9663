"""Protocol families of the SBR calibration and the normal database.

SBR depends on the reconstruction more than on anything else the camera does:
without attenuation correction a normal putamen measures about half of what
it measures with CT-based attenuation and scatter correction. One set of
thresholds cannot serve all of them, so ``calibration.json`` and
``normals.json`` may hold one entry per *correction family*, read from the
series' Corrected Image (0028,0051):

* ``attn_scat``: ``ATTN`` and ``SCAT`` (attenuation correction, AC, with scatter correction, SC);
* ``attn``: ``ATTN`` without ``SCAT`` (Chang or CT AC without scatter correction);
* ``none``: Corrected Image present without ``ATTN``.

A series without Corrected Image does not say how it was corrected; it is
scored with :data:`UNSTATED_FAMILY` (``attn``: Chang AC is what the EANM
procedure guideline recommends for FP-CIT) and the calibration statement in
the SR and the picture report says so (:func:`correction_family`). A file
without ``"protocols"`` (a site's own, built from one camera) applies to every
series.

The file layout (:func:`read_by_protocol`)::

    {"source": "...", "provenance": "simulated",
     "protocols": {"attn_scat": {<one calibration or normals dict>},
                   "attn": {...}, "none": {...}}}

Each entry may carry its own ``source``; ``provenance`` is the file's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from service.pipelines.dat_spect.provenance import provenance_of

T = TypeVar("T")

#: Correction families and how a reader is told about them.
FAMILIES: dict[str, str] = {
    "attn_scat": "set for AC + SC",
    "attn": "set for AC, no SC",
    "none": "set for no AC",
}
#: The family of a series whose header does not state its corrections.
UNSTATED_FAMILY = "attn"


@dataclass(frozen=True)
class Family:
    """The correction family of one series.

    Attributes
    ----------
    name : str
        A key of :data:`FAMILIES`.
    stated : bool
        False when the header has no Corrected Image and :data:`UNSTATED_FAMILY` was assumed.
    """

    name: str
    stated: bool = True

    @property
    def ac_stated(self) -> bool:
        """True when the header states attenuation correction (``ATTN``)."""
        return self.stated and self.name != "none"

    def describe(self) -> str:
        text = FAMILIES[self.name]
        return text if self.stated else f"{text}, assumed"


def correction_family(corrected_image: object) -> Family:
    """The :class:`Family` of a series from its Corrected Image value (None when absent)."""
    if corrected_image is None or corrected_image == "":
        return Family(UNSTATED_FAMILY, stated=False)
    values = [corrected_image] if isinstance(corrected_image, str) else list(corrected_image)  # type: ignore[call-overload]
    terms = {str(v).strip().upper() for v in values}
    if "ATTN" in terms:
        return Family("attn_scat" if "SCAT" in terms else "attn")
    return Family("none")


def series_family(series_dir: Path) -> Family:
    """The correction family of a stored series (its first file's Corrected Image)."""
    import pydicom

    first = min(p for p in series_dir.rglob("*") if p.is_file())
    ds = pydicom.dcmread(first, stop_before_pixels=True, specific_tags=["CorrectedImage"])
    return correction_family(ds.get("CorrectedImage"))


@dataclass(frozen=True)
class ByProtocol(Generic[T]):
    """One item per correction family, or one item for every series.

    Attributes
    ----------
    items : mapping of str to T
        Keyed by family name; empty when ``common`` is set.
    common : T or None
        The item of a file without ``"protocols"``.
    provenance : str
        The file's provenance (:mod:`.provenance`).
    """

    items: Mapping[str, T]
    common: T | None
    provenance: str

    @property
    def per_protocol(self) -> bool:
        return self.common is None

    def select(self, family: Family) -> T:
        """The item for ``family``.

        Raises
        ------
        ValueError
            A per-protocol file without an entry for this family.
        """
        if self.common is not None:
            return self.common
        try:
            return self.items[family.name]
        except KeyError:
            raise ValueError(f"no calibration for the {family.name!r} correction family "
                             f"(have {sorted(self.items)})") from None


def read_by_protocol(data: Mapping[str, Any], parse: Callable[[Mapping[str, Any]], T]
                     ) -> ByProtocol[T]:
    """Parse a calibration or normals file that may hold one entry per family.

    ``parse`` reads one entry; it gets the entry with the file's
    ``provenance`` (and ``source`` where the entry has none).

    Raises
    ------
    ValueError
        An unknown family name, or a ``"protocols"`` object that is empty.
    """
    provenance = provenance_of(data)
    protocols = data.get("protocols")
    if protocols is None:
        return ByProtocol({}, parse(data), provenance)
    unknown = sorted(set(protocols) - set(FAMILIES))
    if unknown or not protocols:
        raise ValueError(f"protocols must be a non-empty subset of {sorted(FAMILIES)}, "
                         f"not {sorted(protocols)}")
    items = {name: parse({"source": data.get("source", ""), **entry, "provenance": provenance})
             for name, entry in protocols.items()}
    return ByProtocol(items, None, provenance)
