"""Fisher-Kolmogorov growth: volume reached, confined to tissue, white-matter preference."""

from __future__ import annotations

import numpy as np
import pytest

from service.sim.fdopa.growth import GrowthParams, _step, grow
from service.sim.fdopa.head import LABELS, head_labels, tissue_maps

pytestmark = pytest.mark.no_storage  # never opens the node's rows: not rerun on PostgreSQL


def test_growth_reaches_the_target_inside_brain_tissue_along_white_matter() -> None:
    maps = tissue_maps()
    labels, _ = head_labels()
    seed = tuple(int(v) for v in np.argwhere(labels == LABELS["white_matter_right"])[2000])
    gm, wm = maps["grey_matter"] + maps["striatum"], maps["white_matter"]
    params = GrowthParams(0.15, 0.05, 25.0)
    u = grow(gm, wm, seed, params, target_ml=15.0, threshold=0.5)
    lesion = u > 0.5
    assert lesion.sum() * 8e-3 == pytest.approx(15.0, rel=0.15)
    assert not (u[(gm + wm) <= 0.1] > 0).any()  # no diffusion into CSF or outside the brain
    near = np.zeros_like(lesion)
    near[tuple(slice(c - 12, c + 13) for c in seed)] = True
    brain = near & ((gm + wm) > 0.1)
    assert wm[lesion].mean() > wm[brain].mean()  # spreads preferentially along white matter
    np.testing.assert_array_equal(u, grow(gm, wm, seed, params, 15.0, 0.5))


def test_diffusion_step_conserves_mass_without_reaction() -> None:
    rng = np.random.default_rng(0)
    u = rng.random((6, 7, 8)) * 0.5
    d_face = [np.full(tuple(n - (a == k) for k, n in enumerate(u.shape)), 0.1) for a in range(3)]
    out = _step(u, d_face, rho=0.0, dt=1.0)
    assert out.sum() == pytest.approx(u.sum(), rel=1e-9)
    assert out.std() < u.std()
