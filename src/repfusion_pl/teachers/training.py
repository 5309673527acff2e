"""Train a small pixel-space DDPM (diffusers UNet2DModel + DDPMScheduler) to serve as a teacher."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from lightning.pytorch import LightningModule
from torch import Tensor

from repfusion_pl.checkpoints import CheckpointError, read_checkpoint


def build_unet(
    sample_size: int,
    in_channels: int,
    block_out_channels: Sequence[int],
    layers_per_block: int,
    attention_levels: Sequence[int],
    norm_num_groups: int,
    **unet_kwargs: Any,
) -> UNet2DModel:
    """A diffusers UNet2DModel with self-attention at the given resolution levels.

    Extra keyword arguments go to ``UNet2DModel`` unchanged (e.g. ``num_class_embeds``).
    """
    levels = range(len(block_out_channels))
    return UNet2DModel(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=in_channels,
        block_out_channels=tuple(block_out_channels),
        layers_per_block=layers_per_block,
        down_block_types=tuple("AttnDownBlock2D" if i in attention_levels else "DownBlock2D" for i in levels),
        up_block_types=tuple(
            "AttnUpBlock2D" if i in attention_levels else "UpBlock2D" for i in reversed(levels)
        ),
        norm_num_groups=norm_num_groups,
        attention_head_dim=None,
        **unet_kwargs,
    )


class DiffusionTeacherTraining(LightningModule):
    """Train a DDPM on unlabelled images with the epsilon objective, then save it as a pipeline.

    At the end of ``fit`` the model is written with ``DDPMPipeline.save_pretrained`` to
    ``output_dir`` (``unet/`` + ``scheduler/``), so `DiffusionTeacher` and diffusers load it like
    any hub model. Batch labels, if any, are ignored.

    Args:
        output_dir: Where the trained pipeline is written.
        sample_size: Image side in pixels.
        in_channels: Image channels.
        block_out_channels: UNet widths per resolution level.
        layers_per_block: ResNet blocks per level.
        attention_levels: Indices of the levels that get self-attention.
        norm_num_groups: GroupNorm groups (must divide every width).
        num_train_timesteps: T of the noise schedule.
        beta_schedule: The diffusers beta schedule name.
        input_range: The (low, high) range of the data's images, mapped onto [-1, 1].
        lr: AdamW learning rate.
        warmup_steps: Linear learning-rate warm-up.
        compile: ``torch.compile`` the UNet (pays on GPUs for long runs; the first steps compile).
    """

    output_dir: str
    num_train_timesteps: int
    input_range: tuple[float, float]
    lr: float
    warmup_steps: int

    def __init__(
        self,
        output_dir: str = "artifacts/teacher",
        sample_size: int = 16,
        in_channels: int = 1,
        block_out_channels: Sequence[int] = (32, 64, 64),
        layers_per_block: int = 1,
        attention_levels: Sequence[int] = (2,),
        norm_num_groups: int = 8,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "linear",
        input_range: tuple[float, float] = (0.0, 1.0),
        lr: float = 2e-3,
        warmup_steps: int = 100,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.unet = build_unet(
            sample_size, in_channels, block_out_channels, layers_per_block, attention_levels, norm_num_groups
        )
        if compile:  # compiles the module's forward in place: its weights and state-dict keys stay
            self.unet.compile()
        self.noise_scheduler = DDPMScheduler(
            num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule
        )
        self.output_dir = output_dir
        self.num_train_timesteps = num_train_timesteps
        self.input_range = input_range
        self.lr = lr
        self.warmup_steps = warmup_steps

    def to_unet_range(self, images: Tensor) -> Tensor:
        """Map images from ``input_range`` onto the UNet's [-1, 1]."""
        low, high = self.input_range
        return (images - low) / (high - low) * 2 - 1

    def denoising_loss(self, images: Tensor) -> Tensor:
        """Epsilon-prediction MSE at uniformly drawn timesteps."""
        x0 = self.to_unet_range(images)
        noise = torch.randn_like(x0)
        t = torch.randint(0, self.num_train_timesteps, (x0.shape[0],), device=x0.device)
        noisy = self.noise_scheduler.add_noise(x0, noise, t)
        return F.mse_loss(self.unet(noisy, t).sample, noise)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        loss = self.denoising_loss(images)
        # No sync_dist: a per-step all-reduce would stall every DDP rank (validation still reduces).
        self.log("train/loss", loss, prog_bar=True, batch_size=images.shape[0])
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        loss = self.denoising_loss(images)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=images.shape[0])

    def configure_optimizers(self) -> Any:
        fused = self.device.type == "cuda" or None  # one kernel per step on a GPU
        optimizer = torch.optim.AdamW(self.unet.parameters(), lr=self.lr, weight_decay=0.0, fused=fused)
        warmup = max(1, self.warmup_steps)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def save_pipeline(self, directory: str | Path) -> Path:
        """Write the UNet and its schedule as a diffusers ``DDPMPipeline`` folder."""
        directory = Path(directory)
        DDPMPipeline(unet=self.unet, scheduler=self.noise_scheduler).save_pretrained(directory)
        return directory

    def on_train_end(self) -> None:
        if self.trainer.is_global_zero:
            path = self.save_pipeline(self.output_dir)
            print(f"teacher written to {path} (load it with DiffusionTeacher(source={str(path)!r}))")


def load_training_checkpoint(path: str | Path) -> tuple[UNet2DModel, DDPMScheduler]:
    """The UNet and noise schedule of a `DiffusionTeacherTraining` checkpoint.

    Raises:
        CheckpointError: The file is unreadable, unsafe, or a checkpoint of something else.
    """
    expected = "a checkpoint of DiffusionTeacherTraining (configs/teacher.yaml)"
    hparams = read_checkpoint(path, expected=expected).get("hyper_parameters", {})
    if "block_out_channels" not in hparams:
        raise CheckpointError(
            f"{path} is not a DiffusionTeacherTraining checkpoint (no UNet hyperparameters)"
        )
    module = DiffusionTeacherTraining.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    return module.unet, module.noise_scheduler
