"""Write simulated FDOPA PET as vendor-realistic PET Image Storage, one instance per slice.

Static (``STATIC\\IMAGE``) and dynamic (``DYNAMIC\\IMAGE``) series and the
non-attenuation-corrected companion, with the header conventions real
scanners use (research note §3.4, PS3.3 C.8.9.1 PET Series, C.8.9.2 PET
Isotope, C.8.9.4 PET Image):

* Units BQML (per-slice Rescale Slope), CNTS (Philips-style: stored counts,
  private activity-concentration factor (7053,1009) and SUV factor
  (7053,1000)), or GML (values already SUVbw);
* Decay Correction START (to the series start) or ADMIN (to the recorded
  radiopharmaceutical start time); Decay Factor per image;
* Frame Reference Time at mid-frame or at frame start; Actual Frame Duration;
  Acquisition Time per frame; Image Index; optionally instance numbers that
  run backwards in time (Philips dynamic);
* Radiopharmaceutical Start Time either the injection or the dose-assay time
  (then Radionuclide Total Dose is the assayed activity, so SUVbw is the same);
* GE-style quirks: signed 16-bit pixels, and a post-processed series whose
  Series Time is later than the scan, the scan start then being in the
  private (0009,100D) GEMS_PETD_01 date-time (QIBA SUV logic).

Geometry: identity orientation (IOP 1\\0\\0\\0\\1\\0), Image Position (Patient)
= centre of the first pixel of the slice, LPS mm; Pixel Spacing = [row
spacing, column spacing]. Times: study day 2026-01-01, injection 09:00:00.
Codes come from ``pydicom.sr.codedict`` (SCT 5811000122108 Fluoro-L-dopa
F^18^, SCT 77004003 ^18^Fluorine).
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    PositronEmissionTomographyImageStorage,
    generate_uid,
)

from service.sim.fdopa.kinetics import F18_HALF_LIFE_S
from service.sim.transfer_syntax import check_transfer_syntax, encode_pixels

UID_ROOT = "1.2.826.0.1.3680043.8.498."
INJECTION = dt.datetime(2026, 1, 1, 9, 0, 0)
STORED_MAX = 32000
PHILIPS_CREATOR = "Philips PET Private Group"
GE_CREATOR = "GEMS_PETD_01"
#: Philips-style counts per Bq/mL of CNTS series (stored x slope x factor = Bq/mL).
CNTS_ACTIVITY_FACTOR = 2.5


@dataclass(frozen=True)
class PetEncoding:
    """Header conventions of one written series (see module docstring)."""

    units: Literal["BQML", "CNTS", "GML"] = "BQML"
    decay_correction: Literal["START", "ADMIN"] = "START"
    frame_reference: Literal["mid", "start"] = "mid"
    reversed_order: bool = False
    assay_minutes_before_injection: float = 0.0
    signed_pixels: bool = False
    series_time_after_scan_min: float = 0.0
    transfer_syntax: str = "explicit"

    def __post_init__(self) -> None:
        check_transfer_syntax(self.transfer_syntax)
        if self.units not in ("BQML", "CNTS", "GML"):
            raise ValueError(f"units must be BQML, CNTS or GML, got {self.units!r}")
        if self.decay_correction not in ("START", "ADMIN"):
            raise ValueError(f"decay_correction must be START or ADMIN, got "
                             f"{self.decay_correction!r}")
        if self.frame_reference not in ("mid", "start"):
            raise ValueError(f"frame_reference must be mid or start, got {self.frame_reference!r}")
        if self.series_time_after_scan_min < 0:
            raise ValueError("series_time_after_scan_min must be >= 0, got "
                             f"{self.series_time_after_scan_min}")
        if self.assay_minutes_before_injection < 0:
            raise ValueError("assay_minutes_before_injection must be >= 0, got "
                             f"{self.assay_minutes_before_injection}")


@dataclass(frozen=True)
class PetSeriesInfo:
    """What the scanner writes about the subject, the scan and the series.

    Attributes
    ----------
    uid_seed : str
        Every UID derives from it (same seed, same UIDs).
    weight_kg, injected_mbq : float
        Patient weight; activity at injection time.
    age_years : int
    sex : str
    manufacturer, model_name, reconstruction : str
    series_number : int
    description : str
    attenuation_corrected : bool
    """

    uid_seed: str
    weight_kg: float
    injected_mbq: float
    age_years: int
    sex: str
    manufacturer: str
    model_name: str
    reconstruction: str
    series_number: int
    description: str
    attenuation_corrected: bool = True

    def __post_init__(self) -> None:
        if not self.weight_kg > 0:
            raise ValueError(f"weight_kg must be > 0, got {self.weight_kg}")
        if not self.injected_mbq > 0:
            raise ValueError(f"injected_mbq must be > 0, got {self.injected_mbq}")
        if self.sex not in ("M", "F", "O"):
            raise ValueError(f"sex must be 'M', 'F' or 'O', got {self.sex!r}")


def uid(seed: str, *parts: str) -> str:
    return str(generate_uid(UID_ROOT, entropy_srcs=[seed, *parts]))


def _ds(value: float) -> str:
    """A Decimal String of at most 16 characters."""
    for digits in range(12, 3, -1):
        text = f"{value:.{digits}g}"
        if len(text) <= 16:
            return text
    return f"{value:.3g}"


def _code(code: Code) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator = code.value, code.scheme_designator
    item.CodeMeaning = code.meaning
    return item


def _time(t: dt.datetime) -> str:
    return t.strftime("%H%M%S.%f")[:13]


def _patient_study(ds: Dataset, info: PetSeriesInfo) -> None:
    tag = hashlib.sha256(info.uid_seed.encode()).hexdigest()[:8].upper()
    ds.PatientName, ds.PatientID = f"SIM^{tag}", f"SIM{tag}"
    ds.PatientBirthDate, ds.PatientSex = "", info.sex
    ds.PatientAge = f"{int(info.age_years):03d}Y"
    ds.PatientWeight = _ds(info.weight_kg)
    ds.StudyInstanceUID = uid(info.uid_seed, "study")
    ds.StudyDate, ds.StudyTime = INJECTION.strftime("%Y%m%d"), "085000"
    ds.ReferringPhysicianName, ds.AccessionNumber = "", ""
    ds.StudyID, ds.StudyDescription = tag[:6], "PET Brain FDOPA"
    ds.FrameOfReferenceUID = uid(info.uid_seed, "for")
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer, ds.ManufacturerModelName = info.manufacturer, info.model_name
    ds.StationName, ds.SoftwareVersions = "SIMPET", "dopanode-sim"


def _isotope(ds: Dataset, info: PetSeriesInfo, enc: PetEncoding) -> None:
    start = INJECTION - dt.timedelta(minutes=enc.assay_minutes_before_injection)
    dose_bq = info.injected_mbq * 1e6 * 2.0 ** (
        enc.assay_minutes_before_injection * 60.0 / F18_HALF_LIFE_S)
    item = Dataset()
    item.Radiopharmaceutical = "Fluorodopa F18"
    item.RadiopharmaceuticalStartTime = _time(start)
    item.RadiopharmaceuticalStartDateTime = start.strftime("%Y%m%d") + _time(start)
    item.RadionuclideTotalDose = _ds(round(dose_bq, -3))
    item.RadionuclideHalfLife = _ds(F18_HALF_LIFE_S)
    item.RadionuclidePositronFraction = "0.967"
    item.RadionuclideCodeSequence = Sequence([_code(codes.SCT._18Fluorine)])
    item.RadiopharmaceuticalCodeSequence = Sequence([_code(codes.SCT.FluoroLDopaF18)])
    item.AdministrationRouteCodeSequence = Sequence([_code(codes.SCT.IntravenousRoute)])
    ds.RadiopharmaceuticalInformationSequence = Sequence([item])
    orient = _code(codes.SCT.Recumbent)
    orient.PatientOrientationModifierCodeSequence = Sequence([_code(codes.SCT.Supine)])
    ds.PatientOrientationCodeSequence = Sequence([orient])
    ds.PatientGantryRelationshipCodeSequence = Sequence([_code(codes.SCT.Headfirst)])


def _series(ds: Dataset, info: PetSeriesInfo, enc: PetEncoding, dynamic: bool,
            series_start: dt.datetime, n_slices: int, n_frames: int) -> None:
    ds.Modality = "PT"  # Patient Position must be absent: orientation codes are given
    ds.SeriesInstanceUID = uid(info.uid_seed, "series", str(info.series_number))
    ds.SeriesNumber, ds.SeriesDescription = info.series_number, info.description[:64]
    series_time = series_start + dt.timedelta(minutes=enc.series_time_after_scan_min)
    ds.SeriesDate, ds.SeriesTime = series_time.strftime("%Y%m%d"), _time(series_time)
    if enc.series_time_after_scan_min > 0:  # GE post-processed series: the scan time is private
        block = ds.private_block(0x0009, GE_CREATOR, create=True)
        block.add_new(0x0D, "DT", series_start.strftime("%Y%m%d") + _time(series_start))
    ds.BodyPartExamined = "HEAD"
    ds.SeriesType = ["DYNAMIC" if dynamic else "STATIC", "IMAGE"]
    ds.Units, ds.CountsSource = enc.units, "EMISSION"
    ds.NumberOfSlices = n_slices
    if dynamic:
        ds.NumberOfTimeSlices = n_frames
    corrected = ["NORM", "DTIM", "RAN", "DECY"]
    if info.attenuation_corrected:
        corrected += ["ATTN", "SCAT"]
    ds.CorrectedImage = corrected
    ds.DecayCorrection = enc.decay_correction
    ds.RandomsCorrectionMethod = "DLYD"
    ds.AttenuationCorrectionMethod = "measured" if info.attenuation_corrected else "none"
    ds.ScatterCorrectionMethod = "model-based" if info.attenuation_corrected else "none"
    ds.ReconstructionMethod = info.reconstruction[:64]
    ds.CollimatorType = "NONE"
    ds.AcquisitionStartCondition, ds.AcquisitionTerminationCondition = "MANU", "TIME"
    ds.AxialMash = [5, 6]
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 1 if enc.signed_pixels else 0
    ds.RescaleIntercept = "0"


def _values_to_header_units(
    frame_bqml: np.ndarray, info: PetSeriesInfo, enc: PetEncoding, ref_s: float
) -> np.ndarray:
    """Convert decay-corrected-to-injection Bq/mL into the stored quantity of ``enc``."""
    if enc.units == "GML":
        return frame_bqml * (info.weight_kg * 1000.0) / (info.injected_mbq * 1e6)
    at_ref = frame_bqml * 2.0 ** (-ref_s / F18_HALF_LIFE_S)
    return at_ref / CNTS_ACTIVITY_FACTOR if enc.units == "CNTS" else at_ref


def _reference_s(enc: PetEncoding, series_start_s: float) -> float:
    """Decay-correction reference time, s from injection."""
    if enc.decay_correction == "START":
        return series_start_s
    return -60.0 * enc.assay_minutes_before_injection


def _slice(common: Dataset, plane: np.ndarray, ipp: np.ndarray, number: int,
           sop: str, transfer_syntax: str) -> Dataset:
    ds = copy.deepcopy(common)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = PositronEmissionTomographyImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = PositronEmissionTomographyImageStorage, sop
    ds.InstanceNumber = number
    ds.ImagePositionPatient = [_ds(v) for v in ipp]
    ds.SliceLocation = _ds(float(ipp[2]))
    top = float(plane.max())
    slope = top / STORED_MAX if top > 0 else 1.0
    slope = float(_ds(slope))
    ds.RescaleSlope = _ds(slope)
    ds.Rows, ds.Columns = plane.shape
    dtype = np.int16 if ds.PixelRepresentation == 1 else np.uint16
    stored = np.rint(np.clip(plane, 0, None) / slope).clip(0, STORED_MAX).astype(dtype)
    ds.PixelData = stored.tobytes()
    encode_pixels(ds, transfer_syntax, stored)
    return ds


def build_pet_series(
    frames: list[sitk.Image], starts_s: list[float], durations_s: list[float],
    info: PetSeriesInfo, enc: PetEncoding, dynamic: bool,
) -> list[Dataset]:
    """PET instances (one per slice and frame) of one series.

    Parameters
    ----------
    frames : list of SimpleITK.Image
        One volume per frame, Bq/mL decay-corrected to injection, identity
        direction, LPS (origin = centre of the first voxel, mm).
    starts_s, durations_s : list of float
        Frame start (from injection) and duration, s.
    """
    first = frames[0]
    sx, sy, sz = first.GetSpacing()
    origin = np.asarray(first.GetOrigin(), float)
    n_slices, n_frames = first.GetSize()[2], len(frames)
    series_start = INJECTION + dt.timedelta(seconds=starts_s[0])
    ref_s = _reference_s(enc, starts_s[0])
    common = Dataset()
    common.SpecificCharacterSet = "ISO_IR 100"
    _patient_study(common, info)
    _isotope(common, info, enc)
    _series(common, info, enc, dynamic, series_start, n_slices, n_frames)
    common.PixelSpacing = [_ds(sy), _ds(sx)]
    common.SliceThickness = _ds(sz)
    common.ContentDate = series_start.strftime("%Y%m%d")
    out = []
    for f, (img, start, dur) in enumerate(zip(frames, starts_s, durations_s, strict=True)):
        vol = _values_to_header_units(sitk.GetArrayFromImage(img), info, enc, ref_s)
        frame_ds = copy.deepcopy(common)
        _frame_timing(frame_ds, enc, start, dur, starts_s[0], ref_s)
        if enc.units == "CNTS":
            _philips_factors(frame_ds, info, ref_s)
        for k in range(n_slices):
            index = f * n_slices + k
            number = (n_frames * n_slices - index) if enc.reversed_order else index + 1
            ipp = origin + np.array([0.0, 0.0, sz * k])
            ds = _slice(frame_ds, vol[k], ipp, number,
                        uid(info.uid_seed, "sop", str(info.series_number), str(index)),
                        enc.transfer_syntax)
            ds.ImageIndex = index + 1
            out.append(ds)
    return out


def _frame_timing(ds: Dataset, enc: PetEncoding, start_s: float, duration_s: float,
                  series_start_s: float, ref_s: float) -> None:
    acq = INJECTION + dt.timedelta(seconds=start_s)
    ds.AcquisitionDate, ds.AcquisitionTime = acq.strftime("%Y%m%d"), _time(acq)
    ds.ContentTime = _time(acq)
    offset = start_s - series_start_s + (0.5 * duration_s if enc.frame_reference == "mid" else 0)
    ds.FrameReferenceTime = _ds(round(1000.0 * offset, 1))
    ds.ActualFrameDuration = int(round(1000.0 * duration_s))
    lam = np.log(2.0) / F18_HALF_LIFE_S
    # stored value at ref = mean physical activity over the frame x DecayFactor
    mean_phys = (np.exp(-lam * start_s) - np.exp(-lam * (start_s + duration_s))) / (
        lam * duration_s)
    ds.DecayFactor = _ds(float(np.exp(-lam * ref_s) / mean_phys))


def _philips_factors(ds: Dataset, info: PetSeriesInfo, ref_s: float) -> None:
    block = ds.private_block(0x7053, PHILIPS_CREATOR, create=True)
    decayed = info.injected_mbq * 1e6 * 2.0 ** (-ref_s / F18_HALF_LIFE_S)
    block.add_new(0x00, "DS", _ds(CNTS_ACTIVITY_FACTOR * info.weight_kg * 1000.0 / decayed))
    block.add_new(0x09, "DS", _ds(CNTS_ACTIVITY_FACTOR))


def write_series(datasets: list[Dataset], out_dir: Path, prefix: str = "PT") -> list[Path]:
    """Save ``datasets`` as ``<prefix>00001.dcm`` ... (by instance number) in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = out_dir / f"{prefix}{int(ds.InstanceNumber):05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def build_legacy_enhanced(datasets: list[Dataset], info: PetSeriesInfo) -> Dataset:
    """One Legacy Converted Enhanced PET instance from a static per-slice series.

    As some systems (e.g. Mediso) send it: per-frame Plane Position and Pixel
    Value Transformation (per-frame Rescale Slope) functional groups, built by
    ``highdicom.legacy``. The reference to the (unshipped) single-frame source
    series is dropped, as a scanner writing it directly would not have one.
    """
    import highdicom as hd

    enhanced = hd.legacy.LegacyConvertedEnhancedPETImage(
        datasets,
        series_instance_uid=uid(info.uid_seed, "series-enhanced", str(info.series_number)),
        series_number=info.series_number,
        sop_instance_uid=uid(info.uid_seed, "sop-enhanced", str(info.series_number)),
        instance_number=1,
    )
    if "ReferencedSeriesSequence" in enhanced:
        del enhanced.ReferencedSeriesSequence
    pin_legacy_conversion(enhanced, info.uid_seed, "pet", str(info.series_number))
    return enhanced


def pin_legacy_conversion(enhanced: Dataset, uid_seed: str, *parts: str) -> None:
    """Make a highdicom legacy conversion deterministic (same seed, same bytes).

    highdicom stamps the conversion with the wall clock (Instance Creation
    Date/Time, the Contributing Equipment's Contribution DateTime) and a
    random Dimension Organization UID. They become the image's Content
    Date/Time and a UID derived from ``uid_seed`` and ``parts``.
    """
    date, time = str(enhanced.ContentDate), str(enhanced.ContentTime)
    enhanced.InstanceCreationDate, enhanced.InstanceCreationTime = date, time
    for equipment in enhanced.get("ContributingEquipmentSequence") or []:
        equipment.ContributionDateTime = date + time
    organisation = uid(uid_seed, "legacy-dimension-organisation", *parts)
    for item in [*(enhanced.get("DimensionOrganizationSequence") or []),
                 *(enhanced.get("DimensionIndexSequence") or [])]:
        if "DimensionOrganizationUID" in item:
            item.DimensionOrganizationUID = organisation
