"""The reference code's refinements of the paediatric FLAIR-guided VOI (issue 13 point 4).

Synthetic arrays with known answers: striatum removal (contralateral always,
ipsilateral unless the FLAIR lesion overlaps it, only on the PET-VOI branch),
the distance map, the static 0.30 cut, and the sinus removal (k-means on
distance and early-frame maps) taking out a strip of early, vascular voxels
at the lesion's edge while the core stays.
"""

from __future__ import annotations

import numpy as np
import pytest

from service.pipelines.fdopa_pet.mr_route import paper_voi
from service.pipelines.fdopa_pet.result import AtlasOnPet, ReferenceMeasures, ReferenceRegions
from service.pipelines.fdopa_pet.voi_refine import (
    DISTANCE_CUT,
    distance_map,
    remove_sinus,
    remove_striatum,
    sinus_map,
    two_means,
)

SHAPE = (20, 30, 40)
NAMES = {"caudate_left": 1, "caudate_right": 2, "putamen_left": 3, "putamen_right": 4,
         "pallidum_left": 5, "pallidum_right": 6, "white_matter_left": 7,
         "white_matter_right": 8}


def _atlas() -> AtlasOnPet:
    """Left striatum in x 25-29, right striatum in x 10-14 (LPS: +x is patient left)."""
    labels = np.zeros(SHAPE, np.int16)
    labels[8:12, 12:16, 25:30] = NAMES["putamen_left"]
    labels[8:12, 12:16, 10:15] = NAMES["putamen_right"]
    lateral = np.broadcast_to((np.arange(SHAPE[2]) - 20.0) * 2.0, SHAPE).astype(np.float32)
    return AtlasOnPet(labels, NAMES, lateral, 1.0)


def _ball(centre: tuple[int, int, int], radius: float) -> np.ndarray:
    z, y, x = np.indices(SHAPE)
    return (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= radius ** 2


def test_contralateral_striatum_is_removed_ipsilateral_kept_when_the_lesion_overlaps_it() -> None:
    atlas = _atlas()
    lesion = np.zeros(SHAPE, bool)
    lesion[7:13, 10:18, 8:32] = True  # crosses the midline over both striata
    out = remove_striatum(lesion, lesion, atlas, "left")
    left, right = atlas.mask("putamen_left"), atlas.mask("putamen_right")
    assert not (out.mask_zyx & left).any()  # contralateral (reference side) out
    assert (out.mask_zyx & right).sum() == right.sum()  # ipsilateral kept: lesion overlaps it
    assert out.mask_zyx.sum() == lesion.sum() - left.sum()
    assert "ipsilateral kept" in out.note and f"{int(left.sum())} voxel(s) out" in out.note


def test_ipsilateral_striatum_is_removed_when_the_lesion_does_not_overlap_it() -> None:
    atlas = _atlas()
    right = atlas.mask("putamen_right")
    lesion = np.zeros(SHAPE, bool)
    lesion[8:12, 5:10, 10:15] = True  # beside the right striatum, not on it
    voi = lesion | right  # a VOI that spilled onto it (e.g. a dilated PET VOI)
    out = remove_striatum(voi, lesion, atlas, "left")
    assert np.array_equal(out.mask_zyx, lesion)
    assert "ipsilateral removed" in out.note


def test_striatum_removal_never_empties_the_voi() -> None:
    atlas = _atlas()
    voi = atlas.mask("putamen_left")
    out = remove_striatum(voi, voi, atlas, "left")
    assert np.array_equal(out.mask_zyx, voi) and "skipped" in out.note


def test_distance_map_is_the_smoothed_largest_component() -> None:
    big, small = _ball((10, 15, 12), 5), _ball((10, 15, 32), 2)
    d = distance_map(big | small, np.zeros(SHAPE, bool))
    assert d.max() == pytest.approx(1.0) and d.dtype == np.float32
    assert d[10, 15, 12] > 0.95 and d[10, 15, 32] < 0.01  # the small component is not in it
    cut = remove_sinus(big | small, d, None)
    assert not (cut.mask_zyx & small).any()
    assert np.array_equal(cut.mask_zyx, big)  # a compact ball keeps its rim (map > 0.5 there)
    assert (d[cut.mask_zyx] > DISTANCE_CUT).all() and "static" in cut.note


def test_sinus_map_weights_the_first_two_frames_by_duration() -> None:
    frames = [np.full(SHAPE, v, np.float32) for v in (1.0, 2.0, 100.0)]
    brain = np.zeros(SHAPE, bool)
    brain[5:15] = True
    frames[1][6, 6, 6] = 12.0  # 1 x 10 + 12 x 20 = 250 against 1 x 10 + 2 x 20 = 50
    s = sinus_map(frames, [10.0, 20.0, 300.0], brain)
    assert s[6, 6, 6] == pytest.approx(1.0)
    assert s[7, 7, 7] == pytest.approx(50.0 / 250.0)
    assert s[0, 0, 0] == 0.0  # outside the brain


def test_sinus_removal_drops_the_early_vascular_strip_and_keeps_the_core() -> None:
    lesion = _ball((10, 15, 20), 6)
    strip = np.zeros(SHAPE, bool)
    strip[4:17, 15:17, 26:28] = True  # along the lesion's edge, like the sagittal sinus
    voi = lesion | strip
    early = np.where(strip, 10.0, 1.0).astype(np.float32)
    brain = np.ones(SHAPE, bool)
    out = remove_sinus(voi, distance_map(voi, lesion), sinus_map([early, early], [5, 5], brain))
    assert not (out.mask_zyx & strip & ~lesion).any()
    assert out.mask_zyx[10, 15, 20] and out.mask_zyx.sum() >= 0.3 * lesion.sum()
    assert "sinus removal" in out.note


def test_two_means_is_deterministic_and_separates_two_clouds() -> None:
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.normal(0.1, 0.02, (50, 2)), rng.normal(0.9, 0.02, (30, 2))])
    labels = two_means(x)
    assert np.array_equal(labels, two_means(x))
    assert len(set(labels[:50])) == 1 and len(set(labels[50:])) == 1
    assert labels[0] != labels[-1] and labels[-1] == 0  # centre 0 starts at the highest row


def _reference(atlas: AtlasOnPet) -> tuple[ReferenceMeasures, ReferenceRegions]:
    wm = np.zeros(SHAPE, bool)
    wm[2:5, 2:5, 30:35] = True
    regions = ReferenceRegions("left", "test", atlas.mask("putamen_left"), wm, wm)
    measures = ReferenceMeasures(1.0, 2.0, 1.0, None, None, None, 1.0, 1.0, 1.0)
    return measures, regions


def test_paper_voi_refines_only_the_pet_voi_branch() -> None:
    atlas = _atlas()
    ref, regions = _reference(atlas)
    lesion = _ball((10, 14, 20), 5)
    hot = np.where(lesion, 3.0, 0.5).astype(np.float32)  # max 3 > WM max 1 and striatum max 2
    voi, notes = paper_voi(lesion, hot, ref, regions, atlas)
    assert voi.pet_voi and len(notes) == 2 and notes[0].startswith("striatum removal")
    left = atlas.mask("putamen_left")
    assert (lesion & left).any()  # the lesion reaches the contralateral striatum ...
    assert np.array_equal(voi.mask_zyx, lesion & ~left)  # ... which the refinement takes out
    plain, plain_notes = paper_voi(lesion, hot, ref, regions, atlas, refine=False)
    assert np.array_equal(plain.mask_zyx, lesion) and plain_notes == ("no refinement",)
    cold = np.where(lesion, 1.5, 0.5).astype(np.float32)  # T/S = 0.75 < 1: fallback
    low, low_notes = paper_voi(lesion, cold, ref, regions, atlas)
    assert not low.pet_voi and np.array_equal(low.mask_zyx, lesion)
    assert "low-uptake fallback" in low_notes[0]
