"""A compact 2-D U-Net for short-axis cine frames.

Variant: the original U-Net (Ronneberger 2015) with batch-normalised double convolutions, max-pool
down, transposed-convolution up, and narrow widths. Five levels give a receptive field wide enough for
the whole heart at 2 mm/pixel; the narrow top levels keep CPU inference inside the node's budget.
"""

from __future__ import annotations

import torch
from torch import nn


def _double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """U-Net returning per-class logits at the input resolution.

    Parameters
    ----------
    channels
        Width of each level, top to bottom; the input size must be divisible by
        ``2 ** (len(channels) - 1)``.
    classes
        Number of output classes.
    """

    def __init__(self, channels: tuple[int, ...], classes: int) -> None:
        super().__init__()
        self.encoders = nn.ModuleList(
            _double_conv(1 if level == 0 else channels[level - 1], width)
            for level, width in enumerate(channels)
        )
        self.pool = nn.MaxPool2d(2)
        self.ups = nn.ModuleList(
            nn.ConvTranspose2d(channels[level + 1], channels[level], 2, stride=2)
            for level in range(len(channels) - 1)
        )
        self.decoders = nn.ModuleList(
            _double_conv(2 * channels[level], channels[level]) for level in range(len(channels) - 1)
        )
        self.head = nn.Conv2d(channels[0], classes, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        skips: list[torch.Tensor] = []
        x = image
        last = len(self.encoders) - 1
        for level, encoder in enumerate(self.encoders):
            x = encoder(x)
            if level < last:
                skips.append(x)
                x = self.pool(x)
        for level in reversed(range(len(self.ups))):
            x = self.ups[level](x)
            x = self.decoders[level](torch.cat([x, skips[level]], dim=1))
        return self.head(x)
