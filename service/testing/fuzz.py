"""A seeded fuzzer for a running node: mutated datasets, malformed PDUs, malformed HTTP.

Usage::

    from service.testing.fuzz import Fuzzer
    from service.testing.fuzz_node import Sender
    from service.testing.fuzz_wire import send_http, send_raw
    fz = Fuzzer(seed=4, work_dir=tmp_path / "seeds")
    sender = Sender(node.scp_port, node.ae_title)
    for case in fz.datasets(200):          # DatasetCase: bytes, command UIDs, garbage flag
        outcome = sender.store(case)
    for case in fz.pdu_cases(40, node.ae_title):   # PduCase: a name and the bytes to write raw
        outcome = send_raw(node.scp_port, case, node.ae_title)
    for case in fz.http_cases(20, token):  # raw HTTP request bytes
        status = send_http(node.api_port, case)

This module makes the data set cases; the raw PDU and HTTP cases and their
senders are :mod:`service.testing.fuzz_wire`, the C-STORE sender and the
probes of the node :mod:`service.testing.fuzz_node`.

Every input is derived from ``random.Random(seed)`` only, so a failing input
is reproduced from (seed, index). Each dataset input gets its own series
(fresh UIDs) so that any job, and any result, is attributed to one input.

"Garbage": an input whose mutation broke the image (pixel data, geometry,
the pixel module, bytes of the encoding) or the UIDs, or whose SOP class does
not match the command's. No result may come from garbage. Harmless mutations
(text values, dates, private elements, nested sequences outside the image)
may produce results; callers list them.
"""

from __future__ import annotations

import copy
import random
import struct
import warnings
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from service.dicom import codes
from service.testing.fuzz_wire import HttpCase, PduCase, http_cases, pdu_cases

#: Marker in traversal UIDs and file names: must never appear as a file anywhere.
TRAVERSAL_MARKER = "FUZZPWN"

#: Elements whose damage breaks the image (garbage when mutated).
IMAGE_TAGS = {
    "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
    "SamplesPerPixel", "PhotometricInterpretation", "NumberOfFrames", "PixelData",
    "PixelSpacing", "SliceThickness", "SpacingBetweenSlices", "ImagePositionPatient",
    "ImageOrientationPatient", "RescaleSlope", "RescaleIntercept", "DetectorInformationSequence",
    "FrameIncrementPointer", "SliceVector", "NumberOfSlices", "DecayCorrection", "Units",
    "RadiopharmaceuticalInformationSequence", "EnergyWindowInformationSequence",
}
#: Image elements of a multi-frame NM volume that the node's reader reads the same volume
#: without (service/imaging/nm_volume.py): frames and Slice Vector place every slice
#: (Number of Slices and the Frame Increment Pointer are not needed), High Bit is not
#: used to decode, and a missing Slice Vector (frames in file order) or Spacing Between
#: Slices (Slice Thickness) falls back with a warning in the result. Damage to one of
#: them is harmless where :func:`read_alike` says so (bench/fuzz.py seeds 35 and 36,
#: 2026-12-05: each such "result from garbage" was the seed's own volume).
READ_ALIKE_MULTIFRAME = {"NumberOfSlices", "FrameIncrementPointer", "HighBit", "SliceVector",
                         "SpacingBetweenSlices"}
#: Of those, the ones the reader does not read at all (any value is read alike).
READ_NOT_USED = {"NumberOfSlices", "FrameIncrementPointer", "HighBit"}
UID_TAGS = {"SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID",
            "FrameOfReferenceUID"}
#: Text elements a mutation may spoil without touching the image.
TEXT_TAGS = ["PatientName", "PatientID", "StudyDescription", "SeriesDescription",
             "InstitutionName", "ManufacturerModelName", "AccessionNumber",
             "ReferringPhysicianName", "OperatorsName"]
DATE_TAGS = ["PatientBirthDate", "StudyDate", "SeriesDate", "AcquisitionDate"]

BAD_UIDS = ["", "1.2.3/../../" + TRAVERSAL_MARKER, "..", "9" * 70, "1.2.abc.3", "1..2",
            "0.01.2", "1.2.3\\4.5", "/etc/passwd", "1.2.3." + "4" * 60, "\x00\x01\x02",
            "C:\\" + TRAVERSAL_MARKER, "1.2.3 ", "%s%s%n"]
BAD_TEXT = ["\x00" * 7, "\xff\xfe" * 30, "A" * 70_000, "\\" * 300, "17.08.1923", "ZZ59Y",
            "2026-01-01", "-1", "1e400", "nan", "\u00e9\u4e2d\U0001f600", "%s%n%x", "{}",
            "../../" + TRAVERSAL_MARKER]


@dataclass
class DatasetCase:
    """One C-STORE: data set bytes and the command's UIDs."""

    index: int
    seed_kind: str           # nm_dat, nm_slice, pet, sr
    mutation: str
    garbage: bool
    data: bytes
    sop_class: str           # the command's Affected SOP Class UID
    sop_instance: str        # the command's Affected SOP Instance UID
    series_uid: str          # as written in the data set (before byte mutations)
    context_class: str       # presentation context to send on



@dataclass
class Seeds:
    """Valid data sets to mutate (built once)."""

    by_kind: dict[str, Dataset] = field(default_factory=dict)


def _small_image(ds: Dataset, rows: int = 16, value: int = 7) -> None:
    ds.Rows = ds.Columns = rows
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelSpacing, ds.SliceThickness = [4.0, 4.0], 4.0
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, 0], [1, 0, 0, 0, 1, 0]
    ds.PixelData = np.full((rows, rows), value, np.uint16).tobytes()


def _base(sop_class: str, modality: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.Modality = sop_class, modality
    ds.SOPInstanceUID = ds.StudyInstanceUID = ds.SeriesInstanceUID = generate_uid()
    ds.FrameOfReferenceUID = generate_uid()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "FUZZ^SEED", "FUZZ-1", "19500101"
    ds.StudyDate = ds.SeriesDate = "20260101"
    ds.StudyDescription = ds.SeriesDescription = "fuzz seed"
    ds.InstanceNumber = 1
    return ds


def build_seeds(work_dir: Path, with_dat: bool = True) -> Seeds:
    """NM (a DaT phantom as one multi-frame; a small per-slice), PET, SR seeds."""
    seeds = Seeds()
    if with_dat:
        from service.imaging.atlas import load_atlas
        from service.pipelines.dat_spect.result import Region
        from service.testing.dat_phantom import make_phantom, random_pose
        from service.testing.nmdata import write_marker_study

        rng = np.random.default_rng(11)
        sbr = {Region.CAUDATE_LEFT: 3.0, Region.CAUDATE_RIGHT: 3.0,
               Region.PUTAMEN_LEFT: 1.0, Region.PUTAMEN_RIGHT: 2.4}
        phantom = make_phantom(load_atlas(), sbr, random_pose(rng), rng)
        path = write_marker_study(work_dir / "dat", "multiframe", image=phantom.image,
                                  uid_seed="fuzz-dat")[0]
        seeds.by_kind["nm_dat"] = pydicom.dcmread(path)
    nm = _base(codes.NM_IMAGE_STORAGE, "NM")
    nm.NumberOfFrames, nm.NumberOfSlices = 1, 1
    nm.ImageType = ["ORIGINAL", "PRIMARY", "RECON TOMO", "EMISSION"]
    nm.RadiopharmaceuticalInformationSequence = Sequence([Dataset()])
    nm.RadiopharmaceuticalInformationSequence[0].Radiopharmaceutical = "Ioflupane"
    _small_image(nm)
    seeds.by_kind["nm_slice"] = nm
    pet = _base(codes.PET_IMAGE_STORAGE, "PT")
    pet.ImageType = ["ORIGINAL", "PRIMARY"]
    pet.Units, pet.DecayCorrection, pet.SeriesType = "BQML", "START", ["STATIC", "IMAGE"]
    pet.RescaleSlope, pet.RescaleIntercept = 1.0, 0.0
    pet.NumberOfSlices = 1
    _small_image(pet)
    seeds.by_kind["pet"] = pet
    sr = _base(codes.COMPREHENSIVE_SR_STORAGE, "SR")
    sr.ValueType, sr.CompletionFlag, sr.VerificationFlag = "CONTAINER", "COMPLETE", "UNVERIFIED"
    seeds.by_kind["sr"] = sr
    return seeds


def read_alike(tag: str, seed: Dataset, deleted: bool) -> bool:
    """True when the node reads ``seed``'s volume alike with ``tag`` missing (``deleted``)
    or holding another value (:data:`READ_ALIKE_MULTIFRAME`, for a multi-frame seed
    whose fallbacks give the same geometry: frames already in Slice Vector order, Slice
    Thickness equal to the spacing). A changed Slice Vector or Spacing Between Slices is
    read, so it is never alike. Pinned by tests/unit/test_fuzz_classifier.py."""
    frames = int(seed.get("NumberOfFrames") or 1)
    if tag not in READ_ALIKE_MULTIFRAME or frames < 2:
        return False
    if not deleted:
        return tag in READ_NOT_USED
    if tag == "SliceVector":
        return [int(v) for v in seed.get("SliceVector") or []] == list(range(1, frames + 1))
    if tag == "SpacingBetweenSlices":
        thickness = seed.get("SliceThickness")
        return thickness not in (None, "") and float(thickness) == float(
            seed.SpacingBetweenSlices)  # a negative spacing (GE) would flip the stack
    return True


def encode_ds(ds: Dataset) -> bytes:
    """Explicit VR little endian data set bytes, no file meta (what a C-STORE carries)."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, ds)
    return buf.getvalue()


_RADIOPHARMACEUTICAL = "RadiopharmaceuticalInformationSequence"


def _tracer(ds: Dataset) -> tuple[Any, ...]:
    """What the gates read from the Radiopharmaceutical Information Sequence.

    The tracer's code and text; damage elsewhere in the item (the dose, the
    radionuclide code a DaT gate does not need) leaves the image analysable.
    """
    items = ds.get(_RADIOPHARMACEUTICAL) or []
    return tuple((item.get("Radiopharmaceutical"), item.get("RadiopharmaceuticalCodeSequence"))
                 for item in items)


def byte_damage(original: Dataset, data: bytes) -> str:
    """What a byte-level mutation spoiled: ``""`` when the image and UIDs survived.

    The mutated bytes are parsed as the node would. Garbage (a non-empty
    answer) when they do not parse, or when any UID, any element of the image
    (:data:`IMAGE_TAGS`) or the length of Pixel Data differs from the
    original. A flip inside Pixel Data changes a few voxel values and nothing
    the node could check, and bytes after the last element are dropped by
    the reader: both leave a valid image, so a result from them is no defect.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parsed = pydicom.dcmread(BytesIO(data), force=True)
            for keyword in sorted((IMAGE_TAGS | UID_TAGS) - {"PixelData", _RADIOPHARMACEUTICAL}):
                if parsed.get(keyword) != original.get(keyword):
                    return "damaged_" + keyword
            if _tracer(parsed) != _tracer(original):
                return "damaged_" + _RADIOPHARMACEUTICAL
            pixels = original.get("PixelData")
            if pixels is not None and len(parsed.get("PixelData") or b"") != len(pixels):
                return "damaged_PixelData_length"
    except Exception:  # noqa: BLE001 - anything the parser rejects is garbage
        return "unparseable"
    return ""


class Fuzzer:
    """Seeded generator of dataset, PDU and HTTP cases."""

    #: (mutation name, garbage?) for data set mutations; byte mutations: :func:`byte_damage`.
    DATASET_MUTATIONS: list[tuple[str, bool]] = [
        ("none", False), ("text_value", False), ("bad_date", False), ("private_element", False),
        ("nested_sequence", False), ("huge_vm_text", False), ("delete_text", False),
        ("image_value", True), ("delete_image", True), ("huge_vm_image", True),
        ("bad_uid", True), ("delete_uid", True), ("sop_class_swap", True),
        ("command_unknown_class", True), ("command_uid_mismatch", True),
        ("pixel_truncate", True), ("rescale_zero", True), ("wrong_vr_type", True),
    ]
    BYTE_MUTATIONS = ["truncate", "bit_flips", "length_field", "garbage_tail", "empty",
                      "random_bytes"]

    def __init__(self, seed: int, work_dir: Path, with_dat: bool = True,
                 dat_share: float = 0.05) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.seeds = build_seeds(Path(work_dir), with_dat)
        self.dat_share = dat_share if with_dat else 0.0

    # --- data sets --------------------------------------------------------------
    def datasets(self, n: int, start: int = 0) -> Iterator[DatasetCase]:
        for i in range(start, start + n):
            yield self.dataset_case(i)

    def dataset_case(self, index: int) -> DatasetCase:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return self._dataset_case(index)

    def _dataset_case(self, index: int) -> DatasetCase:
        rng = random.Random(f"{self.seed}-ds-{index}")
        if rng.random() < self.dat_share:
            kind = "nm_dat"
        else:
            kind = rng.choice(["nm_slice", "nm_slice", "pet", "sr"])
        ds = copy.deepcopy(self.seeds.by_kind[kind])
        ds.StudyInstanceUID = generate_uid(entropy_srcs=[str(self.seed), str(index), "st"])
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=[str(self.seed), str(index), "se"])
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[str(self.seed), str(index), "sop"])
        series_uid = str(ds.SeriesInstanceUID)
        sop_class, sop_instance = str(ds.SOPClassUID), str(ds.SOPInstanceUID)
        context_class = sop_class
        if rng.random() < 0.25:  # bytes-level mutation of a valid encoding
            name = rng.choice(self.BYTE_MUTATIONS)
            data = self._mutate_bytes(rng, name, encode_ds(ds))
            spoiled = byte_damage(ds, data)
            return DatasetCase(index, kind, f"bytes_{name}+{spoiled or 'image_and_uids_intact'}",
                               bool(spoiled), data, sop_class, sop_instance, series_uid,
                               context_class)
        name, garbage = rng.choice(self.DATASET_MUTATIONS)
        if name == "sop_class_swap":
            ds.SOPClassUID = rng.choice([c for c in (codes.NM_IMAGE_STORAGE, codes.PET_IMAGE_STORAGE,
                                                     codes.COMPREHENSIVE_SR_STORAGE, codes.CT_IMAGE_STORAGE)
                                         if c != sop_class])
        elif name == "command_unknown_class":
            sop_class = rng.choice(["1.2.3.4.5.6.7", "", "1.2.840.10008.5.1.4.1.1.999",
                                    codes.CT_IMAGE_STORAGE])
        elif name == "command_uid_mismatch":
            sop_instance = rng.choice(["1.2.3.4", sop_instance + ".1", "9" * 64])
        elif name == "bad_uid":
            tag = rng.choice(sorted(UID_TAGS - {"SOPClassUID"}))
            value = rng.choice(BAD_UIDS)
            setattr(ds, tag, value)
            if tag == "FrameOfReferenceUID":  # not an identifier the node files by
                name, garbage = "bad_frame_of_reference_uid", False
            if tag == "SeriesInstanceUID":
                series_uid = value
            if tag == "SOPInstanceUID" and rng.random() < 0.5:
                sop_instance = value  # both agree, both bad
        elif name == "delete_uid":
            tag = rng.choice(sorted(UID_TAGS))
            if tag in ds:
                delattr(ds, tag)
            if tag == "FrameOfReferenceUID":
                name, garbage = "delete_frame_of_reference_uid", False
        else:
            try:
                touched = self._mutate_elements(rng, name, ds)
            except (AttributeError, KeyError, ValueError, TypeError):
                name, garbage = name + "+not_applicable", False  # e.g. no PixelData in an SR
            else:
                if garbage and touched and read_alike(touched, self.seeds.by_kind[kind],
                                                      deleted=name == "delete_image"):
                    name, garbage = f"{name}_{touched}_read_alike", False
        try:
            data = encode_ds(ds)
        except Exception:  # noqa: BLE001 - a value pydicom cannot write: send raw junk instead
            data, garbage, name = bytes(rng.randrange(256) for _ in range(64)), True, name + "+unwritable"
        return DatasetCase(index, kind, name, garbage, data, sop_class, sop_instance, series_uid,
                           context_class)

    def _mutate_elements(self, rng: random.Random, name: str, ds: Dataset) -> str | None:
        """Apply the data set mutation ``name``; returns the image element that
        ``delete_image`` removed or ``image_value`` changed (else None)."""
        image_tags = sorted(t for t in IMAGE_TAGS if t in ds) or ["Rows"]
        if name == "text_value":
            setattr(ds, rng.choice(TEXT_TAGS), rng.choice(BAD_TEXT))
        elif name == "bad_date":
            setattr(ds, rng.choice(DATE_TAGS), rng.choice(["17.08.1923", "2026-01-01", "99999999",
                                                            "", "1923", "ZZ"]))
        elif name == "private_element":
            ds.private_block(0x0099, "FUZZ", create=True).add_new(
                rng.randrange(256), rng.choice(["LO", "OB", "UN", "SQ"]) if False else "LO",
                rng.choice(BAD_TEXT)[:64])
        elif name == "nested_sequence":
            depth = rng.choice([5, 50, 200])
            inner = Dataset()
            inner.CodeMeaning = "deep"
            for _ in range(depth):
                outer = Dataset()
                outer.ContentSequence = Sequence([inner])
                inner = outer
            ds.ReferencedStudySequence = Sequence([inner] * rng.choice([1, 20]))
        elif name == "huge_vm_text":
            ds.ImageType = ["X"] * rng.choice([100, 10_000])
        elif name == "delete_text":
            tag = rng.choice(TEXT_TAGS)
            if tag in ds:
                delattr(ds, tag)
        elif name == "image_value":
            tag = rng.choice(image_tags)
            elem = ds.data_element(tag)
            assert elem is not None
            table: dict[str, list[Any]] = {
                "US": [0, 1, 65535, 3], "IS": ["-1", "0", "99999999", "abc"],
                "DS": ["nan", "-0", "1e308", "abc", "0"], "CS": ["", "JUNK", "\x00"],
            }
            choices = table.get(str(elem.VR), [b"\x00", b"\xff" * 3])
            before = copy.deepcopy(elem.value)
            with suppress(Exception):
                elem.value = rng.choice(choices)
            if elem.value == before:  # the value could not be set, or was already that
                raise ValueError("image_value left the element unchanged")
            return tag
        elif name == "delete_image":
            tag = rng.choice(image_tags)
            delattr(ds, tag)
            return tag
        elif name == "huge_vm_image":
            ds.PixelSpacing = [4.0] * rng.choice([3, 5000])
            ds.ImageOrientationPatient = [1.0] * rng.choice([5, 7, 3000])
        elif name == "pixel_truncate":
            ds.PixelData = ds.PixelData[: rng.randrange(0, max(1, len(ds.PixelData)))]
        elif name == "rescale_zero":
            ds.RescaleSlope = rng.choice([0, "nan", -1])
        elif name == "wrong_vr_type":
            ds.add_new(0x00280010, "UL", 70_000)  # Rows written with the wrong VR
        # "none": unchanged
        return None

    def _mutate_bytes(self, rng: random.Random, name: str, data: bytes) -> bytes:
        buf = bytearray(data)
        if name == "truncate":
            return bytes(buf[: rng.randrange(0, len(buf))])
        if name == "bit_flips":
            for _ in range(rng.choice([1, 4, 32])):
                pos = rng.randrange(min(len(buf), 4096))  # flip in the header mostly
                buf[pos] ^= 1 << rng.randrange(8)
            return bytes(buf)
        if name == "length_field":
            pos = rng.randrange(0, min(len(buf) - 8, 4000))
            struct.pack_into("<I", buf, pos, rng.choice([0xFFFFFFFF, 0xFFFFFFF0, 0x7FFFFFFF, 1,
                                                          len(buf) * 2]))
            return bytes(buf)
        if name == "garbage_tail":
            return bytes(buf) + bytes(rng.randrange(256) for _ in range(rng.choice([1, 7, 300])))
        if name == "empty":
            return b"\0" * 8  # (pynetdicom sends no fragment at all for b"")
        return bytes(rng.randrange(256) for _ in range(rng.choice([4, 128, 4096])))

    # --- raw PDUs and HTTP (service.testing.fuzz_wire) --------------------------------
    def pdu_cases(self, n: int, called: str, calling: str = "STORESCU") -> Iterator[PduCase]:
        """Raw PDU cases from this fuzzer's seed (:func:`~service.testing.fuzz_wire.pdu_cases`)."""
        return pdu_cases(self.seed, n, called, calling)

    def http_cases(self, n: int, token: str) -> Iterator[HttpCase]:
        """Malformed HTTP requests (:func:`~service.testing.fuzz_wire.http_cases`)."""
        return http_cases(n, token)
