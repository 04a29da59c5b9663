"""SR pieces every pipeline's reports share: the device observer, SEPARATE containers, Predecessors.

Moved here from the DaT SR builder unchanged (its output is byte-identical),
so the FDOPA reports and the generic failure SR use the same observer
context: dopanode as a device (TID 1004), one fixed device UID.
"""

from __future__ import annotations

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as dcm_codes

from service import __version__
from service.pipelines.base import OutputRef
from service.report.identity import MANUFACTURER
from service.report.uids import DEVICE_OBSERVER_UID


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
