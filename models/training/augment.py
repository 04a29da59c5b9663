"""Augmentation for camera and appearance independence, applied to binding-ratio crops.

Each sample of a batch ``(N, 1, D, H, W)`` (``x``: binding ratio against the
occipital reference, so ``c = x + 1`` is the count image relative to the
reference) independently gets, in order:

* **left/right flip** with probability ``flip_probability``, mirrored about
  the MNI midline (``mirror_x_vox``, a box index; the box's centre when None).
  The caller swaps the left and right labels of the flipped samples
  (:func:`swap_sides`), so a one-sided loss is learnt on both sides;
* **pose**: a small affine about the box centre, scale ``1 +- scale_jitter``
  per axis, rotation up to ``rotation_max_deg`` per axis, translation up to
  ``shift_max_vox`` voxels (trilinear, zero filled): residual
  misregistration and head size the registration leaves;
* **shape** (only when ``warp_max_vox`` > 0): a smooth random displacement
  field added to the pose, three independent :func:`smooth_field` components
  (x, y, z) times an amplitude uniform in ``[0, warp_max_vox]`` voxels: the
  striatum's shape and size differ between subjects (and between the atlases
  a simulator draws them from) in ways no affine describes. Off by default,
  so recipes trained without it draw the same random numbers as before;
* **resolution**: Gaussian blur with sigma uniform in ``[0, blur_sigma_max_vox]``
  voxels (2 mm each): cameras, filters and reconstructions differ;
* **intensity nonlinearity**: ``c ** gamma``, gamma log-uniform in
  ``gamma_range`` (reconstruction, scatter and partial-volume effects do not
  scale all binding linearly);
* **reference**: ``c / r``, r uniform in ``reference_range`` (the occipital
  reference raised or lowered by cortical pattern, atrophy, spill-in of
  extracerebral uptake);
* **intensity scale**: ``x`` times a factor uniform in ``scale_range``
  (attenuation and scatter correction change SBR by tens of percent);
* **background**: a smooth random field (a 4 x 5 x 6 grid of normal values,
  trilinear, unit SD) times an amplitude uniform in ``[0, background_max]``
  binding-ratio units: non-specific and extracerebral uptake near the striatum;
* **noise**: additive Gaussian noise with SD ``a * sqrt(max(x + 1, 0))``,
  ``a`` uniform in ``[0, noise_max]`` (Poisson-like).

The labels do not change under any of these but the flip: the training
labels are remaining fractions of the subject's own binding, which no
camera or appearance effect moves. The generator is a seeded
``torch.Generator``: training is reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F

#: Region index of each region's mirror image (order of ``result.REGIONS``:
#: caudate L, caudate R, putamen L, putamen R).
MIRROR_REGIONS: tuple[int, ...] = (1, 0, 3, 2)


@dataclass(frozen=True)
class AugmentConfig:
    blur_sigma_max_vox: float = 1.6
    scale_range: tuple[float, float] = (0.75, 1.33)
    gamma_range: tuple[float, float] = (0.87, 1.15)
    reference_range: tuple[float, float] = (0.9, 1.1)
    background_max: float = 0.25
    noise_max: float = 0.12
    shift_max_vox: float = 2.0
    scale_jitter: float = 0.08
    rotation_max_deg: float = 6.0
    warp_max_vox: float = 0.0
    flip_probability: float = 0.5
    mirror_x_vox: float | None = None


@dataclass(frozen=True)
class Augmented:
    """An augmented batch and which of its samples were mirrored.

    Attributes
    ----------
    x : (N, 1, D, H, W) float32 tensor
    flipped : (N,) bool tensor
    """

    x: torch.Tensor
    flipped: torch.Tensor


def blur_matrix(n: int, sigma_vox: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(n, n)`` matrix of a 1D Gaussian blur with replicated edges (rows sum to 1)."""
    radius = max(1, int(round(3 * sigma_vox)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (t / sigma_vox) ** 2)
    kernel = kernel / kernel.sum()
    rows = torch.arange(n)
    out = torch.zeros((n, n), dtype=torch.float64)
    for offset, w in zip(range(-radius, radius + 1), kernel.tolist(), strict=True):
        out[rows, torch.clamp(rows + offset, 0, n - 1)] += w
    return out.to(dtype)


def gaussian_blur(x: torch.Tensor, sigma_vox: float) -> torch.Tensor:
    """Separable 3D Gaussian blur of one ``(1, 1, D, H, W)`` tensor (edges replicated).

    Applied as three small matrix products (one per axis): much cheaper on
    a CPU than 3D convolutions with long 1D kernels.
    """
    if sigma_vox < 0.2:
        return x
    d, h, w = (int(v) for v in x.shape[2:])
    gz, gy, gx = (blur_matrix(n, sigma_vox, x.dtype) for n in (d, h, w))
    out = torch.einsum("zi,ijk->zjk", gz, x[0, 0])
    out = torch.einsum("yj,zjk->zyk", gy, out)
    out = torch.einsum("xk,zyk->zyx", gx, out)
    return out[None, None]


def _linear_upsample(n_out: int, n_in: int) -> torch.Tensor:
    """``(n_out, n_in)`` linear interpolation matrix (end points aligned)."""
    pos = torch.linspace(0.0, n_in - 1.0, n_out, dtype=torch.float64)
    lo = torch.clamp(pos.floor().long(), max=n_in - 2)
    frac = pos - lo
    out = torch.zeros((n_out, n_in), dtype=torch.float64)
    rows = torch.arange(n_out)
    out[rows, lo] = 1.0 - frac
    out[rows, lo + 1] = frac
    return out.float()


def shift(x: torch.Tensor, offsets: tuple[int, int, int]) -> torch.Tensor:
    """Shift a ``(C, D, H, W)`` tensor by whole voxels, zero filled."""
    out = torch.zeros_like(x)
    src, dst = [slice(None)], [slice(None)]
    for off, n in zip(offsets, x.shape[1:], strict=True):
        src.append(slice(max(-off, 0), n - max(off, 0)))
        dst.append(slice(max(off, 0), n - max(-off, 0)))
    out[tuple(dst)] = x[tuple(src)]
    return out


def swap_sides(levels: torch.Tensor, flipped: torch.Tensor) -> torch.Tensor:
    """``(N, 4)`` labels with left and right exchanged where ``flipped``."""
    mirrored = levels[:, list(MIRROR_REGIONS)]
    return torch.where(flipped[:, None], mirrored, levels)


def _rotation(angles_rad: list[float]) -> torch.Tensor:
    """Rotation matrix ``(3, 3)`` about x, y and z in turn (float64)."""
    out = torch.eye(3, dtype=torch.float64)
    for axis, a in enumerate(angles_rad):
        c, s = math.cos(a), math.sin(a)
        i, j = [k for k in range(3) if k != axis]
        r = torch.eye(3, dtype=torch.float64)
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        out = r @ out
    return out


def pose_theta(shape_zyx: tuple[int, int, int], u: torch.Tensor, flip: bool,
               config: AugmentConfig) -> torch.Tensor:
    """``(3, 4)`` ``affine_grid`` matrix (normalised ``x, y, z``) of one sample's pose.

    ``u``: 9 uniform numbers in [0, 1) (scale, rotation, translation per axis).
    The affine is built in voxel units about the box centre and converted to
    the normalised coordinates of ``affine_grid`` (``align_corners=False``).
    """
    size = torch.tensor([shape_zyx[2], shape_zyx[1], shape_zyx[0]], dtype=torch.float64)
    half = size / 2.0
    u = u.to(torch.float64) * 2.0 - 1.0  # uniform in [-1, 1)
    scale = torch.diag(1.0 + config.scale_jitter * u[0:3])
    rot = _rotation([math.radians(config.rotation_max_deg) * float(v) for v in u[3:6]])
    a_vox = rot @ scale
    t_vox = config.shift_max_vox * u[6:9]
    if flip:  # src = F (A q + t) + d, mirroring box index i to 2 m - i
        width = float(size[0])
        mirror = (width - 1.0) / 2.0 if config.mirror_x_vox is None else config.mirror_x_vox
        f = torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64))
        a_vox, t_vox = f @ a_vox, f @ t_vox
        t_vox[0] += 2.0 * (mirror + 0.5 - width / 2.0)
    a_norm = torch.diag(1.0 / half) @ a_vox @ torch.diag(half)
    t_norm = t_vox / half
    return torch.cat([a_norm, t_norm[:, None]], dim=1).to(torch.float32)


def smooth_field(shape_zyx: tuple[int, int, int], gen: torch.Generator) -> torch.Tensor:
    """A ``(1, D, H, W)`` smooth random field with zero mean and unit SD.

    A 4 x 5 x 6 grid of standard normal values, interpolated trilinearly.
    """
    coarse = torch.randn((4, 5, 6), generator=gen)
    mz, my, mx = (_linear_upsample(n, c) for n, c in zip(shape_zyx, coarse.shape, strict=True))
    field = torch.einsum("xk,ijk->ijx", mx, coarse)
    field = torch.einsum("zi,yj,ijx->zyx", mz, my, field)[None]
    return (field - field.mean()) / field.std().clamp(min=1e-6)


def warp_field(shape_zyx: tuple[int, int, int], warp_max_vox: float,
               gen: torch.Generator) -> torch.Tensor:
    """``(D, H, W, 3)`` smooth displacement of one sample in ``affine_grid`` units.

    Components ``x, y, z`` (the grid's order), each a :func:`smooth_field`
    times one amplitude uniform in ``[0, warp_max_vox]`` voxels, converted to
    normalised coordinates (one voxel is ``2 / size`` with ``align_corners=False``).
    """
    amplitude = float(torch.rand(1, generator=gen)) * warp_max_vox
    sizes = (shape_zyx[2], shape_zyx[1], shape_zyx[0])
    comps = [smooth_field(shape_zyx, gen)[0] * (2.0 * amplitude / size) for size in sizes]
    return torch.stack(comps, dim=-1)


def _uniform(lo_hi: tuple[float, float], u: float) -> float:
    lo, hi = lo_hi
    return lo + (hi - lo) * u


def _intensity(x: torch.Tensor, u: list[float], config: AugmentConfig,
               gen: torch.Generator) -> torch.Tensor:
    """Blur, gamma, reference, scale, background and noise of one ``(1, D, H, W)`` sample."""
    x = gaussian_blur(x[None], u[0] * config.blur_sigma_max_vox)[0]
    lo, hi = config.gamma_range
    gamma = math.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * u[1])
    counts = torch.clamp(x + 1.0, min=0.0) ** gamma / _uniform(config.reference_range, u[2])
    x = (counts - 1.0) * _uniform(config.scale_range, u[3])
    d, h, w = (int(v) for v in x.shape[1:])
    x = x + u[4] * config.background_max * smooth_field((d, h, w), gen)
    sd = u[5] * config.noise_max * torch.sqrt(torch.clamp(x + 1.0, min=0.0))
    return x + sd * torch.randn(x.shape, generator=gen)


def augment(batch: torch.Tensor, config: AugmentConfig, gen: torch.Generator) -> Augmented:
    """Augmented copy of a ``(N, 1, D, H, W)`` float32 batch (see module docstring)."""
    n = batch.shape[0]
    shape = (int(batch.shape[2]), int(batch.shape[3]), int(batch.shape[4]))
    flipped = torch.rand(n, generator=gen) < config.flip_probability
    poses = torch.rand((n, 9), generator=gen)
    theta = torch.stack([pose_theta(shape, poses[i], bool(flipped[i]), config)
                         for i in range(n)])
    grid = F.affine_grid(theta, [n, 1, *shape], align_corners=False)
    if config.warp_max_vox > 0:
        grid = grid + torch.stack([warp_field(shape, config.warp_max_vox, gen)
                                   for _ in range(n)])
    moved = F.grid_sample(batch, grid, mode="bilinear", padding_mode="zeros",
                          align_corners=False)
    out = [_intensity(moved[i], torch.rand(6, generator=gen).tolist(), config, gen)
           for i in range(n)]
    return Augmented(torch.stack(out), flipped)
