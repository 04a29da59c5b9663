"""The fuzzer's verdict on byte-level mutations (service/testing/fuzz.py::byte_damage)."""

from __future__ import annotations

import io

import pydicom
import pytest
from pydicom.dataset import Dataset

from service.dicom import codes
from service.testing.fuzz import byte_damage, encode_ds

pytestmark = pytest.mark.no_storage  # never opens the node's rows: not rerun on PostgreSQL


def _image() -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = codes.NM_IMAGE_STORAGE
    ds.SOPInstanceUID = "1.2.3.4"
    ds.StudyInstanceUID = "1.2.3"
    ds.SeriesInstanceUID = "1.2.3.5"
    ds.Modality = "NM"
    ds.SeriesDescription = "fuzz seed"
    ds.Rows, ds.Columns = 4, 4
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation, ds.SamplesPerPixel = 0, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = bytes(range(32))
    return ds


def test_a_flip_inside_pixel_data_and_a_tail_leave_the_image_intact() -> None:
    ds = _image()
    data = bytearray(encode_ds(ds))
    data[-5] ^= 0x10  # inside Pixel Data (the last element)
    assert byte_damage(ds, bytes(data)) == ""
    assert byte_damage(ds, encode_ds(ds) + b"\x07" * 7) == ""


def test_header_damage_and_junk_are_garbage() -> None:
    ds = _image()
    data = encode_ds(ds)
    rows_at = data.index(b"\x28\x00\x10\x00")  # (0028,0010) Rows, explicit VR LE
    spoiled = bytearray(data)
    spoiled[rows_at + 8] ^= 0x01  # its value: 4 -> 5
    assert pydicom.dcmread(io.BytesIO(bytes(spoiled)), force=True).Rows == 5
    assert byte_damage(ds, bytes(spoiled)) == "damaged_Rows"
    assert byte_damage(ds, data[: len(data) - 8]) == "damaged_PixelData_length"
    assert byte_damage(ds, b"\xff" * 64) != ""
