"""Teacher families: what every kind of diffusion model tells the teacher about itself.

A family wraps one denoiser (the module whose layers are tapped) and whatever it needs around it: the
noise schedule, a VAE for latent models, a fixed conditioning. `DiffusionTeacher` does the rest
(input range, timesteps, class labels, taps, truncation) the same way for every family.
"""

from __future__ import annotations

import json
import re
from typing import Any

from diffusers import DDPMScheduler
from torch import Tensor, nn

from repfusion_pl.teachers.sources import Family


class TeacherFamily:
    """One kind of diffusion model: its denoiser, schedule and the modules it needs around it.

    Attributes:
        name: The family (``pixel_unet``, ``latent_unet``, ``dit``).
        denoiser: The network whose layers are tapped.
        scheduler: Its noise schedule (a `DDPMScheduler`; only the betas are used).
        modules: Every guest module (denoiser, VAE, conditioning): moved with the teacher, frozen.
        null_class: The class id that means "no class" for classifier-free-guidance models, else None.
    """

    name: Family
    null_class: int | None = None
    denoiser: Any  # a diffusers model: its ``config`` and blocks are read by name

    def __init__(self, denoiser: nn.Module, scheduler: DDPMScheduler, **extra: nn.Module) -> None:
        self.denoiser, self.scheduler = denoiser, scheduler
        self.modules = nn.ModuleDict({"denoiser": denoiser, **extra})
        self.modules.requires_grad_(False).eval()

    @property
    def image_channels(self) -> int:
        """Channels of the images the teacher takes."""
        return int(self.denoiser.config.in_channels)

    @property
    def native_image_size(self) -> int:
        """The image side the model was trained at."""
        size = self.denoiser.config.sample_size
        return int(size[0] if isinstance(size, (list, tuple)) else size)

    @property
    def num_classes(self) -> int | None:
        """How many classes a class-conditional denoiser knows; None when unconditional."""
        return None

    @property
    def input_range(self) -> tuple[float, float]:
        """The pixel range the model (or its VAE) expects."""
        return (-1.0, 1.0)

    def encode(self, images: Tensor) -> Tensor:
        """The denoiser's clean sample for images in `input_range` (the identity for pixel models)."""
        return images

    def call_kwargs(self, batch_size: int, class_ids: Tensor | None) -> dict[str, Any]:
        """Keyword arguments of the denoiser call besides the sample and the timesteps."""
        return {}

    def feature_map(self, feature: Tensor, sample: Tensor) -> Tensor:
        """A tapped output as an ``(N, C, h, w)`` map (token outputs are reshaped by their family)."""
        return feature

    @property
    def size_multiple(self) -> int:
        """Image sides must be a multiple of this (every UNet level halves the map)."""
        return 2 ** (len(self.denoiser.config.block_out_channels) - 1)

    def default_layer(self) -> str:
        """The layer tapped when none is given: the middle of the network."""
        return "mid_block.resnets.1.conv2"

    def candidate_layers(self) -> list[str]:
        """Layers worth probing: encoder, middle and decoder, in forward order."""
        raise NotImplementedError

    def is_decoder_layer(self, layer: str) -> bool:
        """Whether a layer sits in the second half of the network (the probe scores the halves apart)."""
        return layer.startswith("up_blocks")

    def architecture(self) -> dict[str, Any]:
        """The denoiser's config, as plain JSON types, for checkpoint fingerprints."""
        config = {k: v for k, v in dict(self.denoiser.config).items() if not k.startswith("_")}
        return json.loads(json.dumps(config, default=str))


def unet_candidate_layers(unet: Any) -> list[str]:
    """The last ResNet of every UNet level going down, both mid-block ResNets, and every level coming up.

    Published probes of diffusion UNets (DDAE) find the best features in the decoder at small t, so
    the decoder is searched too (probing it runs the whole UNet).
    """
    layers = [f"down_blocks.{i}.resnets.{len(block.resnets) - 1}" for i, block in enumerate(unet.down_blocks)]
    layers += ["mid_block.resnets.0", "mid_block.resnets.1.conv2"]
    layers += [f"up_blocks.{i}.resnets.{len(block.resnets) - 1}" for i, block in enumerate(unet.up_blocks)]
    return layers


#: Modules that return (N, C, h, w) maps in diffusers denoisers: ResNets, DiT's top-level blocks, UNet up
#: and mid blocks (down blocks return tuples of the map and its skips; SD's inner transformer blocks,
#: token sequences).
_MAP_LAYER = re.compile(r"(^|\.)resnets\.\d+$|^(transformer_blocks\.\d+|up_blocks\.\d+|mid_block)$")


def nearest_map_layers(denoiser: nn.Module, layer: str, limit: int = 4) -> list[str]:
    """Layers that return maps, nearest by name to ``layer`` (most leading path parts in common first).

    For a decoder attention block such as ``up_blocks.1.attentions.0``: ``up_blocks.1`` and its
    ResNets; for ``transformer_blocks.3.attn1``: ``transformer_blocks.3``.
    """
    names = [name for name, _ in denoiser.named_modules() if name != layer and _MAP_LAYER.search(name)]
    parts = layer.split(".")

    def shared(name: str) -> int:
        common = 0
        for mine, theirs in zip(parts, name.split("."), strict=False):
            if mine != theirs:
                break
            common += 1
        return common

    return sorted(names, key=lambda name: -shared(name))[:limit]  # stable: forward order among equals
