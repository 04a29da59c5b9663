"""The learnt putamen estimator (X) the node reads from the CNN's input crop.

The rules ``models/training/rules/dat32_learned_putamen_estimator.md`` (the box,
the mirror, the weights) and ``dat33_learned_estimator_override.md`` (the cut)
fix it; these tests hold the node's code and the shipped file to them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from service.imaging.atlas import load_atlas
from service.paths import default_models_dir
from service.pipelines.dat_spect.preprocess import contract_for_atlas
from service.pipelines.dat_spect.putamen_estimator import (
    ESTIMATOR_FILE,
    X_CLEAR_RATIO,
    PutamenEstimator,
    load_putamen_estimator,
    lower_ratio,
    putamen_box,
    side_features,
)

pytestmark = pytest.mark.no_storage

SHIPPED = default_models_dir() / ESTIMATOR_FILE


def test_the_box_holds_the_left_putamen_and_mirrors_onto_the_right() -> None:
    atlas = load_atlas()
    contract = contract_for_atlas(atlas)
    box = putamen_box(atlas, contract)
    start = np.array(contract.box_start_zyx)
    lo, hi = np.array(box.start) + start, np.array(box.stop) + start
    idx = np.argwhere(atlas.mask("putamen_left"))  # 4 voxels around it, 3 at the top (z cut)
    assert (idx.min(0) - lo >= 4).all() and (hi - 1 - idx.max(0) >= 3).all()
    # the mirrored box holds the right putamen (AAL is nearly symmetric: 1 voxel slack)
    right = np.argwhere(atlas.mask("putamen_right"))[:, 2] - start[2]
    r0, r1 = box.mirror_x - (box.stop[2] - 1), box.mirror_x - box.start[2]
    assert r0 + 3 <= right.min() and right.max() <= r1 - 3
    # MNI x = 0 is the mirror: atlas x index i -> 2 * 45 - i on the 2 mm grid
    assert box.mirror_x == 2 * 45 - 2 * int(start[2])
    assert box.n_features == 10 * 16 * 11


def test_a_symmetric_crop_gives_both_putamina_the_same_features() -> None:
    atlas = load_atlas()
    contract = contract_for_atlas(atlas)
    box = putamen_box(atlas, contract)
    shape = contract.box_shape_zyx
    rng = np.random.default_rng(3)
    crop = rng.normal(size=shape)
    for i in range(shape[2]):  # make crop[..., m - i] equal crop[..., i]
        j = box.mirror_x - i
        if 0 <= j < shape[2] and j > i:
            crop[:, :, j] = crop[:, :, i]
    left, right = side_features(crop, box)
    assert left.shape == right.shape == (10 * 16 * 11,)
    np.testing.assert_allclose(left, right)
    # a loss drawn on the right half of the crop shows on the right side only
    lowered = crop.copy()
    lowered[:, :, : box.mirror_x // 2] -= 1.0
    l2, r2 = side_features(lowered, box)
    np.testing.assert_allclose(l2, left)
    assert (r2 < right).all()


def test_the_shipped_weights_are_the_rules() -> None:
    """The weights the stage-1 rule recorded (b, sum |w|), behind their checksum."""
    atlas = load_atlas()
    x = load_putamen_estimator(SHIPPED, atlas, contract_for_atlas(atlas))
    assert x.sha256 == SHIPPED.with_name(SHIPPED.name + ".sha256").read_text().split()[0]
    assert x.b == pytest.approx(-0.11804, abs=5e-6)
    assert float(np.abs(x.w).sum()) == pytest.approx(3.13709, abs=5e-6)
    assert X_CLEAR_RATIO == 0.66  # rule dat33


def test_estimates_follow_the_binding_on_each_side() -> None:
    """On a crop with the right putamen's box lowered, X's right estimate drops and the
    left stays; a mirror-symmetric crop gives equal estimates (ratio 1)."""
    atlas = load_atlas()
    contract = contract_for_atlas(atlas)
    x = load_putamen_estimator(SHIPPED, atlas, contract)
    shape = contract.box_shape_zyx
    start = np.array(contract.box_start_zyx)
    crop = np.zeros(shape, np.float32)
    for name, value in (("putamen_left", 3.0), ("putamen_right", 3.0),
                        ("caudate_left", 3.2), ("caudate_right", 3.2)):
        idx = np.argwhere(atlas.mask(name)) - start
        crop[tuple(idx.T)] = value
    left, right = x.estimate(crop[None])
    assert left > 1.0 and right > 1.0 and lower_ratio(left, right) > 0.9
    idx = np.argwhere(atlas.mask("putamen_right")) - start
    lost = crop.copy()
    lost[tuple(idx.T)] = 1.2
    left2, right2 = x.estimate(lost)
    assert left2 == pytest.approx(left, rel=0.05) and right2 < 0.7 * right
    assert lower_ratio(left2, right2) < X_CLEAR_RATIO


def test_a_file_that_is_not_the_expected_one_is_refused(tmp_path: Path) -> None:
    atlas = load_atlas()
    contract = contract_for_atlas(atlas)
    copy = tmp_path / ESTIMATOR_FILE
    shutil.copy(SHIPPED, copy)
    with pytest.raises(ValueError, match="no checksum"):
        load_putamen_estimator(copy, atlas, contract)
    with pytest.raises(ValueError, match="checksum"):
        load_putamen_estimator(copy, atlas, contract, "0" * 64)
    with np.load(SHIPPED) as npz:
        w, b = npz["w"], npz["b"]
    other = tmp_path / "other_box.npz"
    np.savez(other, w=w, b=b, box_atlas_zyx=np.array(((27, 48, 45), (47, 80, 69))),
             pool=np.int64(2))
    from service.inference.manifest import sha256_file

    with pytest.raises(ValueError, match="box"):
        load_putamen_estimator(other, atlas, contract, sha256_file(other))
    with pytest.raises(ValueError, match="do not fit"):
        PutamenEstimator(w[:-1], float(b), putamen_box(atlas, contract))


def test_lower_ratio() -> None:
    assert lower_ratio(1.0, 2.0) == 0.5 == lower_ratio(2.0, 1.0)
    assert lower_ratio(-0.1, 2.0) < 0  # a putamen read below nothing: clearly the lower
    assert np.isnan(lower_ratio(-1.0, 0.0))


def test_the_node_reports_the_estimator_with_the_cnn_and_refuses_a_wrong_file(
        tmp_path: Path) -> None:
    """``check_models`` (start-up audit, ``/ready``) lists the estimator beside the CNN;
    a file that fails its checksum is not ok, and the pipeline does not build on it."""
    from service.pipelines.dat_spect.plugin import DatSpectSettings, build, check_models

    cnn, estimator = check_models(DatSpectSettings())
    assert (cnn.name, estimator.name) == ("dat_cnn", "dat_putamen_estimator")
    assert estimator.ok and estimator.sha256 == SHIPPED.with_name(
        SHIPPED.name + ".sha256").read_text().split()[0]
    assert check_models(DatSpectSettings(cnn_enabled=False))[0].name == "dat_cnn"
    assert len(check_models(DatSpectSettings(cnn_enabled=False))) == 1  # no CNN, no estimator
    wrong = DatSpectSettings(estimator_path=SHIPPED, estimator_sha256="0" * 64)
    (_, bad) = check_models(wrong)
    assert not bad.ok and "checksum" in bad.detail.lower()
    with pytest.raises(ValueError, match="putamen estimator"):
        build(wrong)
