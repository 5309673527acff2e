"""`Student`: a backbone whose named stages are read as features, random or from pretrained weights."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from repfusion_pl.students.backbones import (
    FRESH_STEM,
    BackboneSpec,
    build_initialised_backbone,
    default_tap,
    head_names,
)
from repfusion_pl.students.taps import FeatureTaps
from repfusion_pl.students.weights import BackboneWeights, load_backbone_weights, read_backbone_weights


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
        pretrained: Start from the library's default pretrained weights (torchvision's ``DEFAULT``,
            timm's default tag, or the tag in ``arch`` such as ``resnet18.a1_in1k``), read from the
            local cache only; when absent, the error names the command that downloads them. With
            ``stem: cifar`` every pretrained layer is kept but the first convolution, which the
            CIFAR stem replaces with a fresh 3x3 one (a warning says so). With ``in_channels`` other
            than 3 and ``stem: imagenet``, the first convolution is adapted as timm adapts
            ``in_chans`` (RGB filters summed for 1 channel), for torchvision too.
        weights: A state-dict file or folder to start from instead, loaded strictly (see
            `repfusion_pl.students.weights.read_backbone_weights` for the formats); the
            classification head's keys are dropped, every other key must fit. A file that records
            the student that made it must name the same architecture.
    """

    def __init__(
        self,
        arch: str = "resnet18",
        library: Literal["torchvision", "timm"] = "torchvision",
        stem: Literal["cifar", "imagenet"] = "cifar",
        in_channels: int = 3,
        taps: Sequence[str] | None = None,
        compile: bool = False,
        pretrained: bool = False,
        weights: str | None = None,
    ) -> None:
        super().__init__()
        if pretrained and weights:
            raise ValueError("give the student `pretrained: true` or `weights: <file>`, not both")
        self.backbone_spec = BackboneSpec(arch, library, stem, in_channels)
        self.backbone, init = build_initialised_backbone(self.backbone_spec, pretrained)
        if init and FRESH_STEM in init:
            rank_zero_warn(f"student {arch}: pretrained weights ({init})")
        #: What initialised the backbone (``None``: random), recorded with the distilled weights.
        self.initialisation = init or (self._load_weights(weights) if weights else None)
        self.arch, self.library, self.stem, self.in_channels = arch, library, stem, in_channels
        self.taps = list(taps) if taps else [default_tap(self.backbone_spec, self.backbone)]
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

    def _load_weights(self, path: str) -> str:
        weights = read_backbone_weights(path)
        spec, recorded = self.backbone_spec, weights.spec
        if recorded is not None and recorded != spec:
            raise ValueError(
                f"student weights {weights.path} were made by {_said(recorded)}, but this student is "
                f"{_said(spec)}; name the same arch, library, stem and in_channels"
            )
        heads = tuple(f"{name}." for name in head_names(spec, self.backbone))
        own = self.backbone.state_dict()
        # The head is removed by design; everything else must fit exactly.
        state = {k: v for k, v in weights.state_dict.items() if k in own or not k.startswith(heads)}
        fix = f"Give `weights:` a state dict of a {_said(spec)} backbone."
        kept = BackboneWeights(state, weights.provenance, weights.path)
        load_backbone_weights(self.backbone, kept, target=f"student {spec.arch}", fix=fix)
        return f"file {Path(weights.path).name}"

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


def _said(spec: BackboneSpec) -> str:
    return f"a {spec.library} {spec.arch} with the {spec.stem} stem and {spec.in_channels} input channels"
