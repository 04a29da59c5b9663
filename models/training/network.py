"""A small 3D CNN with one ordinal (CORAL) head per striatal region.

Input ``(N, 1, D, H, W)`` binding-ratio crops (:mod:`service.pipelines.dat_spect.preprocess`),
with D, H, W divisible by 8. Four conv blocks (two 3x3x3 convolutions, batch
norm, ReLU; max-pooling after the first three) keep the spatial layout, which
is flattened rather than globally pooled so left and right stay apart; a
128-unit layer feeds the heads.

Ordinal heads (CORAL, Cao et al. 2020): region ``r`` has one score
``s_r = w_r . h`` and four thresholds ``b_r0 > b_r1 > b_r2 > b_r3``; the
cumulative logit ``s_r + b_rk`` models ``P(level > k)``. The thresholds are
parameterised as ``b_r0`` minus cumulative softplus increments, so they are
strictly decreasing and the cumulative probabilities are rank-consistent by
construction (no post-hoc sorting, nothing data-dependent in the export).

Global head: one logit of *reduced* (the scan-level truth: simulated PD or
atypical parkinsonism) from the same 128 features, trained with binary
cross-entropy beside the ordinal loss. The simulator's PD class starts at
mild disease whose whole-putamen SBR can still be normal; the head may use
what the four regional levels do not carry (posterior putamen, asymmetry).

Mirror channel (``mirror_x_vox`` set): the network sees a second input
channel, ``x - mirror(x)``, the scan minus its left/right mirror image about
the MNI midline (box column ``mirror_x_vox``). A one-sided loss is then a
signed difference in the first convolution's receptive field, not a
comparison the network must learn to make across 20 voxels of flattened
features; normal asymmetry of noise and pose stays small in it. The mirror is
a fixed gather inside the graph, so the exported model's input is still the
one-channel crop of the preprocessing contract.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

N_REGIONS = 4
N_LEVELS = 5


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm3d(c_out), nn.ReLU(inplace=True),
        nn.Conv3d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm3d(c_out), nn.ReLU(inplace=True),
    )


class OrdinalHeads(nn.Module):
    """CORAL heads: ``(N, F)`` features -> ``(N, 4, 4)`` cumulative logits."""

    def __init__(self, n_features: int) -> None:
        super().__init__()
        self.score = nn.Linear(n_features, N_REGIONS, bias=False)
        self.first_bias = nn.Parameter(torch.full((N_REGIONS, 1), 1.0))
        # softplus(0.54) ~ 1: initial thresholds 1, 0, -1, -2
        self.bias_steps = nn.Parameter(torch.full((N_REGIONS, N_LEVELS - 2), 0.54))

    def thresholds(self) -> torch.Tensor:
        """Strictly decreasing ``(4, 4)`` thresholds ``b_rk``."""
        steps = torch.cumsum(F.softplus(self.bias_steps), dim=1)
        return torch.cat([self.first_bias, self.first_bias - steps], dim=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.score(features)[:, :, None] + self.thresholds()[None]


def mirror_index(width: int, mirror_x_vox: float) -> torch.Tensor:
    """``(width,)`` int64 source column of each column's mirror image about ``mirror_x_vox``.

    Column ``i`` mirrors to ``2 m - i``; a mirror outside the box points at
    column ``width`` (the zero column :class:`MirrorDifference` pads).
    ``2 m`` must be a whole number (the midline on a voxel centre or edge).
    """
    twice = 2.0 * mirror_x_vox
    if abs(twice - round(twice)) > 1e-6:
        raise ValueError(f"mirror column {mirror_x_vox} is not on a voxel centre or edge")
    src = int(round(twice)) - torch.arange(width)
    return torch.where((src >= 0) & (src < width), src, torch.full_like(src, width))


class MirrorDifference(nn.Module):
    """``(N, 1, D, H, W)`` -> ``(N, 2, D, H, W)``: the input and input minus its mirror."""

    index: torch.Tensor

    def __init__(self, width: int, mirror_x_vox: float) -> None:
        super().__init__()
        self.register_buffer("index", mirror_index(width, mirror_x_vox), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padded = F.pad(x, (0, 1))
        mirrored = torch.index_select(padded, 4, self.index)
        return torch.cat([x, x - mirrored], dim=1)


class StriatumNet(nn.Module):
    """The CNN; ``forward`` gives ``(N, 4, 4)`` cumulative logits.

    Parameters
    ----------
    input_shape_zyx : tuple of 3 int
        Crop shape (each divisible by 8).
    width : int
        Channels of the first block (doubling twice, then x1.5).
    dropout : float
    mirror_x_vox : float or None
        Box column of the MNI midline: adds the mirror-difference channel
        (module docstring); None: the input alone (the version-1 network).
    """

    def __init__(self, input_shape_zyx: tuple[int, int, int], width: int = 16,
                 dropout: float = 0.3, mirror_x_vox: float | None = None) -> None:
        super().__init__()
        if any(n % 8 for n in input_shape_zyx):
            raise ValueError(f"input shape {input_shape_zyx} must be divisible by 8")
        widths = (width, 2 * width, 4 * width, 6 * width)
        self.inputs: nn.Module = (nn.Identity() if mirror_x_vox is None else
                                  MirrorDifference(input_shape_zyx[2], mirror_x_vox))
        self.features = nn.Sequential(
            _block(1 if mirror_x_vox is None else 2, widths[0]), nn.MaxPool3d(2),
            _block(widths[0], widths[1]), nn.MaxPool3d(2),
            _block(widths[1], widths[2]), nn.MaxPool3d(2),
            _block(widths[2], widths[3]),
        )
        n_flat = widths[3] * int(torch.tensor(input_shape_zyx).prod()) // 512
        self.neck = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(n_flat, 128),
                                  nn.ReLU(inplace=True), nn.Dropout(dropout))
        self.heads = OrdinalHeads(128)
        self.global_head = nn.Linear(128, 1)
        self.input_shape_zyx = tuple(input_shape_zyx)
        self.width = width
        self.mirror_x_vox = mirror_x_vox

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.heads(self.neck(self.features(self.inputs(x))))

    def forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cumulative logits ``(N, 4, 4)`` and the global logit ``(N,)`` of *reduced*."""
        h = self.neck(self.features(self.inputs(x)))
        return self.heads(h), self.global_head(h)[:, 0]


def level_probabilities(cum_logits: torch.Tensor) -> torch.Tensor:
    """``(N, 4, 4)`` cumulative logits -> ``(N, 4, 5)`` probabilities of levels 0..4."""
    above = torch.sigmoid(cum_logits)  # P(level > k), non-increasing in k
    ones = torch.ones_like(above[..., :1])
    zeros = torch.zeros_like(above[..., :1])
    return torch.cat([ones, above], dim=-1) - torch.cat([above, zeros], dim=-1)


class ProbabilityModel(nn.Module):
    """What is exported: level probabilities ``(N, 4, 5)`` and P(reduced) ``(N, 1)``."""

    def __init__(self, net: StriatumNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, volume: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cum_logits, global_logit = self.net.forward_all(volume)
        return level_probabilities(cum_logits), torch.sigmoid(global_logit)[:, None]


def ordinal_loss(cum_logits: torch.Tensor, levels: torch.Tensor,
                 weights: torch.Tensor | None = None) -> torch.Tensor:
    """CORAL loss: mean binary cross-entropy of the four ``level > k`` tasks.

    Parameters
    ----------
    cum_logits : (N, 4, 4) tensor
    levels : (N, 4) int64 tensor, values 0..4
    weights : (N,) tensor or None
        Per-scan weights (the mean is weighted); None: all 1.
    """
    k = torch.arange(N_LEVELS - 1, device=levels.device)
    targets = (levels[..., None] > k).to(cum_logits.dtype)
    per_scan = F.binary_cross_entropy_with_logits(cum_logits, targets,
                                                  reduction="none").mean(dim=(1, 2))
    return _weighted_mean(per_scan, weights)


def global_loss(global_logit: torch.Tensor, reduced: torch.Tensor,
                weights: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy of the global head against the scan-level truth (0/1)."""
    per_scan = F.binary_cross_entropy_with_logits(global_logit, reduced.to(global_logit.dtype),
                                                  reduction="none")
    return _weighted_mean(per_scan, weights)


def _weighted_mean(values: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    if weights is None:
        return values.mean()
    w = weights.to(values.dtype)
    return (values * w).sum() / w.sum()


def one_sided(levels: torch.Tensor) -> torch.Tensor:
    """``(N,)`` bool: a putamen at level >= 2 while the other is at level 0 or 1.

    ``levels`` ``(N, 4)`` in the order caudate L, caudate R, putamen L, putamen R.
    """
    left, right = levels[:, 2], levels[:, 3]
    return ((left >= 2) & (right <= 1)) | ((right >= 2) & (left <= 1))


def predicted_levels(cum_logits: torch.Tensor) -> torch.Tensor:
    """``(N, 4)`` levels: number of ``P(level > k) > 0.5`` (the median, rank-consistent)."""
    return (cum_logits > 0).sum(dim=-1)
