"""Backbones from torchvision or timm: CIFAR stems, any input channels, random or pretrained weights."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torchvision
from torch import nn

from repfusion_pl.students.pretrained import timm_weights_file, torchvision_weights

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


def first_conv_path(model: nn.Module) -> str:
    """The dotted path of the model's first convolution (one of `FIRST_CONV_PATHS`).

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
    return path


def replace_first_conv(model: nn.Module, in_channels: int, kernel_size: int, stride: int) -> nn.Conv2d:
    """Swap the first convolution for a fresh one (same width) with other channels, kernel or stride.

    Returns:
        The convolution it replaced.

    Raises:
        ValueError: When the model has none of the known first-convolution paths.
    """
    path = first_conv_path(model)
    modules = dict(model.named_modules())
    parent_path, _, name = path.rpartition(".")
    parent = modules[parent_path] if parent_path else model
    old = modules[path]
    assert isinstance(old, nn.Conv2d)
    conv = nn.Conv2d(
        in_channels, old.out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False
    )
    setattr(parent, name, conv)
    return old


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


#: Said when pretrained weights meet the CIFAR stem: what is kept and what is not.
FRESH_STEM = "first conv fresh: the cifar stem's random 3x3 stride-1 conv replaces the pretrained one"


def _torchvision_backbone(spec: BackboneSpec, pretrained: bool) -> tuple[nn.Module, str | None]:
    if spec.arch not in TORCHVISION_ARCHS:
        near = difflib.get_close_matches(spec.arch, TORCHVISION_ARCHS, n=3, cutoff=0.3)
        raise ValueError(
            f"unknown torchvision student {spec.arch!r}; choose one of {TORCHVISION_ARCHS}"
            + (f" (did you mean {near[0]!r}?)" if near else "")
            + ", or set library: timm for any timm model"
        )
    model = getattr(torchvision.models, spec.arch)(weights=None)
    init = None
    if pretrained:
        state, name = torchvision_weights(spec.arch)
        model.load_state_dict(state, strict=True)  # the whole model, head included: nothing is skipped
        init = f"torchvision {name}"
    if spec.arch.startswith("resnet"):
        model.fc = nn.Identity()
    else:
        model.classifier = nn.Identity()
    if spec.stem == "cifar":
        use_cifar_stem(model, spec.in_channels)
        init = init and f"{init}; {FRESH_STEM}"
    elif spec.in_channels != 3:  # the library's stem, other input channels
        kernel, stride = (7, 2) if spec.arch.startswith("resnet") else (3, 2)
        old = replace_first_conv(model, spec.in_channels, kernel, stride)
        if pretrained:  # as timm does for in_chans: RGB filters summed (1 channel) or tiled
            from timm.models import adapt_input_conv

            with torch.no_grad():
                model.get_submodule(first_conv_path(model)).weight.copy_(
                    adapt_input_conv(spec.in_channels, old.weight)
                )
            init = f"{init}; first conv adapted to {spec.in_channels} channels (timm's adapt_input_conv)"
    return model, init


def _timm_backbone(spec: BackboneSpec, pretrained: bool) -> tuple[nn.Module, str | None]:
    import timm

    def unknown() -> ValueError:
        near = difflib.get_close_matches(spec.arch, timm.list_models(), n=5, cutoff=0.5)
        return ValueError(f"unknown timm student {spec.arch!r}; nearest timm names: {near}")

    options: dict[str, Any] = {"num_classes": 0, "in_chans": spec.in_channels}
    init = None
    if pretrained:
        if not timm.is_model(spec.arch):
            raise unknown()
        file, name = timm_weights_file(spec.arch)
        # timm reads the cached file itself (its key filters, head removal and in_chans adaptation).
        options.update(pretrained=True, pretrained_cfg_overlay={"file": file})
        init = f"timm {name}" + (
            f"; first conv adapted to {spec.in_channels} channels by timm" if spec.in_channels != 3 else ""
        )
    try:
        model = timm.create_model(spec.arch, **options)
    except RuntimeError as err:  # timm's "Unknown model"
        raise unknown() from err
    if spec.stem == "cifar":
        use_cifar_stem(model, spec.in_channels)
        init = init and f"{init}; {FRESH_STEM}"
    return model, init


def build_backbone(spec: BackboneSpec) -> nn.Module:
    """The headless backbone of ``spec``, randomly initialised."""
    return build_initialised_backbone(spec, pretrained=False)[0]


def build_initialised_backbone(spec: BackboneSpec, pretrained: bool) -> tuple[nn.Module, str | None]:
    """The headless backbone of ``spec``, with the library's pretrained weights when ``pretrained``.

    Pretrained weights come from the local cache only (`repfusion_pl.students.pretrained`). With the
    CIFAR stem every pretrained layer is kept but the first convolution, which the stem replaces by
    a freshly initialised 3x3 one. With ``in_channels`` other than 3 and the library's stem, the
    pretrained first convolution is adapted as timm adapts ``in_chans`` (for torchvision too).

    Returns:
        The backbone and a line saying what initialised it (``None``: random).

    Raises:
        PretrainedWeightsError: No pretrained weights exist for the architecture, or none are cached.
    """
    build = _torchvision_backbone if spec.library == "torchvision" else _timm_backbone
    return build(spec, pretrained)


def default_tap(spec: BackboneSpec, backbone: nn.Module) -> str:
    """The module a student reads by default: its last stage."""
    if spec.library == "torchvision":
        return _DEFAULT_TORCHVISION_TAP[spec.arch]
    return str(backbone.feature_info[-1]["module"])  # type: ignore[index]


def head_names(spec: BackboneSpec, backbone: nn.Module) -> tuple[str, ...]:
    """The classification head's module names, which a headless backbone does not have."""
    if spec.library == "torchvision":
        return ("fc",) if spec.arch.startswith("resnet") else ("classifier",)
    classifier = getattr(backbone, "pretrained_cfg", {}).get("classifier") or ()
    return (classifier,) if isinstance(classifier, str) else tuple(classifier)
