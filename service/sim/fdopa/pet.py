"""PET mode of the simulator's rotate-and-sum projector, acquisition and OSEM.

Geometry: parallel lines of response in each transaxial plane, ``n_views``
angles over 180 degrees (views of :class:`service.sim.camera.Rotator` built for
``2 n_views`` angles over 360 degrees, first half). For view ``k`` the volume
is rotated and summed along the rows (line integrals, activity x voxels);
then

* attenuation: every line is weighted by its survival probability
  ``exp(-sum mu * voxel)`` along the *whole* line (511 keV photon pair), the
  same for every voxel on it;
* resolution: a stationary Gaussian blur of ``fwhm_mm`` in the projection's
  column and slice directions (detector, positron range, non-collinearity).

:class:`PetProjector` is a :class:`service.sim.camera.Projector`, so its exact
adjoint (autograd), sensitivity and :func:`service.sim.recon.osem` are shared
with the SPECT simulator. Arrays: volumes ``[z, y, x]`` (square in-plane),
projections ``[view, z, column]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from service.sim.camera import Projector, Rotator, _gaussian_kernels, gaussian_blur_projections
from service.sim.recon import gaussian_post_filter, osem


class PetProjector(Projector):
    """Attenuated, blurred parallel-line PET projection (see module docstring).

    Parameters
    ----------
    shape_zyx : tuple of int
        Volume shape (square in-plane).
    voxel_mm : float
    n_views : int
        Angles over 180 degrees.
    fwhm_mm : float
        Stationary resolution (0: none).
    mu_zyx : (z, y, x) array or None
        511 keV attenuation map, 1/mm; None: no attenuation.
    """

    def __init__(
        self,
        shape_zyx: tuple[int, int, int],
        voxel_mm: float,
        n_views: int,
        fwhm_mm: float,
        mu_zyx: np.ndarray | None,
    ) -> None:
        self.cache_attenuation = True
        self.shape_zyx = shape_zyx
        self.voxel_mm = voxel_mm
        self.n_views = n_views
        self.rotator = Rotator(shape_zyx, 2 * n_views)
        self._kernels = None if fwhm_mm <= 0 else _gaussian_kernels([fwhm_mm / 2.3548 / voxel_mm])
        self._mu = None if mu_zyx is None else torch.as_tensor(mu_zyx, dtype=torch.float32)
        self._att_cache: dict[tuple[int, ...], torch.Tensor] = {}
        self._sens_cache: dict[tuple[int, ...], torch.Tensor] = {}

    def _attenuation(self, views: torch.Tensor) -> torch.Tensor | None:
        """Survival factor of each line, ``[v, z, column]`` (cached)."""
        if self._mu is None:
            return None
        key = tuple(int(v) for v in views)
        if key not in self._att_cache:
            line = self.rotator.to_view(self._mu, views).sum(dim=2) * self.voxel_mm
            self._att_cache[key] = torch.exp(-line)
        return self._att_cache[key]

    def forward(self, vol: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        """Expected projections: ``[v, z, x]`` for ``[z, y, x]``, ``[v, c, z, x]`` for ``[c, z, y, x]``."""
        single = vol.dim() == 3
        vol4 = vol.unsqueeze(0) if single else vol
        nc, nz, ny, nx = vol4.shape
        rot = self.rotator.to_view(vol4.reshape(nc * nz, ny, nx), views)
        proj = rot.sum(dim=2).reshape(len(views), nc, nz, nx)
        att = self._attenuation(views)
        if att is not None:
            proj = proj * att.unsqueeze(1)
        if self._kernels is not None:
            half = self._kernels.shape[-1] // 2
            flat = proj.reshape(-1, 1, nz, nx)
            flat = F.conv2d(flat, self._kernels.unsqueeze(-1), padding=(half, 0))
            flat = F.conv2d(flat, self._kernels.unsqueeze(-2), padding=(0, half))
            proj = flat.reshape(len(views), nc, nz, nx)
        return proj[:, 0] if single else proj


@dataclass(frozen=True)
class Acquisition:
    """Physics of one PET frame.

    Attributes
    ----------
    counts_per_unit : float
        Expected true counts per unit of projected activity (sets the noise).
    scatter_fraction : float
        Scattered / true coincidences (broad kernel of the attenuated trues).
    randoms_fraction : float
        Randoms / (trues + scatter), uniform over the sinogram.
    scatter_fwhm_mm : float
    """

    counts_per_unit: float
    scatter_fraction: float = 0.35
    randoms_fraction: float = 0.2
    scatter_fwhm_mm: float = 80.0


@dataclass(frozen=True, eq=False)
class Sinogram:
    """Measured prompts and the additive (scatter + randoms) estimate, ``[view, z, column]``."""

    prompts: np.ndarray
    additive_estimate: np.ndarray
    counts_total: int


def acquire(
    true_proj: np.ndarray, acq: Acquisition, voxel_mm: float, rng: np.random.Generator
) -> Sinogram:
    """Scatter, randoms and Poisson noise on noise-free attenuated trues (``[v, z, x]``)."""
    trues = true_proj * acq.counts_per_unit
    blurred = gaussian_blur_projections(trues, acq.scatter_fwhm_mm, voxel_mm)
    scatter = blurred * (trues.sum() / max(float(blurred.sum()), 1e-12)) * acq.scatter_fraction
    randoms = np.full_like(trues, acq.randoms_fraction * float((trues + scatter).sum()) / trues.size)
    expected = trues + scatter + randoms
    prompts = rng.poisson(expected).astype(np.float32)
    # estimate as a vendor's model would give it: right shape, a few percent off in level
    estimate = (scatter + randoms) * float(rng.uniform(0.95, 1.05))
    return Sinogram(prompts, estimate.astype(np.float32), int(prompts.sum()))


def reconstruct(
    sino: Sinogram, projector: PetProjector, iterations: int, subsets: int,
    counts_per_unit: float, post_filter_fwhm_mm: float,
) -> np.ndarray:
    """OSEM with the additive term, calibrated back to activity units, post-filtered.

    Returns float32 ``[z, y, x]`` in the units of the simulated activity.
    """
    vol = osem(sino.prompts, projector, iterations, subsets, sino.additive_estimate)
    vol = vol / counts_per_unit
    return np.clip(gaussian_post_filter(vol, post_filter_fwhm_mm, projector.voxel_mm), 0.0, None)
