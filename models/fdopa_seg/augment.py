"""Patch sampling and augmentation for the FDOPA tumour U-Net (torch, seeded).

Every training patch is drawn from a whole normalised box
(:class:`models.fdopa_seg.data.Sample`) by one trilinear resampling that does
the crop and a small affine at once, then its intensities are changed:

* **centre**: with probability ``tumour_bias`` a random PET-active tumour
  voxel (when the study has one), otherwise a random head voxel (> 0.3 of
  the brain level), so the rare tumour voxels are seen often;
* **affine**: rotation up to ``rotate_deg`` about each axis, isotropic scale
  in ``scale_range``, left-right mirror with probability 0.5 (tumours occur
  on both sides; the striatum is symmetric);
* **resolution**: extra Gaussian blur, sigma uniform in ``[0, blur_sigma_max_vox]``
  voxels (2 mm), as other scanners and reconstructions are smoother;
* **contrast**: gamma ``x -> m (x / m) ** g`` (``m`` the patch's 99th
  percentile), ``g`` in ``gamma_range``, then a global factor in
  ``intensity_range`` (the brain-level normalisation is not exact);
* **bias field** (only when ``bias_field_max > 0``; run1-run5 trained without
  it): the image is multiplied by ``exp(a f)``, ``f`` a random quadratic
  polynomial of the patch coordinates scaled to ``max |f| = 1`` over the
  patch and ``a`` uniform in ``[0, bias_field_max]``: a smooth gain that
  varies across the head, as attenuation maps from MR (no bone), scatter and
  normalisation errors of another scanner make it; without it every
  training image has the simulator's own flat gain;
* **noise**: additive Gaussian noise of SD ``a * sqrt(max(x, 0))``, ``a``
  uniform in ``[0, noise_max]`` (Poisson-like, other count levels).

The label patch is resampled with the same grid (linear, >= 0.5), so image
and label stay aligned. ``gen`` is a seeded ``torch.Generator``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from models.training.augment import gaussian_blur


@dataclass(frozen=True)
class AugmentConfig:
    patch_zyx: tuple[int, int, int] = (64, 64, 64)
    tumour_bias: float = 0.6
    rotate_deg: float = 10.0
    scale_range: tuple[float, float] = (0.9, 1.1)
    blur_sigma_max_vox: float = 1.5
    gamma_range: tuple[float, float] = (0.8, 1.25)
    intensity_range: tuple[float, float] = (0.85, 1.15)
    noise_max: float = 0.12
    #: Largest log-amplitude of the smooth multiplicative bias field (0: none, no draw).
    bias_field_max: float = 0.0


def _rotation(angles_rad: Sequence[float]) -> torch.Tensor:
    a, b, c = angles_rad
    rx = torch.tensor([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = torch.tensor([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rz = torch.tensor([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return (rx @ ry @ rz).float()


def _centre(target: np.ndarray, image: np.ndarray, config: AugmentConfig,
            gen: torch.Generator) -> np.ndarray:
    """(3,) box index (z, y, x) the patch is centred on."""
    use_tumour = float(torch.rand(1, generator=gen)) < config.tumour_bias
    where = np.flatnonzero(target) if use_tumour else np.empty(0, np.int64)
    if where.size == 0:
        where = np.flatnonzero(image > 0.3)
    if where.size == 0:
        return (np.array(image.shape, float) - 1) / 2
    pick = int(torch.randint(where.size, (1,), generator=gen))
    return np.array(np.unravel_index(where[pick], image.shape), float)


def sample_grid(shape_zyx: Sequence[int], centre_zyx: np.ndarray, config: AugmentConfig,
                gen: torch.Generator) -> torch.Tensor:
    """``grid_sample`` grid ``(1, d, h, w, 3)`` of one augmented patch of a box of ``shape_zyx``."""
    u = torch.rand(5, generator=gen).tolist()
    angles = [math.radians(config.rotate_deg) * (2 * v - 1) for v in u[:3]]
    lo, hi = config.scale_range
    matrix = _rotation(angles) * (lo + (hi - lo) * u[3])
    if u[4] < 0.5:
        matrix = matrix @ torch.diag(torch.tensor([1.0, 1.0, -1.0]))  # mirror x (left-right)
    axes = [torch.arange(n, dtype=torch.float32) - (n - 1) / 2 for n in config.patch_zyx]
    offsets = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)  # (d, h, w, 3) zyx
    points = offsets @ matrix.T + torch.tensor(centre_zyx, dtype=torch.float32)
    size = torch.tensor(list(shape_zyx), dtype=torch.float32)
    normalised = 2 * points / (size - 1) - 1
    return normalised.flip(-1)[None]  # grid_sample wants (x, y, z)


def bias_field(shape_zyx: Sequence[int], amplitude: float, gen: torch.Generator) -> torch.Tensor:
    """A smooth multiplicative field ``exp(amplitude f)`` of ``shape_zyx``.

    ``f`` is a quadratic polynomial of the coordinates (each in [-1, 1]) with
    nine coefficients uniform in [-1, 1] (three linear, three squared, three
    mixed terms), scaled so that ``max |f| = 1`` over the patch; so the gain
    stays within ``exp(+-amplitude)``.
    """
    axes = [torch.linspace(-1.0, 1.0, int(n)) for n in shape_zyx]
    z, y, x = torch.meshgrid(*axes, indexing="ij")
    terms = torch.stack([z, y, x, z * z, y * y, x * x, z * y, z * x, y * x])
    c = 2 * torch.rand(9, generator=gen) - 1
    f = torch.tensordot(c, terms, dims=1)
    f = f - f.mean()
    f = f / torch.clamp(f.abs().max(), min=1e-6)
    return torch.exp(amplitude * f)


def _intensity(x: torch.Tensor, config: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    u = torch.rand(4, generator=gen).tolist()
    x = gaussian_blur(x, u[0] * config.blur_sigma_max_vox)
    if config.bias_field_max > 0:
        a = float(torch.rand(1, generator=gen)) * config.bias_field_max
        x = x * bias_field(x.shape[-3:], a, gen)
    top = torch.clamp(torch.quantile(x.flatten()[::7], 0.99), min=1e-3)
    g_lo, g_hi = config.gamma_range
    x = top * torch.clamp(x / top, min=0.0) ** (g_lo + (g_hi - g_lo) * u[1])
    i_lo, i_hi = config.intensity_range
    x = x * (i_lo + (i_hi - i_lo) * u[2])
    sd = u[3] * config.noise_max * torch.sqrt(torch.clamp(x, min=0.0))
    return x + sd * torch.randn(x.shape, generator=gen)


def make_patch(image_zyx: np.ndarray, target_zyx: np.ndarray, config: AugmentConfig,
               gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One augmented ``(1, d, h, w)`` image patch and its ``(1, d, h, w)`` 0/1 target."""
    centre = _centre(target_zyx, image_zyx, config, gen)
    grid = sample_grid(image_zyx.shape, centre, config, gen)
    image = torch.from_numpy(np.asarray(image_zyx, np.float32))[None, None]
    target = torch.from_numpy(np.asarray(target_zyx, np.float32))[None, None]
    x = F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    y = F.grid_sample(target, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return _intensity(x, config, gen)[0], (y[0] >= 0.5).float()


def augment_text(config: AugmentConfig) -> str:
    """The model card's sentence on the augmentation of ``config``."""
    lo, hi = config.scale_range
    g_lo, g_hi = config.gamma_range
    i_lo, i_hi = config.intensity_range
    field = (f", a smooth multiplicative bias field up to exp(+-{config.bias_field_max:g})"
             if config.bias_field_max > 0 else "")
    return (f"rotation up to {config.rotate_deg:g} degrees, scale {lo:g}-{hi:g}, "
            f"left-right mirror, extra blur up to sigma {config.blur_sigma_max_vox:g} voxels"
            f"{field}, gamma {g_lo:g}-{g_hi:g}, intensity {i_lo:g}-{i_hi:g}, Poisson-like noise")
