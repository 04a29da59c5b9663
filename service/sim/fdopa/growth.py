"""Fisher-Kolmogorov (reaction-diffusion) glioma growth on the atlas tissue maps.

``du/dt = div(D grad u) + rho u (1 - u)`` with ``D = Dw (WM + GM / ratio)``
where the tissue fraction exceeds 0.1 (no diffusion into CSF or outside the
brain), explicit Euler on the MNI 2 mm grid inside a box around the seed;
the GliODIL synthetic generator's model and parameter ranges (MIT licence;
research note §4.1): Dw 0.035-0.2 mm2/day, rho 0.035-0.2 /day, Dw/Dg 10-30;
the seed is a Gaussian blob. Growth stops when the volume above the lesion
threshold reaches the target. Pure numpy (no torch).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Half size of the simulation box around the seed, voxels (2 mm).
BOX_HALF = 24
DX_MM = 2.0
MAX_DAYS = 3000.0


@dataclass(frozen=True)
class GrowthParams:
    """Reaction-diffusion parameters (GliODIL ranges).

    Attributes
    ----------
    dw_mm2_per_day : float
        Diffusivity in white matter.
    rho_per_day : float
        Proliferation rate.
    wm_gm_ratio : float
        Dw / Dg.
    """

    dw_mm2_per_day: float
    rho_per_day: float
    wm_gm_ratio: float


def sample_growth(rng: np.random.Generator) -> GrowthParams:
    return GrowthParams(float(rng.uniform(0.035, 0.2)), float(rng.uniform(0.035, 0.2)),
                        float(rng.uniform(10.0, 30.0)))


def _box(centre_zyx: tuple[int, int, int], shape: tuple[int, ...]) -> tuple[slice, ...]:
    return tuple(slice(max(c - BOX_HALF, 0), min(c + BOX_HALF, n))
                 for c, n in zip(centre_zyx, shape, strict=True))


def _step(u: np.ndarray, d_face: list[np.ndarray], rho: float, dt: float) -> np.ndarray:
    """One explicit Euler step with zero-flux faces (flux form, D at face centres)."""
    flux_div = np.zeros_like(u)
    for axis, d in enumerate(d_face):
        grad = np.diff(u, axis=axis) * d  # flux between neighbours along ``axis``
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        flux_div[tuple(lo)] += grad
        flux_div[tuple(hi)] -= grad
    return np.clip(u + dt * (flux_div / DX_MM**2 + rho * u * (1.0 - u)), 0.0, 1.0)


def grow(
    gm_zyx: np.ndarray, wm_zyx: np.ndarray, seed_zyx: tuple[int, int, int],
    params: GrowthParams, target_ml: float, threshold: float,
) -> np.ndarray:
    """Tumour cell density (0..1) on the full atlas grid, grown until the volume above
    ``threshold`` reaches ``target_ml`` (or the box or ``MAX_DAYS`` is exhausted)."""
    box = _box(seed_zyx, gm_zyx.shape)
    gm, wm = gm_zyx[box], wm_zyx[box]
    tissue = (gm + wm) > 0.1
    diff = np.where(tissue, params.dw_mm2_per_day * (wm + gm / params.wm_gm_ratio), 0.0)
    d_face = [0.5 * (np.take(diff, range(0, n - 1), axis=a) + np.take(diff, range(1, n), axis=a))
              * (np.take(tissue, range(0, n - 1), axis=a) & np.take(tissue, range(1, n), axis=a))
              for a, n in enumerate(diff.shape)]
    dt = min(0.9 * DX_MM**2 / (6.0 * max(float(diff.max()), 1e-6)), 0.5 / params.rho_per_day)
    local = tuple(c - s.start for c, s in zip(seed_zyx, box, strict=True))
    grid = np.indices(gm.shape)
    r2 = sum((grid[a] - local[a]) ** 2 for a in range(3))
    u = np.where(tissue, 0.8 * np.exp(-r2 / 2.0), 0.0)
    voxel_ml = DX_MM**3 / 1000.0
    days = 0.0
    while (u > threshold).sum() * voxel_ml < target_ml and days < MAX_DAYS:
        u = _step(u, d_face, params.rho_per_day, dt)
        days += dt
    out = np.zeros(gm_zyx.shape, np.float32)
    out[box] = u
    return out
