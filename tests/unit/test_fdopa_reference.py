"""FDOPA template, registration and reference regions (issue 12 point 3)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from service.errors import AnalysisError
from service.imaging.atlas import load_atlas
from service.pipelines.fdopa_pet.atlas_labels import FDOPA_LABELS, fdopa_atlas_labels
from service.pipelines.fdopa_pet.normalise import lateral_map_mm, registration_quality
from service.pipelines.fdopa_pet.reference import (
    MARGIN_MM,
    SLAB_MM,
    WM_EROSION_MM,
    load_fdopa_template,
    reference_regions,
    register_to_template,
)
from service.pipelines.fdopa_pet.result import AtlasOnPet
from service.pipelines.fdopa_pet.template import (
    TEMPLATE_FILE,
    FdopaTemplate,
    image_from_affine,
)

pytestmark = pytest.mark.no_storage  # never opens the node's rows: not rerun on PostgreSQL

STRIATUM = ("caudate", "putamen", "pallidum")


@pytest.fixture(scope="module")
def template() -> FdopaTemplate:
    return load_fdopa_template()


def _centroid_lps(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    idx = np.argwhere(mask).mean(axis=0)
    return np.asarray(affine[:3, :3] @ idx + affine[:3, 3])


def test_atlas_labels_are_complete_and_on_the_right_side() -> None:
    atlas = load_atlas()
    labels = fdopa_atlas_labels(atlas)
    affine = load_fdopa_template().affine
    for name, value in FDOPA_LABELS.items():
        ml = (labels == value).sum() * 8e-3
        assert ml > 0.8, name
        x = _centroid_lps(labels == value, affine)[0]  # LPS +x = patient left
        if name.endswith("_left"):
            assert x > 5.0, name
            right = (labels == FDOPA_LABELS[name.replace("_left", "_right")]).sum() * 8e-3
            assert 0.85 < ml / right < 1.15, name
        elif name.endswith("_right"):
            assert x < -5.0, name
        else:
            assert abs(x) < 3.0, name
    plane = labels[:, :, 45]  # the mid-sagittal plane: no hemisphere's cortex or WM
    for name in ("cortex_left", "cortex_right", "white_matter_left", "white_matter_right"):
        assert not (plane == FDOPA_LABELS[name]).any(), name
    assert ((labels > 0) | ~atlas.brain_zyx).all()  # every brain voxel has a label


def test_shipped_template_loads_and_its_checksum_is_checked(
        template: FdopaTemplate, tmp_path: Path) -> None:
    assert template.image_zyx.shape == template.labels_zyx.shape == (91, 109, 91)
    assert template.image_zyx[template.brain_zyx].mean() == pytest.approx(1.0, rel=1e-3)
    striatum = template.image_zyx[template.mask("putamen_left", "putamen_right")].mean()
    assert 1.4 < striatum < 3.0  # the striatal pair stands out as in FDOPA scans
    assert "simulated" in template.provenance.lower()
    assert len(template.sha256) == 64
    src = template_path()
    copy = tmp_path / TEMPLATE_FILE
    shutil.copy(src, copy)
    shutil.copy(f"{src}.sha256", f"{copy}.sha256")
    assert load_fdopa_template(copy).sha256 == template.sha256
    copy.write_bytes(copy.read_bytes() + b"\0")
    with pytest.raises(ValueError, match="SHA-256"):
        load_fdopa_template(copy)


def template_path() -> Path:
    from service.paths import default_models_dir

    return default_models_dir() / "fdopa_template" / TEMPLATE_FILE


def _native(template: FdopaTemplate, transform: sitk.Transform, hot_lesion: bool
            ) -> tuple[np.ndarray, np.ndarray]:
    """The template as a PET on an oblique, anisotropic grid, moved by ``transform``^-1."""
    rot = sitk.Euler3DTransform()
    rot.SetRotation(0.0, 0.0, np.deg2rad(90.0))  # rows and columns swapped in the plane
    direction = np.asarray(rot.GetMatrix()).reshape(3, 3)
    affine = np.eye(4)
    spacing_xyz = np.array([2.6, 2.6, 3.2])
    affine[:3, :3] = (direction * spacing_xyz)[:, ::-1]
    shape_zyx = (60, 110, 100)
    centre_idx = (np.array(shape_zyx) - 1) / 2.0
    affine[:3, 3] = -affine[:3, :3] @ centre_idx + np.array([4.0, -6.0, 10.0])
    image = template.image_zyx.astype(np.float32) * 1000.0
    if hot_lesion:  # 25 mm sphere at 6 x brain in the right hemisphere (LPS x < 0)
        x, y, z = (np.asarray(v) for v in _lps_grid(template))
        image = np.where((x + 35) ** 2 + (y - 10) ** 2 + (z - 20) ** 2 < 12.5**2, 6000.0, image)
    native = image_from_affine(np.zeros(shape_zyx, np.float32), affine)
    moved = sitk.Resample(template.image(image), native, transform.GetInverse(),
                          sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    rng = np.random.default_rng(3)
    volume = sitk.GetArrayFromImage(moved) * rng.normal(1.0, 0.05, shape_zyx).astype(np.float32)
    return volume, affine


def _lps_grid(template: FdopaTemplate) -> list[np.ndarray]:
    k, j, i = np.meshgrid(*[np.arange(n) for n in template.image_zyx.shape], indexing="ij")
    idx = np.stack([k, j, i, np.ones_like(k)], axis=-1).astype(float)
    lps = idx @ template.affine.T
    return [lps[..., a] for a in range(3)]


@pytest.mark.parametrize("hot_lesion", [False, True])
def test_registration_recovers_a_known_pose_and_size(
        template: FdopaTemplate, hot_lesion: bool) -> None:
    """Template->PET transform known: rotation 8/-6/10 degrees, shift, scale 0.9-1.08."""
    truth = sitk.AffineTransform(3)
    rot = sitk.Euler3DTransform()
    rot.SetRotation(*np.deg2rad([8.0, -6.0, 10.0]).tolist())
    matrix = np.asarray(rot.GetMatrix()).reshape(3, 3) @ np.diag([0.9, 1.08, 0.95])
    truth.SetMatrix(matrix.ravel().tolist())
    truth.SetTranslation((12.0, -9.0, 7.0))
    volume, affine = _native(template, truth, hot_lesion)
    atlas = register_to_template(volume, affine, template)
    assert atlas.labels_zyx.shape == volume.shape and atlas.labels_zyx.dtype == np.int16
    assert atlas.quality > 0.9
    for side in ("left", "right"):
        expected = np.array(truth.TransformPoint(
            _centroid_lps(template.mask(*[f"{s}_{side}" for s in STRIATUM]),
                          template.affine).tolist()))
        found = _centroid_lps(atlas.mask(*[f"{s}_{side}" for s in STRIATUM]), affine)
        assert np.linalg.norm(found - expected) < 2.5, side
    # lateral map: the true template x of each voxel
    lateral_true = lateral_map_mm(volume.shape, affine, truth)
    brain = atlas.labels_zyx > 0
    assert np.abs(atlas.lateral_mm_zyx[brain] - lateral_true[brain]).mean() < 2.0


def test_quality_ignores_a_hot_tumour_but_not_misalignment(template: FdopaTemplate) -> None:
    x, y, z = _lps_grid(template)
    hot = (x + 30) ** 2 + (y - 10) ** 2 + (z - 20) ** 2 < 25.0**2  # 65 mL at 8 x brain
    image = np.where(hot, 8.0, template.image_zyx).astype(np.float32)
    moved = FdopaTemplate(image, template.labels_zyx, template.names, template.affine)
    truth = sitk.AffineTransform(3)
    truth.SetTranslation((3.0, -4.0, 5.0))
    volume, affine = _native(moved, truth, hot_lesion=False)
    scores = {}
    for name, angle_deg, shift in (("true", 0.0, (3.0, -4.0, 5.0)), ("shift", 0.0, (23.0, -4, 5)),
                                   ("upside down", 180.0, (3.0, -4.0, 5.0))):
        guess = sitk.Euler3DTransform()
        guess.SetRotation(np.deg2rad(angle_deg), 0.0, 0.0)
        guess.SetTranslation(shift)
        scores[name] = registration_quality(volume, affine, guess, template)
    assert scores["true"] > 0.9
    assert scores["shift"] < 0.4 and scores["upside down"] < 0.4


def test_registration_of_an_empty_volume_or_bad_geometry_raises(template: FdopaTemplate) -> None:
    sheared = np.eye(4)
    sheared[0, 1] = 0.5
    volume = np.ones((20, 30, 30), np.float32)
    for vol, affine in ((np.zeros((20, 30, 30), np.float32), np.eye(4)), (volume, sheared),
                        (volume, np.diag([1.0, 0.0, 1.0, 1.0]))):
        with pytest.raises(AnalysisError) as err:
            register_to_template(vol, affine, template)
        assert err.value.code == "registration_failed"


def _identity_atlas(template: FdopaTemplate) -> AtlasOnPet:
    lateral = _lps_grid(template)[0].astype(np.float32)
    return AtlasOnPet(template.labels_zyx, dict(template.names), lateral, 1.0)


def _ball(template: FdopaTemplate, centre_lps: tuple[float, float, float], r_mm: float
          ) -> np.ndarray:
    x, y, z = _lps_grid(template)
    return np.asarray((x - centre_lps[0]) ** 2 + (y - centre_lps[1]) ** 2
                      + (z - centre_lps[2]) ** 2 <= r_mm**2)


def test_side_rules(template: FdopaTemplate) -> None:
    atlas = _identity_atlas(template)
    a = template.affine
    right = reference_regions(atlas, _ball(template, (-40.0, 10.0, 20.0), 12.0), a)
    assert (right.side, right.midline, right.infratentorial) == ("left", False, False)
    assert "right of the midline" in right.rule
    left = reference_regions(atlas, _ball(template, (38.0, 20.0, 30.0), 10.0), a)
    assert left.side == "right"
    mid = reference_regions(atlas, _ball(template, (2.0, -20.0, 10.0), 10.0), a)
    assert (mid.side, mid.midline) == ("left", True)
    cross = reference_regions(atlas, _ball(template, (-6.0, 10.0, 30.0), 26.0), a)
    assert cross.midline and "crosses" in cross.rule
    infra = reference_regions(atlas, _ball(template, (-25.0, 60.0, -35.0), 10.0), a)
    assert (infra.side, infra.infratentorial) == ("left", True)
    none = reference_regions(atlas, None, a)
    empty = reference_regions(atlas, np.zeros(template.image_zyx.shape, bool), a)
    assert none.side == empty.side == "left" and "no lesion" in none.rule
    np.testing.assert_array_equal(none.background_zyx, empty.background_zyx)
    # the slab of infratentorial and no-lesion cases sits at the left striatum's level
    z = _lps_grid(template)[2]
    level = float(z[template.mask(*[f"{s}_left" for s in STRIATUM])].mean())
    for regions in (infra, none):
        assert abs(float(z[regions.background_zyx].mean()) - level) < 5.0


def test_the_larger_weight_decides_and_probabilities_count_from_half(
        template: FdopaTemplate) -> None:
    atlas = _identity_atlas(template)
    prob = np.zeros(template.image_zyx.shape, np.float32)
    prob[_ball(template, (40.0, 0.0, 25.0), 12.0)] = 0.9  # larger, left
    prob[_ball(template, (-40.0, 0.0, 25.0), 8.0)] = 0.95  # smaller, right
    prob[_ball(template, (-40.0, -40.0, 40.0), 20.0) & (prob == 0)] = 0.45  # below 0.5
    regions = reference_regions(atlas, prob, template.affine)
    assert regions.side == "right"


def test_masks_follow_the_definitions(template: FdopaTemplate) -> None:
    from scipy import ndimage

    atlas = _identity_atlas(template)
    lesion = _ball(template, (-40.0, 10.0, 20.0), 12.0)
    r = reference_regions(atlas, lesion, template.affine)
    x, _, z = _lps_grid(template)
    for mask in (r.background_zyx, r.white_matter_zyx, r.striatum_zyx):
        assert mask.any() and (x[mask] > 0).all()  # all on the left (LPS +x)
    distance = ndimage.distance_transform_edt(~lesion, sampling=[2.0] * 3)
    assert distance[r.background_zyx].min() >= MARGIN_MM
    assert np.ptp(z[r.background_zyx]) <= SLAB_MM
    assert abs(float(z[r.background_zyx].mean()) - 20.0) < 4.0  # at the lesion's level
    wm = template.mask("white_matter_left")
    inside = ndimage.distance_transform_edt(wm, sampling=[2.0] * 3)
    assert inside[r.white_matter_zyx].min() > WM_EROSION_MM
    np.testing.assert_array_equal(r.striatum_zyx, template.mask(*[f"{s}_left" for s in STRIATUM]))
    cortex_share = template.mask("cortex_left")[r.background_zyx].mean()
    assert 0.3 < cortex_share < 0.9  # grey and white matter (Unterrainer 2017)


def test_wrong_grid_raises(template: FdopaTemplate) -> None:
    with pytest.raises(ValueError, match="grid"):
        reference_regions(_identity_atlas(template), np.zeros((3, 3, 3), bool), template.affine)


def test_an_implausible_affine_falls_back_to_rigid_with_a_warning(
        template: FdopaTemplate, monkeypatch: pytest.MonkeyPatch) -> None:
    from service.pipelines.fdopa_pet import normalise

    truth = sitk.AffineTransform(3)
    truth.SetMatrix(np.diag([0.85, 0.85, 0.85]).ravel().tolist())
    volume, affine = _native(template, truth, hot_lesion=False)
    monkeypatch.setattr(normalise, "SCALE_RANGE", (0.95, 1.05))
    reg = normalise.fit_registration(volume, affine, template)
    assert reg.warnings and "rigid registration used" in reg.warnings[0]
    np.testing.assert_allclose(reg.scales, 1.0)
    assert np.allclose(np.asarray(reg.transform.GetMatrix()).reshape(3, 3) @ np.asarray(
        reg.transform.GetMatrix()).reshape(3, 3).T, np.eye(3), atol=1e-6)
