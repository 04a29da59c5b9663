"""Write a synthetic FLAIR as one native Enhanced MR Image instance.

Enhanced MR Image Storage (SOP Class 1.2.840.10008.5.1.4.1.1.4.1, PS3.3
A.36.2), as MR scanners of the enhanced generation send it (one frame per
slice, inferior to superior):

* Enhanced MR Image module (C.8.13.1): Image Type ``ORIGINAL\\PRIMARY\\VOLUME\\NONE``,
  Acquisition Contrast ``FLUID_ATTENUATED``, resonant nucleus, field strength.
* MR Pulse Sequence module (C.8.13.4): Pulse Sequence Name, spin-echo, 2D or 3D.
* Shared functional groups: Pixel Measures, Plane Orientation, Frame Anatomy,
  MR Image Frame Type, MR Timing and Related Parameters (TR, flip angle, echo
  train), MR FOV/Geometry, MR Echo (TE), MR Modifier (Inversion Times = TI),
  MR Imaging Modifier, MR Receive Coil, MR Transmit Coil, MR Averages, Pixel
  Value Transformation (identity).
* Per-frame: Frame Content (Stack ID, In-Stack Position Number, Dimension
  Index Values, Frame Acquisition DateTime/Duration), Plane Position.

Same study, identifiers and stored values as the per-slice writer
(:func:`service.sim.fdopa.mr_writer.build_flair_series`); the FLAIR gate reads
Inversion Recovery and Inversion Times from here.
"""

from __future__ import annotations

import datetime as dt

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import EnhancedMRImageStorage

from service.sim.fdopa.flair import FlairImage, FlairProtocol
from service.sim.fdopa.mr_writer import DESCRIPTIONS, stored_flair
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
from service.sim.fdopa.pet_writer import INJECTION, PetSeriesInfo, _ds, _patient_study, _time, uid

_LARMOR_MHZ_PER_T = 42.577478
_FRAME_TYPE = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]


def _series(ds: Dataset, protocol: FlairProtocol, info: PetSeriesInfo, start: dt.datetime
            ) -> None:
    description, sequence = DESCRIPTIONS[protocol.acquisition]
    ds.Modality = "MR"
    ds.SeriesInstanceUID = uid(info.uid_seed, "mr-series", str(info.series_number))
    ds.FrameOfReferenceUID = uid(info.uid_seed, "mr-for")
    ds.SeriesNumber, ds.SeriesDescription = info.series_number, description
    ds.SeriesDate, ds.SeriesTime = start.strftime("%Y%m%d"), _time(start)
    ds.BodyPartExamined, ds.PatientPosition = "HEAD", "HFS"
    ds.Manufacturer = "SIEMENS"
    ds.ManufacturerModelName = "MAGNETOM Vida" if protocol.field_t > 2 else "MAGNETOM Sola"
    ds.ImageType = _FRAME_TYPE
    ds.PixelPresentation, ds.VolumetricProperties = "MONOCHROME", "VOLUME"
    ds.VolumeBasedCalculationTechnique, ds.ComplexImageComponent = "NONE", "MAGNITUDE"
    ds.AcquisitionContrast = "FLUID_ATTENUATED"
    ds.ResonantNucleus, ds.KSpaceFiltering = "1H", "NONE"
    ds.MagneticFieldStrength = _ds(protocol.field_t)
    ds.ApplicableSafetyStandardAgency = "IEC"
    ds.ImageComments = ""
    ds.PulseSequenceName = sequence.lstrip("*")
    ds.MRAcquisitionType = protocol.acquisition
    ds.EchoPulseSequence, ds.MultipleSpinEcho, ds.MultiPlanarExcitation = "SPIN", "NO", "NO"
    ds.PhaseContrast, ds.TimeOfFlightContrast = "NO", "NO"
    ds.SteadyStatePulseSequence, ds.EchoPlanarPulseSequence = "NONE", "NO"
    ds.SaturationRecovery, ds.SpectrallySelectedSuppression = "NO", "NONE"
    ds.OversamplingPhase, ds.GeometryOfKSpaceTraversal = "NONE", "RECTILINEAR"
    ds.RectilinearPhaseEncodeReordering, ds.SegmentedKSpaceTraversal = "LINEAR", "PARTIAL"
    if protocol.acquisition == "3D":
        ds.CoverageOfKSpace = "FULL"
    ds.NumberOfKSpaceTrajectories = 1


def _mr_groups(group: Dataset, protocol: FlairProtocol, shape_zyx: tuple[int, ...]) -> None:
    """MR functional groups shared by every frame (module docstring)."""
    group.MRImageFrameTypeSequence = seq(
        FrameType=_FRAME_TYPE, PixelPresentation="MONOCHROME", VolumetricProperties="VOLUME",
        VolumeBasedCalculationTechnique="NONE", ComplexImageComponent="MAGNITUDE",
        AcquisitionContrast="FLUID_ATTENUATED")
    group.MRTimingAndRelatedParametersSequence = seq(
        RepetitionTime=_ds(protocol.tr_ms), FlipAngle="120" if protocol.acquisition == "3D"
        else "150", EchoTrainLength=16, RFEchoTrainLength=16, GradientEchoTrainLength=0,
        SpecificAbsorptionRateSequence=seq(SpecificAbsorptionRateDefinition="IEC_WHOLE_BODY",
                                           SpecificAbsorptionRateValue=0.8),
        GradientOutputType="DB_DT", GradientOutput=40.0,
        OperatingModeSequence=seq(OperatingModeType="STATIC FIELD", OperatingMode="IEC_NORMAL"))
    rows, cols = shape_zyx[1:]
    fov = seq(InPlanePhaseEncodingDirection="ROW", MRAcquisitionFrequencyEncodingSteps=cols,
              MRAcquisitionPhaseEncodingStepsInPlane=rows, PercentSampling="100",
              PercentPhaseFieldOfView="100")
    if protocol.acquisition == "3D":
        fov[0].MRAcquisitionPhaseEncodingStepsOutOfPlane = shape_zyx[0]
    group.MRFOVGeometrySequence = fov
    group.MREchoSequence = seq(EffectiveEchoTime=float(protocol.te_ms))
    group.MRModifierSequence = seq(
        InversionRecovery="YES", InversionTimes=[float(protocol.ti_ms)], FlowCompensation="NONE",
        T2Preparation="NO", SpatialPresaturation="NONE", PartialFourier="NO",
        ParallelAcquisition="NO", SpectrallySelectedExcitation="NONE")
    group.MRImagingModifierSequence = seq(
        MagnetizationTransfer="NONE", BloodSignalNulling="NO", Tagging="NONE",
        TransmitterFrequency=_LARMOR_MHZ_PER_T * protocol.field_t, PixelBandwidth="250")
    group.MRReceiveCoilSequence = seq(ReceiveCoilName="Head_32", ReceiveCoilType="MULTICOIL",
                                      QuadratureReceiveCoil="NO",
                                      ReceiveCoilManufacturerName="SIEMENS")
    group.MRReceiveCoilSequence[0].MultiCoilDefinitionSequence = Sequence([
        item(MultiCoilElementName="HEA", MultiCoilElementUsed="YES")])
    group.MRTransmitCoilSequence = seq(TransmitCoilName="Body", TransmitCoilType="BODY",
                                       TransmitCoilManufacturerName="SIEMENS")
    group.MRAveragesSequence = seq(NumberOfAverages="1")
    group.PixelValueTransformationSequence = seq(RescaleIntercept="0", RescaleSlope="1",
                                                 RescaleType="US")


def build_enhanced_flair(image: FlairImage, protocol: FlairProtocol,
                         info: PetSeriesInfo, transfer_syntax: str = "explicit") -> Dataset:
    """One native Enhanced MR instance of a FLAIR (module docstring).

    Parameters
    ----------
    image : FlairImage
        Volume ``(z, y, x)``, identity orientation in the MR frame, origin =
        centre of the first voxel (LPS mm).
    protocol : FlairProtocol
        TR/TE/TI, field strength and 2D/3D acquisition.
    info : PetSeriesInfo
        Subject, study and series number (the PET study's).
    transfer_syntax : str
        A key of :data:`service.sim.transfer_syntax.TRANSFER_SYNTAXES`.

    Returns
    -------
    pydicom.Dataset
        With file meta.
    """
    start = INJECTION - dt.timedelta(minutes=40)
    stored = stored_flair(image.volume_zyx)
    n = stored.shape[0]
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    _patient_study(ds, info)
    _series(ds, protocol, info, start)
    multiframe_common(ds, n, start)
    duration_s = 300.0
    ds.AcquisitionNumber = 1
    ds.AcquisitionDateTime, ds.AcquisitionDuration = datetime_text(start), duration_s
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    dimensions(ds, info.uid_seed, ["StackID", "InStackPositionNumber"])
    shared = shared_geometry(tuple(float(v) for v in image.spacing_mm))  # type: ignore[arg-type]
    _mr_groups(shared, protocol, stored.shape)
    shared.FrameVOILUTSequence = seq(WindowCenter="1500", WindowWidth="3000")
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    for k in range(n):
        group = Dataset()
        group.FrameContentSequence = seq(
            FrameAcquisitionDateTime=datetime_text(start), FrameReferenceDateTime=datetime_text(
                start), FrameAcquisitionDuration=1000.0 * duration_s, StackID="1",
            InStackPositionNumber=k + 1, DimensionIndexValues=[1, k + 1])
        group.PlanePositionSequence = plane_position(image.origin_lps_mm, image.spacing_mm[2], k)
        per_frame.append(group)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    sop = uid(info.uid_seed, "mr-sop-enhanced-native", str(info.series_number))
    return finish(ds, EnhancedMRImageStorage, sop, stored, transfer_syntax)
