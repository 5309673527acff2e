"""Student backbones from torchvision or timm, with CIFAR stems, any input channels and feature taps."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Literal, cast

import torch
import torchvision
from torch import Tensor, nn

from repfusion_pl.taps import FeatureTaps

TORCHVISION_ARCHS = ("resnet18", "resnet34", "resnet50", "mobilenet_v2")
_DEFAULT_TORCHVISION_TAP = {
    "resnet18": "layer4",
    "resnet34": "layer4",
    "resnet50": "layer4",
    "mobilenet_v2": "features",
}


def _torchvision_backbone(arch: str, stem: str, in_channels: int) -> nn.Module:
    if arch not in TORCHVISION_ARCHS:
        near = difflib.get_close_matches(arch, TORCHVISION_ARCHS, n=3, cutoff=0.3)
        raise ValueError(
            f"unknown torchvision student {arch!r}; choose one of {TORCHVISION_ARCHS}"
            + (f" (did you mean {near[0]!r}?)" if near else "")
            + ", or set library: timm for any timm model"
        )
    model = getattr(torchvision.models, arch)(weights=None)
    if arch.startswith("resnet"):
        model.fc = nn.Identity()
        if stem == "cifar":
            model.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
            model.maxpool = nn.Identity()
        elif in_channels != 3:
            model.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
    else:
        model.classifier = nn.Identity()
        first = model.features[0][0]
        stride = 1 if stem == "cifar" else 2
        if stride != first.stride[0] or in_channels != 3:
            model.features[0][0] = nn.Conv2d(in_channels, first.out_channels, 3, stride, 1, bias=False)
    return model


def _timm_backbone(arch: str, stem: str, in_channels: int) -> nn.Module:
    import timm

    try:
        model = timm.create_model(arch, pretrained=False, num_classes=0, in_chans=in_channels)
    except RuntimeError as err:
        near = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.5)
        raise ValueError(f"unknown timm student {arch!r}; nearest timm names: {near}") from err
    if stem == "cifar":
        if hasattr(model, "conv1") and hasattr(model, "maxpool"):  # timm ResNets
            width = cast(nn.Conv2d, model.conv1).out_channels
            model.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
            model.maxpool = nn.Identity()
        elif hasattr(model, "conv_stem"):  # timm MobileNet / EfficientNet family
            width = cast(nn.Conv2d, model.conv_stem).out_channels
            model.conv_stem = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        else:
            raise ValueError(f"no CIFAR stem recipe for timm model {arch!r}; use stem: imagenet")
    return model


def _default_tap(library: str, arch: str, backbone: nn.Module) -> str:
    if library == "torchvision":
        return _DEFAULT_TORCHVISION_TAP[arch]
    return str(backbone.feature_info[-1]["module"])  # type: ignore[index]


class Student(nn.Module):
    """A recognition backbone whose named stages are read as features.

    The classification head is removed (the backbone ends where features are read), and parameters
    after the deepest tap are frozen: distillation sends them no gradient, so weight decay alone
    would erode them, and DDP would wait for their gradients forever.

    Args:
        arch: torchvision name (``resnet18``, ``resnet34``, ``resnet50``, ``mobilenet_v2``) or, with
            ``library: timm``, any timm model name.
        library: ``torchvision`` or ``timm``.
        stem: ``cifar`` (3x3 stride-1 first conv, no max-pool: for 32 px and smaller images) or
            ``imagenet`` (the library's own stem).
        in_channels: Image channels (1 for grayscale data).
        taps: Dotted module paths to read; default the last stage.
    """

    def __init__(
        self,
        arch: str = "resnet18",
        library: Literal["torchvision", "timm"] = "torchvision",
        stem: Literal["cifar", "imagenet"] = "cifar",
        in_channels: int = 3,
        taps: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        build = _torchvision_backbone if library == "torchvision" else _timm_backbone
        self.backbone = build(arch, stem, in_channels)
        self.arch, self.library, self.stem, self.in_channels = arch, library, stem, in_channels
        self.taps = list(taps) if taps else [_default_tap(library, arch, self.backbone)]
        self._feature_taps = FeatureTaps(self.backbone, self.taps, owner=f"student {arch}")
        self._freeze_unreached()

    def spec(self) -> dict[str, object]:
        """What rebuilds this backbone: arch, library, stem, in_channels and taps."""
        return {
            "arch": self.arch,
            "library": self.library,
            "stem": self.stem,
            "in_channels": self.in_channels,
            "taps": self.taps,
        }

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """Tapped features by path, each ``(N, C, h, w)``; the layers after the last tap never run."""
        if images.shape[1] != self.in_channels:
            raise ValueError(
                f"student {self.arch} was built for {self.in_channels}-channel images but the batch has "
                f"{images.shape[1]}; set the student's in_channels to {images.shape[1]}"
            )
        return self._feature_taps.run(self.backbone, images)

    def feature_shapes(self, image_size: int) -> dict[str, tuple[int, ...]]:
        """Per-tap ``(C, h, w)`` for square images of the given side, without touching BN statistics."""
        was_training = self.training
        self.eval()
        with torch.no_grad():
            feats = self(torch.zeros(1, self.in_channels, image_size, image_size))
        self.train(was_training)
        return {name: tuple(f.shape[1:]) for name, f in feats.items()}

    def _freeze_unreached(self) -> None:
        was_training = self.training
        self.eval()
        feats = self(torch.zeros(2, self.in_channels, 32, 32))
        torch.stack([f.float().sum() for f in feats.values()]).sum().backward()
        for param in self.backbone.parameters():
            if param.grad is None:
                param.requires_grad_(False)
            param.grad = None
        self.train(was_training)
