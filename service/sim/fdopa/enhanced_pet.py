"""Write simulated FDOPA PET as one native Enhanced PET Image instance (static or dynamic).

Enhanced PET Image Storage (SOP Class 1.2.840.10008.5.1.4.1.1.130, PS3.3
A.56), as a scanner writes it directly (not converted from per-slice
images): every slice of every time frame is one frame, time-major (all
slices of time frame 1, then time frame 2, ...).

* Shared functional groups: Pixel Measures, Plane Orientation, Frame Anatomy,
  PET Frame Type, PET Frame Acquisition, PET Detector Motion Details,
  PET Reconstruction, Irradiation Event Identification.
* Per-frame: Frame Content (Frame Acquisition DateTime = start of the time
  frame, Frame Reference DateTime = its middle or start, Frame Acquisition
  Duration in ms, Temporal Position Index for a dynamic series, Stack ID and
  In-Stack Position Number, Dimension Index Values), Plane Position (Patient),
  Pixel Value Transformation (per-frame Rescale Slope, Rescale Type = units),
  Real World Value Mapping (same slope; Measurement Units Code Sequence from
  CID 84: UCUM ``Bq/ml`` or ``{SUVbw}g/ml``), PET Position, PET Frame Correction
  Factors (Decay Factor of the time frame).
* Enhanced PET Corrections (C.8.22.6): Yes/No flags instead of Corrected
  Image; Decay Correction DateTime is the decay reference: the series start
  (``START``) or the radiopharmaceutical start (``ADMIN``).
* Enhanced PET Isotope: the Radiopharmaceutical Information Sequence with
  Radiopharmaceutical Agent Number 1.

Units BQML or GML only: the Philips CNTS convention needs private per-slice
factors that an Enhanced PET does not carry (:class:`ValueError`).
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import EnhancedPETImageStorage

from service.sim.fdopa.multiframe import (
    datetime_text,
    dimensions,
    finish,
    item,
    multiframe_common,
    plane_position,
    seq,
    shared_geometry,
)
from service.sim.fdopa.pet_writer import (
    INJECTION,
    STORED_MAX,
    PetEncoding,
    PetSeriesInfo,
    _code,
    _ds,
    _frame_timing,
    _isotope,
    _patient_study,
    _reference_s,
    _time,
    _values_to_header_units,
    uid,
)

#: Measurement units of the Real World Value Mapping (CID 84 PET Units, UCUM).
UNITS_CODES = {"BQML": Code("Bq/ml", "UCUM", "Becquerels/milliliter"),
               "GML": Code("{SUVbw}g/ml", "UCUM", "Standardized Uptake Value body weight")}
_FLAGS = ("DeadTimeCorrected", "GantryMotionCorrected", "PatientMotionCorrected",
          "CountLossNormalizationCorrected", "RandomsCorrected",
          "NonUniformRadialSamplingCorrected", "SensitivityCalibrated",
          "DetectorNormalizationCorrection")
#: Nominal prompts rate of one slice (header only; the simulation's counts are not per slice).
PROMPTS_PER_S = 2000.0
_NO_FLAGS = ("GantryMotionCorrected", "PatientMotionCorrected",
             "NonUniformRadialSamplingCorrected")


def _series(ds: Dataset, info: PetSeriesInfo, series_start: dt.datetime) -> None:
    ds.Modality = "PT"
    ds.SeriesInstanceUID = uid(info.uid_seed, "series", str(info.series_number))
    ds.SeriesNumber, ds.SeriesDescription = info.series_number, info.description[:64]
    ds.SeriesDate, ds.SeriesTime = series_start.strftime("%Y%m%d"), _time(series_start)
    ds.BodyPartExamined = "HEAD"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    ds.CountsSource = "EMISSION"
    ds.AcquisitionStartCondition, ds.AcquisitionTerminationCondition = "MANU", "TIME"
    ds.TypeOfDetectorMotion = "STATIONARY"
    ds.DetectorGeometry = "CYLINDRICAL_RING"
    ds.TransverseDetectorSeparation = 820.0
    ds.AxialDetectorDimension = 260.0
    ds.CollimatorType = "NONE"
    ds.CoincidenceWindowWidth = "4.7"
    ds.EnergyWindowRangeSequence = seq(EnergyWindowLowerLimit="435", EnergyWindowUpperLimit="650")
    ds.TableMotion, ds.TimeOfFlightInformationUsed = "STATIC", "TRUE"
    ds.ViewCodeSequence = Sequence([_code(codes.SCT.Transverse)])
    ds.ViewCodeSequence[0].ViewModifierCodeSequence = Sequence()
    ds.PixelPresentation, ds.VolumetricProperties = "MONOCHROME", "VOLUME"
    ds.VolumeBasedCalculationTechnique = "NONE"


def _corrections(ds: Dataset, info: PetSeriesInfo, decay_reference: dt.datetime) -> None:
    """Enhanced PET Corrections module (C.8.22.6)."""
    ac = "YES" if info.attenuation_corrected else "NO"
    ds.AttenuationCorrected, ds.ScatterCorrected, ds.DecayCorrected = ac, ac, "YES"
    for flag in _FLAGS:
        setattr(ds, flag, "NO" if flag in _NO_FLAGS else "YES")
    ds.DecayCorrectionDateTime = datetime_text(decay_reference)
    ds.RandomsCorrectionMethod = "DLYD"
    if info.attenuation_corrected:
        # the profile's reconstruction description names it (CTAC or MRAC)
        ds.AttenuationCorrectionSource = "MR" if "MRAC" in info.reconstruction else "CT"
        ds.ScatterCorrectionMethod = "model-based"
        ds.AttenuationCorrectionTemporalRelationship = "CONCURRENT"


def _shared(info: PetSeriesInfo, spacing_xyz_mm: tuple[float, float, float]) -> Dataset:
    group = shared_geometry(spacing_xyz_mm)
    group.PETFrameTypeSequence = seq(
        FrameType=["ORIGINAL", "PRIMARY", "VOLUME", "NONE"], PixelPresentation="MONOCHROME",
        VolumetricProperties="VOLUME", VolumeBasedCalculationTechnique="NONE")
    group.PETFrameAcquisitionSequence = seq(TableHeight="150.0", GantryDetectorTilt="0",
                                            GantryDetectorSlew="0", DataCollectionDiameter="700")
    group.PETDetectorMotionDetailsSequence = seq(RotationDirection="CW", RevolutionTime=0.0)
    group.PETReconstructionSequence = seq(
        ReconstructionType="3D", ReconstructionAlgorithm="OSEM", IterativeReconstructionMethod="YES",
        NumberOfIterations=3, NumberOfSubsets=21, ReconstructionDiameter="300")
    group.RadiopharmaceuticalUsageSequence = seq(RadiopharmaceuticalAgentNumber=1)
    return group


def _frame(enc: PetEncoding, start_s: float, timing: Dataset, f: int, k: int,
           slope: float, dynamic: bool, position: Sequence) -> Dataset:
    """Per-frame groups of slice ``k`` of time frame ``f`` (``timing``: its PET Image timing)."""
    start = INJECTION + dt.timedelta(seconds=start_s)
    duration_ms = float(timing.ActualFrameDuration)
    reference = start + dt.timedelta(milliseconds=duration_ms / 2 if enc.frame_reference == "mid"
                                     else 0.0)
    index = [f + 1, 1, k + 1] if dynamic else [1, k + 1]
    content = item(FrameAcquisitionDateTime=datetime_text(start),
                   FrameReferenceDateTime=datetime_text(reference),
                   FrameAcquisitionDuration=duration_ms, StackID="1",
                   InStackPositionNumber=k + 1, DimensionIndexValues=index,
                   TemporalPositionIndex=f + 1)
    group = Dataset()
    group.FrameContentSequence = Sequence([content])
    group.PlanePositionSequence = position
    units = enc.units
    group.PixelValueTransformationSequence = seq(RescaleIntercept="0", RescaleSlope=_ds(slope),
                                                 RescaleType=units)
    top = STORED_MAX
    group.RealWorldValueMappingSequence = seq(
        RealWorldValueFirstValueMapped=0, RealWorldValueLastValueMapped=top,
        RealWorldValueIntercept=0.0, RealWorldValueSlope=slope, LUTExplanation=units,
        LUTLabel=units, MeasurementUnitsCodeSequence=Sequence([_code(UNITS_CODES[units])]))
    centre = [float(v) for v in position[0].ImagePositionPatient]
    group.PETPositionSequence = seq(TablePosition=0.0, DataCollectionCenterPatient=centre,
                                    ReconstructionTargetCenterPatient=centre)
    group.PETFrameCorrectionFactorsSequence = seq(
        PrimaryPromptsCountsAccumulated=int(PROMPTS_PER_S * duration_ms / 1000.0), SliceSensitivityFactor="1", DecayFactor=timing.DecayFactor,
        ScatterFractionFactor="0.3", DeadTimeFactor="1.02")
    return group


def _stored(plane: np.ndarray, signed: bool) -> tuple[np.ndarray, float]:
    top = float(plane.max())
    slope = float(_ds(top / STORED_MAX if top > 0 else 1.0))
    stored = np.rint(np.clip(plane, 0, None) / slope).clip(0, STORED_MAX)
    return stored.astype(np.int16 if signed else np.uint16), slope


def build_enhanced_pet(
    frames: list[sitk.Image], starts_s: list[float], durations_s: list[float],
    info: PetSeriesInfo, enc: PetEncoding, dynamic: bool,
) -> Dataset:
    """One native Enhanced PET instance of a static or dynamic series.

    Parameters
    ----------
    frames : list of SimpleITK.Image
        One volume per time frame, Bq/mL decay-corrected to injection,
        identity direction, LPS (origin = centre of the first voxel, mm).
    starts_s, durations_s : list of float
        Time-frame start (from injection) and duration, s.
    info, enc : PetSeriesInfo, PetEncoding
        As for :func:`service.sim.fdopa.pet_writer.build_pet_series`;
        ``enc.units`` BQML or GML, ``enc.transfer_syntax`` applies.
    dynamic : bool

    Returns
    -------
    pydicom.Dataset
        With file meta; frames time-major, slices inferior to superior.
    """
    if enc.units not in UNITS_CODES:
        raise ValueError(f"units must be BQML or GML for a native Enhanced PET, got {enc.units!r}")
    first = frames[0]
    spacing = tuple(float(v) for v in first.GetSpacing())
    origin = np.asarray(first.GetOrigin(), float)
    series_start = INJECTION + dt.timedelta(seconds=starts_s[0])
    ref_s = _reference_s(enc, starts_s[0])
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    _patient_study(ds, info)
    _isotope(ds, info, enc)
    agent = ds.RadiopharmaceuticalInformationSequence[0]
    agent.RadiopharmaceuticalAgentNumber = 1
    del agent.Radiopharmaceutical, agent.RadiopharmaceuticalStartTime  # not in Enhanced PET
    del ds.PatientOrientationCodeSequence, ds.PatientGantryRelationshipCodeSequence
    _series(ds, info, series_start)
    _corrections(ds, info, INJECTION + dt.timedelta(seconds=ref_s))
    n_slices = first.GetSize()[2]
    multiframe_common(ds, n_slices * len(frames), series_start)
    last = INJECTION + dt.timedelta(seconds=starts_s[-1] + durations_s[-1])
    ds.AcquisitionDateTime = datetime_text(series_start)
    ds.AcquisitionDuration = float((last - series_start).total_seconds())
    ds.TerminationTimeThreshold = ds.AcquisitionDuration
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 1 if enc.signed_pixels else 0
    dimensions(ds, info.uid_seed, (["TemporalPositionIndex"] if dynamic else [])
               + ["StackID", "InStackPositionNumber"])
    ds.SharedFunctionalGroupsSequence = Sequence([_shared(info, spacing)])  # type: ignore[arg-type]
    per_frame, planes = [], []
    for f, (img, start, dur) in enumerate(zip(frames, starts_s, durations_s, strict=True)):
        timing = Dataset()
        _frame_timing(timing, enc, start, dur, starts_s[0], ref_s)
        vol = _values_to_header_units(sitk.GetArrayFromImage(img), info, enc, ref_s)
        for k in range(n_slices):
            stored, slope = _stored(vol[k], enc.signed_pixels)
            planes.append(stored)
            per_frame.append(_frame(enc, start, timing, f, k, slope, dynamic,
                                    plane_position(origin, spacing[2], k)))
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    sop = uid(info.uid_seed, "sop-enhanced-native", str(info.series_number))
    return finish(ds, EnhancedPETImageStorage, sop, np.stack(planes), enc.transfer_syntax)
