"""SPECT reconstruction for the simulator: FBP with a Butterworth filter, OSEM, Chang AC.

Arrays: projections ``[view, z, column]`` (counts), volumes ``[z, y, x]`` on
the square grid of :class:`service.sim.camera.Projector`; the camera geometry
and view convention are those of :mod:`service.sim.camera`.
"""

from __future__ import annotations

import numpy as np
import torch

from service.sim.camera import Projector, Rotator


def butterworth(
    freq_cycles_per_mm: np.ndarray, cutoff_cycles_per_cm: float, order: int
) -> np.ndarray:
    """Butterworth window ``1 / sqrt(1 + (f / fc)^(2 n))`` (GE/Xeleris convention)."""
    fc = cutoff_cycles_per_cm / 10.0
    return 1.0 / np.sqrt(1.0 + (np.abs(freq_cycles_per_mm) / fc) ** (2 * order))


def filter_projections(
    proj_vzx: np.ndarray, voxel_mm: float, cutoff_cycles_per_cm: float, order: int
) -> np.ndarray:
    """Ramp (columns) times a 2-D Butterworth (columns and slices), zero-padded FFT.

    Returns float32 ``[view, z, column]``, ramp-filtered in units of 1/pixel.
    """
    nv, nz, nx = proj_vzx.shape
    pad_x, pad_z = 2 * nx, 2 * nz
    fx = np.fft.rfftfreq(pad_x, d=voxel_mm)
    fz = np.fft.fftfreq(pad_z, d=voxel_mm)
    window = (
        butterworth(fz, cutoff_cycles_per_cm, order)[:, None]
        * butterworth(fx, cutoff_cycles_per_cm, order)[None, :]
    )
    ramp = np.abs(np.fft.rfftfreq(pad_x))[None, :]  # cycles per pixel
    spec = np.fft.rfft2(proj_vzx, s=(pad_z, pad_x), axes=(1, 2))
    out = np.fft.irfft2(spec * (window * ramp)[None], s=(pad_z, pad_x), axes=(1, 2))
    return out[:, :nz, :nx].astype(np.float32)


def backproject(filtered_vzx: np.ndarray, rotator: Rotator, chunk: int = 20) -> np.ndarray:
    """Unweighted backprojection (smear along rows, rotate back, sum): ``[z, y, x]``."""
    nz, ny, nx = rotator.shape_zyx
    out = torch.zeros((nz, ny, nx))
    proj = torch.as_tensor(filtered_vzx)
    for start in range(0, rotator.n_views, chunk):
        views = torch.arange(start, min(start + chunk, rotator.n_views))
        smear = proj[views].unsqueeze(2).expand(-1, -1, ny, -1)
        out += rotator.from_view(smear.contiguous(), views).sum(dim=0)
    return out.numpy()


def fbp(
    proj_vzx: np.ndarray,
    rotator: Rotator,
    voxel_mm: float,
    cutoff_cycles_per_cm: float,
    order: int,
) -> np.ndarray:
    """Filtered backprojection with a Butterworth-windowed ramp; float32 ``[z, y, x]``."""
    filtered = filter_projections(proj_vzx, voxel_mm, cutoff_cycles_per_cm, order)
    vol = backproject(filtered, rotator) * (np.pi / rotator.n_views)
    return vol.astype(np.float32)


def chang_factors(
    body_zyx: np.ndarray, mu_per_mm: float, rotator: Rotator, voxel_mm: float, chunk: int = 20
) -> np.ndarray:
    """First-order Chang correction factors ``1 / mean_views exp(-mu * L)``.

    ``body_zyx`` is the (bool) body outline; ``L`` the path length inside it from
    each voxel to the detector. Factors are 1 outside the body.
    """
    body = torch.as_tensor(body_zyx.astype(np.float32))
    nz, ny, nx = body.shape
    acc = torch.zeros((nz, ny, nx))
    for start in range(0, rotator.n_views, chunk):
        views = torch.arange(start, min(start + chunk, rotator.n_views))
        rot = rotator.to_view(body, views)
        path = (torch.cumsum(rot, dim=2) - 0.5 * rot) * voxel_mm
        acc += rotator.from_view(torch.exp(-mu_per_mm * path), views).sum(dim=0)
    mean = (acc / rotator.n_views).numpy()
    factors = np.where(body_zyx, 1.0 / np.clip(mean, 1e-3, None), 1.0)
    return factors.astype(np.float32)


def osem(
    proj_vzx: np.ndarray,
    projector: Projector,
    iterations: int,
    subsets: int,
    additive_vzx: np.ndarray | None = None,
) -> np.ndarray:
    """Ordered-subsets expectation maximisation; float32 ``[z, y, x]``.

    Parameters
    ----------
    proj_vzx : (views, z, x) array
        Measured counts.
    projector : Projector
        System model (attenuation and collimator response as the camera's
        software models them).
    iterations, subsets : int
    additive_vzx : (views, z, x) array or None
        Expected additive counts (scatter estimate) in the forward model.
    """
    y = torch.as_tensor(proj_vzx, dtype=torch.float32)
    add = None if additive_vzx is None else torch.as_tensor(additive_vzx, dtype=torch.float32)
    subset_views = [torch.arange(s, projector.n_views, subsets) for s in range(subsets)]
    sens = [torch.clamp(projector.sensitivity(v), min=1e-6) for v in subset_views]
    total = torch.stack(sens).sum(dim=0)
    support = total > 1e-3 * float(total.max())
    x = torch.where(support, torch.ones(projector.shape_zyx), 0.0)
    x *= y.sum() / max(float(projector.forward_all(x).sum()), 1e-6)
    for _ in range(iterations):
        for views, s in zip(subset_views, sens, strict=True):
            expected = projector.forward(x, views)
            if add is not None:
                expected = expected + add[views]
            ratio = y[views] / torch.clamp(expected, min=1e-6)
            x = x * projector.back(ratio, views) / s
    return x.numpy().astype(np.float32)


def gaussian_post_filter(vol_zyx: np.ndarray, fwhm_mm: float, voxel_mm: float) -> np.ndarray:
    """3-D Gaussian post-filter (FWHM in mm); no-op for ``fwhm_mm <= 0``."""
    if fwhm_mm <= 0:
        return vol_zyx
    from scipy import ndimage

    return ndimage.gaussian_filter(vol_zyx, fwhm_mm / 2.3548 / voxel_mm).astype(np.float32)
