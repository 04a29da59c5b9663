"""Write a synthetic FLAIR as MR Image Storage, one instance per slice.

Same study as the PET series (same Study Instance UID and patient), its own
Frame of Reference (the MR scanner's), inversion-recovery sequence
attributes (PS3.3 C.8.3.1 MR Image module: Scanning Sequence ``SE\\IR``,
Inversion Time, Repetition/Echo Time) and a recognisable series description.
Geometry: identity orientation in the MR frame, Image Position (Patient) =
centre of the slice's first pixel (LPS mm), Pixel Spacing [row, column].
"""

from __future__ import annotations

import copy
import datetime as dt

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, MRImageStorage

from service.sim.fdopa.flair import FlairImage, FlairProtocol
from service.sim.fdopa.pet_writer import (
    INJECTION,
    PetSeriesInfo,
    _ds,
    _patient_study,
    _time,
    pin_legacy_conversion,
    uid,
)
from service.sim.transfer_syntax import encode_pixels

#: Vendor-style FLAIR series descriptions and sequence names by acquisition.
DESCRIPTIONS = {"2D": ("AX T2 FLAIR", "*tir2d1_16"), "3D": ("3D FLAIR SAG", "*spcir_278")}


def _mr_series(ds: Dataset, protocol: FlairProtocol, info: PetSeriesInfo) -> None:
    description, sequence = DESCRIPTIONS[protocol.acquisition]
    start = INJECTION - dt.timedelta(minutes=40)
    ds.Modality = "MR"
    ds.SeriesInstanceUID = uid(info.uid_seed, "mr-series", str(info.series_number))
    ds.FrameOfReferenceUID = uid(info.uid_seed, "mr-for")
    ds.SeriesNumber, ds.SeriesDescription = info.series_number, description
    ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = start.strftime("%Y%m%d")
    ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = _time(start)
    ds.PatientPosition, ds.BodyPartExamined = "HFS", "HEAD"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
    ds.ScanningSequence, ds.SequenceVariant = ["SE", "IR"], ["SK", "SP", "MP"]
    ds.ScanOptions, ds.MRAcquisitionType = "", protocol.acquisition
    ds.SequenceName = sequence
    ds.RepetitionTime, ds.EchoTime = _ds(protocol.tr_ms), _ds(protocol.te_ms)
    ds.InversionTime, ds.EchoTrainLength = _ds(protocol.ti_ms), 16
    ds.MagneticFieldStrength = _ds(protocol.field_t)
    ds.ImagingFrequency = _ds(42.577478 * protocol.field_t)
    ds.ImagedNucleus, ds.NumberOfAverages = "1H", "1"
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = "SIEMENS"
    ds.ManufacturerModelName = "Skyra" if protocol.field_t > 2 else "Aera"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0


def stored_flair(volume_zyx: np.ndarray) -> np.ndarray:
    """12-bit stored values of a FLAIR volume (maximum at 4000), (z, y, x) uint16."""
    scale = 4000.0 / max(float(volume_zyx.max()), 1e-6)
    return np.clip(np.rint(volume_zyx * scale), 0, 4095).astype(np.uint16)


def build_flair_series(image: FlairImage, protocol: FlairProtocol,
                       info: PetSeriesInfo, transfer_syntax: str = "explicit") -> list[Dataset]:
    """MR instances of one FLAIR series (see module docstring).

    ``transfer_syntax``: a key of :data:`service.sim.transfer_syntax.TRANSFER_SYNTAXES`.
    """
    common = Dataset()
    common.SpecificCharacterSet = "ISO_IR 100"
    _patient_study(common, info)
    _mr_series(common, protocol, info)
    sx, sy, sz = image.spacing_mm
    common.SliceThickness = common.SpacingBetweenSlices = _ds(sz)
    common.PixelSpacing = [_ds(sy), _ds(sx)]
    common.WindowCenter, common.WindowWidth = "1500", "3000"
    stored = stored_flair(image.volume_zyx)
    out = []
    for k in range(stored.shape[0]):
        ds = copy.deepcopy(common)
        sop = uid(info.uid_seed, "mr-sop", str(info.series_number), str(k))
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = UID(sop)
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID, ds.InstanceNumber = MRImageStorage, sop, k + 1
        ipp = image.origin_lps_mm + np.array([0.0, 0.0, image.spacing_mm[2] * k])
        ds.ImagePositionPatient = [_ds(v) for v in ipp]
        ds.SliceLocation = _ds(float(ipp[2]))
        ds.Rows, ds.Columns = stored.shape[1:]
        ds.PixelData = stored[k].tobytes()
        encode_pixels(ds, transfer_syntax, stored[k])
        out.append(ds)
    return out


def build_legacy_enhanced_mr(datasets: list[Dataset], info: PetSeriesInfo) -> Dataset:
    """One Legacy Converted Enhanced MR instance from a per-slice FLAIR series (highdicom).

    The reference to the (unshipped) single-frame source series is dropped.
    """
    import highdicom as hd

    enhanced = hd.legacy.LegacyConvertedEnhancedMRImage(
        datasets,
        series_instance_uid=uid(info.uid_seed, "mr-series-enhanced", str(info.series_number)),
        series_number=info.series_number,
        sop_instance_uid=uid(info.uid_seed, "mr-sop-enhanced", str(info.series_number)),
        instance_number=1,
    )
    if "ReferencedSeriesSequence" in enhanced:
        del enhanced.ReferencedSeriesSequence
    pin_legacy_conversion(enhanced, info.uid_seed, "mr", str(info.series_number))
    return enhanced
