"""Student backbones from torchvision or timm, with CIFAR stems, any input channels and feature taps."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torchvision
from torch import Tensor, nn

from repfusion_pl.students.taps import FeatureTaps

TORCHVISION_ARCHS = ("resnet18", "resnet34", "resnet50", "mobilenet_v2")
_DEFAULT_TORCHVISION_TAP = {
    "resnet18": "layer4",
    "resnet34": "layer4",
    "resnet50": "layer4",
    "mobilenet_v2": "features",
}
#: Where the first convolution sits: torchvision ResNets, torchvision MobileNetV2, timm MobileNets and
#: EfficientNets, and the same two timm layouts inside smp's ``tu-`` encoders (under ``model.``).
FIRST_CONV_PATHS = ("conv1", "features.0.0", "conv_stem", "model.conv1", "model.conv_stem")


@dataclass(frozen=True)
class BackboneSpec:
    """What builds a backbone, said once: the distilled student's and every downstream task's.

    Args:
        arch: torchvision name (``resnet18``, ``resnet34``, ``resnet50``, ``mobilenet_v2``) or, with
            ``library: timm``, any timm model name.
        library: ``torchvision`` or ``timm``.
        stem: ``cifar`` (3x3 stride-1 first conv, no max-pool: for 32 px and smaller images) or
            ``imagenet`` (the library's own stem).
        in_channels: Image channels (1 for grayscale data).
    """

    arch: str = "resnet18"
    library: Literal["torchvision", "timm"] = "torchvision"
    stem: Literal["cifar", "imagenet"] = "cifar"
    in_channels: int = 3

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> BackboneSpec:
        """The spec in a checkpoint's provenance (extra keys such as ``taps`` are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in record.items() if key in names})

    def as_dict(self) -> dict[str, Any]:
        """The spec as plain values, as recorded in checkpoints."""
        return dataclasses.asdict(self)


def replace_first_conv(model: nn.Module, in_channels: int, kernel_size: int, stride: int) -> None:
    """Swap the first convolution for a fresh one (same width) with other channels, kernel or stride.

    Raises:
        ValueError: When the model has none of the known first-convolution paths.
    """
    modules = dict(model.named_modules())
    path = next((p for p in FIRST_CONV_PATHS if isinstance(modules.get(p), nn.Conv2d)), None)
    if path is None:
        raise ValueError(
            f"no stem recipe for {type(model).__name__}: none of {FIRST_CONV_PATHS} is a convolution; "
            "use stem: imagenet and the library's in_chans"
        )
    parent_path, _, name = path.rpartition(".")
    parent = modules[parent_path] if parent_path else model
    width = modules[path].out_channels
    conv = nn.Conv2d(in_channels, width, kernel_size, stride=stride, padding=kernel_size // 2, bias=False)
    setattr(parent, name, conv)


def use_cifar_stem(model: nn.Module, in_channels: int, stride: int = 1) -> None:
    """A 3x3 first convolution of the given stride and no max-pool (kept where ``stride`` > 1).

    Students use stride 1 (small images keep their resolution); smp encoders use stride 2, so the
    encoder keeps the stride layout (2, 4, ..., 32) that their decoders are built for.
    """
    replace_first_conv(model, in_channels, kernel_size=3, stride=stride)
    if stride == 1:
        for holder in (model, getattr(model, "model", None)):
            if isinstance(getattr(holder, "maxpool", None), nn.Module):
                holder.maxpool = nn.Identity()  # type: ignore[union-attr]


def _torchvision_backbone(spec: BackboneSpec) -> nn.Module:
    if spec.arch not in TORCHVISION_ARCHS:
        near = difflib.get_close_matches(spec.arch, TORCHVISION_ARCHS, n=3, cutoff=0.3)
        raise ValueError(
            f"unknown torchvision student {spec.arch!r}; choose one of {TORCHVISION_ARCHS}"
            + (f" (did you mean {near[0]!r}?)" if near else "")
            + ", or set library: timm for any timm model"
        )
    model = getattr(torchvision.models, spec.arch)(weights=None)
    if spec.arch.startswith("resnet"):
        model.fc = nn.Identity()
    else:
        model.classifier = nn.Identity()
    if spec.stem == "cifar":
        use_cifar_stem(model, spec.in_channels)
    elif spec.in_channels != 3:  # the library's stem, other input channels
        kernel, stride = (7, 2) if spec.arch.startswith("resnet") else (3, 2)
        replace_first_conv(model, spec.in_channels, kernel, stride)
    return model


def _timm_backbone(spec: BackboneSpec) -> nn.Module:
    import timm

    try:
        model = timm.create_model(spec.arch, pretrained=False, num_classes=0, in_chans=spec.in_channels)
    except RuntimeError as err:
        near = difflib.get_close_matches(spec.arch, timm.list_models(), n=5, cutoff=0.5)
        raise ValueError(f"unknown timm student {spec.arch!r}; nearest timm names: {near}") from err
    if spec.stem == "cifar":
        use_cifar_stem(model, spec.in_channels)
    return model


def build_backbone(spec: BackboneSpec) -> nn.Module:
    """The headless backbone of ``spec``, randomly initialised."""
    return (_torchvision_backbone if spec.library == "torchvision" else _timm_backbone)(spec)


def _default_tap(spec: BackboneSpec, backbone: nn.Module) -> str:
    if spec.library == "torchvision":
        return _DEFAULT_TORCHVISION_TAP[spec.arch]
    return str(backbone.feature_info[-1]["module"])  # type: ignore[index]


class Student(nn.Module):
    """A recognition backbone whose named stages are read as features.

    The classification head is removed (the backbone ends where features are read), and parameters
    after the deepest tap are frozen: distillation sends them no gradient, so weight decay alone
    would erode them, and DDP would wait for their gradients forever.

    Args:
        arch: Backbone architecture (see `BackboneSpec`).
        library: ``torchvision`` or ``timm``.
        stem: ``cifar`` or ``imagenet``.
        in_channels: Image channels (1 for grayscale data).
        taps: Dotted module paths to read; default the last stage.
        compile: ``torch.compile`` the backbone (opt-in; pays on GPUs).
    """

    def __init__(
        self,
        arch: str = "resnet18",
        library: Literal["torchvision", "timm"] = "torchvision",
        stem: Literal["cifar", "imagenet"] = "cifar",
        in_channels: int = 3,
        taps: Sequence[str] | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.backbone_spec = BackboneSpec(arch, library, stem, in_channels)
        self.backbone = build_backbone(self.backbone_spec)
        self.arch, self.library, self.stem, self.in_channels = arch, library, stem, in_channels
        self.taps = list(taps) if taps else [_default_tap(self.backbone_spec, self.backbone)]
        self._feature_taps = FeatureTaps(self.backbone, self.taps, owner=f"student {arch}")
        self._freeze_unreached()
        if compile:  # after the freezing forward, so that compiling waits for the first real batch
            self.backbone.compile()

    @classmethod
    def from_spec(cls, spec: BackboneSpec, taps: Sequence[str] | None = None) -> Student:
        """The student of a `BackboneSpec` (default taps: the last stage)."""
        return cls(spec.arch, spec.library, spec.stem, spec.in_channels, taps)

    def spec(self) -> dict[str, object]:
        """What rebuilds this student: its `BackboneSpec` fields and taps."""
        return {**self.backbone_spec.as_dict(), "taps": self.taps}

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """Tapped features by path, each ``(N, C, h, w)``; the layers after the last tap never run."""
        if images.shape[1] != self.in_channels:
            raise ValueError(
                f"student {self.arch} was built for {self.in_channels}-channel images but the batch has "
                f"{images.shape[1]}; set the student's in_channels to {images.shape[1]}"
            )
        return self._feature_taps.run(self.backbone, images)

    def feature_maps(self, image_size: int) -> dict[str, Any]:
        """Per-tap outputs for one blank square image, without touching BN statistics or autograd."""
        was_training = self.training
        self.eval()
        with torch.no_grad():
            feats = self(torch.zeros(1, self.in_channels, image_size, image_size))
        self.train(was_training)
        return feats

    def feature_shapes(self, image_size: int) -> dict[str, tuple[int, ...]]:
        """Per-tap ``(C, h, w)`` for square images of the given side.

        Raises:
            ValueError: For a tap whose module returns several maps (e.g. an HRNet stage).
        """
        shapes = {}
        for name, feature in self.feature_maps(image_size).items():
            if not isinstance(feature, Tensor):
                raise ValueError(
                    f"student tap {name!r} of {self.arch} outputs {len(feature)} maps, not one; tap a module "
                    "that returns a single map (for timm HRNets: 'final_layer', the fused 2048-channel map)"
                )
            shapes[name] = tuple(feature.shape[1:])
        return shapes

    def _freeze_unreached(self) -> None:
        was_training = self.training
        self.eval()
        feats = self(torch.zeros(2, self.in_channels, 32, 32))
        maps = [m for f in feats.values() for m in (f if isinstance(f, (list, tuple)) else [f])]
        torch.stack([m.float().sum() for m in maps]).sum().backward()
        for param in self.backbone.parameters():
            if param.grad is None:
                param.requires_grad_(False)
            param.grad = None
        self.train(was_training)
