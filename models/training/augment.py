"""Augmentation for camera independence, applied to binding-ratio crops.

Each sample of a batch ``(N, 1, D, H, W)`` independently gets, in order:

* **resolution**: Gaussian blur with sigma uniform in ``[0, blur_sigma_max_vox]``
  voxels (2 mm each): cameras and reconstructions differ in resolution;
* **intensity scale**: the binding-ratio image times a factor uniform in
  ``scale_range``: attenuation/scatter correction change SBR by tens of
  percent while the per-dataset labels do not move;
* **noise**: additive Gaussian noise with SD ``a * sqrt(max(x + 1, 0))``,
  ``a`` uniform in ``[0, noise_max]`` (Poisson-like: SD grows with counts;
  ``x + 1`` is the count image relative to the reference);
* **misregistration**: an integer shift of up to ``shift_max_vox`` voxels
  per axis (zero filled).

The generator is a seeded ``torch.Generator``: training is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F


@dataclass(frozen=True)
class AugmentConfig:
    blur_sigma_max_vox: float = 1.2
    scale_range: tuple[float, float] = (0.75, 1.3)
    noise_max: float = 0.08
    shift_max_vox: int = 2


def gaussian_blur(x: torch.Tensor, sigma_vox: float) -> torch.Tensor:
    """Separable 3D Gaussian blur of one ``(1, 1, D, H, W)`` tensor (edges replicated)."""
    if sigma_vox < 0.2:
        return x
    radius = max(1, int(round(3 * sigma_vox)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (t / sigma_vox) ** 2)
    kernel = kernel / kernel.sum()
    for axis in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = kernel.numel()
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius
        x = F.conv3d(F.pad(x, pad, mode="replicate"), kernel.reshape(shape))
    return x


def shift(x: torch.Tensor, offsets: tuple[int, int, int]) -> torch.Tensor:
    """Shift a ``(C, D, H, W)`` tensor by whole voxels, zero filled."""
    out = torch.zeros_like(x)
    src, dst = [slice(None)], [slice(None)]
    for off, n in zip(offsets, x.shape[1:], strict=True):
        src.append(slice(max(-off, 0), n - max(off, 0)))
        dst.append(slice(max(off, 0), n - max(-off, 0)))
    out[tuple(dst)] = x[tuple(src)]
    return out


def augment(batch: torch.Tensor, config: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Augmented copy of a ``(N, 1, D, H, W)`` float32 batch (see module docstring)."""
    out = []
    for x in batch:
        u = torch.rand(3, generator=gen).tolist()
        x = gaussian_blur(x[None], u[0] * config.blur_sigma_max_vox)[0]
        lo, hi = config.scale_range
        x = x * (lo + (hi - lo) * u[1])
        sd = u[2] * config.noise_max * torch.sqrt(torch.clamp(x + 1.0, min=0.0))
        x = x + sd * torch.randn(x.shape, generator=gen)
        m = config.shift_max_vox
        offsets = torch.randint(-m, m + 1, (3,), generator=gen).tolist()
        out.append(shift(x, (offsets[0], offsets[1], offsets[2])))
    return torch.stack(out)
