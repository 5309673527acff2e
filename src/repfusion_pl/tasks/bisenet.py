"""BiSeNetV1 (Yu et al., ECCV 2018) on a distilled ResNet: the face-parsing network of the RepFusion paper.

No library this project uses ships it (segmentation-models-pytorch has no BiSeNet), so it is written
here, small, following the layout of the authors' mmsegmentation config: a spatial path (three
stride-2 convolutions, 1/8 resolution), a context path on the backbone's 1/16 and 1/32 features with
attention refinement and a global-context vector, a feature-fusion module, an FCN head on the fused
1/8 map and two auxiliary FCN heads on the context path's outputs (used in training only).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from repfusion_pl.students import BackboneSpec, Student


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1) -> nn.Sequential:
    """Convolution, BatchNorm, ReLU (mmcv's ConvModule)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class AttentionRefinement(nn.Module):
    """A 3x3 convolution whose output channels are re-weighted by a sigmoid of their global average."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = conv_bn_relu(in_channels, out_channels)
        self.attention = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(out_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        return x * self.attention(x)


class FeatureFusion(nn.Module):
    """Concatenate the spatial and context paths, mix them, and add a channel-attended copy."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.mix = conv_bn_relu(in_channels, out_channels, kernel_size=1)
        self.attention = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), conv_bn_relu(out_channels, out_channels, kernel_size=1), nn.Sigmoid()
        )

    def forward(self, spatial: Tensor, context: Tensor) -> Tensor:
        x = self.mix(torch.cat([spatial, context], dim=1))
        return x + x * self.attention(x)


class FCNHead(nn.Module):
    """One 3x3 convolution, dropout, then a 1x1 classifier (mmseg's FCNHead with one convolution)."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.conv = conv_bn_relu(in_channels, channels)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.dropout(self.conv(x)))


class BiSeNetV1(nn.Module):
    """BiSeNetV1 on a ResNet student backbone (distilled weights load into ``encoder.backbone``).

    Args:
        backbone: The ResNet's spec (``stem: imagenet``, as in the paper's recipe).
        num_classes: Output classes.
        context_channels: Width of the context path (the authors: 128 for ResNet-18, 512 for
            ResNet-50); its inputs take the backbone's own 1/16 and 1/32 widths.
        spatial_channels: Widths of the spatial path's four convolutions.
        out_channels: Width of the fused map and the main head.
        aux_channels: Width of the auxiliary heads (0: none).
    """

    def __init__(
        self,
        backbone: BackboneSpec,
        num_classes: int,
        context_channels: int = 128,
        spatial_channels: tuple[int, int, int, int] = (64, 64, 64, 128),
        out_channels: int = 256,
        aux_channels: int = 64,
    ) -> None:
        super().__init__()
        self.encoder = Student.from_spec(backbone, taps=["layer3", "layer4"])
        c16, c32 = (shape[0] for shape in self.encoder.feature_shapes(64).values())
        low = context_channels
        s1, s2, s3, s4 = spatial_channels
        in_channels = backbone.in_channels
        self.spatial = nn.Sequential(
            conv_bn_relu(in_channels, s1, 7, 2), conv_bn_relu(s1, s2, 3, 2), conv_bn_relu(s2, s3, 3, 2),
            conv_bn_relu(s3, s4, 1),
        )  # fmt: skip
        self.global_context = nn.Sequential(nn.AdaptiveAvgPool2d(1), conv_bn_relu(c32, low, 1))
        self.refine32, self.refine16 = AttentionRefinement(c32, low), AttentionRefinement(c16, low)
        self.head32, self.head16 = conv_bn_relu(low, low), conv_bn_relu(low, low)
        self.fusion = FeatureFusion(s4 + low, out_channels)
        self.head = FCNHead(out_channels, out_channels, num_classes)
        self.aux = nn.ModuleList(
            [FCNHead(low, aux_channels, num_classes) for _ in range(2)] if aux_channels else []
        )

    def context(self, images: Tensor, size8: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """The context path's 1/8 and 1/16 maps (each ``low`` channels)."""
        features = self.encoder(images)
        x16, x32 = features["layer3"], features["layer4"]
        up32 = F.interpolate(
            self.refine32(x32) + self.global_context(x32), size=x16.shape[-2:], mode="bilinear"
        )
        up32 = self.head32(up32)
        up16 = F.interpolate(self.refine16(x16) + up32, size=size8, mode="bilinear")
        return self.head16(up16), up32

    def forward(self, images: Tensor) -> Tensor | tuple[Tensor, ...]:
        """Logits at the input size; in training, also the auxiliary heads' logits (main first)."""
        spatial = self.spatial(images)
        context8, context16 = self.context(images, spatial.shape[-2:])
        size = images.shape[-2:]
        logits = F.interpolate(self.head(self.fusion(spatial, context8)), size=size, mode="bilinear")
        if not self.training or not len(self.aux):
            return logits
        maps = (context8, context16)
        aux = [F.interpolate(h(x), size=size, mode="bilinear") for h, x in zip(self.aux, maps, strict=True)]
        return (logits, *aux)
