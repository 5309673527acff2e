"""Teacher families: how each kind of diffusion model is loaded, fed and read.

A family wraps one denoiser (the module whose layers are tapped) and whatever it needs around it: the
noise schedule, a VAE for latent models, a fixed conditioning. `DiffusionTeacher` does the rest
(input range, timesteps, class labels, taps, truncation) the same way for every family.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from diffusers import DDPMScheduler, UNet2DModel
from torch import Tensor, nn

from repfusion_pl.teachers.sources import EXPECTED_LAYOUTS, Family, load_scheduler, load_strict


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


class PixelUNet(TeacherFamily):
    """A pixel-space diffusers ``UNet2DModel`` (DDPM, converted guided-diffusion), maybe class-conditional."""

    name: Family = "pixel_unet"
    denoiser: UNet2DModel

    @classmethod
    def load(cls, path: Path) -> PixelUNet:
        """Load from a diffusers folder (UNet at its root or in ``unet/``) or a teacher ``.ckpt``."""
        if path.suffix == ".ckpt":
            from repfusion_pl.teacher_training import load_training_checkpoint

            return cls(*load_training_checkpoint(path))
        subfolder = None if (path / "config.json").is_file() else "unet"
        unet = load_strict(UNet2DModel, path, subfolder)
        if unet.config.time_embedding_type != "positional":
            raise ValueError(
                f"teacher {path} uses {unet.config.time_embedding_type!r} time embeddings; only "
                "discrete-timestep (positional) UNets are supported"
            )
        if unet.class_embedding is not None and unet.config.num_class_embeds is None:
            raise ValueError(
                f"teacher {path} is conditioned on {unet.config.class_embed_type!r} class embeddings; only "
                "integer class ids (num_class_embeds) are supported"
            )
        return cls(unet, load_scheduler(path, unet.config.get("num_train_timesteps")))

    @property
    def num_classes(self) -> int | None:
        return None if self.denoiser.class_embedding is None else int(self.denoiser.config.num_class_embeds)

    @property
    def input_range(self) -> tuple[float, float]:
        # A UNet that centres its input itself takes [0, 1].
        return (0.0, 1.0) if self.denoiser.config.center_input_sample else (-1.0, 1.0)

    def call_kwargs(self, batch_size: int, class_ids: Tensor | None) -> dict[str, Any]:
        return {"class_labels": class_ids}

    def candidate_layers(self) -> list[str]:
        return unet_candidate_layers(self.denoiser)


def load_family(path: Path, family: Family, prompt: str | None) -> TeacherFamily:
    """Load a resolved source as the given family (see `repfusion_pl.teachers.sources.detect_family`)."""
    if family == "pixel_unet":
        if prompt is not None:
            raise ValueError(f"teacher {path} is a pixel UNet without text conditioning; remove `prompt`")
        return PixelUNet.load(path)
    from repfusion_pl.teachers.latent import LatentDiT, LatentUNet

    if family == "latent_unet":
        return LatentUNet.load(path, "" if prompt is None else prompt)
    if family == "dit":
        if prompt is not None:
            raise ValueError(
                f"teacher {path} is a class-conditional DiT, not text-conditioned; remove `prompt`"
            )
        return LatentDiT.load(path)
    raise ValueError(f"unknown teacher family {family!r}; {EXPECTED_LAYOUTS}")
