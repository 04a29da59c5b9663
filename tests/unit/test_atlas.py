"""The shipped atlas: checksum, geometry in LPS, plausible region volumes."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from service.imaging.atlas import LABELS, load_atlas
from service.paths import default_models_dir

pytestmark = pytest.mark.no_storage  # never opens the node's rows: not rerun on PostgreSQL


def test_atlas_file_matches_its_checksum() -> None:
    path = default_models_dir() / "atlas" / "mni_2mm.npz"
    expected = (path.parent / "mni_2mm.npz.sha256").read_text().split()[0]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == expected


def _centroid_lps(name: str) -> np.ndarray:
    atlas = load_atlas()
    img = atlas.reference_image()
    idx_xyz = np.argwhere(atlas.mask(name)).mean(axis=0)[::-1]
    return np.array(img.TransformContinuousIndexToPhysicalPoint(tuple(idx_xyz)))


def test_regions_lie_on_the_expected_side_in_lps() -> None:
    # LPS: +x is the patient's left, +y posterior, +z superior.
    assert _centroid_lps("caudate_left")[0] > 5
    assert _centroid_lps("caudate_right")[0] < -5
    assert _centroid_lps("putamen_left")[0] > _centroid_lps("caudate_left")[0]
    assert _centroid_lps("putamen_right")[0] < _centroid_lps("caudate_right")[0]
    occipital = _centroid_lps("occipital")
    assert occipital[1] > 60  # posterior
    assert _centroid_lps("caudate_left")[1] < 0  # anterior of the origin


def test_region_volumes_are_anatomical() -> None:
    atlas = load_atlas()
    for name in ("caudate_left", "caudate_right", "putamen_left", "putamen_right"):
        volume_ml = atlas.mask(name).sum() * 8 / 1000
        assert 5 < volume_ml < 12, name
    assert set(np.unique(atlas.labels_zyx)) == {0, *LABELS.values()}


def test_putamen_parts_partition_the_putamen() -> None:
    atlas = load_atlas()
    for side in ("left", "right"):
        ant = atlas.putamen_part(side, "anterior")
        post = atlas.putamen_part(side, "posterior")
        assert not (ant & post).any()
        assert ((ant | post) == atlas.mask(f"putamen_{side}")).all()
        assert ant.sum() > 0.3 * (ant.sum() + post.sum())
