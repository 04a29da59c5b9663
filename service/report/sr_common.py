"""SR pieces every pipeline's reports share: the device observer, SEPARATE containers, Predecessors.

Moved here from the DaT SR builder unchanged (its output is byte-identical),
so the FDOPA reports and the generic failure SR use the same observer
context: dopanode as a device (TID 1004), one fixed device UID.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as dcm_codes

from service import __version__
from service.pipelines.base import OutputRef
from service.report.identity import MANUFACTURER, AlgorithmInfo
from service.report.uids import DEVICE_OBSERVER_UID, derive_uid


def observation_context() -> hd.sr.ObservationContext:
    """TID 1001 with dopanode as the device observer (TID 1004)."""
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=DEVICE_OBSERVER_UID,
        name="dopanode",
        manufacturer_name=MANUFACTURER,
        model_name=f"dopanode {__version__}",
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=dcm_codes.cid270.Device,
            observer_identifying_attributes=device,
        )
    )


def mark_separate(item: Dataset) -> None:
    """Set every container to SEPARATE: a list of findings, not running prose.

    With CONTINUOUS, renderers such as DCMTK's dsr2html run the children
    together without concept names ("2.55 Borderline Normal"), which hides
    which level is which.
    """
    if item.ValueType == "CONTAINER":
        item.ContinuityOfContent = "SEPARATE"
    for child in item.get("ContentSequence", []):
        mark_separate(child)


def reference_dataset(ref: OutputRef) -> Dataset:
    """A minimal dataset naming an earlier output (for Predecessor Documents)."""
    ds = Dataset()
    ds.StudyInstanceUID = ref.study_uid
    ds.SeriesInstanceUID = ref.series_uid
    ds.SOPClassUID = ref.sop_class_uid
    ds.SOPInstanceUID = ref.sop_instance_uid
    return ds


def sr_document_arguments(job_key: str, algorithm: AlgorithmInfo, series_number: int,
                          series_description: str,
                          coding_scheme: hd.coding_schemes.CodingSchemeIdentificationItem,
                          previous: Sequence[OutputRef] = ()) -> dict[str, Any]:
    """The keyword arguments every dopanode SR shares (highdicom's SR constructors).

    UIDs derive from the job and the algorithm, so a retried job writes the
    same document; the document is complete, unverified and not final
    (research use); ``previous`` become its Predecessor Documents.
    """
    return {
        "series_instance_uid": derive_uid(job_key, algorithm, "sr-series"),
        "series_number": series_number,
        "sop_instance_uid": derive_uid(job_key, algorithm, "sr-instance"),
        "instance_number": 1,
        "manufacturer": MANUFACTURER,
        "is_complete": True,
        "is_final": False,
        "is_verified": False,
        "series_description": series_description,
        "manufacturer_model_name": "dopanode",
        "software_versions": __version__,
        "coding_schemes": [coding_scheme],
        "previous_versions": [reference_dataset(p) for p in previous] or None,
    }
