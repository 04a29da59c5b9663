"""FDOPA PET DICOM shapes real exports have: lossless transfer syntaxes, native Enhanced PET.

(FLAIR, a whole simulated study and the benchmark's draw: ``test_fdopa_encodings_mr.py``.)

Every shape is written to Part 10 files, read back with pydicom and read by
the node's readers (``volume_from_datasets``, ``mr_volume_from_datasets``),
and compared with the uncompressed per-slice series of the same volume:
same values, same affine in patient coordinates (LPS), same frame timing,
same SUV scale. SimpleITK (GDCM) and highdicom are second readers where they
read the object; dciodvfy must report no errors on one file of each shape;
the FDOPA gate must accept the native Enhanced PET.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset

from service.imaging.pet_volume import PetVolume, volume_from_datasets
from service.imaging.suv import suv_scale
from service.pipelines.fdopa_pet.gate import classify_series
from service.sim.fdopa.enhanced_pet import build_enhanced_pet
from service.sim.fdopa.kinetics import SCHEDULES
from service.sim.fdopa.pet_writer import (
    PetEncoding,
    PetSeriesInfo,
    build_legacy_enhanced,
    build_pet_series,
    write_series,
)
from service.sim.transfer_syntax import TRANSFER_SYNTAXES, encode_pixels
from service.testing.peers import require_tool

pytestmark = pytest.mark.no_storage  # never opens the node's rows: not rerun on PostgreSQL

INFO = PetSeriesInfo("enc-seed", 68.0, 190.0, 47, "M", "SIEMENS", "Biograph", "OSEM", 2,
                     "Brain FDOPA")
MR_INFO = PetSeriesInfo(**{**INFO.__dict__, "series_number": 10, "description": "FLAIR"})
SHAPE_ZYX = (4, 36, 44)  # non-square in-plane; JPEG 2000 needs at least 32 pixels a side
SPACING_XYZ = (2.0, 2.5, 3.0)
ORIGIN = (-41.0, -37.5, 12.0)
COMPRESSED = ["rle", "jpegls", "jpeg2000", "deflate"]
STATIC = ([600.0], [1200.0])


def _volume(seed: int) -> sitk.Image:
    arr = np.random.default_rng(seed).uniform(300.0, 9000.0, SHAPE_ZYX).astype(np.float32)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(SPACING_XYZ)
    img.SetOrigin(ORIGIN)
    return img


def _round_trip(datasets: list[Dataset], folder: Path, prefix: str = "PT") -> list[Dataset]:
    return [pydicom.dcmread(p) for p in write_series(datasets, folder, prefix)]


def _dciodvfy_errors(path: Path) -> list[str]:
    out = subprocess.run([require_tool("dciodvfy"), str(path)], capture_output=True, text=True,
                         check=False)
    return [line for line in (out.stdout + out.stderr).splitlines() if "Error" in line]


def _assert_same_pet(got: PetVolume, ref: PetVolume) -> None:
    assert got.shape_zyx == ref.shape_zyx
    np.testing.assert_allclose(got.affine, ref.affine, atol=1e-6)
    np.testing.assert_allclose(got.starts_s, ref.starts_s)
    np.testing.assert_allclose(got.durations_s, ref.durations_s)
    for a, b in zip(got.frames, ref.frames, strict=True):
        np.testing.assert_array_equal(a.volume_zyx, b.volume_zyx)


@pytest.fixture(scope="module")
def explicit_static(tmp_path_factory: pytest.TempPathFactory) -> list[Dataset]:
    folder = tmp_path_factory.mktemp("explicit")
    return _round_trip(build_pet_series([_volume(1)], *STATIC, INFO, PetEncoding(), False),
                       folder)


@pytest.fixture(scope="module")
def reference_static(explicit_static: list[Dataset]) -> PetVolume:
    return volume_from_datasets(explicit_static)


@pytest.mark.parametrize("syntax", COMPRESSED)
def test_per_slice_pet_reads_back_identically_in_every_lossless_syntax(
        syntax: str, explicit_static: list[Dataset], reference_static: PetVolume,
        tmp_path: Path) -> None:
    datasets = _round_trip(build_pet_series([_volume(1)], *STATIC, INFO,
                                            PetEncoding(transfer_syntax=syntax), False), tmp_path)
    assert {ds.file_meta.TransferSyntaxUID for ds in datasets} == {TRANSFER_SYNTAXES[syntax]}
    _assert_same_pet(volume_from_datasets(datasets), reference_static)
    assert suv_scale(datasets[0]).factor == pytest.approx(suv_scale(explicit_static[0]).factor,
                                                          rel=1e-12)
    if syntax == "jpegls":
        assert not _dciodvfy_errors(tmp_path / "PT00001.dcm")
    reader = sitk.ImageSeriesReader()  # GDCM decodes every one of them too
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path)))
    back = reader.Execute()
    np.testing.assert_allclose(back.GetOrigin(), ORIGIN, atol=1e-4)
    np.testing.assert_allclose(back.GetSpacing(), SPACING_XYZ, atol=1e-4)
    np.testing.assert_allclose(sitk.GetArrayFromImage(back), reference_static.frames[0].volume_zyx,
                               rtol=1e-5, atol=1e-3)


def test_signed_pixels_compress_losslessly(reference_static: PetVolume, tmp_path: Path) -> None:
    enc = PetEncoding(signed_pixels=True, transfer_syntax="jpegls")
    datasets = _round_trip(build_pet_series([_volume(1)], *STATIC, INFO, enc, False), tmp_path)
    assert datasets[0].PixelRepresentation == 1
    _assert_same_pet(volume_from_datasets(datasets), reference_static)


def _dynamic(enc: PetEncoding, enhanced: bool) -> list[Dataset]:
    sched = SCHEDULES["rennes20"]
    frames = [_volume(10 + i) for i in range(len(sched.durations_s))]
    args = (frames, list(sched.starts_s), list(sched.durations_s), INFO, enc)
    if enhanced:
        return [build_enhanced_pet(*args, dynamic=True)]
    return build_pet_series(*args, dynamic=True)


@pytest.fixture(scope="module")
def reference_dynamic(tmp_path_factory: pytest.TempPathFactory) -> PetVolume:
    folder = tmp_path_factory.mktemp("dynamic")
    return volume_from_datasets(_round_trip(_dynamic(PetEncoding(), False), folder))


@pytest.mark.parametrize("shape", ["per_slice_jpeg2000_reversed", "native_jpegls",
                                   "native_start_reference"])
def test_dynamic_series_read_back_to_the_schedule(shape: str, reference_dynamic: PetVolume,
                                                  tmp_path: Path) -> None:
    sched = SCHEDULES["rennes20"]
    enc = {"per_slice_jpeg2000_reversed": PetEncoding(reversed_order=True,
                                                      transfer_syntax="jpeg2000"),
           "native_jpegls": PetEncoding(transfer_syntax="jpegls"),
           "native_start_reference": PetEncoding(frame_reference="start")}[shape]
    datasets = _round_trip(_dynamic(enc, shape.startswith("native")), tmp_path)
    got = volume_from_datasets(datasets)
    assert got.is_dynamic and not got.warnings
    np.testing.assert_allclose(got.starts_s, np.asarray(sched.starts_s) - sched.starts_s[0])
    np.testing.assert_allclose(got.durations_s, sched.durations_s)
    _assert_same_pet(got, reference_dynamic)
    if shape.startswith("native"):
        assert len(datasets) == 1 and datasets[0].SOPClassUID == pydicom.uid.EnhancedPETImageStorage
        contents = [g.FrameContentSequence[0] for g in datasets[0].PerFrameFunctionalGroupsSequence]
        n_slices = SHAPE_ZYX[0]
        assert [c.TemporalPositionIndex for c in contents[::n_slices]] == list(
            range(1, len(sched.durations_s) + 1))
        assert classify_series(datasets[0]).role == "dynamic"
        assert not _dciodvfy_errors(tmp_path / "PT00001.dcm")


ENHANCED_VARIANTS = {
    "bqml_start": PetEncoding(),
    "bqml_admin_assay_rle": PetEncoding("BQML", "ADMIN", assay_minutes_before_injection=9.5,
                                        transfer_syntax="rle"),
    "gml_jpeg2000": PetEncoding("GML", transfer_syntax="jpeg2000"),
    "signed_deflate": PetEncoding(signed_pixels=True, transfer_syntax="deflate"),
}


@pytest.mark.parametrize("name", list(ENHANCED_VARIANTS))
def test_native_enhanced_pet_equals_the_per_slice_series_and_its_suv(
        name: str, tmp_path: Path) -> None:
    enc = ENHANCED_VARIANTS[name]
    per_slice = _round_trip(build_pet_series([_volume(2)], *STATIC, INFO, enc, False),
                            tmp_path / "slices")
    (native,) = _round_trip([build_enhanced_pet([_volume(2)], *STATIC, INFO, enc, False)],
                            tmp_path / "native")
    assert native.SOPClassUID == pydicom.uid.EnhancedPETImageStorage
    assert native.file_meta.TransferSyntaxUID == TRANSFER_SYNTAXES[enc.transfer_syntax]
    ref, got = volume_from_datasets(per_slice), volume_from_datasets([native])
    _assert_same_pet(got, ref)
    suv_ref = suv_scale(per_slice[0], ref.first_frame_start)
    suv_got = suv_scale(native, got.first_frame_start)
    assert suv_got.factor == pytest.approx(suv_ref.factor, rel=1e-9)
    expected = sitk.GetArrayFromImage(_volume(2)) * INFO.weight_kg * 1000 / (
        INFO.injected_mbq * 1e6)  # the simulated SUV
    np.testing.assert_allclose(got.frames[0].volume_zyx * suv_got.factor, expected, rtol=2e-3,
                               atol=2e-4 * expected.max())
    decision = classify_series(native)
    assert decision.role == "static", decision.reason
    if name == "bqml_start":
        assert not _dciodvfy_errors(tmp_path / "native" / "PT00001.dcm")
        volume = hd.imread(str(tmp_path / "native" / "PT00001.dcm")).get_volume()
        volume = volume.to_patient_orientation("LPH")
        assert volume.position == pytest.approx(ORIGIN, abs=1e-4)
        assert volume.spacing == pytest.approx(SPACING_XYZ, abs=1e-4)
        np.testing.assert_allclose(volume.array, np.transpose(ref.frames[0].volume_zyx,
                                                              (2, 1, 0)), rtol=1e-5)
        back = sitk.ReadImage(str(tmp_path / "native" / "PT00001.dcm"))
        np.testing.assert_allclose(back.GetOrigin(), ORIGIN, atol=1e-4)
        np.testing.assert_allclose(back.GetSpacing(), SPACING_XYZ, atol=1e-4)
        # GDCM applies the first frame's Rescale Slope to every frame: geometry only
        first = native.PerFrameFunctionalGroupsSequence[0].PixelValueTransformationSequence[0]
        np.testing.assert_array_equal(sitk.GetArrayFromImage(back),
                                      native.pixel_array * float(first.RescaleSlope))


def test_legacy_converted_enhanced_pet_compressed_reads_back(reference_static: PetVolume,
                                                             tmp_path: Path) -> None:
    singles = build_pet_series([_volume(1)], *STATIC, INFO, PetEncoding(), False)
    enhanced = build_legacy_enhanced(singles, INFO)
    encode_pixels(enhanced, "jpegls")
    (back,) = _round_trip([enhanced], tmp_path)
    assert back.file_meta.TransferSyntaxUID == pydicom.uid.JPEGLSLossless
    _assert_same_pet(volume_from_datasets([back]), reference_static)
    assert not _dciodvfy_errors(tmp_path / "PT00001.dcm")


def test_writers_refuse_lossy_syntaxes_and_counts_in_enhanced_pet() -> None:
    with pytest.raises(ValueError, match="transfer_syntax"):
        PetEncoding(transfer_syntax="jpeg_baseline")
    with pytest.raises(ValueError, match="units"):
        build_enhanced_pet([_volume(1)], *STATIC, INFO, PetEncoding("CNTS"), False)



@pytest.mark.parametrize("tool,syntax", [("dcmdrle", "rle"), ("dcmdjpls", "jpegls")])
def test_dcmtk_decodes_our_compressed_pet_to_the_same_values(
        tool: str, syntax: str, tmp_path: Path) -> None:
    """Another toolkit (DCMTK, as many PACS) decodes what the simulator encodes."""
    enc = PetEncoding(transfer_syntax=syntax)
    paths = [*write_series([build_enhanced_pet([_volume(1)], *STATIC, INFO, enc, False)],
                           tmp_path / "native"),
             *write_series(build_pet_series([_volume(1)], *STATIC, INFO, enc, False)[:1],
                           tmp_path / "slice")]
    for k, path in enumerate(paths):
        out = tmp_path / f"decoded{k}.dcm"
        subprocess.run([require_tool(tool), str(path), str(out)], check=True,
                       capture_output=True)
        decoded = pydicom.dcmread(out)
        assert decoded.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        np.testing.assert_array_equal(decoded.pixel_array, pydicom.dcmread(path).pixel_array)


def test_jpeg_lossless_sv1_from_dcmtk_reads_back(reference_static: PetVolume,
                                                 tmp_path: Path) -> None:
    """JPEG Lossless SV1 (Process 14), which many scanners send: DCMTK encodes, the node's
    own decoder (pylibjpeg with libjpeg) decodes."""
    paths = write_series(build_pet_series([_volume(1)], *STATIC, INFO, PetEncoding(), False),
                         tmp_path / "in")
    converted = []
    for path in paths:
        out = tmp_path / path.name
        subprocess.run([require_tool("dcmcjpeg"), "+e1", str(path), str(out)], check=True,
                       capture_output=True)
        ds = pydicom.dcmread(out)
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEGLosslessSV1
        ds.pixel_array_options(decoding_plugin="pylibjpeg")
        converted.append(ds)
    _assert_same_pet(volume_from_datasets(converted), reference_static)


def test_the_node_decodes_jpegls_without_the_simulators_encoder(tmp_path: Path) -> None:
    """pyjpegls is in the ``sim`` extra only: the node's pylibjpeg (libjpeg) must decode."""
    enc = PetEncoding(transfer_syntax="jpegls")
    (path,) = write_series([build_enhanced_pet([_volume(3)], *STATIC, INFO, enc, False)],
                           tmp_path)
    ds, ref = pydicom.dcmread(path), pydicom.dcmread(path)
    ds.pixel_array_options(decoding_plugin="pylibjpeg")
    ref.pixel_array_options(decoding_plugin="pyjpegls")
    np.testing.assert_array_equal(ds.pixel_array, ref.pixel_array)
