"""Who made a result and from what: shared by every pipeline's report builders.

The algorithm identity (name, version, model checksum) goes into the SR (TID
4019) and into every derived UID; the source reference names the analysed
series by UIDs only; :func:`stamp_times` makes the date/time attributes of an
output derive from its job, so a retried job writes byte-identical objects.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.valuerep import DA, DT, TM

MANUFACTURER = "dopanode"
RESEARCH_USE_TEXT = "Research use, not for diagnosis"


@dataclass(frozen=True)
class SourceReference:
    """The analysed series (UIDs only, no patient data)."""

    study_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    sop_instance_uids: tuple[str, ...]

    @classmethod
    def of(cls, datasets: tuple[Dataset, ...] | list[Dataset]) -> SourceReference:
        """The reference of a loaded series (first instance's study and series)."""
        first = datasets[0]
        return cls(
            study_instance_uid=str(first.StudyInstanceUID),
            series_instance_uid=str(first.SeriesInstanceUID),
            sop_class_uid=str(first.SOPClassUID),
            sop_instance_uids=tuple(str(ds.SOPInstanceUID) for ds in datasets),
        )


@dataclass(frozen=True)
class AlgorithmInfo:
    """Identifies what produced a result (goes into the SR and the output UIDs).

    ``parameters``: further ``"name: value"`` texts for the SR's algorithm
    identification (e.g. a second model file and its checksum).
    """

    name: str
    version: str
    model_name: str | None = None
    model_sha256: str | None = None
    parameters: tuple[str, ...] = ()


_TIME_ATTRIBUTES = (
    ("InstanceCreationDate", "InstanceCreationTime"),
    ("ContentDate", "ContentTime"),
    ("SeriesDate", "SeriesTime"),
    ("DateOfSecondaryCapture", "TimeOfSecondaryCapture"),
)


def stamp_times(ds: Dataset, created_at: float) -> None:
    """Set creation, content, series and contribution date/time from the job (local time).

    Only attributes the builder already wrote are replaced, so the IOD's
    choice of which are present stays highdicom's.
    """
    moment = datetime.datetime.fromtimestamp(created_at)
    for date_keyword, time_keyword in _TIME_ATTRIBUTES:
        if date_keyword in ds:
            setattr(ds, date_keyword, DA(moment.date()))
        if time_keyword in ds:
            setattr(ds, time_keyword, TM(moment.time()))
    for item in ds.get("ContributingEquipmentSequence", []):  # highdicom stamps "now" here
        if "ContributionDateTime" in item:
            item.ContributionDateTime = DT(moment)
