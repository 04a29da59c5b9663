"""Low-dose CT for attenuation correction, in the PET frame of reference, as CT Image Storage.

PET/CT studies carry the CT the μ-map came from; the node ignores it, but a
realistic study layout has it (issue 11 §6). Hounsfield units come from the
subject's tissue fractions on the simulation grid (air -1000, brain 30-40,
CSF 5, scalp soft tissue 0, skull 1000, lesion 35, oedema 20, necrosis 15),
plus 8 HU Gaussian noise; one instance per slice, same Frame of Reference
as the PET series (the scanners are co-registered).
"""

from __future__ import annotations

import copy
import datetime as dt

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian

from service.sim.fdopa.pet_writer import INJECTION, PetSeriesInfo, _ds, _patient_study, _time, uid

#: Hounsfield units per tissue fraction map of :class:`service.sim.fdopa.subject.SubjectMaps`.
HU: dict[str, float] = {
    "grey_matter": 40.0, "white_matter": 30.0, "striatum": 40.0, "csf": 5.0,
    "extracerebral": 0.0, "bone": 1000.0, "lesion": 35.0, "oedema": 20.0,
}
AIR_HU = -1000.0
#: CT grid: 256 x 256 pixels of 0.98 mm, 3 mm slices.
CT_MATRIX, CT_PIXEL_MM, CT_SLICE_MM = 256, 0.977, 3.0


def hounsfield(maps: dict[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """HU volume (float32, simulation grid) from tissue fractions, with noise."""
    tissue = np.zeros_like(maps["bone"])
    hu = np.zeros_like(maps["bone"])
    for name, value in HU.items():
        frac = maps[name]
        if name in ("grey_matter", "white_matter", "striatum", "csf"):
            frac = frac * np.clip(1.0 - maps["lesion"] - maps["oedema"], 0.0, 1.0)
        hu += frac * value
        tissue += frac
    hu += np.clip(1.0 - tissue, 0.0, 1.0) * AIR_HU
    return (hu + rng.normal(0.0, 8.0, hu.shape)).astype(np.float32)


def ct_reference(centre_lps_mm: np.ndarray, axial_mm: float) -> sitk.Image:
    """The CT output grid centred on ``centre_lps_mm`` (identity direction)."""
    n_z = int(round(axial_mm / CT_SLICE_MM))
    size = (CT_MATRIX, CT_MATRIX, n_z)
    spacing = (CT_PIXEL_MM, CT_PIXEL_MM, CT_SLICE_MM)
    ref = sitk.Image(size, sitk.sitkFloat32)
    ref.SetSpacing(spacing)
    ref.SetOrigin(tuple(float(v) for v in centre_lps_mm - np.array(spacing)
                        * (np.array(size, float) - 1) / 2))
    return ref


def build_ct_series(image: sitk.Image, info: PetSeriesInfo) -> list[Dataset]:
    """CT instances (one per slice) of an HU image on :func:`ct_reference`'s grid."""
    common = Dataset()
    common.SpecificCharacterSet = "ISO_IR 100"
    _patient_study(common, info)
    start = INJECTION + dt.timedelta(minutes=5)
    common.Modality = "CT"
    common.SeriesInstanceUID = uid(info.uid_seed, "ct-series")
    common.SeriesNumber, common.SeriesDescription = 1, "CT LowDose AC Brain"
    common.SeriesDate = common.AcquisitionDate = common.ContentDate = start.strftime("%Y%m%d")
    common.SeriesTime = common.AcquisitionTime = common.ContentTime = _time(start)
    common.PatientPosition, common.BodyPartExamined = "HFS", "HEAD"
    common.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    common.KVP, common.XRayTubeCurrent, common.ConvolutionKernel = "120", 30, "B19f"
    common.AcquisitionNumber = 1
    common.SliceThickness = _ds(CT_SLICE_MM)
    sx, sy, sz = image.GetSpacing()
    common.PixelSpacing = [_ds(sy), _ds(sx)]
    common.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    common.SamplesPerPixel, common.PhotometricInterpretation = 1, "MONOCHROME2"
    common.BitsAllocated, common.BitsStored, common.HighBit = 16, 12, 11
    common.PixelRepresentation = 0
    common.RescaleIntercept, common.RescaleSlope, common.RescaleType = "-1024", "1", "HU"
    stored = np.clip(np.rint(sitk.GetArrayFromImage(image) + 1024.0), 0, 4095).astype(np.uint16)
    origin = np.asarray(image.GetOrigin(), float)
    out = []
    for k in range(stored.shape[0]):
        ds = copy.deepcopy(common)
        sop = uid(info.uid_seed, "ct-sop", str(k))
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = UID(sop)
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID, ds.InstanceNumber = CTImageStorage, sop, k + 1
        ipp = origin + np.array([0.0, 0.0, sz * k])
        ds.ImagePositionPatient = [_ds(v) for v in ipp]
        ds.SliceLocation = _ds(float(ipp[2]))
        ds.Rows, ds.Columns = stored.shape[1:]
        ds.PixelData = stored[k].tobytes()
        out.append(ds)
    return out
