"""Heads that turn backbone features into keypoint heatmaps (mmpose's two top-down heatmap heads)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def deconv_head(in_channels: int, num_keypoints: int, upsamplings: int, width: int) -> nn.Sequential:
    """``upsamplings`` stride-2 deconvolutions (BN, ReLU) then a 1x1 convolution to the heatmaps.

    The SimpleBaseline head of a ResNet (the authors' ResNet-50 WFLW head: three 256-wide deconvolutions).
    """
    layers: list[nn.Module] = []
    channels = in_channels
    for _ in range(upsamplings):
        layers += [
            nn.ConvTranspose2d(channels, width, 4, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        ]
        channels = width
    layers.append(nn.Conv2d(channels, num_keypoints, kernel_size=1))
    return nn.Sequential(*layers)


def upsamplings_for(backbone_stride: float, heatmap_stride: float, image_size: int) -> int:
    """How many 2x upsamplings take the backbone's output stride to the heatmaps' stride.

    Raises:
        ValueError: When no power of two does.
    """
    upsamplings = round(math.log2(backbone_stride / heatmap_stride))
    if upsamplings < 0 or 2**upsamplings * heatmap_stride != backbone_stride:
        raise ValueError(
            f"the backbone's output stride is {backbone_stride:g} at {image_size} px; "
            f"heatmap_stride must divide it by a power of two (e.g. {backbone_stride:g}, "
            f"{backbone_stride / 2:g}, ...)"
        )
    return upsamplings


class ConcatHead(nn.Module):
    """HRNet's head: every branch resized to the finest, concatenated, 1x1 conv (BN, ReLU), 1x1 to heatmaps.

    Args:
        branch_channels: Channels of the backbone's maps, finest first (HRNetV2-W18: 18, 36, 72, 144).
        num_keypoints: Heatmap channels K.
    """

    def __init__(self, branch_channels: Sequence[int], num_keypoints: int) -> None:
        super().__init__()
        total = sum(branch_channels)
        self.mix = nn.Sequential(
            nn.Conv2d(total, total, 1, bias=False), nn.BatchNorm2d(total), nn.ReLU(inplace=True)
        )
        self.out = nn.Conv2d(total, num_keypoints, 1)

    def forward(self, maps: Sequence[Tensor]) -> Tensor:
        size = maps[0].shape[-2:]
        resized = [maps[0], *(F.interpolate(m, size=size, mode="bilinear") for m in maps[1:])]
        return self.out(self.mix(torch.cat(resized, dim=1)))
