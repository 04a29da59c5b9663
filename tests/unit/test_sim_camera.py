"""Projector, FBP, Chang and OSEM of the simulator against simple analytic cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from service.sim.camera import Collimator, Projector, view_angles_rad
from service.sim.recon import chang_factors, fbp, osem

pytestmark = pytest.mark.no_storage  # never opens the node's rows: not rerun on PostgreSQL

SHAPE = (8, 32, 32)
VOXEL_MM = 4.0
LEHR = Collimator("LEHR", 1.5, 0.04, 3.8)


def _disc(radius_px: float, shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    nz, ny, nx = shape
    y, x = np.mgrid[:ny, :nx] - (ny - 1) / 2.0
    disc = (x**2 + y**2 <= radius_px**2).astype(np.float32)
    return np.repeat(disc[None], nz, axis=0)


def test_back_is_the_adjoint_of_forward(rng: np.random.Generator) -> None:
    mu = 0.015 * _disc(12)
    proj = Projector(SHAPE, VOXEL_MM, 24, 120.0, LEHR, mu)
    views = torch.arange(0, 24, 3)
    x = torch.from_numpy(rng.random(SHAPE).astype(np.float32))
    y = torch.from_numpy(rng.random((len(views), SHAPE[0], SHAPE[2])).astype(np.float32))
    lhs = float((proj.forward(x, views) * y).sum())
    rhs = float((x * proj.back(y, views)).sum())
    assert abs(lhs - rhs) / abs(lhs) < 1e-4


def test_point_source_lands_at_its_column_and_blurs_with_depth() -> None:
    assert view_angles_rad(4)[1] == pytest.approx(np.pi / 2)
    proj = Projector(SHAPE, VOXEL_MM, 4, 120.0, LEHR, None, band_mm=4.0)
    near, far = np.zeros(SHAPE, np.float32), np.zeros(SHAPE, np.float32)
    near[4, 3, 20] = 1.0  # row 3: close to the view-0 detector (row 0 side)
    far[4, 28, 20] = 1.0
    p_near = proj.forward(torch.from_numpy(near), torch.tensor([0]))[0].numpy()
    p_far = proj.forward(torch.from_numpy(far), torch.tensor([0]))[0].numpy()
    assert np.unravel_index(p_near.argmax(), p_near.shape) == (4, 20)
    assert np.unravel_index(p_far.argmax(), p_far.shape) == (4, 20)
    assert p_near.sum() == pytest.approx(p_far.sum(), rel=1e-3)  # no attenuation
    assert p_near.max() > 1.5 * p_far.max()  # far from the collimator: wider response


def test_attenuation_weights_by_depth() -> None:
    mu = 0.015 * _disc(15)
    proj = Projector(SHAPE, VOXEL_MM, 4, 120.0, None, mu)
    shallow, deep = np.zeros(SHAPE, np.float32), np.zeros(SHAPE, np.float32)
    shallow[4, 5, 16] = 1.0
    deep[4, 26, 16] = 1.0
    s = float(proj.forward(torch.from_numpy(shallow), torch.tensor([0])).sum())
    d = float(proj.forward(torch.from_numpy(deep), torch.tensor([0])).sum())
    # path difference 21 voxels of 4 mm in water: exp(-0.015 * 84) = 0.28
    assert d / s == pytest.approx(np.exp(-0.015 * 21 * VOXEL_MM), rel=0.05)


@pytest.mark.slow
def test_fbp_recovers_a_uniform_disc_and_chang_flattens_it() -> None:
    disc = _disc(10)
    ideal = Projector(SHAPE, VOXEL_MM, 60, 120.0, None, None)
    p = ideal.forward_all(torch.from_numpy(disc)).numpy()
    vol = fbp(p, ideal.rotator, VOXEL_MM, cutoff_cycles_per_cm=1.2, order=10)
    inner = _disc(6) > 0
    assert vol[inner].mean() == pytest.approx(1.0, rel=0.05)
    assert vol[_disc(14) == 0].std() < 0.1

    head = _disc(14)  # 112 mm of water
    attenuated = Projector(SHAPE, VOXEL_MM, 60, 120.0, None, 0.015 * head)
    pa = attenuated.forward_all(torch.from_numpy(head)).numpy()
    raw = fbp(pa, attenuated.rotator, VOXEL_MM, 1.2, 10)
    corrected = raw * chang_factors(head > 0, 0.015, attenuated.rotator, VOXEL_MM)
    centre = _disc(2) > 0
    ring = (_disc(11) > 0) & ~(_disc(9) > 0)
    assert raw[centre].mean() / raw[ring].mean() < 0.8  # cupping without AC
    assert corrected[centre].mean() / corrected[ring].mean() == pytest.approx(1.0, abs=0.08)


@pytest.mark.slow
def test_osem_converges_on_noiseless_data() -> None:
    truth = _disc(10) + 3.0 * _disc(3)
    mu = 0.015 * _disc(12)
    proj = Projector(SHAPE, VOXEL_MM, 40, 120.0, LEHR, mu, cache_attenuation=True)
    p = proj.forward_all(torch.from_numpy(truth)).numpy()
    vol = osem(p * 100.0, proj, iterations=6, subsets=8) / 100.0
    ring = (_disc(8) > 0) & ~(_disc(5) > 0)
    assert vol[ring].mean() == pytest.approx(1.0, rel=0.1)
    assert vol[_disc(1) > 0].mean() > 2.5
