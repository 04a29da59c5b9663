"""Rotation-based SPECT projector with attenuation and depth-dependent collimator blur.

Geometry: a parallel-hole camera rotating about the scan grid's slice axis (LPS
z) through the grid centre, ``n_views`` equally spaced over 360 degrees. For
view ``k`` the volume is rotated in-plane by ``-2 pi k / n_views`` (bilinear,
``torch.nn.functional.grid_sample``), the detector then faces row 0 and a
projection pixel ``[z, column]`` integrates along the rows:

* attenuation: each voxel is weighted by ``exp(-sum mu * path)`` from the voxel
  to the detector (half the voxel's own path included);
* collimator response: rows are grouped into depth bands of about ``band_mm``;
  each band is blurred with a 2-D Gaussian (slice and column) whose FWHM is the
  system resolution ``sqrt(intrinsic^2 + (hole_fwhm + slope * distance)^2)`` at
  the band's distance from the collimator face.

The projector is linear; its exact adjoint (for OSEM) comes from autograd.
Arrays: volumes ``[z, y, x]`` on an isotropic square grid (rows == columns);
projections ``[view, z, column]``. Units: mm, 1/mm, counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Collimator:
    """Depth-dependent system resolution of a parallel-hole collimator.

    Attributes
    ----------
    name : str
        E.g. ``"LEHR"``.
    hole_fwhm_mm : float
        Geometric FWHM at the collimator face, mm.
    slope : float
        Increase of the geometric FWHM per mm of source distance (unitless).
    intrinsic_fwhm_mm : float
        Intrinsic detector resolution (FWHM), mm.
    """

    name: str
    hole_fwhm_mm: float
    slope: float
    intrinsic_fwhm_mm: float

    def fwhm_mm(self, distance_mm: float) -> float:
        """System FWHM (mm) at ``distance_mm`` from the collimator face."""
        geometric = self.hole_fwhm_mm + self.slope * max(distance_mm, 0.0)
        return math.hypot(self.intrinsic_fwhm_mm, geometric)


def view_angles_rad(n_views: int) -> np.ndarray:
    """Camera angles of a 360-degree acquisition, radians, shape ``(n_views,)``."""
    return 2.0 * np.pi * np.arange(n_views) / n_views


class Rotator:
    """In-plane rotation of volumes to and from each view's frame.

    Parameters
    ----------
    shape_zyx : tuple of int
        Volume shape; rows must equal columns.
    n_views : int
    """

    def __init__(self, shape_zyx: tuple[int, int, int], n_views: int) -> None:
        nz, ny, nx = shape_zyx
        if ny != nx:
            raise ValueError(f"rotation grid must be square, got {ny}x{nx}")
        self.shape_zyx = shape_zyx
        self.n_views = n_views
        ang = torch.tensor(view_angles_rad(n_views), dtype=torch.float32)
        self._to_view = self._grids(ang, ny)
        self._from_view = self._grids(-ang, ny)

    @staticmethod
    def _grids(angles: torch.Tensor, n: int) -> torch.Tensor:
        c, s = torch.cos(angles), torch.sin(angles)
        zero = torch.zeros_like(c)
        theta = torch.stack([torch.stack([c, -s, zero], 1), torch.stack([s, c, zero], 1)], 1)
        return F.affine_grid(theta, [len(angles), 1, n, n], align_corners=False)

    def to_view(self, vol_zyx: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        """Rotate ``vol_zyx`` into the frames of ``views``: ``[v, z, y, x]``."""
        batch = vol_zyx.unsqueeze(0).expand(len(views), -1, -1, -1)
        return F.grid_sample(
            batch,
            self._to_view[views],
            mode="bilinear",
            padding_mode="zeros",
            align_corners=False,
        )

    def from_view(self, vols_vzyx: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        """Rotate per-view volumes back to the scan frame: ``[v, z, y, x]``."""
        return F.grid_sample(
            vols_vzyx,
            self._from_view[views],
            mode="bilinear",
            padding_mode="zeros",
            align_corners=False,
        )


class Projector:
    """Attenuated, collimator-blurred parallel projection (see module docstring).

    Parameters
    ----------
    shape_zyx : tuple of int
        Volume shape (square in-plane).
    voxel_mm : float
    n_views : int
    radius_mm : float
        Distance from the centre of rotation to the collimator face, mm.
    collimator : Collimator or None
        None: no collimator blur (ideal line integrals).
    mu_zyx : (z, y, x) array or None
        Attenuation map, 1/mm; None: no attenuation.
    band_mm : float
        Depth-band thickness for the collimator blur, mm.
    cache_attenuation : bool
        Keep per-view attenuation factors (memory for speed; for iterative use).
    """

    def __init__(
        self,
        shape_zyx: tuple[int, int, int],
        voxel_mm: float,
        n_views: int,
        radius_mm: float,
        collimator: Collimator | None,
        mu_zyx: np.ndarray | None,
        band_mm: float = 20.0,
        cache_attenuation: bool = False,
    ) -> None:
        self.cache_attenuation = cache_attenuation
        self.shape_zyx = shape_zyx
        self.voxel_mm = voxel_mm
        self.n_views = n_views
        self.rotator = Rotator(shape_zyx, n_views)
        ny = shape_zyx[1]
        self._bands = _depth_bands(ny, voxel_mm, band_mm)
        self._kernels = None
        if collimator is not None:
            distances = [
                radius_mm - (ny / 2.0) * voxel_mm + 0.5 * (a + b) * voxel_mm for a, b in self._bands
            ]
            sigmas_px = [collimator.fwhm_mm(d) / 2.3548 / voxel_mm for d in distances]
            self._kernels = _gaussian_kernels(sigmas_px)
        self._mu = None if mu_zyx is None else torch.as_tensor(mu_zyx, dtype=torch.float32)
        self._att_cache: dict[tuple[int, ...], torch.Tensor] = {}
        self._sens_cache: dict[tuple[int, ...], torch.Tensor] = {}

    def _attenuation(self, views: torch.Tensor) -> torch.Tensor | None:
        if self._mu is None:
            return None
        key = tuple(int(v) for v in views)
        if key in self._att_cache:
            return self._att_cache[key]
        mu_rot = self.rotator.to_view(self._mu, views)
        att = torch.exp(-(torch.cumsum(mu_rot, dim=2) - 0.5 * mu_rot) * self.voxel_mm)
        if self.cache_attenuation:
            self._att_cache[key] = att
        return att

    def forward(self, vol: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        """Expected projections of ``vol``.

        ``vol`` is ``[z, y, x]`` or ``[c, z, y, x]`` (c independent volumes);
        returns ``[len(views), z, x]`` or ``[len(views), c, z, x]``.
        """
        single = vol.dim() == 3
        vol4 = vol.unsqueeze(0) if single else vol
        nc, nz, ny, nx = vol4.shape
        rot = self.rotator.to_view(vol4.reshape(nc * nz, ny, nx), views)
        rot = rot.reshape(len(views), nc, nz, ny, nx)
        att = self._attenuation(views)
        if att is not None:
            rot = rot * att.unsqueeze(1)
        if self._kernels is None:
            proj = rot.sum(dim=3)
        else:
            bands = torch.stack([rot[:, :, :, a:b].sum(dim=3) for a, b in self._bands], dim=2)
            blurred = _blur_bands(bands.reshape(-1, len(self._bands), nz, nx), self._kernels)
            proj = blurred.sum(dim=1).reshape(len(views), nc, nz, nx)
        return proj[:, 0] if single else proj

    def back(self, proj_vzx: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        """Exact adjoint of :meth:`forward`: ``[z, y, x]``."""
        x = torch.zeros(self.shape_zyx, dtype=torch.float32, requires_grad=True)
        with torch.enable_grad():
            y = self.forward(x, views)
            (grad,) = torch.autograd.grad(y, x, grad_outputs=proj_vzx)
        return grad

    def sensitivity(self, views: torch.Tensor) -> torch.Tensor:
        """Backprojection of ones for ``views`` (cached per view set): ``[z, y, x]``."""
        key = tuple(int(v) for v in views)
        if key not in self._sens_cache:
            nz, _, nx = self.shape_zyx
            self._sens_cache[key] = self.back(torch.ones((len(views), nz, nx)), views)
        return self._sens_cache[key]

    def forward_all(self, vol: torch.Tensor, max_floats: int = 4_000_000) -> torch.Tensor:
        """Projections of all views (see :meth:`forward`), in chunks of views.

        ``max_floats`` bounds the rotated intermediate (views x volume) per chunk.
        """
        chunk = max(1, min(self.n_views, max_floats // max(1, vol.numel())))
        out = []
        for start in range(0, self.n_views, chunk):
            views = torch.arange(start, min(start + chunk, self.n_views))
            out.append(self.forward(vol, views))
        return torch.cat(out)


def _depth_bands(n_rows: int, voxel_mm: float, band_mm: float) -> list[tuple[int, int]]:
    step = max(1, round(band_mm / voxel_mm))
    return [(a, min(a + step, n_rows)) for a in range(0, n_rows, step)]


def _gaussian_kernels(sigmas_px: list[float]) -> torch.Tensor:
    """Normalised 1-D Gaussians, one per band: ``[bands, 1, K]``."""
    half = max(1, math.ceil(3.0 * max(sigmas_px)))
    t = torch.arange(-half, half + 1, dtype=torch.float32)
    k = torch.stack([torch.exp(-0.5 * (t / max(s, 1e-3)) ** 2) for s in sigmas_px])
    return (k / k.sum(dim=1, keepdim=True)).unsqueeze(1)


def _blur_bands(bands_vbzx: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Separable per-band Gaussian blur along z and columns of ``[v, band, z, x]``."""
    nb = bands_vbzx.shape[1]
    half = kernels.shape[-1] // 2
    out = F.conv2d(bands_vbzx, kernels.unsqueeze(-1), padding=(half, 0), groups=nb)
    return F.conv2d(out, kernels.unsqueeze(-2), padding=(0, half), groups=nb)


def gaussian_blur_projections(proj_vzx: np.ndarray, fwhm_mm: float, voxel_mm: float) -> np.ndarray:
    """Blur each projection in z and column with an isotropic Gaussian (broad tails)."""
    from scipy import ndimage

    sigma = fwhm_mm / 2.3548 / voxel_mm
    return ndimage.gaussian_filter(proj_vzx, (0.0, sigma, sigma), mode="constant")
