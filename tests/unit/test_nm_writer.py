"""NM writer: valid IODs (dciodvfy), realistic headers, determinism, lossless encodings."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import pixel_array
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from service.dicom import codes
from service.sim import codes as sim_codes
from service.sim.nm_writer import EncodingVariant, build_nm_datasets
from service.testing.nmdata import CAMERA, SUBJECT, marker_image, write_marker_study
from service.testing.peers import require_tool

pytestmark = pytest.mark.no_storage  # never opens the node's rows: not rerun on PostgreSQL

SMALL = {"shape_xyz": (32, 32, 16)}
TRANSFER_SYNTAX = {
    EncodingVariant.JPEG2000: JPEG2000Lossless,
    EncodingVariant.RLE: RLELossless,
    EncodingVariant.JPEGLS: JPEGLSLossless,
    EncodingVariant.DEFLATE: DeflatedExplicitVRLittleEndian,
}
#: dciodvfy warnings the standard allows: NM has no Rescale attributes in its
#: IOD, so a rescaled NM image is a Standard Extended SOP Class (PS3.4 B.1.3).
ALLOWED_WARNINGS = (
    "Rescale Intercept",
    "Rescale Slope",
    "Rescale Type",
    "this is a Standard Extended SOP Class",
)


def _dciodvfy(path: Path, tmp_path: Path) -> list[str]:
    """Error and warning lines of dciodvfy for one file."""
    tool = require_tool("dciodvfy")
    ds = pydicom.dcmread(path)
    if ds.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian:
        # dicom3tools cannot inflate: check the same dataset re-encoded, and
        # that DCMTK reads the deflated file itself.
        subprocess.run([require_tool("dcmdump"), str(path)], check=True, capture_output=True)
        path = tmp_path / "inflated.dcm"
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.save_as(path, enforce_file_format=True)
    out = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=60)
    return [ln for ln in (out.stdout + out.stderr).splitlines() if ln.startswith(("Error", "Warning"))]


@pytest.mark.parametrize("variant", list(EncodingVariant))
def test_dciodvfy_clean(tmp_path, variant):
    paths = write_marker_study(tmp_path / "s", variant, image=marker_image(**SMALL))
    for path in (paths[0], paths[-1]):
        lines = _dciodvfy(path, tmp_path)
        assert not [ln for ln in lines if ln.startswith("Error")], lines
        unexpected = [ln for ln in lines if not any(a in ln for a in ALLOWED_WARNINGS)]
        assert not unexpected, unexpected


@pytest.mark.parametrize("variant", list(EncodingVariant))
def test_transfer_syntax_and_lossless_pixels(variant):
    image = marker_image(**SMALL)
    reference = build_nm_datasets(image, CAMERA, SUBJECT, EncodingVariant.MULTIFRAME, "s")[0]
    datasets = build_nm_datasets(image, CAMERA, SUBJECT, variant, "s")
    ts = TRANSFER_SYNTAX.get(variant, ExplicitVRLittleEndian)
    assert {ds.file_meta.TransferSyntaxUID for ds in datasets} == {ts}
    assert all(ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID for ds in datasets)
    assert datasets[0].SOPInstanceUID == build_nm_datasets(
        image, CAMERA, SUBJECT, variant, "s")[0].SOPInstanceUID
    if variant in TRANSFER_SYNTAX:
        np.testing.assert_array_equal(datasets[0].pixel_array, reference.pixel_array)
    if variant in (EncodingVariant.JPEG2000, EncodingVariant.JPEGLS, EncodingVariant.RLE):
        # the node decodes with pylibjpeg (a runtime dependency); pyjpegls only encodes
        decoded = pixel_array(datasets[0], decoding_plugin="pylibjpeg")
        np.testing.assert_array_equal(decoded, reference.pixel_array)


def test_multiframe_header_is_realistic():
    (ds,) = build_nm_datasets(marker_image(**SMALL), CAMERA, SUBJECT, "multiframe", "seed-1")
    assert ds.SOPClassUID == codes.NM_IMAGE_STORAGE and ds.Modality == "NM"
    assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "RECON TOMO", "EMISSION"]
    assert ds.NumberOfFrames == 16 and ds.NumberOfSlices == 16
    assert list(ds.SliceVector) == list(range(1, 17))
    assert ds.FrameIncrementPointer == pydicom.tag.Tag("SliceVector")
    assert float(ds.SpacingBetweenSlices) == 4.0 and float(ds.SliceThickness) == 4.0
    pharm = ds.RadiopharmaceuticalInformationSequence[0]
    agent = pharm.RadiopharmaceuticalCodeSequence[0]
    nuclide = pharm.RadionuclideCodeSequence[0]
    assert (agent.CodeValue, agent.CodingSchemeDesignator) == ("429296007", "SCT")
    assert (nuclide.CodeValue, nuclide.CodingSchemeDesignator) == ("21572004", "SCT")
    assert float(pharm.RadionuclideTotalDose) == pytest.approx(185.0)
    window = ds.EnergyWindowInformationSequence[0].EnergyWindowRangeSequence[0]
    assert (float(window.EnergyWindowLowerLimit), float(window.EnergyWindowUpperLimit)) == (
        143.1,
        174.9,
    )
    assert {"ATTN", "SCAT"} <= set(ds.CorrectedImage)
    assert ds.Manufacturer == "SIEMENS" and ds.CountsAccumulated == 2_500_000
    assert str(ds.PatientName).startswith("SIM^") and ds.PatientAge == "064Y"
    assert ds.DetectorInformationSequence[0].CollimatorType == "PARA"


def test_other_tracer_and_no_corrections():
    camera = CAMERA.__class__(**{**CAMERA.__dict__, "attenuation_corrected": False,
                                 "scatter_corrected": False, "collimator": "FAN BEAM"})
    (ds,) = build_nm_datasets(marker_image(**SMALL), camera, SUBJECT, "multiframe", "s",
                              tracer="other")
    pharm = ds.RadiopharmaceuticalInformationSequence[0]
    assert pharm.RadiopharmaceuticalCodeSequence[0].CodeValue == sim_codes.TC99M_EXAMETAZIME.value
    assert pharm.RadionuclideCodeSequence[0].CodeValue == sim_codes.TECHNETIUM_99M.value
    assert not {"ATTN", "SCAT"} & set(ds.CorrectedImage)
    assert ds.DetectorInformationSequence[0].CollimatorType == "FANB"
    with pytest.raises(ValueError, match="tracer"):
        build_nm_datasets(marker_image(**SMALL), CAMERA, SUBJECT, "multiframe", "s", tracer="x")


def test_uids_deterministic_by_seed(tmp_path):
    image = marker_image(**SMALL)
    a = build_nm_datasets(image, CAMERA, SUBJECT, "per_slice", "seed-a")
    b = build_nm_datasets(image, CAMERA, SUBJECT, "per_slice", "seed-a")
    c = build_nm_datasets(image, CAMERA, SUBJECT, "per_slice", "seed-c")
    uids = [(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID) for ds in a]
    assert uids == [(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID) for ds in b]
    assert len({u[2] for u in uids}) == len(uids) == 16
    assert not {u[2] for u in uids} & {ds.SOPInstanceUID for ds in c}
    assert a[0].StudyInstanceUID != c[0].StudyInstanceUID
    p1 = write_marker_study(tmp_path / "1", "jpegls", image=image, uid_seed="x")
    p2 = write_marker_study(tmp_path / "2", "jpegls", image=image, uid_seed="x")
    assert p1[0].read_bytes() == p2[0].read_bytes()


def test_sheared_or_empty_image_refused():
    image = marker_image(**SMALL)
    image.SetDirection((1, 0, 0, 0, 1, 0, 0, 0.6, 0.8))
    with pytest.raises(ValueError, match="sheared"):
        build_nm_datasets(image, CAMERA, SUBJECT, "multiframe", "s")
    zero = marker_image(**SMALL) * 0.0
    with pytest.raises(ValueError, match="no positive"):
        build_nm_datasets(zero, CAMERA, SUBJECT, "multiframe", "s")


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: SUBJECT.__class__(64, "X", 185.0), "sex"),
        (lambda: SUBJECT.__class__(64, "M", 0.0), "injected_activity_mbq"),
        (lambda: CAMERA.__class__(**{**CAMERA.__dict__, "energy_window_kev": (170, 150)}),
         "energy_window_kev"),
    ],
)
def test_headers_validated_when_built(make, match):
    with pytest.raises(ValueError, match=match):
        make()
