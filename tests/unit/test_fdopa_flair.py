"""Synthetic FLAIR: contrast, known MR-to-PET pose, MR DICOM read-back and dciodvfy."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from service.sim.fdopa.flair import FlairProtocol, synthesise_flair
from service.sim.fdopa.mr_writer import build_flair_series
from service.sim.fdopa.pet_writer import PetSeriesInfo, write_series
from service.sim.fdopa.profiles import get_pet_profile
from service.sim.fdopa.scanner import sim_grid
from service.sim.fdopa.subject import build_maps, sample_subject
from service.sim.fdopa.truth import reference_masks
from service.testing.peers import require_tool

pytestmark = pytest.mark.no_storage  # never opens the node's rows: not rerun on PostgreSQL

SMALL = FlairProtocol("small2d", "2D", 96, 2.4, 5.0, 34, 9000.0, 120.0, 2500.0, 3.0, 25.0)
INFO = PetSeriesInfo("flair-seed", 60.0, 200.0, 12, "F", "SIEMENS", "Biograph", "OSEM", 10,
                     "FLAIR")


@pytest.fixture(scope="module")
def case() -> tuple:
    rng = np.random.default_rng(4)
    spec = sample_subject(rng, "lgg", True)
    while spec.location != "hemisphere":
        spec = sample_subject(rng, "lgg", True)
    sm = build_maps(spec, sim_grid(get_pet_profile("siemens_biograph_like")))
    image = synthesise_flair(spec, sm.grid, sm.tumour, SMALL, np.random.default_rng(8))
    return spec, sm, image


def _centroid_lps(mask: np.ndarray, origin: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    return origin + spacing * np.argwhere(mask).mean(axis=0)[::-1]


def test_lesion_is_hyperintense_and_csf_dark(case: tuple) -> None:
    _, _, image = case
    vol, truth = image.volume_zyx, image.truth_zyx
    lesion = float(np.median(vol[truth == 1]))
    head = vol > 0.3 * np.median(vol[vol > np.percentile(vol, 60)])
    brain_level = float(np.median(vol[head & (truth == 0)]))
    assert lesion > 1.4 * brain_level
    assert float(np.median(vol[~head])) < 0.3 * brain_level  # air: Rician floor only


def test_the_recorded_pose_maps_the_flair_lesion_onto_the_pet_lesion(case: tuple) -> None:
    _, sm, image = case
    mr_c = _centroid_lps(image.truth_zyx == 1, image.origin_lps_mm, np.array(image.spacing_mm))
    pet_c = _centroid_lps(reference_masks(sm)["lesion"], sm.grid.origin_lps_mm,
                          np.full(3, sm.grid.voxel_mm))
    mapped = image.pose.matrix() @ mr_c + image.pose.translation_mm
    assert np.linalg.norm(mapped - pet_c) < 2.5  # mm, sampling differences only
    assert np.linalg.norm(mr_c - pet_c) > 3.0  # the two frames really differ


def test_flair_series_reads_back_and_passes_dciodvfy(case: tuple, tmp_path: Path) -> None:
    _, _, image = case
    paths = write_series(build_flair_series(image, SMALL, INFO), tmp_path, "MR")
    slices = sorted((pydicom.dcmread(p) for p in paths),
                    key=lambda d: float(d.ImagePositionPatient[2]))
    assert len(slices) == SMALL.n_slices
    first = slices[0]
    assert first.SOPClassUID == pydicom.uid.MRImageStorage
    assert "FLAIR" in first.SeriesDescription and "IR" in first.ScanningSequence
    assert float(first.InversionTime) == SMALL.ti_ms
    np.testing.assert_allclose([float(v) for v in first.ImagePositionPatient],
                               image.origin_lps_mm, atol=1e-3)
    stack = np.stack([d.pixel_array for d in slices]).astype(float)
    corr = np.corrcoef(stack.ravel(), image.volume_zyx.ravel())[0, 1]
    assert corr > 0.999
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path)))
    back = reader.Execute()
    np.testing.assert_allclose(back.GetOrigin(), image.origin_lps_mm, atol=1e-3)
    np.testing.assert_allclose(back.GetSpacing(), image.spacing_mm, atol=1e-4)
    assert np.corrcoef(sitk.GetArrayFromImage(back).ravel(), image.volume_zyx.ravel())[0, 1] > 0.999
    out = subprocess.run([require_tool("dciodvfy"), str(paths[0])], capture_output=True, text=True,
                         check=False)
    errors = [line for line in (out.stdout + out.stderr).splitlines() if "Error" in line]
    assert not errors, errors


def test_legacy_converted_enhanced_mr_reads_back_and_validates(case: tuple,
                                                               tmp_path: Path) -> None:
    import highdicom as hd

    from service.sim.fdopa.mr_writer import build_legacy_enhanced_mr

    _, _, image = case
    singles = build_flair_series(image, SMALL, INFO)
    path = write_series([build_legacy_enhanced_mr(singles, INFO)], tmp_path, "MR")[0]
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert ds.SOPClassUID == pydicom.uid.LegacyConvertedEnhancedMRImageStorage
    vol = hd.imread(str(path)).get_volume().to_patient_orientation("LPH")
    assert vol.position == pytest.approx(tuple(image.origin_lps_mm), abs=1e-3)
    assert vol.spacing == pytest.approx(image.spacing_mm, abs=1e-4)
    corr = np.corrcoef(vol.array.ravel(), np.transpose(image.volume_zyx, (2, 1, 0)).ravel())
    assert corr[0, 1] > 0.999
    out = subprocess.run([require_tool("dciodvfy"), str(path)], capture_output=True, text=True, check=False)
    errors = [line for line in (out.stdout + out.stderr).splitlines() if "Error" in line]
    assert not errors, errors
