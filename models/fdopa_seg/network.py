"""A small 3D U-Net for PET-only tumour segmentation.

Input ``(N, 1, D, H, W)`` normalised boxes or patches
(:func:`service.pipelines.fdopa_pet.segment.preprocess`), D, H, W divisible
by 8. Four resolution levels (``width``, 2x, 4x, 8x channels), each two 3x3x3
convolutions with batch norm and LeakyReLU; max-pooling down, transposed
convolution up, skip connections by concatenation; a 1x1x1 convolution gives
one logit per voxel.

Batch norm, not instance or group norm: the network is trained on patches and
applied to the whole box, and per-image statistics would differ between the
two; batch norm uses its running statistics at inference, so a patch and the
same region of the box see the same normalisation (and the export folds it
into the convolutions). Without any normalisation the first run collapsed to
"no tumour anywhere" within 250 steps (probability 0.000 everywhere).
"""

from __future__ import annotations

import torch
from torch import nn


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm3d(c_out),
        nn.LeakyReLU(0.01, inplace=True),
        nn.Conv3d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm3d(c_out),
        nn.LeakyReLU(0.01, inplace=True),
    )


class UNet3d(nn.Module):
    """3D U-Net, ``levels`` resolutions, ``width`` channels at full resolution; returns logits."""

    def __init__(self, width: int = 8, levels: int = 4) -> None:
        super().__init__()
        chans = [width * 2**i for i in range(levels)]
        self.width, self.levels = width, levels
        self.down = nn.ModuleList(
            [_block(1 if i == 0 else chans[i - 1], c) for i, c in enumerate(chans)])
        self.pool = nn.MaxPool3d(2)
        self.up = nn.ModuleList(
            [nn.ConvTranspose3d(chans[i + 1], chans[i], 2, stride=2) for i in range(levels - 1)])
        self.merge = nn.ModuleList([_block(2 * chans[i], chans[i]) for i in range(levels - 1)])
        self.head = nn.Conv3d(chans[0], 1, 1)
        for m in self.modules():
            if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)):
                nn.init.kaiming_normal_(m.weight, a=0.01, nonlinearity="leaky_relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.constant_(self.head.bias, -2.0)  # type: ignore[arg-type]  # tumours are rare

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        for i in reversed(range(self.levels - 1)):
            x = self.merge[i](torch.cat([skips[i], self.up[i](x)], dim=1))
        return self.head(x)


class ProbabilityModel(nn.Module):
    """The exported graph: the U-Net followed by a sigmoid (probability per voxel)."""

    def __init__(self, net: UNet3d) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(x))


def n_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
