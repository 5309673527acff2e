"""The pixel-space family: a diffusers ``UNet2DModel`` (DDPM, converted guided-diffusion, ours)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffusers import UNet2DModel
from torch import Tensor

from repfusion_pl.teachers.family import TeacherFamily, unet_candidate_layers
from repfusion_pl.teachers.sources import Family, load_scheduler, load_strict
from repfusion_pl.teachers.training import load_training_checkpoint


class PixelUNet(TeacherFamily):
    """A pixel-space diffusers ``UNet2DModel`` (DDPM, converted guided-diffusion), maybe class-conditional."""

    name: Family = "pixel_unet"
    denoiser: UNet2DModel

    @classmethod
    def load(cls, path: Path) -> PixelUNet:
        """Load from a diffusers folder (UNet at its root or in ``unet/``) or a teacher ``.ckpt``."""
        if path.suffix == ".ckpt":
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
