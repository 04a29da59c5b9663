"""FLAIR -> PET rigid registration (issue 13 point 2) and the MR volume reader.

Two small simulated studies with a FLAIR whose pose relative to the PET is
known (``truth.json``: ``p_pet = R(angles) @ p_mr + t``): a 2D axial FLAIR
(per-slice) and a 3D FLAIR written as one Legacy Converted Enhanced MR
instance. Registration error is measured in mm at PET head voxels.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from service.errors import AnalysisError
from service.imaging.mr_volume import (
    LEGACY_CONVERTED_ENHANCED_MR_IMAGE_STORAGE,
    MrVolume,
    mr_volume_from_datasets,
)
from service.imaging.pet_volume import volume_from_datasets
from service.pipelines.fdopa_pet.flair_registration import (
    QUALITY_GATE,
    FlairRegistration,
    lesion_on_pet,
    register_flair_to_pet,
    registration_quality,
)
from service.pipelines.fdopa_pet.normalise import head_mask
from service.sim.fdopa.flair import MrPose
from service.testing.fdopa_study import small_study


def _read(folder: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]


@pytest.fixture(scope="module", params=[("ax2d_3t", False), ("iso3d_3t", True)],
                ids=["ax2d_per_slice", "iso3d_legacy_enhanced"])
def study(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
          ) -> dict[str, Any]:
    protocol, enhanced = request.param
    folder, truth = small_study(tmp_path_factory.mktemp("flair"), dynamic=False,
                                flair=protocol, flair_enhanced=enhanced)
    mr = mr_volume_from_datasets(_read(folder / "MR_FLAIR"))
    pet = volume_from_datasets(_read(folder / "PT_STATIC"))
    return {"folder": folder, "truth": truth, "mr": mr, "pet": pet.frames[0].volume_zyx,
            "pet_affine": pet.affine}


def _true_registration(truth: dict[str, Any]) -> FlairRegistration:
    pose = MrPose(np.array(truth["mr_to_pet_angles_deg"]),
                  np.array(truth["mr_to_pet_translation_mm"]))
    r = pose.matrix()
    return FlairRegistration(r.T, -r.T @ pose.translation_mm, 1.0, 0.0)


def _head_points(pet: np.ndarray, affine: np.ndarray) -> np.ndarray:
    idx = np.argwhere(head_mask(pet))[::40]
    return (np.c_[idx, np.ones(len(idx))] @ affine.T)[:, :3]


def test_registration_recovers_the_known_pose(study: dict[str, Any]) -> None:
    mr: MrVolume = study["mr"]
    reg = register_flair_to_pet(mr.array_zyx, mr.affine, study["pet"], study["pet_affine"])
    points = _head_points(study["pet"], study["pet_affine"])
    error = np.linalg.norm(reg.flair_point(points)
                           - _true_registration(study["truth"]).flair_point(points), axis=1)
    assert error.mean() < 2.0 and error.max() < 4.0, (error.mean(), error.max())
    assert QUALITY_GATE <= reg.quality <= 1.0
    assert np.allclose(reg.matrix @ reg.matrix.T, np.eye(3), atol=1e-6)  # rigid


def test_quality_falls_with_misregistration(study: dict[str, Any]) -> None:
    mr: MrVolume = study["mr"]
    true = _true_registration(study["truth"])
    scores = [registration_quality(mr.array_zyx, mr.affine, study["pet"], study["pet_affine"],
                                   FlairRegistration(true.matrix, true.offset_mm + shift, 0, 0))
              for shift in (np.zeros(3), np.array([0.0, 10.0, 0.0]), np.array([20.0, 0, 0]))]
    assert scores[0] >= QUALITY_GATE > scores[2]
    assert scores[0] > scores[1] > scores[2]


def test_an_image_without_a_head_is_refused(study: dict[str, Any]) -> None:
    mr: MrVolume = study["mr"]
    noise = np.random.default_rng(0).random(mr.array_zyx.shape).astype(np.float32)
    with pytest.raises(AnalysisError) as err:
        register_flair_to_pet(noise, mr.affine, study["pet"], study["pet_affine"])
    assert err.value.code == "flair_registration_failed"


def test_the_flair_lesion_lands_on_the_pet_lesion(study: dict[str, Any]) -> None:
    mr: MrVolume = study["mr"]
    flair_truth = sitk.GetArrayFromImage(sitk.ReadImage(
        str(study["folder"] / "truth_flair_seg.nii.gz"))) == 1
    assert flair_truth.shape == mr.array_zyx.shape
    pet_truth = sitk.GetArrayFromImage(sitk.ReadImage(
        str(study["folder"] / "truth_seg.nii.gz")))
    pet_lesion = np.isin(pet_truth, (1, 2))
    carried = lesion_on_pet(flair_truth, mr.affine, _true_registration(study["truth"]),
                            study["pet"].shape, study["pet_affine"])
    dice = 2 * (carried & pet_lesion).sum() / (carried.sum() + pet_lesion.sum())
    assert dice > 0.6, dice


def test_mr_volume_of_either_encoding(study: dict[str, Any]) -> None:
    datasets = _read(study["folder"] / "MR_FLAIR")
    if len(datasets) == 1:  # the 3D FLAIR: one Legacy Converted Enhanced MR instance
        assert datasets[0].SOPClassUID == LEGACY_CONVERTED_ENHANCED_MR_IMAGE_STORAGE
        assert study["mr"].array_zyx.shape[0] == int(datasets[0].NumberOfFrames)
        return
    random.Random(1).shuffle(datasets)
    again = mr_volume_from_datasets(datasets)
    assert np.array_equal(again.array_zyx, study["mr"].array_zyx)
    assert np.allclose(again.affine, study["mr"].affine)


def test_mr_volume_refusals(study: dict[str, Any]) -> None:
    datasets = _read(study["folder"] / "MR_FLAIR")
    with pytest.raises(AnalysisError) as err:
        mr_volume_from_datasets([])
    assert err.value.code == "no_instances"
    pet = _read(study["folder"] / "PT_STATIC")[:2]
    with pytest.raises(AnalysisError) as err:
        mr_volume_from_datasets(pet)
    assert err.value.code in {"not_mr", "mixed_series"}
    other = pydicom.Dataset()
    other.update(datasets[0])
    other.SeriesInstanceUID = "1.2.3.4"
    with pytest.raises(AnalysisError) as err:
        mr_volume_from_datasets([datasets[0], other])
    assert err.value.code == "mixed_series"
