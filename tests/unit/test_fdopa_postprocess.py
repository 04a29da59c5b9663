"""U-Net post-processing: mirror TTA and the peak-contrast component rule (lesions.py, segment.py)."""

from __future__ import annotations

import numpy as np
import pytest

from service.pipelines.fdopa_pet.lesions import component_contrast
from service.pipelines.fdopa_pet.segment import mirrored_probability

pytestmark = pytest.mark.no_storage  # never opens the node's rows: not rerun on PostgreSQL


def _blob_on_left(image: np.ndarray) -> np.ndarray:
    """A fake network: probability 1 where the input is hot in the box's +x half, else 0."""
    out = np.zeros(image.shape, np.float32)
    half = image.shape[2] // 2
    out[:, :, half:] = (image[:, :, half:] > 1.5).astype(np.float32)
    return out


def test_mirror_tta_halves_a_one_sided_answer_and_keeps_a_symmetric_one() -> None:
    image = np.ones((4, 6, 8), np.float32)
    image[1:3, 2:4, 5:7] = 2.0  # hot on the +x side
    prob = mirrored_probability(_blob_on_left, image)
    assert prob.dtype == np.float32 and prob.shape == image.shape
    assert np.allclose(prob[1:3, 2:4, 5:7], 0.5) and prob.sum() == pytest.approx(0.5 * 8)
    symmetric = mirrored_probability(lambda x: np.full(x.shape, 0.7, np.float32), image)
    assert np.allclose(symmetric, 0.7)
    # mirrored about the box's centre plane: a voxel and its mirror image agree
    image2 = image.copy()
    image2[1:3, 2:4, 1:3] = 2.0  # the mirror image of the hot block
    both = mirrored_probability(_blob_on_left, image2)
    assert np.allclose(both[1:3, 2:4, 1:3], 0.5) and np.allclose(both[1:3, 2:4, 5:7], 0.5)


def _phantom(surround: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    volume = np.ones((30, 30, 30))
    volume[8:22, 8:22, 8:22] = surround  # what lies around the lesion
    lesion = np.zeros(volume.shape, bool)
    lesion[13:17, 13:17, 13:17] = True
    volume[lesion] = 2.4
    return volume, lesion, np.ones(3)  # 1 mm voxels


def test_component_contrast_is_the_peak_over_the_shell_mean() -> None:
    volume, lesion, spacing = _phantom(1.2)
    none = np.zeros(volume.shape, bool)
    # a 1-3 mm shell lies inside the 1.2 surround (5 mm deep around the lesion)
    contrast = component_contrast(volume, lesion, none, spacing, inner_mm=1.0, outer_mm=3.0)
    assert contrast == pytest.approx(2.4 / 1.2)
    # a hot surround (a noise peak in hot cortex) stands out less
    hot, _, _ = _phantom(2.0)
    assert component_contrast(hot, lesion, none, spacing, inner_mm=1.0,
                              outer_mm=3.0) == pytest.approx(1.2)
    # excluded voxels (other candidates) and voxels outside ``within`` are not surroundings
    exclude = np.zeros(volume.shape, bool)
    exclude[:, :, :15] = True
    within = np.ones(volume.shape, bool)
    within[:, :15, :] = False
    c = component_contrast(hot, lesion, exclude, spacing, within, inner_mm=1.0, outer_mm=3.0)
    assert c == pytest.approx(1.2)
    assert component_contrast(volume, np.zeros(volume.shape, bool), none, spacing) == 0.0
    assert component_contrast(volume, lesion, np.ones(volume.shape, bool), spacing) == np.inf


def test_the_shipped_model_with_mirror_tta_averages_the_two_views() -> None:
    from service.pipelines.fdopa_pet.segment import (
        DEFAULT_MODEL,
        TumourSegmenter,
        preprocess,
        to_native,
    )

    rng = np.random.default_rng(3)
    volume = rng.normal(1.0, 0.05, (48, 64, 64)).astype(np.float32)
    volume[20:26, 30:36, 40:46] = 2.5  # a hot spot on one side
    affine = np.diag([3.0, 2.5, 2.5, 1.0])
    seg = TumourSegmenter(DEFAULT_MODEL)
    net = preprocess(volume, affine, seg.contract)
    plain = seg.predict_box(net.image_zyx)
    flipped = seg.predict_box(np.ascontiguousarray(net.image_zyx[:, :, ::-1]))[:, :, ::-1]
    want = to_native(0.5 * (plain + flipped), net, volume.shape, affine)
    got = seg.segment(volume, affine, mirror=True)
    assert np.allclose(got, want, atol=1e-6)
    assert not np.allclose(seg.segment(volume, affine, mirror=False), got, atol=1e-3)


def test_unet_lesions_need_their_minimum_size_and_baseline_lesions_do_not() -> None:
    from service.pipelines.fdopa_pet.lesions import (
        MIN_LESION_ML,
        UNET_MIN_LESION_ML,
        method_lesions,
    )

    volume = np.ones((20, 20, 40))
    volume[2:6, 2:6, 2:6] = 3.0      # 64 voxels of 8 uL = 0.512 mL
    volume[10:13, 10:13, 20:23] = 3.0  # 27 voxels = 0.216 mL
    spacing = np.full(3, 2.0)
    assert MIN_LESION_ML < 0.216 < UNET_MIN_LESION_ML < 0.512
    hot = volume > 2.0
    probability = np.where(hot, 0.9, 0.1).astype(np.float32)
    unet = method_lesions(probability, volume, 1.6, spacing)
    assert [int(les.mask_zyx.sum()) for les in unet] == [64]
    baseline = method_lesions(hot, volume, 1.6, spacing)
    assert [int(les.mask_zyx.sum()) for les in baseline] == [64, 27]
    # below the probability cut nothing is a U-Net candidate
    assert method_lesions(np.where(hot, 0.49, 0.0).astype(np.float32), volume, 1.6,
                          spacing) == ()


def test_baseline_components_the_unet_did_not_mark_are_added_whole() -> None:
    from models.fdopa_seg.postprocess_validation import with_baseline_components
    from service.errors import AnalysisError

    prob = np.zeros((20, 20, 20), np.float32)
    prob[2:6, 2:6, 2:6] = 0.9  # the U-Net's lesion
    prob[15, 15, 15] = 0.3  # below the cut: not a candidate
    base = np.zeros(prob.shape, bool)
    base[4:8, 4:8, 4:8] = True  # overlaps the U-Net's lesion: adds nothing
    base[2:6, 7, 2:6] = True  # two voxels away, but one component with the block above
    base[2:6, 2:6, 10:12] = True  # its own component, 4 voxels from the U-Net's
    base[7, 2:6, 2:6] = True  # 1 voxel gap to z = 5 ... joined to the block: touches
    base[12:16, 12:16, 12:16] = True  # separate: added at 1.0
    out = with_baseline_components(prob, base)
    assert out.dtype == np.float32
    assert np.array_equal(out[prob >= 0.5], prob[prob >= 0.5])  # U-Net outlines unchanged
    assert np.all(out[12:16, 12:16, 12:16] == 1.0)
    assert out[4:8, 4:8, 4:8][~(prob[4:8, 4:8, 4:8] >= 0.5)].max() < 0.5
    assert out[2:6, 7, 2:6].max() == 0.0 and out[7, 2:6, 2:6].max() == 0.0
    assert np.all(out[2:6, 2:6, 10:12] == 1.0)
    alone = np.zeros(prob.shape, bool)
    alone[2:6, 2:6, 6] = True  # the 26-neighbour layer of the U-Net's lesion: touches
    assert np.array_equal(with_baseline_components(prob, alone), prob)
    assert out[15, 15, 15] == 1.0  # inside the separate component
    assert np.array_equal(with_baseline_components(prob, np.zeros(prob.shape, bool)), prob)
    with pytest.raises(AnalysisError):
        with_baseline_components(prob, base[:-1])


def test_unet_candidates_grow_into_the_hot_region_within_the_limit() -> None:
    from models.fdopa_seg.postprocess_validation import grown_candidates

    spacing = np.array([2.0, 2.0, 2.0])
    volume = np.ones((20, 20, 30), np.float32)
    volume[8:12, 8:12, 4:26] = 3.0  # a hot bar along x, 22 voxels long
    volume[8:12, 8:12, 27:29] = 3.0  # hot, but not connected to the bar
    cands = np.zeros(volume.shape, bool)
    cands[8:12, 8:12, 10:14] = True  # the U-Net marked 4 voxels of the bar
    allowed = np.ones(volume.shape, bool)
    four = grown_candidates(cands, volume, 1.6, allowed, spacing, 4.0)
    assert np.array_equal(np.flatnonzero(four[9, 9]), np.arange(8, 16))  # 2 voxels each way
    assert np.array_equal(four & ~cands, four & ~cands & (volume >= 1.6))
    whole = grown_candidates(cands, volume, 1.6, allowed, spacing, float("inf"))
    assert np.array_equal(np.flatnonzero(whole[9, 9]), np.arange(4, 26))  # the whole bar only
    allowed[:, :, 20:] = False  # e.g. the striatum's margin: never entered
    assert np.flatnonzero(grown_candidates(cands, volume, 1.6, allowed, spacing,
                                           float("inf"))[9, 9]).max() == 19
    # candidates kept as they are (also cold ones); nothing to grow from: nothing added
    cold = np.zeros(volume.shape, bool)
    cold[1:3, 1:3, 1:3] = True
    assert np.array_equal(grown_candidates(cold, volume, 1.6, allowed, spacing, 6.0), cold)
    empty = np.zeros(volume.shape, bool)
    assert not grown_candidates(empty, volume, 1.6, allowed, spacing, float("inf")).any()
