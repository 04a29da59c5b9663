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


def _read(data: bytes) -> object:
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    from service.imaging.nm_volume import volume_from_datasets

    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return volume_from_datasets([ds])


def test_a_multiframe_without_number_of_slices_is_not_garbage_the_node_reads_it_alike(
        tmp_path: object) -> None:
    """bench/fuzz.py --seed 35 (2026-12-05) counted case 385 as garbage with a result:
    Number of Slices deleted from the multi-frame DaT seed. Frames and Slice Vector place
    every slice, so the node reads the very same volume: the oracle was wrong, not the node."""
    import copy
    from pathlib import Path

    import numpy as np
    import SimpleITK as sitk

    from service.testing.fuzz import Fuzzer

    fuzzer = Fuzzer(35, Path(str(tmp_path)) / "seeds", dat_share=0.02)
    case = fuzzer.dataset_case(385)
    assert (case.seed_kind, case.mutation, case.garbage) == (
        "nm_dat", "delete_number_of_slices_multiframe", False)
    assert "NumberOfSlices" not in pydicom.dcmread(io.BytesIO(case.data), force=True)
    seed = fuzzer.seeds.by_kind["nm_dat"]
    mutated = _read(case.data).image  # type: ignore[attr-defined]
    whole = _read(encode_ds(copy.deepcopy(seed))).image  # type: ignore[attr-defined]
    assert np.array_equal(sitk.GetArrayFromImage(mutated), sitk.GetArrayFromImage(whole))
    assert (mutated.GetOrigin(), mutated.GetSpacing(), mutated.GetDirection()) == (
        whole.GetOrigin(), whole.GetSpacing(), whole.GetDirection())
