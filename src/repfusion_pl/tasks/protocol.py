"""Fine-tuning protocols that protect pretrained features: a lower backbone rate, layer decay, LP-FT."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field

from torch import nn


@dataclass(frozen=True)
class FineTuneProtocol:
    """How a pretrained backbone is fine-tuned under a new head (the head always trains at full rate).

    Args:
        backbone_lr_scale: The backbone's learning rate as a multiple of the configured one (0.1:
            ten times lower), so that the head's fresh gradients do not overwrite distilled features.
        layer_decay: Layer-wise learning-rate decay (BEiT, timm's ``layer_decay``): each backbone
            layer learns at this multiple of the rate of the layer above it, the last layer at
            ``backbone_lr_scale * layer_decay``. ``None``: every backbone layer at ``backbone_lr_scale``.
        probe_epochs: LP-FT (Kumar et al., 2022): this many epochs train the head alone (the
            backbone's updates are dropped and its BatchNorm statistics held) before all of it trains.
            Counted within the run's ``max_epochs``, which must be longer.
        layers: The backbone's modules, input side first, that ``layer_decay`` steps over (names as
            in ``backbone.named_modules()``; parameters outside them count with the first). Default:
            timm's own grouping for a timm backbone, else the top-level modules (a ResNet's stem and
            its four stages; MobileNetV2's ``features`` blocks).
    """

    backbone_lr_scale: float = 1.0
    layer_decay: float | None = None
    probe_epochs: int = 0
    layers: list[str] | None = field(default=None)

    def __post_init__(self) -> None:
        if not self.backbone_lr_scale > 0:
            raise ValueError(
                f"protocol.backbone_lr_scale is {self.backbone_lr_scale}; it must be > 0 (0.1: the "
                "backbone learns ten times slower; freeze_backbone: true for a linear probe)"
            )
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise ValueError(
                f"protocol.layer_decay is {self.layer_decay}; it must be in (0, 1] (0.7 is usual), or null"
            )
        if self.probe_epochs < 0:
            raise ValueError(f"protocol.probe_epochs is {self.probe_epochs}; it must be >= 0")
        if self.layers is not None and self.layer_decay is None:
            raise ValueError("protocol.layers names what layer_decay steps over; set layer_decay too")

    @property
    def changes_rates(self) -> bool:
        """Whether any backbone parameter learns at another rate than the head."""
        return self.backbone_lr_scale != 1.0 or self.layer_decay is not None


def default_layers(backbone: nn.Module) -> list[list[str]]:
    """The backbone's parameter names per layer, input side first (see `FineTuneProtocol.layers`)."""
    if hasattr(backbone, "group_matcher"):  # timm: the library's own grouping for layer decay
        from timm.models import group_parameters

        groups = group_parameters(backbone, backbone.group_matcher(coarse=False))  # type: ignore[operator]
        return [list(groups[key]) for key in sorted(groups)]
    layers: list[list[str]] = []
    stem: list[str] = []
    for name, child in backbone.named_children():
        if isinstance(child, nn.Sequential) and name == "features":  # MobileNetV2: one layer per block
            layers += [
                [f"{name}.{sub}.{p}" for p, _ in block.named_parameters()]
                for sub, block in child.named_children()
            ]
            continue
        params = [f"{name}.{p}" for p, _ in child.named_parameters()]
        if not params:
            continue
        if next(child.children(), None) is None:  # a lone conv or norm before the stages: the stem
            stem += params
        else:
            layers.append(params)
    return [stem, *layers] if stem else layers


def named_layers(backbone: nn.Module, names: list[str]) -> list[list[str]]:
    """The parameter names under each named module; those under none join the first."""
    modules = dict(backbone.named_modules())
    for name in names:
        if name not in modules:
            near = difflib.get_close_matches(name, list(modules), n=3)
            raise ValueError(
                f"protocol.layers names {name!r}, which the backbone lacks"
                + (f" (did you mean {near[0]!r}?)" if near else "")
                + f"; its top-level modules are {[n for n, _ in backbone.named_children()]}"
            )
    layers = [[f"{name}.{p}" for p, _ in modules[name].named_parameters()] for name in names]
    claimed = {p for layer in layers for p in layer}
    layers[0] = [p for p, _ in backbone.named_parameters() if p not in claimed] + layers[0]
    return layers


def backbone_lr_scales(protocol: FineTuneProtocol, backbone: nn.Module) -> dict[str, float]:
    """Each backbone parameter's learning-rate multiple under ``protocol``."""
    names = [name for name, _ in backbone.named_parameters()]
    if protocol.layer_decay is None:
        return dict.fromkeys(names, protocol.backbone_lr_scale)
    layers = named_layers(backbone, protocol.layers) if protocol.layers else default_layers(backbone)
    depth = len(layers)
    if depth < 2:  # e.g. smp's `tu-` encoders: one wrapped module, so no depth to decay over
        raise ValueError(
            f"layer_decay found a single layer in {type(backbone).__name__}; name the layers it steps "
            f"over in protocol.layers (its modules: {[n for n, _ in backbone.named_children()]} and below)"
        )
    scales = {
        name: protocol.backbone_lr_scale * protocol.layer_decay ** (depth - index)
        for index, layer in enumerate(layers)
        for name in layer
    }
    missing = [name for name in names if name not in scales]
    if missing:  # a grouping that leaves parameters out would leave them untrained: say so
        raise ValueError(
            f"layer decay's grouping leaves out backbone parameters {missing[:5]}; name protocol.layers"
        )
    return scales


def protocol_param_groups(
    protocol: FineTuneProtocol, backbone: nn.Module, named: Iterable[tuple[str, nn.Parameter]], prefix: str
) -> list[dict]:
    """Parameter groups with an ``lr_scale`` each: one per distinct backbone rate, then the rest at 1.

    Args:
        protocol: The fine-tuning protocol.
        backbone: The task's backbone module.
        named: The task's trainable ``(name, parameter)`` pairs.
        prefix: The backbone's name prefix among them (``"encoder.backbone."``).
    """
    scales = backbone_lr_scales(protocol, backbone)
    groups: dict[float, list[nn.Parameter]] = {}
    for name, param in named:
        inside = name.startswith(prefix) and name[len(prefix) :] in scales
        groups.setdefault(scales[name[len(prefix) :]] if inside else 1.0, []).append(param)
    return [{"params": params, "lr_scale": scale} for scale, params in sorted(groups.items())]
