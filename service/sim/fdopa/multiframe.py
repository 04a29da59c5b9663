"""Functional groups shared by the native Enhanced PET and Enhanced MR writers.

PS3.3 C.7.6.16 Multi-frame Functional Groups, C.7.6.17 Multi-frame
Dimension, C.7.6.16.2 functional group macros (Pixel Measures, Frame
Content, Plane Position (Patient), Plane Orientation (Patient), Frame
Anatomy, Pixel Value Transformation, Real World Value Mapping).

Geometry: identity orientation (Image Orientation (Patient) ``1\\0\\0\\0\\1\\0``),
Image Position (Patient) of a frame = centre of its first pixel (LPS mm),
Pixel Spacing = [row spacing, column spacing]. Frames are stacked along +z
(the slice normal, row x column); ``In-Stack Position Number`` 1 is the
inferior slice.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes
from pydicom.tag import Tag
from pydicom.uid import UID

from service.sim.fdopa.pet_writer import _code, _ds, _time, uid
from service.sim.transfer_syntax import encode_pixels

IDENTITY_IOP = ["1", "0", "0", "0", "1", "0"]


def item(**attributes: object) -> Dataset:
    """One sequence item with the given attributes (pydicom keywords)."""
    ds = Dataset()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def seq(**attributes: object) -> Sequence:
    """A sequence of one :func:`item`."""
    return Sequence([item(**attributes)])


def datetime_text(t: dt.datetime) -> str:
    """A DICOM DT ``YYYYMMDDHHMMSS.FFFFFF`` (naive, scanner clock)."""
    return t.strftime("%Y%m%d") + _time(t)


def shared_geometry(spacing_xyz_mm: tuple[float, float, float]) -> Dataset:
    """Shared group: Pixel Measures and Plane Orientation (identity), Frame Anatomy (brain)."""
    sx, sy, sz = spacing_xyz_mm
    group = Dataset()
    group.PixelMeasuresSequence = seq(PixelSpacing=[_ds(sy), _ds(sx)], SliceThickness=_ds(sz),
                                      SpacingBetweenSlices=_ds(sz))
    group.PlaneOrientationSequence = seq(ImageOrientationPatient=IDENTITY_IOP)
    anatomy = _code(codes.SCT.Brain)
    group.FrameAnatomySequence = seq(AnatomicRegionSequence=Sequence([anatomy]),
                                     FrameLaterality="U")
    return group


def plane_position(origin_lps_mm: np.ndarray, spacing_z_mm: float, k: int) -> Sequence:
    """Plane Position (Patient) of slice ``k`` of an identity-oriented stack."""
    ipp = np.asarray(origin_lps_mm, float) + np.array([0.0, 0.0, spacing_z_mm * k])
    return seq(ImagePositionPatient=[_ds(v) for v in ipp])


def dimensions(ds: Dataset, uid_seed: str, pointers: list[str]) -> None:
    """Multi-frame Dimension module: one dimension per Frame Content attribute in ``pointers``.

    Each frame's Frame Content Sequence must then carry Dimension Index Values
    in the same order.
    """
    organisation = uid(uid_seed, "dimension-organisation", *pointers)
    ds.DimensionOrganizationSequence = seq(DimensionOrganizationUID=organisation)
    ds.DimensionOrganizationType = "3D_TEMPORAL" if "TemporalPositionIndex" in pointers \
        else "3D"
    labels = {"StackID": "Stack ID", "InStackPositionNumber": "In-Stack Position Number",
              "TemporalPositionIndex": "Temporal Position Index"}
    ds.DimensionIndexSequence = Sequence([
        item(DimensionOrganizationUID=organisation, DimensionIndexPointer=Tag(keyword),
             FunctionalGroupPointer=Tag("FrameContentSequence"),
             DimensionDescriptionLabel=labels[keyword]) for keyword in pointers])


def multiframe_common(ds: Dataset, n_frames: int, content: dt.datetime) -> None:
    """Multi-frame Functional Groups module top level and the image flags every IOD needs."""
    ds.InstanceNumber = 1
    ds.NumberOfFrames = n_frames
    ds.ContentDate, ds.ContentTime = content.strftime("%Y%m%d"), _time(content)
    ds.DeviceSerialNumber = "SIM0001"  # Enhanced General Equipment (type 1)
    ds.AcquisitionContextSequence = Sequence()
    ds.ContentQualification = "PRODUCT"
    ds.BurnedInAnnotation, ds.RecognizableVisualFeatures = "NO", "NO"
    ds.LossyImageCompression = "00"
    ds.PresentationLUTShape = "IDENTITY"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"


def finish(ds: Dataset, sop_class: str, sop_uid: str, stored: np.ndarray,
           transfer_syntax: str) -> Dataset:
    """Set the SOP identity, file meta and Pixel Data (encoded in ``transfer_syntax``).

    ``stored`` : (frames, rows, columns) uint16 or int16 array of stored values.
    """
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    ds.Rows, ds.Columns = stored.shape[1:]
    ds.PixelData = np.ascontiguousarray(stored).tobytes()
    encode_pixels(ds, transfer_syntax, stored)
    return ds
