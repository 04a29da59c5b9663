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


#: The "results from garbage" of bench/fuzz.py --seed 35 and --seed 36 (2026-12-05): each
#: damaged one image element of the multi-frame DaT seed that the node's reader does not
#: need (:data:`service.testing.fuzz.READ_ALIKE_MULTIFRAME`); the warning it records, if any.
READ_ALIKE_CASES = [
    (35, 385, "delete_image", "NumberOfSlices", None),
    (36, 795, "delete_image", "FrameIncrementPointer", None),
    (36, 2206, "image_value", "HighBit", None),
    (36, 4876, "delete_image", "SpacingBetweenSlices", "slice spacing from Slice Thickness"),
    (36, 6716, "delete_image", "SliceVector", "no Slice Vector: frames taken in file order"),
    (36, 6758, "delete_image", "HighBit", None),
]


@pytest.mark.parametrize(("seed", "index", "mutation", "tag", "warning"), READ_ALIKE_CASES)
def test_damage_the_reader_does_not_need_is_not_garbage_it_reads_the_seeds_volume(
        tmp_path: object, seed: int, index: int, mutation: str, tag: str,
        warning: str | None) -> None:
    """The oracle was wrong, not the node: the volume read from the damaged data set is
    the seed's own, voxels and geometry, and a fallback says so in the warnings."""
    import copy
    from pathlib import Path

    import numpy as np
    import SimpleITK as sitk

    from service.testing.fuzz import Fuzzer

    fuzzer = Fuzzer(seed, Path(str(tmp_path)) / "seeds", dat_share=0.02)
    case = fuzzer.dataset_case(index)
    assert (case.seed_kind, case.mutation, case.garbage) == (
        "nm_dat", f"{mutation}_{tag}_read_alike", False)
    seed_ds = fuzzer.seeds.by_kind["nm_dat"]
    damaged = pydicom.dcmread(io.BytesIO(case.data), force=True)
    assert tag not in damaged or damaged[tag].value != seed_ds[tag].value
    mutated, whole = _read(case.data), _read(encode_ds(copy.deepcopy(seed_ds)))
    a, b = mutated.image, whole.image  # type: ignore[attr-defined]
    assert np.array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))
    assert (a.GetOrigin(), a.GetSpacing(), a.GetDirection()) == (
        b.GetOrigin(), b.GetSpacing(), b.GetDirection())
    said = " | ".join(mutated.warnings)  # type: ignore[attr-defined]
    assert (warning or "") in said and (warning is not None or said == "")


def test_damage_the_reader_needs_stays_garbage() -> None:
    from pydicom.dataset import Dataset as Ds

    from service.testing.fuzz import read_alike

    seed = Ds()
    seed.NumberOfFrames, seed.SliceVector = 3, [1, 2, 3]
    seed.SpacingBetweenSlices, seed.SliceThickness = 3.3, 3.3
    assert read_alike("SpacingBetweenSlices", seed, deleted=True)
    assert read_alike("SliceVector", seed, deleted=True)
    # a changed value of an element the reader uses is read: never alike
    assert not read_alike("SpacingBetweenSlices", seed, deleted=False)
    assert not read_alike("SliceVector", seed, deleted=False)
    assert read_alike("HighBit", seed, deleted=False)
    seed.SpacingBetweenSlices = -3.3  # GE: without it the stack would flip
    assert not read_alike("SpacingBetweenSlices", seed, deleted=True)
    assert not read_alike("PixelSpacing", seed, deleted=True)
    assert not read_alike("Rows", seed, deleted=True)
    seed.SliceVector = [2, 1, 3]  # frames not in slice order: file order would misplace them
    assert not read_alike("SliceVector", seed, deleted=True)
    seed.NumberOfFrames = 1  # a single frame: not the multi-frame rule
    assert not read_alike("NumberOfSlices", seed, deleted=True)
