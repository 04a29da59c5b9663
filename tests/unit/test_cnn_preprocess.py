"""The CNN input contract: crop box from the atlas, binding-ratio normalisation."""

from __future__ import annotations

import numpy as np
import pytest

from service.errors import AnalysisError
from service.imaging.atlas import LABELS, load_atlas
from service.pipelines.dat_spect.preprocess import (
    BOX_SHAPE_ZYX,
    STRIATAL_LABELS,
    PreprocessContract,
    cnn_input,
    contract_for_atlas,
)

pytestmark = pytest.mark.no_storage  # never opens the node's rows: not rerun on PostgreSQL


@pytest.fixture(scope="module")
def atlas():
    return load_atlas()


def test_box_holds_the_striatum_with_margin(atlas) -> None:
    contract = contract_for_atlas(atlas)
    assert contract.box_shape_zyx == BOX_SHAPE_ZYX
    assert contract.grid_shape_zyx == atlas.shape_zyx
    striatum = np.isin(atlas.labels_zyx, [LABELS[n] for n in STRIATAL_LABELS])
    inside = np.zeros_like(striatum)
    inside[contract.slices()] = True
    assert striatum.sum() > 3000
    assert not (striatum & ~inside).any()
    idx = np.nonzero(striatum)
    for axis in range(3):
        lo = contract.box_start_zyx[axis]
        hi = lo + contract.box_shape_zyx[axis] - 1
        # at least 4 voxels (8 mm) of margin on every side
        assert idx[axis].min() - lo >= 4 and hi - idx[axis].max() >= 4


def test_input_is_the_binding_ratio_image(atlas, rng) -> None:
    reference = 37.5
    volume = np.full(atlas.shape_zyx, reference * 0.3, np.float32)
    volume[atlas.mask("occipital")] = reference
    expected_sbr = {"caudate_left": 3.2, "caudate_right": 2.9, "putamen_left": 1.1,
                    "putamen_right": 0.4}
    for name, sbr in expected_sbr.items():
        volume[atlas.mask(name)] = reference * (1.0 + sbr)
    contract = contract_for_atlas(atlas)
    x = cnn_input(volume, atlas, contract)
    assert x.shape == contract.input_shape == (1, *BOX_SHAPE_ZYX) and x.dtype == np.float32
    labels = atlas.labels_zyx[contract.slices()]
    for name, sbr in expected_sbr.items():
        np.testing.assert_allclose(x[0][labels == LABELS[name]], sbr, rtol=1e-6)
    np.testing.assert_allclose(x[0][labels == 0], -0.7, rtol=1e-6)
    # invariant to the count scale (the camera's sensitivity)
    np.testing.assert_allclose(cnn_input(volume * 13.0, atlas), x, rtol=1e-5, atol=1e-6)
    # the crop matches a direct slice of a random volume (reference implementation)
    noisy = rng.gamma(4.0, 2.0, atlas.shape_zyx).astype(np.float32)
    ref = noisy[atlas.mask("occipital")].astype(np.float64).mean()
    z, y, xx = contract.box_start_zyx
    d, h, w = contract.box_shape_zyx
    np.testing.assert_allclose(cnn_input(noisy, atlas)[0],
                               noisy[z:z + d, y:y + h, xx:xx + w] / ref - 1.0, rtol=1e-5)


def test_bad_volumes_are_refused(atlas) -> None:
    volume = np.ones(atlas.shape_zyx, np.float32)
    volume[50, 60, 40] = np.nan
    with pytest.raises(AnalysisError) as err:
        cnn_input(volume, atlas)
    assert err.value.code == "bad_volume"
    with pytest.raises(AnalysisError) as err:
        cnn_input(np.zeros(atlas.shape_zyx, np.float32), atlas)
    assert err.value.code == "no_reference"
    with pytest.raises(ValueError):
        cnn_input(np.ones((90, 109, 91), np.float32), atlas)


def test_contract_round_trip_and_validation(atlas) -> None:
    contract = contract_for_atlas(atlas)
    assert PreprocessContract.from_dict(contract.to_dict()) == contract
    newer = {**contract.to_dict(), "version": 99}
    with pytest.raises(ValueError, match="not supported"):
        PreprocessContract.from_dict(newer)
    with pytest.raises(ValueError, match="malformed"):
        PreprocessContract.from_dict({"version": 1})
    with pytest.raises(ValueError, match="not inside the grid"):
        PreprocessContract((70, 43, 21), BOX_SHAPE_ZYX, atlas.shape_zyx)
    other_grid = PreprocessContract((0, 0, 0), (8, 8, 8), (64, 64, 64))
    with pytest.raises(ValueError, match="grids differ"):
        cnn_input(np.ones(atlas.shape_zyx, np.float32), atlas, other_grid)
