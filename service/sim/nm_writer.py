"""Write a reconstructed SPECT volume as vendor-realistic NM Image Storage.

The writer is the simulator's output edge: it turns a float32 volume in LPS
into the DICOM a camera or workstation would send, in one of several
:class:`EncodingVariant` flavours that real sites produce.

Geometry written (PS3.3 C.8.4.10 NM Detector, C.8.4.8 NM Multi-frame,
C.8.4.11 NM Reconstruction): the Detector Information Sequence carries Image
Orientation (Patient) (row direction cosine first, then column direction
cosine) and the Image Position (Patient) of the centre of the first voxel of
the first frame; frame ``i`` lies at ``IPP + (SliceVector[i] - 1) *
SpacingBetweenSlices * (row x column)``. Pixel Spacing is written as
``[row spacing (between rows, along the column direction), column spacing]``.

Intensities: variants other than ``RESCALED`` store unsigned 16-bit values
``round(max(value, 0) * gain)`` with ``gain = 30000 / max(value)`` and no
rescale (as many cameras normalise reconstructions); ``RESCALED`` keeps the
input values, negative ones included, through Rescale Slope/Intercept.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.sr.coding import Code
from pydicom.uid import UID, generate_uid

from service.dicom import codes as dicom_codes
from service.sim import codes
from service.sim.transfer_syntax import encode_pixels

#: Stored maximum of non-rescaled variants (leaves headroom below 65535).
STORED_MAX = 30000
_UID_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's root, as generate_uid uses
_IMPLEMENTATION_UID = generate_uid(_UID_ROOT, entropy_srcs=["dopanode-sim-writer"])


class EncodingVariant(StrEnum):
    """How the volume is laid out and encoded (see module docstring)."""

    MULTIFRAME = "multiframe"
    PER_SLICE = "per_slice"
    GE_NEGATIVE_SPACING = "ge_negative_spacing"
    Z_FLIPPED = "z_flipped"
    RESCALED = "rescaled"
    JPEG2000 = "jpeg2000"
    RLE = "rle"
    JPEGLS = "jpegls"
    DEFLATE = "deflate"


@dataclass(frozen=True)
class CameraHeader:
    """What the camera/workstation writes about itself and the reconstruction.

    Attributes
    ----------
    energy_window_kev : (float, float)
        Lower and upper limit of the photopeak window, keV.
    counts_total : int
        Counts accumulated in the acquisition (Counts Accumulated).
    """

    manufacturer: str
    model_name: str
    collimator: str
    reconstruction_description: str
    attenuation_corrected: bool
    scatter_corrected: bool
    energy_window_kev: tuple[float, float]
    counts_total: int

    def __post_init__(self) -> None:
        low, high = self.energy_window_kev
        if not 0 < low < high:
            raise ValueError(f"energy_window_kev must be (low, high) keV, got {low}, {high}")
        if self.counts_total < 0:
            raise ValueError(f"counts_total must be >= 0, got {self.counts_total}")


@dataclass(frozen=True)
class SubjectHeader:
    """Synthetic subject: age in years, sex "M"/"F"/"O", injected activity (MBq)."""

    age_years: int
    sex: str
    injected_activity_mbq: float

    def __post_init__(self) -> None:
        if self.sex not in ("M", "F", "O"):
            raise ValueError(f"sex must be 'M', 'F' or 'O', got {self.sex!r}")
        if not 0 <= self.age_years <= 120:
            raise ValueError(f"age_years must be 0..120, got {self.age_years}")
        if not self.injected_activity_mbq > 0:
            raise ValueError(f"injected_activity_mbq must be > 0, got {self.injected_activity_mbq}")


@dataclass(frozen=True)
class _Layout:
    """Frames in file order and the geometry that describes them.

    frames_zyx : (n, rows, cols) float array, file order.
    """

    frames_zyx: np.ndarray
    iop: tuple[float, ...]
    ipp_first_mm: np.ndarray
    normal: np.ndarray
    spacing_between_slices_mm: float
    pixel_spacing_mm: tuple[float, float]


def _layout(image: sitk.Image, variant: EncodingVariant) -> _Layout:
    """Frame order and geometry for ``variant``; input must be unsheared."""
    arr = sitk.GetArrayFromImage(image).astype(np.float64)
    d = np.asarray(image.GetDirection(), float).reshape(3, 3)
    sx, sy, sz = (float(v) for v in image.GetSpacing())
    origin = np.asarray(image.GetOrigin(), float)
    row, col, axis = d[:, 0], d[:, 1], d[:, 2]
    normal = np.cross(row, col)
    cos_axis = float(normal @ axis)
    if abs(abs(cos_axis) - 1.0) > 1e-6:
        raise ValueError("image direction is sheared: slice axis not normal to the planes")
    nz = arr.shape[0]
    last = origin + axis * sz * (nz - 1)
    if cos_axis < 0:  # left-handed input: store along +normal
        arr, origin, last = arr[::-1], last, origin
    sbs = sz
    if variant is EncodingVariant.GE_NEGATIVE_SPACING:
        arr, origin, sbs = arr[::-1], last, -sz
    elif variant is EncodingVariant.Z_FLIPPED:
        # superior slice first with positive spacing: flip the column axis so
        # that row x column points the other way, and mirror the rows.
        arr, origin = arr[::-1, ::-1, :], last + col * sy * (arr.shape[1] - 1)
        col, normal = -col, -normal
    iop = tuple(float(v) for v in (*row, *col))
    return _Layout(arr, iop, origin, normal, sbs, (sy, sx))


def _quantise(frames: np.ndarray, variant: EncodingVariant) -> tuple[np.ndarray, float, float]:
    """Stored uint16 frames and (slope, intercept); slope 1, intercept 0 if unscaled."""
    if variant is EncodingVariant.RESCALED:
        lo, hi = float(_ds(frames.min())), float(frames.max())
        slope = float(_ds((hi - lo) / 65535.0)) if hi > lo else 1.0
        stored = np.rint((frames - lo) / slope)
        return stored.clip(0, 65535).astype(np.uint16), slope, lo
    top = float(frames.max())
    if top <= 0:
        raise ValueError("image has no positive values")
    stored = np.rint(np.clip(frames, 0, None) * (STORED_MAX / top))
    return stored.astype(np.uint16), 1.0, 0.0


def _ds(value: float) -> str:
    """A Decimal String of at most 16 characters, as precise as fits."""
    for digits in range(14, 4, -1):
        text = f"{value:.{digits}g}"
        if len(text) <= 16:
            return text
    return f"{value:.4g}"


def _code_item(code: Code) -> Dataset:
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme_designator
    item.CodeMeaning = code.meaning
    return item


def _uid(uid_seed: str, *parts: str) -> str:
    return str(generate_uid(_UID_ROOT, entropy_srcs=[uid_seed, *parts]))


def _tag(uid_seed: str, n: int) -> str:
    """Short deterministic hex tag for synthetic names and IDs."""
    return hashlib.sha256(uid_seed.encode()).hexdigest()[:n].upper()


def _patient_study(ds: Dataset, subject: SubjectHeader, uid_seed: str) -> None:
    tag = _tag(uid_seed, 8)
    ds.PatientName = f"SIM^{tag}"
    ds.PatientID = f"SIM{tag}"
    ds.PatientBirthDate = ""
    ds.PatientSex = subject.sex
    ds.PatientAge = f"{int(subject.age_years):03d}Y"
    ds.StudyInstanceUID = _uid(uid_seed, "study")
    ds.StudyDate = "20260101"
    ds.StudyTime = "090000"
    ds.ReferringPhysicianName = ""
    ds.StudyID = tag[:6]
    ds.AccessionNumber = ""
    ds.StudyDescription = "SPECT Brain"


def _isotope(ds: Dataset, camera: CameraHeader, subject: SubjectHeader, tracer: str) -> None:
    window = Dataset()
    rng = Dataset()
    rng.EnergyWindowLowerLimit = f"{camera.energy_window_kev[0]:.1f}"
    rng.EnergyWindowUpperLimit = f"{camera.energy_window_kev[1]:.1f}"
    window.EnergyWindowRangeSequence = Sequence([rng])
    window.EnergyWindowName = "EM"
    ds.EnergyWindowInformationSequence = Sequence([window])
    pharm = Dataset()
    if tracer == "dat":
        nuclide, agent, name = codes.IODINE_123, codes.IOFLUPANE_I123, "Ioflupane (123I)"
    elif tracer == "other":
        nuclide, agent, name = codes.TECHNETIUM_99M, codes.TC99M_EXAMETAZIME, "Tc99m HMPAO"
    else:
        raise ValueError(f"tracer must be 'dat' or 'other', not {tracer!r}")
    pharm.RadionuclideCodeSequence = Sequence([_code_item(nuclide)])
    pharm.Radiopharmaceutical = name
    pharm.RadiopharmaceuticalCodeSequence = Sequence([_code_item(agent)])
    pharm.RadionuclideTotalDose = f"{subject.injected_activity_mbq:.1f}"
    pharm.RadiopharmaceuticalStartTime = "060000"
    pharm.AdministrationRouteCodeSequence = Sequence([_code_item(codes.INTRAVENOUS_ROUTE)])
    ds.RadiopharmaceuticalInformationSequence = Sequence([pharm])


def _equipment_series(
    ds: Dataset, camera: CameraHeader, uid_seed: str, variant: EncodingVariant, tracer: str
) -> None:
    ds.Modality = "NM"
    ds.SeriesInstanceUID = _uid(uid_seed, "series", str(variant))
    ds.SeriesNumber = 2
    kind = "DaTSCAN" if tracer == "dat" else "Brain perfusion"
    ds.SeriesDescription = f"{kind} SPECT {camera.reconstruction_description}"[:64]
    ds.SeriesDate, ds.SeriesTime = "20260101", "100000"
    ds.BodyPartExamined = "HEAD"
    ds.Manufacturer = camera.manufacturer
    ds.ManufacturerModelName = camera.model_name
    ds.StationName = "SIMCAM"
    ds.SoftwareVersions = "dopanode-sim"
    ds.FrameOfReferenceUID = _uid(uid_seed, "for")
    ds.PositionReferenceIndicator = ""
    orient = _code_item(codes.RECUMBENT)
    orient.PatientOrientationModifierCodeSequence = Sequence([_code_item(codes.SUPINE)])
    ds.PatientOrientationCodeSequence = Sequence([orient])
    ds.PatientGantryRelationshipCodeSequence = Sequence([_code_item(codes.HEADFIRST)])


def _nm_image(ds: Dataset, camera: CameraHeader, lay: _Layout, n_frames: int) -> None:
    ds.ImageType = ["ORIGINAL", "PRIMARY", "RECON TOMO", "EMISSION"]
    ds.AcquisitionDate, ds.AcquisitionTime = "20260101", "093000"
    ds.ContentDate, ds.ContentTime = "20260101", "100000"
    ds.CountsAccumulated = int(camera.counts_total)
    ds.NumberOfEnergyWindows, ds.NumberOfDetectors, ds.NumberOfRotations = 1, 1, 1
    corrected = ["UNIF", "COR", "DECY"]
    corrected += ["ATTN"] if camera.attenuation_corrected else []
    corrected += ["SCAT"] if camera.scatter_corrected else []
    ds.CorrectedImage = corrected
    ds.DerivationDescription = camera.reconstruction_description
    ds.PatientOrientation = ""
    ds.AcquisitionContextSequence = Sequence()
    det = Dataset()
    det.CollimatorGridName = camera.collimator[:16]
    det.CollimatorType = "FANB" if "FAN" in camera.collimator.upper() else "PARA"
    det.ImagePositionPatient = [_ds(v) for v in lay.ipp_first_mm]
    det.ImageOrientationPatient = [_ds(v) for v in lay.iop]
    ds.DetectorInformationSequence = Sequence([det])
    rot = Dataset()
    rot.StartAngle, rot.AngularStep, rot.ScanArc = 0, 3, 360
    rot.RotationDirection = "CW"
    rot.NumberOfFramesInRotation = 120
    rot.ActualFrameDuration = 30000
    ds.RotationInformationSequence = Sequence([rot])
    ds.TypeOfDetectorMotion = "STEP AND SHOOT"
    ds.NumberOfFrames = n_frames
    ds.FrameIncrementPointer = pydicom.tag.Tag("SliceVector")
    ds.SpacingBetweenSlices = _ds(lay.spacing_between_slices_mm)
    ds.SliceThickness = _ds(abs(lay.spacing_between_slices_mm))
    ds.PixelSpacing = [_ds(v) for v in lay.pixel_spacing_mm]


def _pixels(ds: Dataset, stored: np.ndarray, slope: float, intercept: float) -> None:
    n, rows, cols = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 0
    if slope != 1.0 or intercept != 0.0:
        ds.RescaleSlope = _ds(slope)
        ds.RescaleIntercept = _ds(intercept)
        ds.RescaleType = "CNTS"
    ds.LossyImageCompression = "00"
    ds.PixelData = stored.tobytes()


_SYNTAX = {EncodingVariant.RLE: "rle", EncodingVariant.JPEG2000: "jpeg2000",
           EncodingVariant.JPEGLS: "jpegls", EncodingVariant.DEFLATE: "deflate"}


def _encode(ds: Dataset, stored: np.ndarray, variant: EncodingVariant) -> None:
    """Set the transfer syntax, compressing the pixel data where needed."""
    encode_pixels(ds, _SYNTAX.get(variant, "explicit"), stored)


def _instance(
    common: Dataset, sop_uid: str, number: int, slice_vector: list[int], lay: _Layout,
    stored: np.ndarray, scale: tuple[float, float], variant: EncodingVariant,
) -> Dataset:
    ds = copy.deepcopy(common)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(dicom_codes.NM_IMAGE_STORAGE)
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    ds.file_meta.ImplementationClassUID = _IMPLEMENTATION_UID
    ds.file_meta.ImplementationVersionName = "DOPANODE_SIM"
    ds.SOPClassUID = dicom_codes.NM_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.InstanceNumber = number
    ds.SliceVector = slice_vector
    ds.NumberOfSlices = len(slice_vector)
    ds.DetectorInformationSequence[0].ImagePositionPatient = [
        _ds(v) for v in lay.ipp_first_mm
    ]
    _pixels(ds, stored, *scale)
    _encode(ds, stored, variant)
    return ds


def build_nm_datasets(
    image: sitk.Image, camera: CameraHeader, subject: SubjectHeader,
    variant: EncodingVariant, uid_seed: str, tracer: str = "dat",
) -> list[Dataset]:
    """The NM instances of one series, in memory (see :func:`write_nm_study`)."""
    variant = EncodingVariant(variant)
    lay = _layout(image, variant)
    stored, slope, intercept = _quantise(lay.frames_zyx, variant)
    common = Dataset()
    common.SpecificCharacterSet = "ISO_IR 100"
    _patient_study(common, subject, uid_seed)
    _equipment_series(common, camera, uid_seed, variant, tracer)
    _isotope(common, camera, subject, tracer)
    n = stored.shape[0]
    per_slice = variant is EncodingVariant.PER_SLICE
    _nm_image(common, camera, lay, 1 if per_slice else n)
    if not per_slice:
        sop = _uid(uid_seed, "sop", str(variant), "0")
        return [_instance(common, sop, 1, list(range(1, n + 1)), lay, stored,
                          (slope, intercept), variant)]
    out = []
    for k in range(n):
        ipp = lay.ipp_first_mm + lay.normal * lay.spacing_between_slices_mm * k
        lay_k = _Layout(lay.frames_zyx, lay.iop, ipp, lay.normal,
                        lay.spacing_between_slices_mm, lay.pixel_spacing_mm)
        sop = _uid(uid_seed, "sop", str(variant), str(k))
        out.append(_instance(common, sop, k + 1, [1], lay_k, stored[k : k + 1],
                             (slope, intercept), variant))
    return out


def write_nm_study(
    image: sitk.Image, camera: CameraHeader, subject: SubjectHeader,
    variant: EncodingVariant, out_dir: Path, uid_seed: str, tracer: str = "dat",
) -> list[Path]:
    """Write one reconstructed SPECT volume as an NM Image Storage series.

    Parameters
    ----------
    image : SimpleITK.Image
        Reconstructed counts, float32, 3-D, in LPS (origin = centre of the
        first voxel, mm; spacing mm; direction cosines as columns). The
        slice axis must be normal to the planes (no shear).
    camera, subject : CameraHeader, SubjectHeader
        Header content; identifiers are synthetic (``SIM^...``).
    variant : EncodingVariant
        Layout and transfer syntax.
    out_dir : Path
        Created if needed; files are named ``NM0001.dcm``, ``NM0002.dcm``, ...
    uid_seed : str
        All UIDs derive from it (same seed and variant, same UIDs).
    tracer : {"dat", "other"}
        Ioflupane I-123 (DaTscan) or a non-DaT tracer (Tc-99m HMPAO).

    Returns
    -------
    list of Path
        The written Part 10 files, in instance order.
    """
    datasets = build_nm_datasets(image, camera, subject, variant, uid_seed, tracer)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = out_dir / f"NM{int(ds.InstanceNumber):04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
