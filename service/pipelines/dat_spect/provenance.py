"""Where the SBR thresholds and the normal database came from, and what a reader is told.

SBR thresholds (``calibration.json``) and the normal database
(``normals.json``) are camera- and protocol-specific. Each file carries its
provenance in a ``"provenance"`` field:

* ``"simulated"``: built from dopanode's simulated scans (the shipped files in
  ``models/template/``, ``models/template/build_from_sim.py``, or the build
  commands run with ``--simulated``);
* ``"site"``: built by a site from its own scans (``dopanode label`` and
  ``dopanode build-normals``, the default).

A file written before the field existed is read as ``"simulated"`` when its
free-text ``source`` says so (the shipped files always did), else as
``"site"``. Levels and z-scores from a simulated calibration are reported as
*indicative*, in the SR and the picture report.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SIMULATED = "simulated"
SITE = "site"
PROVENANCES = (SIMULATED, SITE)


def provenance_of(data: Mapping[str, Any]) -> str:
    """The provenance of a calibration or normals file's parsed JSON (see module docstring).

    Raises
    ------
    ValueError
        A ``provenance`` field with a value other than ``"simulated"`` or ``"site"``.
    """
    value = data.get("provenance")
    if value is None:
        return SIMULATED if "simulated" in str(data.get("source", "")).lower() else SITE
    if value not in PROVENANCES:
        raise ValueError(f"provenance must be one of {PROVENANCES}, not {value!r}")
    return str(value)


@dataclass(frozen=True)
class CalibrationInfo:
    """Provenance of the two files behind SBR levels and z-scores.

    Attributes
    ----------
    thresholds : str
        ``"simulated"`` or ``"site"``: the SBR-threshold calibration.
    normals : str or None
        Same for the normal database; None when there is none (no z-scores).
    protocol : str or None
        The correction family whose entry of a per-protocol file was used, as
        a reader is told it (:meth:`service.pipelines.dat_spect.protocol.Family.describe`);
        None for files that apply to every series.
    """

    thresholds: str
    normals: str | None = None
    protocol: str | None = None

    @property
    def indicative(self) -> bool:
        """True when SBR levels or z-scores rest on a simulated calibration."""
        return SIMULATED in (self.thresholds, self.normals)

    @property
    def provenance(self) -> str:
        """``"site"`` when everything is the site's own, else ``"simulated"``."""
        return SIMULATED if self.indicative else SITE

    def statement(self) -> str:
        """One patient-free sentence for the SR and the picture report."""
        simulated = []
        if self.thresholds == SIMULATED:
            simulated.append("SBR levels")
        if self.normals == SIMULATED:
            simulated.append("z-scores")
        if not simulated:
            what = "SBR levels and z-scores" if self.normals is not None else "SBR levels"
            return f"{what} use this site's own calibration"
        what = " and ".join(simulated)
        verb = "use" if len(simulated) > 1 or what.endswith("s") else "uses"
        protocol = f"{self.protocol}; " if self.protocol else ""
        return (f"{what} {verb} the shipped SIMULATED calibration ({protocol}simulated scans, "
                "not this camera): indicative only")

    def to_dict(self) -> dict[str, Any]:
        return {"provenance": self.provenance, "thresholds": self.thresholds,
                "normals": self.normals, "indicative": self.indicative,
                "protocol": self.protocol, "statement": self.statement()}
